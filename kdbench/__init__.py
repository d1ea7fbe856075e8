"""kdbench: a benchmark and reproduction suite for knowledge distillation."""
__version__ = "0.1.0"

__all__ = ["__version__"]
