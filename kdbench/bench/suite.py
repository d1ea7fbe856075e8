"""Running the selected benchmarks in one process, with a fixed torch thread count, and the
environment their numbers come from."""
from __future__ import annotations

import dataclasses
import os
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import torch

from ..engine import keep_freed_memory
from ..errors import KdbenchError
from .base import BENCHES, ORDER, BenchConfig, BenchReport, BenchRow
from .output import one_line
from .session import Session
from .timing import load_average


def environment(s: Session) -> dict[str, Any]:
    from ..measure import environment as env

    out = env(s.device)
    out.update({"threads": torch.get_num_threads(), "load_avg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                "omp": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")},
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return out


def select(only: str | Iterable[str] | None) -> list[str]:
    """Benchmark names to run (all when `only` is empty); unknown names are one clear error."""
    known = BENCHES.names()
    if not only:
        return [n for n in ORDER if n in known] + [n for n in known if n not in ORDER]
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
    for n in names:
        BENCHES.get(n)  # KdbenchError with a did-you-mean
    return [n for n in ORDER if n in names] + [n for n in dict.fromkeys(names) if n not in ORDER]


def run_benches(cfg: BenchConfig, only: str | Iterable[str] | None = None,
                log: Callable[[str], None] | None = None) -> BenchReport:
    """Run the selected benchmarks with `cfg.threads` torch threads; one failing benchmark is
    recorded as an error row and the others go on. User errors (missing data) raise KdbenchError."""
    names = select(only)
    if cfg.threads < 1 or cfg.n_rounds < 1 or cfg.n_long_rounds < 1:
        raise KdbenchError("--threads and --rounds must be >= 1")
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    keep_freed_memory()  # as every run does
    s = Session(cfg)
    env = environment(s)
    rows: list[BenchRow] = []
    try:
        for name in names:
            if log:
                log(f"bench {name} (load average {load_average()}) ...")
            start, t0 = load_average(), time.perf_counter()
            try:
                got = BENCHES.get(name)(s)
            except KdbenchError:
                raise
            except Exception as exc:  # noqa: BLE001 - a broken benchmark is reported, the others run
                got = [BenchRow(name, "", None, "", None, "", error=f"{type(exc).__name__}: {exc}")]
            finally:
                torch.set_num_threads(cfg.threads)  # a benchmark that changed it gives it back
            end = load_average()
            for r in got:
                r.load_avg = (start, end)
                r.seconds = time.perf_counter() - t0
            rows += got
            if log:
                for r in got:
                    log("  " + one_line(r))
    finally:
        torch.set_num_threads(previous)
    env["load_avg_end_1_5_15"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    config = {**dataclasses.asdict(cfg), "rounds": cfg.n_rounds, "long_rounds": cfg.n_long_rounds,
              "sizes": dataclasses.asdict(cfg.sizes), "benches": names}
    return BenchReport(rows, env, config, dict(s.artifacts))
