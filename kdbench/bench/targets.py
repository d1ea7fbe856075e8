"""`targets`: the teacher run on every batch (in the loop) vs its cached targets, one TCN ff epoch."""
from __future__ import annotations

from .base import BENCHES, BenchRow
from .session import Session, Timed, fit_once, loop_seconds, loss_history
from .timing import interleave, median


@BENCHES.register("targets")
def bench_targets(s: Session) -> list[BenchRow]:
    """One TCN ff epoch, n = 4, students one after another in both arms: the teacher run on each
    batch (in the loop) vs its cached dense features. The loss history must be identical. Reported
    without a goal: the FLOP counts bound this ratio below the 4x once asked (docs/performance.md)."""
    z = s.sizes
    setup = s.setup("tcn", n_students=4, mode="ff", epochs=1, params={"fused": False, "finetune": False})
    fits: dict[str, list[Timed]] = {"loop": [], "cached": []}

    def arm(kind: str) -> float:
        fits[kind].append(fit_once(setup, s.context(setup, z.targets_train, in_loop=kind == "loop")))
        return loop_seconds(fits[kind][-1].fit)

    times = interleave({"loop": lambda: arm("loop"), "cached": lambda: arm("cached")}, s.cfg.n_long_rounds)
    ref = loss_history(fits["cached"][0].fit)
    same = all(loss_history(t.fit) == ref for kind in fits for t in fits[kind])
    per_student = {kind: [[r["time_s"] for r in t.fit.history if r.get("stage") == "students"] for t in fits[kind]] for kind in fits}
    ratios = [lo / ca for lo, ca in zip(per_student["loop"][0], per_student["cached"][0])]
    cpu = {k: median([t.train_cpu_s for t in v]) for k, v in fits.items()}
    n_train = len(setup.data.train) if z.targets_train is None else min(z.targets_train, len(setup.data.train))
    return [BenchRow(
        "targets: teacher in loop / cached", "teacher in loop", median(times["loop"]), "cached targets",
        median(times["cached"]), "s",
        notes=f"TCN ff n=4 sequential, 1 epoch on {n_train} {setup.resolved.spec.dataset} samples; "
              f"per-student ratios {', '.join(f'{r:.2f}' for r in ratios)}; CPU-time ratio of the training stage {cpu['loop'] / cpu['cached']:.2f}",
        checks={"identical per-epoch loss history": same},
        details={"loop_s": times["loop"], "cached_s": times["cached"], "per_student_s": per_student,
                 "fit_wall_s": {k: [t.wall_s for t in v] for k, v in fits.items()},
                 "fit_cpu_s": {k: [t.cpu_s for t in v] for k, v in fits.items()},
                 "train_stage_cpu_s": {k: [t.train_cpu_s for t in v] for k, v in fits.items()}, "loss_history": ref,
                 "n_train": n_train, "timed": "sum of the engine's per-epoch batch-loop time over the 4 students"},
    )]
