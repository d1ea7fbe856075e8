"""Decoded-array cache: decode a dataset once, then memory-map its .npy files on every later load.

Layout: `$KDBENCH_CACHE/datasets/<dataset>/<key>/` with one `<array>.npy` per array and an
`entry.json` sidecar (written last) holding each file's size and sha256, the source's
fingerprint (size / mtime) and the decoder's metadata. A reader trusts an entry only when the
sidecar parses, the source fingerprint still matches and every checksum matches; a corrupt
entry is reported with a `CacheCorruptionWarning` and rebuilt, a stale one is rebuilt quietly.
Every file is written to a temporary name, fsynced and renamed, under a `FileLock`, so a kill
leaves at worst an entry whose sidecar is missing or disagrees with its files (= rebuilt).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from filelock import FileLock

from ..cache import cache_root
from ..store import atomic_write
from .catalogue import Decoded

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
SIDECAR = "entry.json"
_LOCK_TIMEOUT_S = 3600.0  # a slow first decode (JPEG, aclImdb) by another process may take minutes


class CacheCorruptionWarning(UserWarning):
    """A cache entry failed its checksum or could not be read; it is rebuilt, never used."""


def fingerprint(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Size and mtime of each source (for a directory: file count, total size, newest mtime)."""
    out = []
    for p in paths:
        p = Path(p)
        st = p.stat()
        if p.is_dir():
            n = size = newest = 0
            for dirpath, _dirs, files in os.walk(p):
                for f in files:
                    s = os.stat(os.path.join(dirpath, f))
                    n, size, newest = n + 1, size + s.st_size, max(newest, s.st_mtime_ns)
            out.append({"path": str(p.absolute()), "files": n, "size": size, "mtime_ns": newest})
        else:
            out.append({"path": str(p.absolute()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def entry_dir(dataset: str, variant: Mapping[str, Any]) -> Path:
    """Entry folder for (dataset, variant); the variant (source path, decoder version...) is hashed."""
    blob = json.dumps({"format": CACHE_FORMAT, **variant}, sort_keys=True, default=str)
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return cache_root() / "datasets" / dataset / key


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass




def read_sidecar(d: Path) -> dict[str, Any] | None:
    """The sidecar of entry `d` if it parses, else None (no checksum verification: cheap)."""
    try:
        side = json.loads((d / SIDECAR).read_text())
    except (OSError, ValueError):
        return None
    return side if isinstance(side, dict) and side.get("format") == CACHE_FORMAT else None


def _load_verified(d: Path, side: dict[str, Any]) -> dict[str, np.ndarray]:
    """Memory-map every array of the entry after checking its size and sha256; ValueError if bad."""
    if not isinstance(side.get("arrays"), dict) or not side["arrays"]:
        raise ValueError("the sidecar lists no arrays")  # nothing checksummed: nothing can be trusted
    arrays: dict[str, np.ndarray] = {}
    for name, rec in side["arrays"].items():
        p = d / f"{name}.npy"
        if not p.is_file():
            raise ValueError(f"{p.name} is missing")
        if p.stat().st_size != rec["bytes"]:
            raise ValueError(f"{p.name} has {p.stat().st_size} bytes, sidecar says {rec['bytes']}")
        if _sha256(p) != rec["sha256"]:
            raise ValueError(f"{p.name} fails its sha256 checksum")
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except ValueError:  # numpy cannot memory-map zero-size data
            arr = np.load(p, allow_pickle=False)
        if list(arr.shape) != rec["shape"] or str(arr.dtype) != rec["dtype"]:
            raise ValueError(f"{p.name} has shape/dtype {arr.shape}/{arr.dtype}, sidecar says {rec['shape']}/{rec['dtype']}")
        arrays[name] = arr
    return arrays


def _write_entry(d: Path, decoded: Decoded, variant: Mapping[str, Any], source: list[dict[str, Any]]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / SIDECAR).unlink(missing_ok=True)  # the entry is invalid until the new sidecar lands
    for stray in d.glob(".*.tmp"):  # left by a killed writer (we hold the lock: nobody else writes)
        stray.unlink(missing_ok=True)
    records = {}
    for name, arr in decoded.arrays.items():
        arr = np.ascontiguousarray(arr)
        p = d / f"{name}.npy"
        atomic_write(p, lambda f, a=arr: np.save(f, a, allow_pickle=False))
        records[name] = {"bytes": p.stat().st_size, "sha256": _sha256(p), "shape": list(arr.shape), "dtype": str(arr.dtype)}
    side = {"format": CACHE_FORMAT, "variant": dict(variant), "source": source, "arrays": records, "meta": decoded.meta}
    text = json.dumps(side, indent=1, sort_keys=True, default=str).encode()
    atomic_write(d / SIDECAR, lambda f: f.write(text))
    _fsync_dir(d)


def cached_decode(dataset: str, variant: Mapping[str, Any], sources: Sequence[Path],
                  build: Callable[[], Decoded]) -> tuple[Decoded, str]:
    """Decoded arrays of `dataset` from the cache, building (and storing) them when the entry is
    missing, stale or corrupt. Returns (decoded with memory-mapped arrays, "hit" | "built")."""
    d = entry_dir(dataset, variant)
    source = fingerprint(sources)
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(d) + ".lock", timeout=_LOCK_TIMEOUT_S)
        lock.acquire()
    except OSError as e:  # read-only or missing cache folder: still load, just without caching
        warnings.warn(f"dataset cache {d.parent} is not usable ({e}); decoding without a cache", stacklevel=3)
        return build(), "off"
    try:
        side = read_sidecar(d)
        if side is not None and side.get("variant") == json.loads(json.dumps(dict(variant), default=str)):
            if side.get("source") != source:
                log.info("cache entry %s is stale (source changed); rebuilding", d)
            else:
                try:
                    return Decoded(_load_verified(d, side), dict(side.get("meta", {}))), "hit"
                except (ValueError, OSError, KeyError, TypeError) as e:
                    warnings.warn(f"corrupt cache entry {d} ({e}); rebuilding it", CacheCorruptionWarning, stacklevel=3)
        elif (d / SIDECAR).exists():
            warnings.warn(f"unreadable cache sidecar {d / SIDECAR}; rebuilding the entry", CacheCorruptionWarning, stacklevel=3)
        decoded = build()
        try:
            _write_entry(d, decoded, variant, source)
        except OSError as e:  # disk full, read-only: the decoded arrays are still good
            warnings.warn(f"could not write cache entry {d} ({e}); using the arrays uncached", stacklevel=3)
            return decoded, "off"
        side = read_sidecar(d)
        assert side is not None
        return Decoded(_load_verified(d, side), dict(side.get("meta", {}))), "built"
    finally:
        lock.release()


def cached_meta(dataset: str, variant: Mapping[str, Any], sources: Sequence[Path]) -> dict[str, Any] | None:
    """Metadata of a present, non-stale entry without verifying checksums (for the cheap table)."""
    d = entry_dir(dataset, variant)
    side = read_sidecar(d)
    if side is None:
        return None
    try:
        if side.get("source") != fingerprint(sources):
            return None
    except OSError:
        return None
    return dict(side.get("meta", {}))
