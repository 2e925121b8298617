"""For tests, notebooks and benchmarks: the tiny demo model and a random LoRA adapter for it,
re-exported from the local backend (backends/local/tiny.py), where they live."""

from .backends.local.tiny import MARKER_FILE, build_tiny_model, ensure_tiny_model, random_adapter

__all__ = ["MARKER_FILE", "build_tiny_model", "ensure_tiny_model", "random_adapter"]
