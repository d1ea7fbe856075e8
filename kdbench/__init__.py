"""kdbench: a benchmark and reproduction suite for knowledge distillation.

Python API (mirrors the CLI): `kdbench.sweep(...)`, `kdbench.run(...)`, `kdbench.load_results(dir)`,
`kdbench.create_model(name, spec)`, `kdbench.load_dataset(name)`. Your own data and models
(docs/extending.md): `kdbench.register_image_dataset(name, read=...)`,
`kdbench.register_text_dataset(name, read=...)`, `@kdbench.register_dataset(...)`,
`@kdbench.register_model(name)`.
"""
__version__ = "0.1.0"

__all__ = ["__version__", "sweep", "run", "load_results", "create_model", "load_dataset", "register_image_dataset",
           "register_text_dataset", "register_dataset", "register_model"]


def __getattr__(name: str):
    """Lazy re-exports: `import kdbench` stays cheap (no torch import) until the API is used."""
    if name in ("sweep", "run", "load_results"):
        from . import api

        return getattr(api, name)
    if name in ("create_model", "register_model"):
        from . import models

        return getattr(models, name)
    if name in ("load_dataset", "register_dataset", "register_image_dataset", "register_text_dataset"):
        from . import data

        return getattr(data, name)
    raise AttributeError(f"module 'kdbench' has no attribute '{name}'")
