"""Public entry points: load a dataset as train/val/test splits, list the catalogue, download."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import KdbenchError
from .base import DataSpec, Split, Splits
from .cache import cached_decode, cached_meta
from .catalogue import (DATASETS, DatasetEntry, Decoded, data_roots, default_download_root, explicit_root, locate,
                        missing_message, package_available)
from .splits import carve, subset

DECODER_VERSION = 1  # bump when a decoder's output changes: every cache entry is then rebuilt


def _cache_variant(entry: DatasetEntry, location: Path) -> dict[str, Any]:
    return {"dataset": entry.name, "source": str(location.absolute()), "decoder": DECODER_VERSION}


def _sources(entry: DatasetEntry, location: Path) -> list[Path]:
    return entry.sources(location) if entry.sources else [location]


def _with_sizes(decoded: Decoded) -> Decoded:
    decoded.meta.setdefault("sizes", {"train": int(len(decoded.arrays["train_y"])),
                                      "test": int(len(decoded.arrays["test_y"]))})
    return decoded


def _find(entry: DatasetEntry, data_root: str | Path | None) -> tuple[Path | None, Path | None]:
    if not entry.needs_root:
        if not package_available(entry):
            raise KdbenchError(missing_message(entry, data_root))
        return None, None
    found = locate(entry, data_root)
    if found is None:
        raise KdbenchError(missing_message(entry, data_root))
    return found


def decode_dataset(entry: DatasetEntry, location: Path | None) -> tuple[Decoded, str]:
    """Decoded arrays of `entry` and where they came from ("hit" / "built" in the cache, or "off")."""
    if not entry.cache or location is None:
        return _with_sizes(entry.decode(location)), "off"
    return cached_decode(entry.name, _cache_variant(entry, location), _sources(entry, location),
                         lambda: _with_sizes(entry.decode(location)))


def _split(x: np.ndarray, y: np.ndarray, idx: np.ndarray | None, scale: float | None) -> Split:
    """Rows `idx` (all when None) as tensors: images float32 / scale, text int64; always a private copy."""
    if idx is not None:
        xs = np.asarray(x[idx])  # fancy indexing copies (also out of a memory map)
    else:
        xs = x if (x.flags.writeable and not isinstance(x, np.memmap)) else np.array(x)
    ys = np.array(y, dtype=np.int64) if idx is None else np.asarray(y[idx], dtype=np.int64)
    xt = torch.from_numpy(np.ascontiguousarray(xs))
    if scale is not None:
        xt = xt.to(torch.float32).div_(scale)
    else:
        xt = xt.to(torch.int64)
    return Split(xt, torch.from_numpy(np.ascontiguousarray(ys)))


def dataset_spec(name: str, data_root: str | Path | None = None, **options: Any) -> DataSpec:
    """What a dataset's inputs and classes are (shape, modality, classes), for checks before any work:
    the decode is shared with `load_dataset` (cached), the split is a one-image stub."""
    return load_dataset(name, data_root, max_train=1, **options).spec


def load_dataset(name: str, data_root: str | Path | None = None, *, val_fraction: float = 0.1, split_seed: int = 0,
                 max_train: int | None = None, **options: Any) -> Splits:
    """train / val / test of dataset `name`. Val is carved from the original training set with a
    permutation seeded by `split_seed`; `max_train` then keeps a seeded subset of train; test is
    never touched. `options` are the dataset's own (`DatasetEntry.options`; text datasets take
    `num_words` and `maxlen`, default 5000 / 500); those that differ from the defaults are in
    `info["data_options"]`, which keys the cached teachers and targets of the split."""
    entry = DATASETS.get(name)
    opts = entry.resolve_options(options)
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= float(val_fraction) < 1.0:
        raise KdbenchError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if max_train is not None and (not isinstance(max_train, (int, np.integer)) or max_train < 1):
        raise KdbenchError(f"max_train must be a positive integer or None, got {max_train!r}")
    root, location = _find(entry, data_root)
    decoded, cache_state = decode_dataset(entry, location)
    pool = entry.assemble(entry, decoded, opts)

    n_pool = int(len(pool.y_train))
    tr, va = carve(n_pool, float(val_fraction), split_seed)
    deviations = list(entry.deviations) + list(pool.info.pop("deviations", ()))
    if max_train is not None and max_train < len(tr):
        deviations.append(f"train subset: {max_train} of {len(tr)} rows (seed {split_seed}, class-agnostic)")
        tr = tr[subset(len(tr), int(max_train), split_seed)]
    splits = Splits(
        name=name,
        train=_split(pool.x_train, pool.y_train, tr, pool.scale),
        val=_split(pool.x_train, pool.y_train, va, pool.scale),
        test=_split(pool.x_test, pool.y_test, None, pool.scale),
        spec=pool.spec,
    )
    info: dict[str, Any] = {
        "dataset": name,
        "source": str(location) if location is not None else entry.source,
        "root": str(root) if root is not None else None,
        "val_fraction": float(val_fraction),
        "split_seed": int(split_seed),
        "max_train": max_train,
        "sizes": splits.sizes(),
        "pool_sizes": {"train": n_pool, "test": int(len(pool.y_test))},
        "test_split": "official test split",
        "options": dict(opts),
        "cache": cache_state,
    }
    info.update(pool.info)
    changed = entry.changed_options(options)
    if changed:  # only then: the split identity of the default data stays what it was
        info["data_options"] = changed
    info["deviations"] = deviations
    splits.info = info
    return splits


def _cheap_sizes(entry: DatasetEntry, location: Path | None) -> dict[str, int] | None:
    """Pool sizes without decoding: from file headers where possible, else from the cache sidecar."""
    try:
        if entry.header_sizes is not None:
            return entry.header_sizes(location)
        if entry.cache and location is not None:
            meta = cached_meta(entry.name, _cache_variant(entry, location), _sources(entry, location))
            return meta.get("sizes") if meta else None
    except (KdbenchError, OSError, ValueError):
        return None
    return None


def dataset_table(data_root: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per registered dataset: name, modality, status, location, train / test sizes (the
    pool before the val carve; None when unknown without decoding), how to get it if missing."""
    rows = []
    for name, entry in DATASETS.items():
        if entry.needs_root:
            found = locate(entry, data_root)
            ok, location = found is not None, (found[1] if found else None)
            where = str(location) if location else ""
        else:
            ok, location, where = package_available(entry), None, entry.source
        sizes = _cheap_sizes(entry, location) if ok else None
        rows.append({
            "name": name, "modality": entry.modality, "status": "found" if ok else "missing",
            "location": where if ok else "", "train": sizes.get("train") if sizes else None,
            "test": sizes.get("test") if sizes else None, "how_to_get": "" if ok else entry.how_to_get,
            "description": entry.description,
        })
    return rows


