"""`kdbench check` (the CI accuracy gate) and `kdbench baseline update` (re-make the gate's baseline)."""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from ..errors import KdbenchError

DEFAULT_PRESET = "ci-mnist"


def add_parser(sub) -> None:
    from ..check import DEFAULT_ALPHA, DEFAULT_MIN_EFFECT

    p = sub.add_parser("check", help="CI accuracy gate: compare fresh results with a committed baseline",
                       description="Per cell (method, mode, students, dataset, variant): fail when the new mean is "
                                   "below the baseline by a one-sided Welch t-test AND by more than --min-effect points. "
                                   "Exit 1 on a regression or a missing cell, 0 otherwise.")
    p.add_argument("results", metavar="RESULTS", help="directory of run records to check")
    p.add_argument("--baseline", default=f"results/baseline/{DEFAULT_PRESET}", help="baseline directory (records + summary.json)")
    p.add_argument("--metric", default=None, help="metric to gate (default: the baseline's, test_acc_valbest)")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help=f"significance level (default {DEFAULT_ALPHA})")
    p.add_argument("--min-effect", type=float, default=DEFAULT_MIN_EFFECT,
                   help=f"smallest drop in accuracy points that counts (default {DEFAULT_MIN_EFFECT})")
    p.set_defaults(func=run_check)

    b = sub.add_parser("baseline", help="manage the accuracy gate's baseline")
    bsub = b.add_subparsers(dest="baseline_command", metavar="ACTION", parser_class=type(b))
    u = bsub.add_parser("update", help="run a preset into the baseline directory (replacing it) and write summary.json")
    u.add_argument("--preset", default=DEFAULT_PRESET, help=f"sweep preset to run (default {DEFAULT_PRESET})")
    u.add_argument("--out", default=None, help="baseline directory (default results/baseline/PRESET)")
    u.add_argument("--data-root", default=None, help="data root passed to the sweep (default: $KDBENCH_DATA, ...)")
    u.add_argument("--workers", type=int, default=None, help="passed to the sweep (parallel runs)")
    u.add_argument("--threads", type=int, default=None, help="passed to the sweep (torch threads per run)")
    u.add_argument("--no-latency", action="store_true", help="passed to the sweep (latency is not gated)")
    u.set_defaults(func=run_update)
    b.set_defaults(func=lambda args: _need_action(b))


def _need_action(parser: argparse.ArgumentParser) -> int:
    raise KdbenchError("kdbench baseline: name an action (update)")


def run_check(args: argparse.Namespace) -> int:
    from ..check import check, format_report

    result = check(args.results, args.baseline, metric=args.metric, alpha=args.alpha, min_effect=args.min_effect)
    print(format_report(result))
    return result.exit_code


def run_update(args: argparse.Namespace) -> int:
    from ..check import preset_protocol, replace_dir, write_summary

    out = Path(args.out or f"results/baseline/{args.preset}")
    if out.exists() and not out.is_dir():
        raise KdbenchError(f"--out '{out}' exists and is not a directory")
    protocol = preset_protocol(args.preset)  # unknown preset -> one line, before any work
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the baseline is an ordinary folder
    try:
        from . import main as cli_main

        argv = ["sweep", "--preset", args.preset, "--out", str(staging)]
        for opt in ("data_root", "workers", "threads"):
            if getattr(args, opt, None) is not None:
                argv += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
        if getattr(args, "no_latency", False):
            argv.append("--no-latency")
        print(f"baseline update: kdbench {' '.join(argv)}", flush=True)
        rc = cli_main(argv)
        if rc != 0:
            raise KdbenchError(f"the {args.preset} sweep exited with {rc}; baseline '{out}' left unchanged")
        command = " ".join(["kdbench", *argv]).replace(str(staging), str(out))
        path = write_summary(staging, preset=args.preset, protocol=protocol, command=command)
        replace_dir(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    print(f"baseline written: {out} ({out / path.name})")
    return 0
