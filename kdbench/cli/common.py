"""Options and helpers shared by several subcommands."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from ..errors import KdbenchError
from ..fields import FIELDS, Field, Flag, Options, Seeds, field_help, parse_params
from ..resume import DEFAULT_EVERY_S

GRID_OPTIONS = ("method", "students", "mode", "seed", "seeds")  # the "what to run" options, listed first


def add_field_options(p: Any, command: str, only: Sequence[str] | None = None,
                      exclude: Sequence[str] = ()) -> None:
    """The options of the run fields (kdbench.fields) that `command` ("run" or "sweep") takes. A sweep
    takes every value as text (a list is an axis, parsed by kdbench.sweep); a run takes one value."""
    for f in FIELDS:
        if command not in f.commands or f.name in exclude or (only is not None and f.name not in only):
            continue
        kw: dict[str, Any] = {"dest": f.name, "help": field_help(f, command)}
        one = f.metavar or f.name.upper()
        listed = command == "sweep" and f.axis and f.split is not None and not isinstance(f.kind, Seeds)
        if not isinstance(f.kind, Flag) and not (command == "run" and f.choices):
            kw["metavar"] = f"{one}[,{one}...]" if listed else one
        if isinstance(f.kind, Flag):
            kw.update(action="store_const", const=True)
        elif isinstance(f.kind, Options) or (f.name == "method" and command == "sweep"):
            kw["action"] = "append"  # repeatable
        elif command == "run":
            kw.update(type=_one_value(f), choices=f.choices)
        p.add_argument(f.option, **kw)


def add_run_options(p: argparse.ArgumentParser, command: str) -> None:
    """Fields of a RunSpec that both `run` and `sweep` take (the grid options aside), and how to run."""
    add_field_options(p, command, exclude=GRID_OPTIONS)
    p.add_argument("--data-root", help="where datasets live (default: $KDBENCH_DATA, ./data, ~/.cache/kdbench/data, /usr/share/datasets)")
    p.add_argument("--no-latency", action="store_true", help="skip inference-latency measurement")
    p.add_argument("--checkpoint-every", metavar="SECONDS", default=str(int(DEFAULT_EVERY_S)),
                   help=f"save a run's training state at most every SECONDS under --out/.partial/, so that a stopped "
                        f"run resumes at its last saved epoch (0: every epoch; off: never; default {int(DEFAULT_EVERY_S)})")
    p.add_argument("--log", action="append", metavar="TRACKER[,TRACKER...]",
                   help="also send per-epoch metrics and the final record to tensorboard, mlflow and/or wandb "
                        "(repeatable; local stores under --out; changes no result)")


def _one_value(f: Field) -> Callable[[str], Any]:
    """The argparse type of a `kdbench run` option: its declared type, and no list (a sweep crosses lists)."""
    base = f.run_type or str

    def convert(text: str) -> Any:
        if f.axis and f.split is not None and len(f.split(text)) > 1:
            raise argparse.ArgumentTypeError(f"takes one value in `kdbench run` ({text!r} is a list: `kdbench sweep` "
                                             "crosses lists)")
        return base(text)

    convert.__name__ = base.__name__  # argparse names it: "invalid int value: 'ten'"
    return convert


def print_table(rows: list[dict], columns: list[str] | None = None) -> None:
    if not rows:
        print("(nothing)")
        return
    df = pd.DataFrame(rows).convert_dtypes()  # keep integer counts integers when a column has gaps
    if columns:
        df = df[[c for c in columns if c in df.columns]]
    print(df.to_markdown(index=False, floatfmt=".4g"))


def out_dir(path: str) -> Path:
    """The --out directory, checked (not created): it, or its nearest existing parent, must be a directory."""
    from ..api import check_out_dir

    return check_out_dir(path)


def make_out_dir(p: Path) -> Path:
    """Create the --out directory once the input is known to be good (one line if that fails)."""
    from ..api import check_out_writable

    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KdbenchError(f"cannot create --out '{p}': {e.strerror or e}") from None
    check_out_writable(p)
    return p


def given_options(args: argparse.Namespace, command: str = "run") -> list[str]:
    """The run-field options given on the command line, as flags (`--epochs`)."""
    return [f.option for f in FIELDS if command in f.commands and getattr(args, f.name, None) is not None]


def spec_fields(args: argparse.Namespace) -> dict:
    """RunSpec fields given on the `kdbench run` command line (unset options are left to the defaults):
    each field's kind converts and bounds a value its argparse type does not (errors named by the flag)."""
    from ..teachers import default_recipe

    fields: dict[str, Any] = {}
    for f in FIELDS:
        value = getattr(args, f.name, None)
        if "run" not in f.commands or value is None or f.name == "method":
            continue
        if isinstance(f.kind, Options):
            value = parse_params(value, f.option)
        elif f.run_type is None:
            try:
                value = f.kind.convert(value)
            except ValueError as e:
                raise KdbenchError(f"{f.option} {e}") from None
            if not f.kind.in_range(value):
                raise KdbenchError(f"{f.option} must be {f.kind.bound}, got {value:g}")
        if f.name == "teacher_epochs":
            value = dataclasses.replace(default_recipe(fields.get("dataset", "mnist")), epochs=value)
        fields[f.target] = value
    if fields.get("student", "auto") != "auto" and "budget" in fields:
        raise KdbenchError(f"--student {fields['student']} and --budget {fields['budget']} contradict: "
                           "an explicit student has no budget family (give one of them)")
    return fields
