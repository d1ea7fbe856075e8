"""Dataset catalogue: registered datasets, data roots, cached decoding, seeded train/val/test splits.

`load_dataset("mnist")` returns `Splits` (images float32 in [0, 1], text int64 ids); `DATASETS`
lists what is known; `dataset_table()` what is present. Format modules register their datasets
on import below; your own data registers with `register_image_dataset` / `register_text_dataset`
(kdbench.data.readers), or with `@register_dataset` for a cached decoder of files. The helpers
those use are public: the Keras text recipe (`tokenize`, `encode_corpus`, `keras_sequences`,
`encode_labelled`) and the seeded splits (`carve`, `fixed_test_split`, `subset`).
"""
from . import builtin, cifar, idx, text  # noqa: F401  (register the datasets)
from .api import dataset_spec, dataset_table, decode_dataset, download, load_dataset
from .base import DataSpec, Split, Splits
from .cache import CacheCorruptionWarning, cache_root
from .catalogue import (DATASETS, MODALITY_TEACHERS, DatasetEntry, Decoded, Pool, data_roots, image_assemble, locate,
                        register_dataset)
from .readers import register_image_dataset, register_text_dataset
from .splits import FIXED_TEST_NOTE, carve, fixed_test_split, permutation, subset
from .text import TEXT_OPTIONS, carve_fixed_test, encode_labelled, text_assemble
from .vocab import encode_corpus, keras_sequences, rank_vocabulary, tokenize, vocabulary

__all__ = [
    "DATASETS", "DataSpec", "DatasetEntry", "Decoded", "Pool", "Split", "Splits", "CacheCorruptionWarning",
    "MODALITY_TEACHERS", "cache_root", "data_roots", "dataset_spec", "dataset_table", "decode_dataset", "download", "load_dataset",
    "locate", "register_dataset", "register_image_dataset", "register_text_dataset", "image_assemble",
    "text_assemble", "TEXT_OPTIONS", "encode_labelled", "carve_fixed_test", "tokenize", "rank_vocabulary",
    "encode_corpus", "keras_sequences", "vocabulary", "FIXED_TEST_NOTE", "carve", "fixed_test_split", "permutation",
    "subset",
]
