"""`kdbench bench alternative`: the workflow users run today (teacher in the loop, one run after
another) vs kdbench's sweep, on a one-seed slice of the TCN paper-recipe MNIST ff grid; registered
into kdbench.bench's registry when the method files load (core code never imports this package)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from kdbench.bench import BENCHES, BenchRow, Goal, Session, fit_once, interleave, median
from kdbench.bench.session import cached_targets, forget_targets

GRID_PRESET = "tcn-table3-mnist"  # the paper-recipe grid: student, kd, tcn x n = 1, 2, 4, 8
GRID_MODE = "ff"


def grid_overrides(s: Session) -> tuple[dict[str, Any], dict[str, int]]:
    """The sweep fields of the one-seed slice: the preset's ff cells, seed 0, each method's own
    epochs, cut to `grid_train` training samples per epoch and a val split of the preset's own
    train/val proportion (else validating on the whole val split every epoch would outweigh the
    cut training and pull the ratio towards 1); and the uncut split sizes, for the notes."""
    from kdbench.data import load_dataset
    from kdbench.sweep import SweepSpec

    z = s.sizes
    base = {"mode": [GRID_MODE], "seeds": 1, "device": s.cfg.device, **({"dataset": z.grid_dataset} if z.grid_dataset else {})}
    first = SweepSpec.build(preset=GRID_PRESET, overrides=base).expand()[0]
    vf = first.val_fraction if first.val_fraction is not None else 0.1
    pool = load_dataset(first.dataset, s.cfg.data_root, max_train=1).info["pool_sizes"]["train"]
    n_val = max(1, round(z.grid_train * vf / (1 - vf)))
    full = {"train": pool - round(pool * vf), "val": round(pool * vf)}
    cut = {"max_train": z.grid_train, "val_fraction": n_val / pool}
    if z.grid_epochs is not None:
        cut["epochs"] = z.grid_epochs
    if z.grid_teacher_epochs is not None:
        cut["teacher_epochs"] = z.grid_teacher_epochs
    return {**base, **cut}, full


@BENCHES.register("alternative")
def bench_alternative(s: Session) -> list[BenchRow]:
    """A one-seed slice of the paper-recipe MNIST ff grid, run two ways side by side (interleaved,
    `long_rounds` rounds): as torchdistill or mdistiller users run it (one process, one run after
    another, the teacher run on every training batch, TCN's students one after another, the same
    cores as torch threads) vs `kdbench sweep` (cached targets, computed in the timed arm; fused=auto;
    `--workers` = cores / threads). The same specs and the same cached teacher in both arms."""
    from kdbench.api import sweep
    from kdbench.engine import torch_threads
    from kdbench.executors import cpu_count
    from kdbench.runner import evaluate
    from kdbench.sweep import SweepSpec, resolve_all

    z = s.sizes
    fields, full = grid_overrides(s)
    runs = resolve_all(SweepSpec.build(preset=GRID_PRESET, overrides=fields).expand())
    workers = max(1, min(cpu_count() // s.cfg.threads, len(runs)))
    cores = workers * s.cfg.threads
    labels = [f"{r.spec.method}{f' n={r.spec.n_students}' if r.spec.method == 'tcn' else ''}" for r in runs]
    alone = [r.spec.replace(params={**r.spec.params, "fused": False}) if r.spec.method == "tcn" else r.spec for r in runs]
    setups = [s.setup_spec(spec) for spec in alone]  # untimed: data loaded, the slice's teacher trained once and cached
    teacher_keys = sorted({st.teacher.key for st in setups if st.teacher is not None})
    results: dict[str, list[dict[str, Any]]] = {"alternative": [], "kdbench": []}

    def alternative() -> float:
        out: dict[str, Any] = {"fit_s": {}, "test_acc_valbest": {}}
        with torch_threads(cores):
            t0 = time.perf_counter()
            for label, setup in zip(labels, setups):
                ctx = s.context(setup, in_loop=setup.teacher is not None)
                timed = fit_once(setup, ctx)
                out["test_acc_valbest"][label] = evaluate(timed.fit, setup.data)["test_acc_valbest"]
                out["fit_s"][label] = timed.wall_s
            wall = time.perf_counter() - t0
        results["alternative"].append(out)
        return wall

    with tempfile.TemporaryDirectory(prefix="kdbench-bench-") as tmp:
        def default() -> float:
            for k in teacher_keys:  # a fresh sweep computes its targets: none are left for this arm
                forget_targets(k)
            left = sum(len(cached_targets(k)) for k in teacher_keys)
            t0 = time.perf_counter()
            res = sweep(preset=GRID_PRESET, **fields, out=Path(tmp, f"kdbench-{len(results['kdbench'])}"), workers=workers,
                        threads=s.cfg.threads, latency=False, log=None, progress=False, data_root=s.cfg.data_root)
            wall = time.perf_counter() - t0
            by_key = {r["run_key"]: r for r in res.records}
            recs = [by_key.get(r.key, {}) for r in runs]
            results["kdbench"].append({
                "ok": len(recs) == len(runs) and all(r.get("status") == "ok" for r in recs),
                "targets_built": left == 0 and all(cached_targets(k) for k in teacher_keys),
                "test_acc_valbest": {lb: (r.get("metrics") or {}).get("test_acc_valbest") for lb, r in zip(labels, recs)},
                "train_time_s": {lb: (r.get("metrics") or {}).get("train_time_s") for lb, r in zip(labels, recs)},
                "targets_time_s": sum((r.get("metrics") or {}).get("targets_time_s", 0.0) for r in recs),
                "fusion": {lb: ((r.get("metrics") or {}).get("tcn") or {}).get("fusion") for lb, r in zip(labels, recs)}})
            return wall

        times = interleave({"alternative": alternative, "kdbench": default}, s.cfg.n_long_rounds)
    alt, ours = results["alternative"][0], results["kdbench"][0]
    diffs = [abs(alt["test_acc_valbest"][lb] - ours["test_acc_valbest"][lb]) for lb in labels
             if ours["test_acc_valbest"].get(lb) is not None]
    first = runs[0].spec
    batch = max(r.schedule.batch_size for r in runs)
    epochs = ", ".join(f"{lb} {r.schedule.epochs}" for lb, r in zip(labels, runs))
    epochs = f"epochs as the recipe sets them ({epochs})" if z.grid_epochs is None else f"epochs cut to {z.grid_epochs}"
    fusion = ", ".join(f"{lb} {'/'.join(f)}" for lb, f in ours["fusion"].items() if f)
    return [BenchRow(
        f"alternative: teacher in loop, sequential / kdbench sweep ({GRID_PRESET} {GRID_MODE}, 1 seed)",
        "teacher in loop, sequential", median(times["alternative"]), "kdbench sweep", median(times["kdbench"]), "s",
        Goal(">=", 2.5),
        notes=f"{len(runs)} runs on {first.dataset} ({', '.join(labels)}), {epochs}; "
              f"cut: {z.grid_train} of {full['train']} training samples per epoch (max_train; {-(-z.grid_train // batch)} batches "
              f"of {batch}) and val {len(setups[0].data.val)} of {full['val']} (the preset's proportion), test whole; the slice's teacher trained "
              f"once, untimed; no latency timing in either arm. kdbench: --workers {workers} --threads {s.cfg.threads}, its "
              f"targets computed inside the timed arm (cache entries dropped first), fused=auto ({fusion}); one seed "
              f"leaves seed fusion nothing to fuse. "
              f"Alternative: one process, {cores} torch thread(s), teacher forward on every batch (TCN: once per student), "
              f"fused=false; max |test acc diff| between the arms {max(diffs, default=float('nan')):.2g} points",
        checks={"every kdbench run ok": all(r["ok"] for r in results["kdbench"]),
                "targets computed inside every kdbench arm": all(r["targets_built"] for r in results["kdbench"])},
        details={"alternative_s": times["alternative"], "kdbench_s": times["kdbench"], "runs": labels, "workers": workers,
                 "threads_per_run": s.cfg.threads, "alternative_threads": cores, "sweep_fields": fields, "uncut_sizes": full,
                 "per_arm": results},
    )]
