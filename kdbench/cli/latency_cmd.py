"""`kdbench latency RESULTS_DIR`: the quiet latency pass over finished runs (kdbench.latency).
Exit 1 when a run could not be timed here (its reason is printed)."""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import KdbenchError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("latency", help="time inference of finished runs, one model at a time (quiet pass)",
                       description="Rebuild each ok run's predictor (fresh weights, the record's architecture) and "
                                   "time it alone, threads pinned, after a warm-up, until the 95%% CI of the median "
                                   "is within --rel-ci of it (or a cap is hit, which is recorded). Writes the times "
                                   "into the records (latency_ms_b1, latency_ms_b256, latency.*, latency_quiet, "
                                   "latency_pass) and the machine's load into env.load.latency.")
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="directory of run records (*.json)")
    p.add_argument("--threads", type=int, default=1, metavar="K", help="torch threads while timing (default 1)")
    p.add_argument("--force", action="store_true", help="time again runs that already have quiet latencies")
    p.add_argument("--rel-ci", type=float, default=0.10, metavar="R",
                   help="stop when the 95%% CI of the median is within R of it (default 0.10)")
    p.add_argument("--min-seconds", type=float, default=0.5, metavar="S",
                   help="time at least S seconds of calls per timing, unless --max-repeats comes first (default 0.5)")
    p.add_argument("--max-seconds", type=float, default=10.0, metavar="S",
                   help="cap per timing, in seconds of timed calls (default 10)")
    p.add_argument("--max-repeats", type=int, default=2000, metavar="N", help="cap per timing, in calls (default 2000)")
    p.add_argument("--rounds", type=int, metavar="R",
                   help="time every run once per round, R interleaved rounds, each a R-th of the seconds; "
                        "a timing is the median of its rounds' medians, with the CI across rounds (at least 6; "
                        "default 10)")
    p.add_argument("--max-rounds", type=int, metavar="M",
                   help="a run with a timing still wider than --rel-ci after the rounds gets more rounds, it alone, "
                        "up to M in all (default 2 x --rounds; equal to --rounds: none)")
    p.add_argument("--data-root", help="where datasets live (default: $KDBENCH_DATA, ./data, ...)")
    p.set_defaults(func=run)
    return p


def stop_rule(args: argparse.Namespace) -> Any:
    """The StopRule of the options, checked (one line when impossible)."""
    from ..measure import StopRule

    if not 0.0 < args.rel_ci < 1.0:
        raise KdbenchError(f"--rel-ci must be in (0, 1), got {args.rel_ci}")
    if not args.max_seconds > 0.0:
        raise KdbenchError(f"--max-seconds must be > 0, got {args.max_seconds}")
    if not 0.0 <= args.min_seconds <= args.max_seconds:
        raise KdbenchError(f"--min-seconds must be in [0, --max-seconds], got {args.min_seconds}")
    if args.max_repeats < 6:
        raise KdbenchError(f"--max-repeats must be >= 6 (fewer calls bound no 95% CI of a median), got {args.max_repeats}")
    return StopRule(rel_halfwidth=args.rel_ci, min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                    max_repeats=args.max_repeats)


def run(args: argparse.Namespace) -> int:
    from ..latency import DEFAULT_ROUNDS, quiet_pass

    rounds = DEFAULT_ROUNDS if args.rounds is None else args.rounds
    result = quiet_pass(args.results_dir, threads=args.threads, rule=stop_rule(args), rounds=rounds,
                        max_rounds=args.max_rounds, force=args.force,
                        data_root=args.data_root, log=print)
    return 1 if result.skipped else 0
