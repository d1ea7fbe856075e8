"""Name -> factory registries (timm style) with did-you-mean errors instead of if/elif dispatch,
and the plugins that fill them.

Plugins come from two places, both loaded lazily (on a registry's first read) and once:
- entry points of installed packages, one group per registry (`kdbench.methods`,
  `kdbench.datasets`, `kdbench.models`); a plugin that fails to import is named in one
  `PluginWarning` and left out, and everything else keeps working;
- modules named by `--import MODULE` (any command) or `$KDBENCH_IMPORT` (comma- or
  os.pathsep-separated), which the user asked for by name: one that fails is a KdbenchError.
Worker processes (the local pool, Ray) import the same modules (see `imported_modules`).
"""
from __future__ import annotations

import difflib
import importlib
import os
import sys
import warnings
from importlib.metadata import entry_points
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from .errors import KdbenchError

T = TypeVar("T")

IMPORT_ENV = "KDBENCH_IMPORT"


class PluginWarning(UserWarning):
    """An installed kdbench plugin failed to import; kdbench works on without it."""


class Registry(Generic[T]):
    """A named collection of entries; `register` is a decorator, `get` raises a helpful error.
    With `plugins` (an entry-point group) the group and the user's modules are loaded on first read."""

    def __init__(self, kind: str, plugins: str | None = None):
        self.kind = kind
        self.plugins = plugins
        self._entries: dict[str, T] = {}
        self._loaded = plugins is None

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "name", None) or getattr(obj, "__name__")
            if key in self._entries and self._entries[key] is not obj:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._entries[key] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def _read(self) -> dict[str, T]:
        """The entries, once the plugins are in (set first: a plugin may read the registry while it loads)."""
        if not self._loaded:
            self._loaded = True
            try:
                load_plugins(self.plugins)  # type: ignore[arg-type]
            except KdbenchError:  # a module the user named is broken: say so on every read
                self._loaded = False
                raise
        return self._entries

    def get(self, name: str) -> T:
        try:
            return self._read()[name]
        except KeyError:
            raise KdbenchError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        entries = self._read()
        close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} '{name}'{hint} (known: {', '.join(sorted(entries))})"

    def __contains__(self, name: object) -> bool:
        return name in self._read()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._read()))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._read().items())

    def names(self) -> list[str]:
        return sorted(self._read())


# ---------------------------------------------------------------------------------------------
# Plugins
# ---------------------------------------------------------------------------------------------
_imported: list[str] = []  # modules imported by name (--import, $KDBENCH_IMPORT) in this process, in order
_groups_loaded: set[str] = set()
_failed: set[str] = set()  # plugin modules that failed to import (each warned about once)


def module_names(text: str | None) -> list[str]:
    """`a.b,c` or `a.b:c` (os.pathsep) -> ["a.b", "c"]: the modules of $KDBENCH_IMPORT."""
    return [m.strip() for part in (text or "").split(",") for m in part.split(os.pathsep) if m.strip()]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def import_modules(names: Iterable[str], source: str = "--import") -> None:
    """Import the user's plugin modules (each once); the current directory is searched last, as
    `python -m` would. One that cannot be imported is a KdbenchError naming it and `source`."""
    for name in names:
        if name in _imported:
            continue
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any error of the user's module is theirs to fix
            raise KdbenchError(f"{source}: cannot import module '{name}' ({_first_line(e)})") from None
        _imported.append(name)


def import_from_env() -> None:
    """The modules named in $KDBENCH_IMPORT."""
    import_modules(module_names(os.environ.get(IMPORT_ENV)), f"${IMPORT_ENV}")


def worker_modules() -> list[str]:
    """The modules a worker process must import: $KDBENCH_IMPORT's and those `--import` imported here."""
    return list(dict.fromkeys([*module_names(os.environ.get(IMPORT_ENV)), *_imported]))


def load_entry_points(group: str) -> None:
    """Import the installed plugins of one entry-point group, once; a plugin that fails is named in
    one PluginWarning (per plugin module, whatever groups list it) and left out."""
    if group in _groups_loaded:
        return
    _groups_loaded.add(group)
    for ep in entry_points(group=group):
        module = ep.value.split(":")[0].strip()
        if module in _failed:
            continue
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break kdbench
            _failed.add(module)
            dist = getattr(getattr(ep, "dist", None), "name", None)
            warnings.warn(f"plugin '{ep.name}' ({ep.value}{f', package {dist}' if dist else ''}) failed to "
                          f"import and is left out: {_first_line(e)}", PluginWarning, stacklevel=2)


def load_plugins(group: str) -> None:
    """Everything that may register into `group`'s registry: the entry points, then $KDBENCH_IMPORT."""
    load_entry_points(group)
    import_from_env()
