"""`kdbench report RESULTS_DIR`: tables (Markdown, LaTeX, CSV) and figures from run records."""
from __future__ import annotations

import argparse
import sys
from typing import Any

# the report stack (pandas, scipy, matplotlib) is imported only when `report` runs, so that every
# other command starts fast; choices are validated by build_report with a did-you-mean


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `report` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "report", help="build tables and figures from run records",
        description="Build reports/<name>/report.md, tables.tex, tables/*.csv and figures/*.png|pdf from the "
                    "run records of RESULTS_DIR: mean ± 95%% CI over seeds (n in every cell), Welch tests against "
                    "a baseline method with Holm correction, and paper-vs-kdbench comparisons; when the runs span more than "
                    "one student size, a size study (accuracy vs params and MACs with the Pareto front, and which "
                    "method wins at which budget).")
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="directory of run records (*.json)")
    p.add_argument("--out", default="reports", help="parent folder of the report (default: reports)")
    p.add_argument("--name", default=None, help="report folder name (default: the results folder's name)")
    p.add_argument("--format", default="md,latex,csv", dest="formats",
                   help="comma-separated subset of md,latex,csv (default: md,latex,csv)")
    p.add_argument("--baseline-method", default="kd", help="method the Welch tests compare against (default: kd)")
    p.add_argument("--accuracy", default="valbest", choices=["valbest", "last"],
                   help="test accuracy at the val-best epoch (default) or at the last epoch")
    p.add_argument("--bootstrap", action="store_true", help="bootstrap CIs (scipy BCa, fixed seed) instead of Student t")
    p.add_argument("--spread", default="ci", choices=["ci", "std"],
                   help="what ± shows: 95%% CI half-width (default) or the standard deviation")
    p.add_argument("--no-figures", action="store_true", help="tables only, no plots")
    p.add_argument("--select", default="none", choices=["none", "val"],
                   help="val: tuning on val; per cell, keep the hyperparameters (method parameters and any other "
                        "field that varies besides the seed) with the best mean val accuracy over seeds, show the test "
                        "accuracy of that choice only, and a table of what was searched and what won (default: none, "
                        "every configuration is its own cell)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Build the report; user errors raise KdbenchError (the CLI prints one line, exit code 2)."""
    from ..report import build_report

    out = build_report(args.results_dir, args.out, name=args.name, formats=args.formats, accuracy=args.accuracy,
                       baseline_method=args.baseline_method, bootstrap=args.bootstrap, spread=args.spread,
                       figures=not args.no_figures, log=lambda text: print(text, file=sys.stderr),
                       select=args.select)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    print(f"report written to {out} ({len(written)} files)")
    for main in ("report.md", "tables.tex"):
        if main in written:
            print(f"  {out / main}")
    return 0
