"""`kdbench export RESULTS_DIR --format parquet|csv -o FILE`: every run of a results directory as one
tidy table (one row per run, the columns of `kdbench.load_results`), for pandas, R, DuckDB, Excel."""
from __future__ import annotations

import argparse
from typing import Any

from ..store import FORMATS, export_results


def add_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="write every run of a results directory as one Parquet or CSV table",
                       description="One row per run with the columns of kdbench.load_results (spec, metrics, "
                                   "deviations); list-valued metrics (per-student values) as JSON text.")
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="directory of run records (*.json)")
    p.add_argument("--format", choices=sorted(set(FORMATS.values())), help="parquet or csv (default: from -o, else parquet)")
    p.add_argument("-o", "--output", metavar="FILE", help="file to write (default: RESULTS_DIR.parquet / .csv next to it)")
    p.add_argument("--failed", action="store_true", help="include failed runs (with their error message)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path, table = export_results(args.results_dir, args.output, args.format, include_failed=args.failed)
    print(f"exported {len(table)} runs x {len(table.columns)} columns to {path}")
    return 0
