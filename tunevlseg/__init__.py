"""Prompt-tune vision-language segmentation models and run the benchmark as sweeps."""

__version__ = "0.1.0"
