"""`kdbench export RESULTS_DIR --format parquet|csv -o FILE`: every run of a results directory as one
tidy table (one row per run, the columns of `kdbench.load_results`), for pandas, R, DuckDB, Excel."""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import KdbenchError

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="write every run of a results directory as one Parquet or CSV table",
                       description="One row per run with the columns of kdbench.load_results (spec, metrics, "
                                   "deviations); list-valued metrics (per-student values) as JSON text.")
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="directory of run records (*.json)")
    p.add_argument("--format", choices=sorted(set(FORMATS.values())), help="parquet or csv (default: from -o, else parquet)")
    p.add_argument("-o", "--output", metavar="FILE", help="file to write (default: RESULTS_DIR.parquet / .csv next to it)")
    p.add_argument("--failed", action="store_true", help="include failed runs (with their error message)")
    p.set_defaults(func=run)


def output_format(path: str | Path | None, fmt: str | None) -> str:
    """The format asked for, or the one the file name says; a contradiction is one line."""
    by_name = FORMATS.get(Path(path).suffix.lower()) if path else None
    if fmt and by_name and fmt != by_name:
        raise KdbenchError(f"--format {fmt} contradicts the output file name '{path}' (a {by_name} file)")
    return fmt or by_name or "parquet"


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """List and mapping cells (per-student metrics) as JSON text: one scalar per cell, as every
    table format and reader takes it."""
    def cell(v: Any) -> Any:
        return json.dumps(v, default=str) if isinstance(v, (list, tuple, dict)) else v

    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object and out[col].map(lambda v: isinstance(v, (list, tuple, dict))).any():
            out[col] = out[col].map(cell)
    return out.convert_dtypes()  # nullable types: integers stay integers, flags stay flags, with gaps


def export_results(results_dir: str | Path, output: str | Path | None = None, fmt: str | None = None,
                   include_failed: bool = False) -> tuple[Path, pd.DataFrame]:
    """Write the runs of `results_dir` as one table; returns the file and the table written."""
    from ..store import atomic_write, load_results, read_records, results_dir as check_dir

    folder = check_dir(results_dir)
    fmt = output_format(output, fmt)
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise KdbenchError("--format parquet needs pyarrow: pip install pyarrow (or use --format csv)")
    if not read_records(folder)[0]:
        raise KdbenchError(f"no run records in '{folder}' (give the folder that holds the *.json records)")
    path = Path(output) if output else folder.absolute().with_name(f"{folder.absolute().name}.{fmt}")
    table = tidy(load_results(folder, include_failed=include_failed))
    if fmt == "parquet":
        atomic_write(path, lambda f: table.to_parquet(f, index=False))
    else:
        atomic_write(path, lambda f: f.write(table.to_csv(index=False).encode()))
    return path, table


def run(args: argparse.Namespace) -> int:
    path, table = export_results(args.results_dir, args.output, args.format, include_failed=args.failed)
    print(f"exported {len(table)} runs x {len(table.columns)} columns to {path}")
    return 0
