"""Checksummed on-disk cache entries shared by datasets, teachers and teacher targets.

An entry is a directory of files plus `meta.json` holding each file's sha256. Entries are built
under a file lock (two processes never build the same entry at once), written atomically (a
temporary directory renamed into place), and verified on every load: a corrupt or stale entry is
reported with a warning and rebuilt, never used.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
from filelock import FileLock

from .errors import KdbenchError
from .store import DIR_MODE, atomic_write_text


class CorruptCacheWarning(UserWarning):
    pass


def cache_root() -> Path:
    """$KDBENCH_CACHE (`~` expanded, made absolute), default ~/.cache/kdbench: the one place every
    cache (datasets, teachers, targets) takes its root from."""
    env = os.environ.get("KDBENCH_CACHE", "")
    return Path(env).expanduser().absolute() if env else Path.home() / ".cache" / "kdbench"


def check_cache_root() -> Path:
    """The cache root, refused with one line when it cannot hold a cache (a file, or under a file,
    or not creatable), so that a run does not find out after loading its data."""
    root = cache_root()
    where = f"cache folder '{root}'" + (" (KDBENCH_CACHE)" if os.environ.get("KDBENCH_CACHE") else "")
    if root.exists() or root.is_symlink():
        if not root.is_dir():
            raise KdbenchError(f"{where} is not a directory")
        return root
    parent = next((q for q in root.parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise KdbenchError(f"{where} cannot be created: '{parent}' is not a directory")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise KdbenchError(f"{where} cannot be created: '{parent}' is not writable")
    return root


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def key_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


class CacheEntry:
    """A directory `root/kind/key` whose files are listed with checksums in `meta.json`."""

    def __init__(self, kind: str, key: str, root: Path | None = None):
        self.dir = (root or cache_root()) / kind / key
        self.lock = FileLock(str(self.dir) + ".lock")

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    def meta(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return None

    def valid(self, warn: bool = True) -> bool:
        """True when meta.json lists the entry's files with checksums and every one matches (an entry
        that lists nothing proves nothing about what it holds: it is rebuilt)."""
        meta = self.meta()
        if meta is None or not _lists_files(meta):
            if warn and self.dir.exists():
                what = "no readable meta.json" if meta is None else "a meta.json that lists no checksummed files"
                warnings.warn(f"cache entry {self.dir} has {what}; rebuilding", CorruptCacheWarning, stacklevel=2)
            return False
        for name, digest in meta["files"].items():
            path = self.dir / name
            if not path.is_file() or sha256_file(path) != digest:
                if warn:
                    warnings.warn(f"cache file {path} is missing or fails its checksum; rebuilding", CorruptCacheWarning, stacklevel=2)
                return False
        return True

    def build(self, writer: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Run `writer(tmpdir) -> info` and publish its files atomically with checksums; returns meta."""
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.dir.name}.", dir=self.dir.parent))
        os.chmod(tmp, DIR_MODE)  # a shared cache stays readable by whoever may read its folder
        try:
            info = writer(tmp)
            files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.name != "meta.json"}
            if not files:
                raise RuntimeError(f"cache writer for {self.dir} wrote no files")  # such an entry could never be valid
            for p in tmp.iterdir():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
            meta = {"files": files, "info": info}
            atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1, sort_keys=True, default=str))
            if self.dir.exists():
                shutil.rmtree(self.dir)
            os.replace(tmp, self.dir)
            return meta
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def get_or_build(self, writer: Callable[[Path], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
        """(meta, built): load a valid entry, else build it under the lock (another process may
        have built it while we waited)."""
        if self.valid(warn=True):
            return self.meta(), False  # type: ignore[return-value]
        with self.lock:
            if self.valid(warn=False):
                return self.meta(), False  # type: ignore[return-value]
            self.remove_strays()
            return self.build(writer), True

    def remove_strays(self) -> None:
        """Delete temporary build folders of this entry left by a killed writer (call under the lock:
        then nobody else is building this entry). Other entries' folders are never touched."""
        pattern = re.compile(rf"^\.{re.escape(self.dir.name)}\.[A-Za-z0-9_]{{8}}$")
        try:
            strays = [p for p in self.dir.parent.iterdir() if pattern.match(p.name) and p.is_dir()]
        except OSError:
            return
        for p in strays:
            shutil.rmtree(p, ignore_errors=True)


def _lists_files(meta: Any) -> bool:
    """meta.json names at least one file, each with a sha256 hex digest, and carries the writer's info."""
    files = meta.get("files") if isinstance(meta, dict) else None
    return (isinstance(files, dict) and bool(files) and "info" in meta
            and all(isinstance(k, str) and "/" not in k and isinstance(v, str) and len(v) == 64 for k, v in files.items()))


def save_array(dirpath: Path, name: str, array: np.ndarray) -> None:
    np.save(dirpath / f"{name}.npy", np.ascontiguousarray(array))


def load_array(dirpath: Path, name: str, mmap: bool = True) -> np.ndarray:
    return np.load(dirpath / f"{name}.npy", mmap_mode="r" if mmap else None)
