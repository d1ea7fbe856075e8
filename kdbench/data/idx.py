"""IDX files (LeCun's MNIST format), raw or gzipped: MNIST and Fashion-MNIST.

Layouts found: torchvision's `MNIST/raw/`, `FashionMNIST/raw/` (raw or .gz) and Debian's
`dataset-fashion-mnist` package, `/usr/share/datasets/fashion-mnist/*.gz`.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from ..config import TeacherRecipe
from ..errors import KdbenchError
from .catalogue import Decoded, register_dataset

# IDX type byte -> big-endian numpy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_DTYPE_CODES = {np.dtype(v).newbyteorder("=").str[1:]: k for k, v in _IDX_DTYPES.items()}

IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _read_bytes(path: Path, limit: int | None = None) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read() if limit is None else f.read(limit)
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    except (OSError, EOFError, zlib.error) as e:
        raise KdbenchError(f"corrupt IDX file {path}: cannot read it ({e})") from None


def _parse_header(path: Path, head: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        raise KdbenchError(f"corrupt IDX file {path}: bad magic number {head[:4].hex() or '(empty)'}")
    ndim = head[3]
    offset = 4 + 4 * ndim
    if ndim == 0 or len(head) < offset:
        raise KdbenchError(f"corrupt IDX file {path}: truncated header")
    shape = struct.unpack(f">{ndim}I", head[4:offset])
    return np.dtype(_IDX_DTYPES[head[2]]), tuple(int(s) for s in shape), offset


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (native byte order); KdbenchError naming the file if corrupt."""
    path = Path(path)
    raw = _read_bytes(path)
    dtype, shape, offset = _parse_header(path, raw[:64])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise KdbenchError(f"corrupt IDX file {path}: header {shape} needs {expected} data bytes, found {len(raw) - offset}")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def idx_count(path: str | Path) -> int:
    """First dimension of an IDX file from its header only (cheap, for the catalogue table)."""
    path = Path(path)
    _, shape, _ = _parse_header(path, _read_bytes(path, 64))
    return shape[0]


def write_idx(path: str | Path, array: np.ndarray, *, gz: bool = False) -> Path:
    """Write `array` as an IDX file (for fixtures and tests); `.gz` is appended when gz."""
    array = np.asarray(array)
    code = _DTYPE_CODES[array.dtype.str[1:]]
    data = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.dtype(_IDX_DTYPES[code])).tobytes()
    path = Path(str(path) + ".gz") if gz else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def find_idx(folder: Path, stem: str) -> Path | None:
    """`stem` or `stem.gz` inside folder (the uncompressed copy wins)."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def idx_files(folder: Path) -> dict[str, Path]:
    files = {k: find_idx(folder, stem) for k, stem in IDX_FILES.items()}
    missing = [IDX_FILES[k] for k, v in files.items() if v is None]
    if missing:
        raise KdbenchError(f"incomplete IDX folder {folder}: missing {', '.join(missing)} (raw or .gz)")
    return files  # type: ignore[return-value]


def _accepts(folder: Path) -> bool:
    return folder.is_dir() and all(find_idx(folder, s) is not None for s in IDX_FILES.values())


def _sources(folder: Path) -> list[Path]:
    return list(idx_files(folder).values())


def decode_idx_folder(folder: Path | None) -> Decoded:
    """Images (N, 1, H, W) uint8 and int64 labels from the four IDX files of `folder`."""
    assert folder is not None
    files = idx_files(folder)
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise KdbenchError(f"IDX files in {folder} disagree: {split} images {x.shape}, labels {y.shape}")
        arrays[f"{split}_x"] = np.ascontiguousarray(x.astype(np.uint8)[:, None])
        arrays[f"{split}_y"] = y.astype(np.int64)
    return Decoded(arrays, {"files": {k: p.name for k, p in files.items()}})


def idx_sizes(folder: Path | None) -> dict[str, int] | None:
    assert folder is not None
    files = idx_files(folder)
    return {"train": idx_count(files["train_y"]), "test": idx_count(files["test_y"])}


def _torchvision_downloader(cls_name: str):
    def download(root: Path) -> None:
        import torchvision.datasets as tvd  # imported lazily: slow, and only needed here

        cls = getattr(tvd, cls_name)
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)

    return download


register_dataset(
    "mnist", modality="image", num_classes=10, stands_for="mnist", default_teacher="paper-mnist-teacher",
    teacher_recipe=TeacherRecipe(epochs=6), student_budget="mnist", student_epochs=20,
    description="MNIST handwritten digits, 28x28 grey, 60k train / 10k test",
    paths=("MNIST/raw", "mnist"), accepts=_accepts, header_sizes=idx_sizes, sources=_sources,
    downloader=_torchvision_downloader("MNIST"),
    how_to_get="run `kdbench data download mnist` (needs network), or put the four IDX files "
               "(train-images-idx3-ubyte ..., raw or .gz) in <root>/MNIST/raw/",
)(decode_idx_folder)

register_dataset(
    "fashion-mnist", modality="image", num_classes=10, stands_for="fashion-mnist",
    default_teacher="paper-mnist-teacher", teacher_recipe=TeacherRecipe(epochs=10), student_budget="mnist",
    student_epochs=20,
    description="Fashion-MNIST (Zalando), 28x28 grey, 60k train / 10k test",
    paths=("FashionMNIST/raw", "fashion-mnist"), accepts=_accepts, header_sizes=idx_sizes, sources=_sources,
    downloader=_torchvision_downloader("FashionMNIST"),
    how_to_get="run `kdbench data download fashion-mnist` (needs network), or `apt-get install "
               "dataset-fashion-mnist` (Debian, installs /usr/share/datasets/fashion-mnist/), or put the four "
               "IDX files (raw or .gz) in <root>/FashionMNIST/raw/",
)(decode_idx_folder)
