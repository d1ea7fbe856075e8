"""Checksummed on-disk cache entries shared by datasets, teachers and teacher targets.

An entry is a directory of files plus `meta.json` holding each file's sha256. Entries are built
under a file lock (two processes never build the same entry at once), written atomically (a
temporary directory renamed into place), and verified on every load: a corrupt or stale entry is
reported with a warning and rebuilt, never used.

An entry can also travel: `pack` reads it as byte arrays and `install` publishes such a copy in
another cache, checksums verified. While an `entry_source` is active, an entry missing here is
first asked of it before being built (a Ray worker gets the driver's teachers and targets through
the object store instead of training them again on its node); `recording` lists the entries a
process used, so that it knows what to send.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

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


META = "meta.json"
Packed = Mapping[str, Any]  # an entry as it travels: file name -> its bytes (any buffer: bytes, a uint8 array), meta.json included
Fetch = Callable[[str, str], "Packed | None"]  # (kind, key) -> the packed entry, or None when the source has none

_sources: list[Fetch] = []
_recordings: list[dict[tuple[str, str], tuple["CacheEntry", str]]] = []
_state_lock = threading.Lock()


@contextmanager
def entry_source(fetch: Fetch) -> Iterator[None]:
    """While the body runs, an entry this process would build is first asked of `fetch(kind, key)`
    and installed from its copy (so a worker that was sent the entries needs none built again)."""
    with _state_lock:
        _sources.append(fetch)
    try:
        yield
    finally:
        with _state_lock:
            _sources.remove(fetch)


@contextmanager
def recording() -> Iterator[dict[tuple[str, str], tuple["CacheEntry", str]]]:
    """While the body runs, every entry this process gets from its cache is noted:
    {(kind, key): (entry, how)}, `how` one of "hit", "installed", "built" (what to send elsewhere,
    and whether a worker built something it should have been sent)."""
    seen: dict[tuple[str, str], tuple[CacheEntry, str]] = {}
    with _state_lock:
        _recordings.append(seen)
    try:
        yield seen
    finally:
        with _state_lock:
            _recordings.remove(seen)


def _note(entry: "CacheEntry", how: str) -> None:
    with _state_lock:
        for seen in _recordings:
            seen.setdefault((entry.kind, entry.key), (entry, how))


def _fetch(kind: str, key: str) -> Packed | None:
    with _state_lock:
        sources = list(_sources)
    for fetch in sources:
        packed = fetch(kind, key)
        if packed is not None:
            return packed
    return None


class CacheEntry:
    """A directory `root/kind/key` whose files are listed with checksums in `meta.json`."""

    def __init__(self, kind: str, key: str, root: Path | None = None):
        self.kind, self.key = kind, key
        self.dir = (root or cache_root()) / kind / key
        self.lock = FileLock(str(self.dir) + ".lock")

    @property
    def meta_path(self) -> Path:
        return self.dir / META

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
        return self._publish(writer)

    def pack(self) -> dict[str, np.ndarray]:
        """The entry's files and its meta.json as uint8 arrays (a copy another cache can `install`),
        each checked against the checksum meta.json gives it. KdbenchError when the entry is not valid."""
        try:
            meta_bytes = (self.dir / META).read_bytes()
            meta = json.loads(meta_bytes)
            if not _lists_files(meta):
                raise ValueError("its meta.json lists no checksummed files")
            packed = {name: np.fromfile(self.dir / name, dtype=np.uint8) for name in meta["files"]}
        except (OSError, ValueError) as e:
            raise KdbenchError(f"cache entry {self.dir} cannot be sent: {e}") from None
        for name, digest in meta["files"].items():
            if hashlib.sha256(packed[name]).hexdigest() != digest:
                raise KdbenchError(f"cache entry {self.dir} cannot be sent: {name} fails its checksum")
        packed[META] = np.frombuffer(meta_bytes, dtype=np.uint8)
        return packed

    def install(self, packed: Packed) -> dict[str, Any]:
        """Publish a copy made by `pack` (elsewhere) as this entry, atomically; returns meta. Every
        file must match the checksum of the copy's meta.json, else KdbenchError and nothing is written."""
        try:
            meta = json.loads(bytes(packed[META]))
        except (KeyError, ValueError) as e:
            raise KdbenchError(f"cannot install cache entry {self.dir}: no readable {META} ({e})") from None
        if not _lists_files(meta) or set(meta["files"]) != set(packed) - {META}:
            raise KdbenchError(f"cannot install cache entry {self.dir}: its files and {META} disagree")
        for name, digest in meta["files"].items():
            if hashlib.sha256(packed[name]).hexdigest() != digest:
                raise KdbenchError(f"cannot install cache entry {self.dir}: {name} fails its checksum")

        def copy(tmp: Path) -> dict[str, Any]:
            for name in meta["files"]:
                with open(tmp / name, "wb") as f:
                    f.write(memoryview(packed[name]))
            return meta["info"]

        return self._publish(copy)

    def _publish(self, writer: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.dir.name}.", dir=self.dir.parent))
        os.chmod(tmp, DIR_MODE)  # a shared cache stays readable by whoever may read its folder
        try:
            info = writer(tmp)
            files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.name != META}
            if not files:
                raise RuntimeError(f"cache writer for {self.dir} wrote no files")  # such an entry could never be valid
            for p in tmp.iterdir():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
            meta = {"files": files, "info": info}
            atomic_write_text(tmp / META, json.dumps(meta, indent=1, sort_keys=True, default=str))
            if self.dir.exists():
                shutil.rmtree(self.dir)
            os.replace(tmp, self.dir)
            return meta
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def get_or_build(self, writer: Callable[[Path], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
        """(meta, built): load a valid entry, else install the copy an `entry_source` has, else build
        it, under the lock (another process may have built it while we waited)."""
        if self.valid(warn=True):
            _note(self, "hit")
            return self.meta(), False  # type: ignore[return-value]
        with self.lock:
            if self.valid(warn=False):
                _note(self, "hit")
                return self.meta(), False  # type: ignore[return-value]
            self.remove_strays()
            packed = _fetch(self.kind, self.key)
            if packed is not None:
                meta = self.install(packed)
                _note(self, "installed")
                return meta, False
            meta = self.build(writer)
            _note(self, "built")
            return meta, True

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
