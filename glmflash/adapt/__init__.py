"""Adapting the model to a team's own images: training rows from batch or eval results
(data.py), LoRA fine-tuning with peft and transformers' Trainer (train.py), and adapters applied
to a loaded model or merged into its weights (serve.py). Importing this package imports no torch.
"""
