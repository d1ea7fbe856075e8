"""`kdbench bench`: the performance benchmarks, each a ratio measured in one run, printed
as one table (name, A, B, ratio, goal, met?, notes). Exit 1 when an equality check fails; speed
goals are reported, never turned into a failure."""
from __future__ import annotations

import argparse
import sys


# the benchmarks of kdbench.bench.BENCHES, named here so that building the parser imports no torch
# (tests/test_bench.py checks that the two lists agree)
NAMES = ("targets", "fused", "layout", "parallel", "efficiency", "inference", "memory", "profile", "overhead",
         "alternative", "seeds")


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="performance benchmarks: ratios measured side by side",
                       description="Run the performance benchmarks and print one table of ratios A / B. "
                                   f"Benchmarks: {', '.join(NAMES)}.")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds; a smoke test of the machinery)")
    p.add_argument("--only", metavar="NAME[,NAME...]", help="run only these benchmarks")
    p.add_argument("--threads", type=int, default=1, help="torch threads, fixed for every arm (default 1)")
    p.add_argument("--rounds", type=int, help="A/B repetitions of each interleaved pair (default 2; quick 1)")
    p.add_argument("--long-rounds", type=int, help="repetitions of the minutes-long pairs, targets, parallel and alternative "
                                                   "(default: --rounds if given, else 1)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    p.add_argument("--data-root", help="where datasets live (default: $KDBENCH_DATA, ...)")
    p.add_argument("--out", help="write bench.json + bench.md (+ profiles) here (default: results/bench; "
                                 "--quick writes nothing unless --out is given)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import BenchConfig, run_benches, select, table_rows, write_report
    from .common import make_out_dir, out_dir, print_table

    select(args.only)  # unknown names fail before anything runs
    out = args.out or (None if args.quick else "results/bench")
    if out:
        out = make_out_dir(out_dir(out))
    cfg = BenchConfig(quick=args.quick, threads=args.threads, rounds=args.rounds, long_rounds=args.long_rounds,
                      device=args.device, data_root=args.data_root)
    report = run_benches(cfg, args.only, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print_table(table_rows(report))
    if out:
        for path in write_report(report, out):
            print(f"wrote {path}", file=sys.stderr)
    if not report.checks_ok:
        print("kdbench bench: an equality check failed or a benchmark broke (see the notes)", file=sys.stderr)
        return 1
    return 0
