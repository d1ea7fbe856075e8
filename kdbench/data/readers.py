"""Your own data in five lines: `register_image_dataset(name, read=...)` and
`register_text_dataset(name, read=...)`.

`read()` takes no arguments and returns `(x, y)` (kdbench then carves a fixed 20% test split,
seed 0, recorded as a deviation) or `{"train": (x, y), "test": (x, y)}`:
- images: an array (N, H, W) or (N, C, H, W), channels first; integers in [0, scale] (default
  255) or floats in [0, scale] (default 1); kdbench hands models float32 in [0, 1];
- texts: a sequence of strings, tokenised with kdbench's Keras recipe (kdbench.data.vocab: words
  ranked on the train texts only, `num_words` / `maxlen` options, default 5000 / 500);
- labels: integers in [0, num_classes).
The val split is carved from train per run (`val_fraction`, `split_seed`), as for every dataset.
`read` runs on every load (no file keys a cache), so it should be quick; a format that deserves
a cache is a `@register_dataset` decoder with `paths` (see kdbench.data.text).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import KdbenchError
from .catalogue import AssembleFn, DatasetEntry, Decoded, Pool, image_assemble, register_dataset
from .splits import FIXED_TEST_NOTE, fixed_test_split
from .text import TEXT_OPTIONS, carve_fixed_test, check_options, encode_labelled, text_assemble

__all__ = ["register_image_dataset", "register_text_dataset"]

ReadFn = Callable[[], Any]
SHAPE_HINT = "(x, y) or {'train': (x, y), 'test': (x, y)}"


def _origin(read: ReadFn) -> str:
    return f"read by {getattr(read, '__module__', '?')}.{getattr(read, '__qualname__', repr(read))}()"


def _pair(name: str, value: Any, split: str, num_classes: int) -> tuple[Any, np.ndarray]:
    """(x, labels) of one split, the labels checked: integers in [0, num_classes), one per row of x."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise KdbenchError(f"dataset '{name}': read() must return {SHAPE_HINT}; {split} is a {type(value).__name__}")
    x, y = value
    labels = np.asarray(y)
    if labels.ndim != 1 or len(labels) != len(x) or len(labels) == 0:
        raise KdbenchError(f"dataset '{name}': {split}: expected one label per row ({len(x)} rows), got labels of shape "
                           f"{labels.shape}; read() must return {SHAPE_HINT}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not (np.issubdtype(labels.dtype, np.number) and np.array_equal(labels, np.round(labels))):
            raise KdbenchError(f"dataset '{name}': {split} labels must be integers, got {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise KdbenchError(f"dataset '{name}': {split} labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    return x, labels


def _read_splits(name: str, read: ReadFn, num_classes: int) -> tuple[tuple[Any, np.ndarray], tuple[Any, np.ndarray] | None]:
    """(train, test) as `read` returns them; test None when it gives one pool only."""
    out = read()
    if isinstance(out, Mapping):
        if set(out) != {"train", "test"}:
            raise KdbenchError(f"dataset '{name}': read() must return {SHAPE_HINT}; got keys {sorted(map(str, out))}")
        return _pair(name, out["train"], "train", num_classes), _pair(name, out["test"], "test", num_classes)
    return _pair(name, out, "the data", num_classes), None


def _noting_carve(assemble: AssembleFn) -> AssembleFn:
    """`assemble`, plus the fixed-test-carve deviation when `read` gave no test split."""
    def wrapped(entry: DatasetEntry, decoded: Decoded, options: Mapping[str, Any]) -> Pool:
        pool = assemble(entry, decoded, options)
        if decoded.meta.get("test_split") == FIXED_TEST_NOTE:
            pool.info["deviations"] = [FIXED_TEST_NOTE]
        return pool

    return wrapped


def _check_classes(num_classes: Any) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------
def image_array(name: str, x: Any, scale: float | None) -> tuple[np.ndarray, float]:
    """(N, C, H, W) uint8 (integers up to 255) or float32, and the scale that maps it to [0, 1]."""
    a = np.asarray(x)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise KdbenchError(f"dataset '{name}': images must be a numeric array (N, H, W) or (N, C, H, W), got "
                           f"{a.dtype} {a.shape}")
    integer = np.issubdtype(a.dtype, np.integer) or a.dtype == bool
    s = float(scale if scale is not None else (255 if integer else 1))
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > s:
        raise KdbenchError(f"dataset '{name}': image values must lie in [0, {s:g}] (pass scale= for another range), "
                           f"got {a.min()}..{a.max()}")
    return (a.astype(np.uint8) if integer and s <= 255 else a.astype(np.float32)), s


def _decode_images(name: str, read: ReadFn, num_classes: int, scale: float | None) -> Decoded:
    (xtr, ytr), test = _read_splits(name, read, num_classes)
    xtr, s = image_array(name, xtr, scale)
    if test is None:
        tr, te = fixed_test_split(len(ytr))
        arrays = {"train_x": xtr[tr], "train_y": ytr[tr], "test_x": xtr[te], "test_y": ytr[te]}
        return Decoded(arrays, {"scale": s, "test_split": FIXED_TEST_NOTE})
    xte, s_test = image_array(name, test[0], scale)
    if xte.shape[1:] != xtr.shape[1:] or s_test != s:
        raise KdbenchError(f"dataset '{name}': test images {xte.shape[1:]} ({xte.dtype}) do not match train {xtr.shape[1:]} ({xtr.dtype})")
    return Decoded({"train_x": xtr, "train_y": ytr, "test_x": xte, "test_y": test[1]}, {"scale": s, "test_split": "given by read()"})


def register_image_dataset(name: str, *, read: ReadFn, num_classes: int, description: str | None = None,
                           scale: float | None = None, deviations: Sequence[str] = (), **family: Any) -> None:
    """Register image dataset `name` whose arrays `read()` returns (see the module docstring).

    `family`: the family defaults of `register_dataset` (`default_teacher`, `teacher_recipe`,
    `student_budget`, `student_epochs`, `stands_for`, `substitute`; by default the paper image
    teacher, kdbench's default recipe, students sized relative to that teacher, kdbench's own data)."""
    _check_classes(num_classes)
    register_dataset(
        name, modality="image", num_classes=num_classes, assemble=_noting_carve(image_assemble), cache=False,
        description=description or f"images {_origin(read)}", how_to_get=f"import the module that registers it "
        f"(--import {getattr(read, '__module__', 'MODULE')})", deviations=deviations, origin=_origin(read),
        **family,
    )(lambda _location: _decode_images(name, read, num_classes, scale))


# ---------------------------------------------------------------------------------------------
# texts
# ---------------------------------------------------------------------------------------------
def _documents(name: str, split: str, x: Any, y: np.ndarray) -> list[tuple[str, int]]:
    if isinstance(x, (str, bytes)) or not all(isinstance(t, str) for t in x):
        raise KdbenchError(f"dataset '{name}': {split} texts must be a sequence of strings")
    return list(zip(x, y.tolist()))


def _decode_texts(name: str, read: ReadFn, num_classes: int) -> Decoded:
    train, test = _read_splits(name, read, num_classes)
    docs = _documents(name, "train", *train)
    if test is None:
        tr, te = carve_fixed_test(docs)
        return encode_labelled(tr, {"test_split": FIXED_TEST_NOTE}, test=te)
    return encode_labelled(docs, {"test_split": "given by read()"}, test=_documents(name, "test", *test))


def register_text_dataset(name: str, *, read: ReadFn, num_classes: int, description: str | None = None,
                          options: Mapping[str, Any] | None = None, deviations: Sequence[str] = (),
                          **family: Any) -> None:
    """Register text dataset `name` whose texts and labels `read()` returns (see the module docstring).

    `options`: defaults of its per-run options `num_words` / `maxlen` (5000 / 500; a run sets them
    with `--data-option maxlen=200` or `data_options=`); the family defaults as for images (the
    paper text teacher)."""
    _check_classes(num_classes)
    opts = {**TEXT_OPTIONS, **(options or {})}
    check_options(**opts)
    register_dataset(
        name, modality="text", num_classes=num_classes, assemble=_noting_carve(text_assemble), cache=False,
        options=opts, check_options=check_options, description=description or f"texts {_origin(read)}",
        how_to_get=f"import the module that registers it (--import {getattr(read, '__module__', 'MODULE')})",
        deviations=deviations, origin=_origin(read), **family,
    )(lambda _location: _decode_texts(name, read, num_classes))
