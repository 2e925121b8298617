"""Adapting the model to a team's own images: training examples from batch or eval results
(examples.py), LoRA fine-tuning with peft and transformers' Trainer (train.py), and an adapter
merged into the base weights (merge.py). Serving adapters is the local engine's
(backends/local/adapters.py). Importing this package imports no torch.
"""
