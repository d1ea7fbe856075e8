"""`kdbench sweep`: expand a grid (or a YAML config / preset) into runs, skip the ones already done,
run the rest on the local process pool or Ray, and print a summary. Exit 1 when a run failed."""
from __future__ import annotations

import argparse
import os
import sys

from .common import GRID_OPTIONS, add_field_options, add_run_options, print_table


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of methods x students x modes x seeds x any other field (resumable)",
                       description="Expand a grid into runs and execute the ones not yet done in --out. "
                                   "Options override the fields of --config / --preset. Any field or method "
                                   "parameter given as a comma-separated list (a YAML list) is a grid axis; "
                                   "the axes are crossed, and a parameter list reaches the methods that have it.")
    src = p.add_argument_group("what to run")
    add_field_options(src, "sweep", only=GRID_OPTIONS)
    src.add_argument("--config", metavar="FILE", help="YAML file with the same fields (method, dataset, students, ...)")
    src.add_argument("--preset", metavar="NAME", help="a sweep shipped with kdbench (see --list-presets)")
    src.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    add_run_options(p, "sweep")
    how = p.add_argument_group("how to run")
    how.add_argument("--out", help="results directory (default: the config's out, results/<preset>, or results/runs)")
    how.add_argument("--executor", default="local", help="local (process pool, default) or ray")
    how.add_argument("--workers", type=int, default=1, help="parallel runs of the local executor (1 = in this process)")
    how.add_argument("--threads", type=int, help="torch threads per run (default: cores / workers; ray: 1)")
    how.add_argument("--address", help="Ray cluster address (--executor ray); 'auto' joins the Ray running on this machine; default: $RAY_ADDRESS, else start a fresh local Ray")
    how.add_argument("--latency-threads", type=int, default=1, metavar="K",
                     help="torch threads of the quiet latency pass after training (default 1; --no-latency skips it)")
    how.add_argument("--no-fuse-seeds", action="store_true",
                     help="train every seed on its own (default: seeds of one cell train fused where that is faster)")
    how.add_argument("--dry-run", action="store_true", help="print the grid, its runs and what is already done; run nothing")
    how.add_argument("--yes", action="store_true", help="run a grid of more than 10,000 runs (refused without it)")
    how.add_argument("--report", action="store_true", help="build the report (kdbench report) at the end")
    how.add_argument("--report-name", help="report folder name under reports/ (default: the sweep's name)")
    p.set_defaults(func=run)


def overrides(args: argparse.Namespace) -> dict:
    """Sweep fields given on the command line, as raw text: sweep.parse_field validates them."""
    from ..fields import FIELDS

    fields: dict = {}
    for f in FIELDS:
        value = getattr(args, f.name, None) if "sweep" in f.commands else None
        if value is not None:
            fields[f.name] = ",".join(value) if f.name == "method" else value
    return fields


def run(args: argparse.Namespace) -> int:
    from ..api import sweep
    from ..executors import interrupt_signal, stop_on_signals
    from ..sweep import list_presets

    if args.list_presets:
        print_table(list_presets())
        return 0
    try:
        with stop_on_signals():  # SIGTERM / SIGHUP stop the sweep the way Ctrl-C does
            result = sweep(preset=args.preset, config=args.config, out=args.out, executor=args.executor,
                           workers=args.workers, threads=args.threads, address=args.address, data_root=args.data_root,
                           latency=not args.no_latency, latency_threads=args.latency_threads, dry_run=args.dry_run, report=args.report,
                           report_name=args.report_name, trackers=args.log, fuse_seeds="off" if args.no_fuse_seeds else "auto",
                           yes=args.yes, checkpoint_every=args.checkpoint_every, **overrides(args))
    except KeyboardInterrupt as e:
        sig = interrupt_signal(e)
        print(f"kdbench: interrupted by {sig.name}; the finished runs' records are kept, the same command resumes",
              file=sys.stderr)
        return 128 + sig  # as a shell reports a process the signal killed (Ctrl-C: 130)
    spec = result.spec
    title = f"sweep {spec.name}" if spec.name else "sweep"
    if spec.requires:
        title += f" (requires {spec.requires})"
    if args.dry_run:
        print(f"{title}: {len(result.planned)} runs into {result.out_dir}")
        for line in spec.grid_lines():
            print(line)
        print_table(result.plan_table().to_dict("records"))
        states = [p.status for p in result.planned]
        invalid = f"{states.count('invalid')} invalid records (will rerun), " if "invalid" in states else ""
        partial = f", {states.count('partial')} stopped in training (resume from their checkpoints)" if "partial" in states else ""
        print(f"{states.count('done')} done, {states.count('failed')} failed before (will rerun), {invalid}"
              f"{states.count('todo')} to run{partial}; dry run: nothing was run")
        return 0
    print()
    print_table(result.summary().to_dict("records"))
    n_failed = len(result.failed)
    print(f"\n{title}: {len(result.planned)} runs, {result.ran} run now, {result.skipped} already done, "
          f"{n_failed} failed")
    print(f"records: {os.fspath(result.out_dir)}  (kdbench.load_results('{os.fspath(result.out_dir)}'), "
          f"kdbench report {os.fspath(result.out_dir)})")
    if n_failed:
        for rec in result.failed:
            err = rec.get("error") or {}
            print(f"failed: {rec['run_key']}: {err.get('type')}: {str(err.get('message', '')).splitlines()[0] if err.get('message') else ''}")
        return 1
    return 0
