"""Options and helpers shared by several subcommands."""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ..errors import KdbenchError


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Fields of a RunSpec that both `run` and `sweep` take."""
    p.add_argument("--dataset", help="dataset name (see `kdbench data`)")
    p.add_argument("--teacher", help="teacher: zoo name, 'auto' (the dataset's paper teacher) or file:ARCH=PATH")
    p.add_argument("--teacher-epochs", type=int, help="epochs of the teacher recipe (default: the dataset's recipe)")
    p.add_argument("--teacher-normalize", metavar="NORM", help="input normalisation of the teacher model: imagenet, cifar10, "
                   "none or MEAN,STD (per channel joined by '/'); imported weights need theirs (the shared CIFAR ResNets: imagenet)")
    p.add_argument("--student", help="student architecture (zoo name) or 'auto' (budget student)")
    p.add_argument("--budget", choices=["paper", "repo"], help="budget family of auto students")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="method hyperparameter (repeatable, or k=v,k2=v2)")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help="dataset option of this run, e.g. maxlen=200 for a text dataset (repeatable; an unknown "
                        "name is refused with the dataset's list of options)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--split-seed", type=int)
    p.add_argument("--max-train", type=int, help="deterministic subset of the training split (quick protocols)")
    p.add_argument("--augment", metavar="NAME", help="training-batch augmentation: none (default) or crop-flip; "
                   "with one the teacher runs on each augmented batch")
    p.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", choices=["bf16", "fp16"], help="mixed-precision student training (autocast; fp16 with "
                   "gradient scaling, CUDA only); recorded and part of the run key: it changes the numbers")
    p.add_argument("--compile", action="store_const", const=True, help="torch.compile the trained models (recorded, "
                   "part of the run key)")
    p.add_argument("--data-root", help="where datasets live (default: $KDBENCH_DATA, ./data, ~/.cache/kdbench/data, /usr/share/datasets)")
    p.add_argument("--no-latency", action="store_true", help="skip inference-latency measurement")
    p.add_argument("--log", action="append", metavar="TRACKER[,TRACKER...]",
                   help="also send per-epoch metrics and the final record to tensorboard, mlflow and/or wandb "
                        "(repeatable; local stores under --out; changes no result)")


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


def spec_fields(args: argparse.Namespace) -> dict:
    """RunSpec fields given on the command line (unset options are left to the defaults)."""
    from ..config import parse_params
    from ..teachers import default_recipe

    fields = {}
    for opt, field in (("dataset", "dataset"), ("teacher", "teacher"), ("student", "student"), ("budget", "budget"),
                       ("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr"), ("val_fraction", "val_fraction"),
                       ("split_seed", "split_seed"), ("max_train", "max_train"), ("device", "device"),
                       ("teacher_normalize", "teacher_normalize"), ("augment", "augment"), ("amp", "amp"),
                       ("compile", "compile")):
        value = getattr(args, opt, None)
        if value is not None:
            fields[field] = value
    if fields.get("student", "auto") != "auto" and "budget" in fields:
        raise KdbenchError(f"--student {fields['student']} and --budget {fields['budget']} contradict: "
                           "an explicit student has no budget family (give one of them)")
    if getattr(args, "param", None):
        fields["params"] = parse_params(args.param)
    if getattr(args, "data_option", None):
        fields["data_options"] = parse_params(args.data_option, "--data-option")
    if getattr(args, "teacher_epochs", None) is not None:
        if args.teacher_epochs < 1:
            raise KdbenchError(f"--teacher-epochs must be >= 1, got {args.teacher_epochs}")
        base = default_recipe(fields.get("dataset", "mnist"))
        fields["teacher_recipe"] = dataclasses_replace(base, epochs=args.teacher_epochs)
    return fields


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)
