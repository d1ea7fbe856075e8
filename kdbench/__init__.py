"""kdbench: a benchmark and reproduction suite for knowledge distillation.

Python API (mirrors the CLI): `kdbench.sweep(...)`, `kdbench.run(...)`, `kdbench.load_results(dir)`,
`kdbench.export_results(dir, "runs.parquet")`,
`kdbench.create_model(name, spec)`, `kdbench.load_dataset(name)`. Your own data and models
(docs/extending.md): `kdbench.register_image_dataset(name, read=...)`,
`kdbench.register_text_dataset(name, read=...)`, `@kdbench.register_dataset(...)`,
`@kdbench.register_model(name)`.
"""
import sys
import types
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "sweep", "run", "load_results", "export_results", "create_model", "load_dataset", "register_image_dataset",
           "register_text_dataset", "register_dataset", "register_model"]


class _SweepModule(types.ModuleType):
    """`kdbench.sweep` is both the grid module (`kdbench.sweep.SweepSpec`) and the API call
    (`kdbench.sweep(...)`, i.e. `kdbench.api.sweep`): calling the module runs a sweep. The call lives
    here, at the top, so the grid module never imports the API above it (docs/design.md §1)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .api import sweep as run_sweep

        return run_sweep(*args, **kwargs)


class _Package(types.ModuleType):
    """The `kdbench` package: when the import system binds the `sweep` submodule to it (on any
    `import kdbench.sweep`), the submodule becomes callable."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "sweep" and type(value) is types.ModuleType:
            value.__class__ = _SweepModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    """Lazy re-exports: `import kdbench` stays cheap (no torch import) until the API is used."""
    if name == "sweep":
        import importlib

        return importlib.import_module(".sweep", __name__)  # bound here, callable (see _Package)
    if name in ("run", "load_results"):
        from . import api

        return getattr(api, name)
    if name == "export_results":
        from . import store

        return store.export_results
    if name in ("create_model", "register_model"):
        from . import models

        return getattr(models, name)
    if name in ("load_dataset", "register_dataset", "register_image_dataset", "register_text_dataset"):
        from . import data

        return getattr(data, name)
    raise AttributeError(f"module 'kdbench' has no attribute '{name}'")
