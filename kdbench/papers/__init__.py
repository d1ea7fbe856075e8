"""The papers kdbench reproduces: one module per paper, holding that paper's report tables, its
paper-vs-kdbench comparisons, its figures, its protocol notes and the labels of the methods it
compares, each registered into the report's registries (`report.tables.TABLES`,
`report.paper.COMPARISONS`, `report.plots.PLOTS`, `report.context.NOTES`,
`report.data.METHOD_DISPLAY`).

Adding a paper is adding one file here: `load_papers` imports every module of this package (as
`method.load_methods` does for kdbench/methods/), so the report never names a paper. A paper kept
outside kdbench registers the same way from a module given to `--import`."""
from __future__ import annotations

import importlib
import pkgutil

_loaded = False


def load_papers() -> None:
    """Import every module of `kdbench.papers` once (names starting with `_` are not papers)."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: a paper module's own imports may come back here
    try:
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{__name__}.{info.name}")
    except BaseException:
        _loaded = False
        raise


__all__ = ["load_papers"]
