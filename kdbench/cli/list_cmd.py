"""`kdbench list methods|models|datasets|presets`."""
from __future__ import annotations

import argparse
import dataclasses
import typing

from .common import print_table


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list methods (with parameters, defaults and ranges), models, datasets, presets")
    p.add_argument("what", nargs="?", default="methods", choices=["methods", "models", "datasets", "presets"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.what == "methods":
        from ..method import load_methods

        rows = []
        for name, cls in load_methods().items():
            modes = ",".join(m for m in cls.modes if m) or "-"
            rows.append({"method": name, "modes": modes, "teacher": "yes" if cls.needs_teacher else "no",
                         "parameters (defaults, ranges)": _params(cls), "description": cls.description})
        print_table(rows)
    elif args.what == "models":
        from ..models import list_models

        print_table(list_models())
    elif args.what == "presets":  # also `kdbench sweep --list-presets`
        from ..sweep import list_presets

        print_table(list_presets())
    else:
        from ..data import DATASETS

        print_table([{"dataset": n, "modality": e.modality, "description": e.description} for n, e in DATASETS.items()])
    return 0


def _params(cls: type) -> str:
    """`name=default (range)` for each parameter: the values a run accepts are seen before one is refused."""
    from ..method import param_fields, param_ranges

    fields = param_fields(cls)
    ranges = param_ranges(cls)
    hints = typing.get_type_hints(cls.Params) if fields else {}
    return ", ".join(_param(f, ranges.get(f.name), _is_list(hints[f.name])) for f in fields) or "-"


def _param(f: dataclasses.Field, bounds: object, is_list: bool) -> str:
    text = f"{f.name}={_default(f)}"
    if bounds is None:
        return text
    return f"{text} ({'each ' if is_list else ''}{bounds})"


def _is_list(hint: object) -> bool:
    """A list (or optional list) parameter: its range bounds each item."""
    return any(typing.get_origin(h) in (list, tuple) for h in (hint, *typing.get_args(hint)))


def _default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return "required"
