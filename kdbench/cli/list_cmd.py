"""`kdbench list methods|models|datasets|presets`."""
from __future__ import annotations

import argparse
import dataclasses

from .common import print_table


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list methods (with parameters and defaults), models, datasets")
    p.add_argument("what", nargs="?", default="methods", choices=["methods", "models", "datasets"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.what == "methods":
        from ..method import load_methods, param_fields

        rows = []
        for name, cls in load_methods().items():
            params = ", ".join(f"{f.name}={_default(f)}" for f in param_fields(cls)) or "-"
            modes = ",".join(m for m in cls.modes if m) or "-"
            rows.append({"method": name, "modes": modes, "teacher": "yes" if cls.needs_teacher else "no",
                         "parameters (defaults)": params, "description": cls.description})
        print_table(rows)
    elif args.what == "models":
        from ..models import list_models

        print_table(list_models())
    else:
        from ..data import DATASETS

        print_table([{"dataset": n, "modality": e.modality, "description": e.description} for n, e in DATASETS.items()])
    return 0


def _default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return "required"
