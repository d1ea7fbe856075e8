"""Seeded index carving: val from train, a fixed test split where a dataset has none, train subsets.

All permutations come from `torch.Generator().manual_seed(seed)`, so they are the same on every
platform and torch build; kept indices are sorted, so a split keeps the source order.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import KdbenchError

__all__ = ["permutation", "carve", "fixed_test_split", "fixed_test_sizes", "subset", "FIXED_TEST_FRACTION", "FIXED_TEST_SEED",
           "FIXED_TEST_NOTE"]

FIXED_TEST_FRACTION = 0.2
FIXED_TEST_SEED = 0


def permutation(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n) (torch's generator, as numpy int64)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).numpy()


def carve(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, carved) sorted index arrays: round(n * fraction) rows carved with a seeded permutation."""
    if not 0.0 <= fraction < 1.0:
        raise KdbenchError(f"split fraction must be in [0, 1), got {fraction}")
    k = int(round(n * fraction))
    perm = permutation(n, seed)
    return np.sort(perm[k:]), np.sort(perm[:k])


def fixed_test_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices for a dataset without an official test split: 20%, seed 0, forever."""
    return carve(n, FIXED_TEST_FRACTION, FIXED_TEST_SEED)


def fixed_test_sizes(n: int) -> dict[str, int]:
    k = int(round(n * FIXED_TEST_FRACTION))
    return {"train": n - k, "test": k}


FIXED_TEST_NOTE = (f"no official test split: test carved as {int(FIXED_TEST_FRACTION * 100)}% with fixed seed "
                   f"{FIXED_TEST_SEED} (independent of split_seed)")


def subset(n: int, size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, class-agnostic subset of `size` rows (all rows when None or >= n)."""
    if size is None or size >= n:
        return np.arange(n)
    if size < 1:
        raise KdbenchError(f"max_train must be a positive integer, got {size}")
    return np.sort(permutation(n, seed)[:size])
