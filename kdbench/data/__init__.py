"""Dataset catalogue (placeholder until the data module lands)."""
from .base import DataSpec, Split, Splits

__all__ = ["DataSpec", "Split", "Splits"]
