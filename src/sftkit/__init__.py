"""sftkit: supervised instruction fine-tuning of small decoder-only LLMs, in PyTorch."""

__version__ = "0.1.0"
