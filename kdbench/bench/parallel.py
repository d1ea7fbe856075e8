"""`parallel`: a sweep of independent runs with `--workers 1` vs `--workers 2`."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from .base import BENCHES, BenchRow, Goal
from .compare import comparable
from .session import Session
from .timing import interleave, median


@BENCHES.register("parallel")
def bench_parallel(s: Session) -> list[BenchRow]:
    """A sweep of independent runs (seeds) with --workers 1 vs --workers 2, the same torch threads per
    run in both arms; the records (timings excluded) must be identical."""
    from ..api import sweep

    z = s.sizes
    rows = []
    for kind, n, runs in (("tiny", 8, z.sweep_runs), ("paper-size", 1, z.sweep_runs_paper)):
        fields = dict(method="tcn", dataset=z.sweep_dataset, students=[n], mode=["ff"], max_train=z.sweep_max_train,
                      epochs=z.sweep_epochs, teacher_epochs=z.sweep_teacher_epochs, device=s.cfg.device)
        records: dict[int, list[list[dict[str, Any]]]] = {1: [], 2: []}
        with tempfile.TemporaryDirectory(prefix="kdbench-bench-") as tmp:
            # warm-up, untimed: data decoded, teacher trained and its targets cached (in-process run),
            # and the pool's forkserver started (it is reused by every later pool in this process)
            warm = {}
            for workers, seeds in ((1, [runs + 100]), (2, [runs + 101, runs + 102])):
                t0 = time.perf_counter()
                sweep(**fields, seeds=seeds, out=Path(tmp, f"warm{workers}"), workers=workers, threads=s.cfg.threads,
                      latency=False, log=None, progress=False, data_root=s.cfg.data_root)
                warm[workers] = time.perf_counter() - t0
            count = [0]

            def arm(workers: int, fields=fields, records=records, tmp=tmp, count=count, runs=runs) -> float:
                count[0] += 1
                t0 = time.perf_counter()
                res = sweep(**fields, seeds=runs, out=Path(tmp, f"w{workers}-{count[0]}"), workers=workers,
                            threads=s.cfg.threads, latency=False, log=None, progress=False, data_root=s.cfg.data_root)
                wall = time.perf_counter() - t0
                records[workers].append(sorted(res.records, key=lambda r: r["run_key"]))
                return wall

            times = interleave({1: lambda: arm(1), 2: lambda: arm(2)}, s.cfg.n_long_rounds)
        ref = [comparable(r) for r in records[1][0]]
        all_ok = all(r.get("status") == "ok" for w in records for rs in records[w] for r in rs)
        same = all([comparable(r) for r in rs] == ref for w in records for rs in records[w])
        goal = Goal(">=", 1.1) if kind == "tiny" else Goal(">=", 0.95)
        rows.append(BenchRow(
            f"parallel: {kind} sweep workers 1 / 2", "--workers 1", median(times[1]), "--workers 2", median(times[2]), "s", goal,
            notes=f"{runs} TCN ff n={n} runs on {z.sweep_dataset} max_train={z.sweep_max_train}, "
                  f"{z.sweep_epochs} epoch(s), no latency; {s.cfg.threads} torch thread(s) per run in both arms; "
                  f"warm pool (untimed warm-up: 1 run in-process {warm[1]:.0f} s, 2 runs on a cold pool {warm[2]:.0f} s)",
            checks={"all runs ok": all_ok, "identical records (timings excluded)": same},
            details={"workers1_s": times[1], "workers2_s": times[2], "runs": runs, "n_students": n,
                     "warmup_s": {"workers1_1run": warm[1], "workers2_2runs_cold_pool": warm[2]}},
        ))
    return rows