def download(name: str, data_root: str | Path | None = None) -> Path:
    """Fetch `name` with torchvision's downloader into `data_root` (default: first $KDBENCH_DATA
    entry, else ~/.cache/kdbench/data); returns where the dataset now is. Needs network."""
    entry = DATASETS.get(name)
    if entry.downloader is None:
        raise KdbenchError(f"kdbench cannot download '{name}': {entry.how_to_get}")
    root = default_download_root(data_root)
    before = _existing_dirs(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        entry.downloader(root)
    except BaseException as e:  # network, checksum, disk, Ctrl-C: no empty folders are left behind
        _remove_new_empty_dirs(root, before)
        if isinstance(e, KdbenchError) or not isinstance(e, Exception):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise KdbenchError(f"download of '{name}' into {root} failed ({type(e).__name__}: {msg}); "
                           f"check the network, or get it by hand: {entry.how_to_get}") from None
    found = locate(entry, root)
    if found is None or found[0] != root:
        raise KdbenchError(f"download of '{name}' into {root} finished but no usable copy is there; {entry.how_to_get}")
    return found[1]


def _existing_dirs(root: Path) -> set[Path]:
    """Folders that exist before a download: `root`'s existing ancestors and everything under it."""
    found = {p for p in (root, *root.parents) if p.is_dir()}
    if root.is_dir():
        found |= {Path(d) for d, _subdirs, _files in os.walk(root)}
    return found


def _remove_new_empty_dirs(root: Path, before: set[Path]) -> None:
    """After a failed download, remove the folders it created that are still empty (deepest first,
    then `root` and its new parents); folders that existed before, or hold files, are kept."""
    created = [Path(d) for d, _subdirs, _files in os.walk(root, topdown=False)] if root.is_dir() else []
    created += [root, *root.parents]
    for d in created:
        if d in before:
            continue
        try:
            d.rmdir()  # only succeeds on an empty folder
        except OSError:
            pass


def check_dataset(name: str, data_root: str | Path | None = None) -> None:
    """Refuse missing or unreadable data before anything trains: decode the dataset now unless a
    current cache entry shows it was decoded before (the first run would decode it anyway, and
    the cache keeps the arrays). Datasets that ship in a package need only the package (but a
    --data-root given with them must still exist: it is a typo otherwise)."""
    entry = DATASETS.get(name)
    explicit_root(data_root)
    _root, location = _find(entry, data_root)
    if location is None or not entry.cache:
        return
    if cached_meta(entry.name, _cache_variant(entry, location), _sources(entry, location)) is None:
        decode_dataset(entry, location)


__all__ = ["load_dataset", "dataset_table", "download", "decode_dataset", "data_roots", "check_dataset"]
