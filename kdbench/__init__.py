"""kdbench: a benchmark and reproduction suite for knowledge distillation.

Python API (mirrors the CLI): `kdbench.sweep(...)`, `kdbench.run(...)`, `kdbench.load_results(dir)`,
`kdbench.create_model(name, spec)`, `kdbench.load_dataset(name)`.
"""
__version__ = "0.1.0"

__all__ = ["__version__", "sweep", "run", "load_results", "create_model", "load_dataset"]


def __getattr__(name: str):
    """Lazy re-exports: `import kdbench` stays cheap (no torch import) until the API is used."""
    if name in ("sweep", "run", "load_results"):
        from . import api

        return getattr(api, name)
    if name == "create_model":
        from .models import create_model

        return create_model
    if name == "load_dataset":
        from .data import load_dataset

        return load_dataset
    raise AttributeError(f"module 'kdbench' has no attribute '{name}'")
