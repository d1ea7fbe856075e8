"""Dataset catalogue: registered datasets, data roots, cached decoding, seeded train/val/test splits.

`load_dataset("mnist")` returns `Splits` (images float32 in [0, 1], text int64 ids); `DATASETS`
lists what is known; `dataset_table()` what is present. Format modules register their datasets
on import below.
"""
from . import builtin, cifar, idx, text  # noqa: F401  (register the datasets)
from .api import dataset_table, decode_dataset, download, load_dataset
from .base import DataSpec, Split, Splits
from .cache import CacheCorruptionWarning, cache_root
from .catalogue import DATASETS, DatasetEntry, Decoded, Pool, data_roots, locate, register_dataset

__all__ = [
    "DATASETS", "DataSpec", "DatasetEntry", "Decoded", "Pool", "Split", "Splits", "CacheCorruptionWarning",
    "cache_root", "data_roots", "dataset_table", "decode_dataset", "download", "load_dataset", "locate",
    "register_dataset",
]
