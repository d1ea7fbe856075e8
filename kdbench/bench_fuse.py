"""Bench rows of seed fusion (kdbench.seed_fuse): the k seeds of one cell as k runs one after
another vs what `fuse_seeds=auto` does with them, in one process, the arms interleaved (A, B, A, B)
after one untimed warm-up each, medians of fit wall time (CPU-time ratios in the notes), with the
per-seed histories of the fused and separate arms compared (asserted as `checks`).

- TCN ff with its paper-budget students, n = 8 (the goal: >= 1.5x on CPU), 4, 2, 1, and n = 8 with
  `fused=false` (each student alone, so seed fusion stacks single 59-kMAC students);
- `auto` on the zoo's students (the `student` method on a dataset of the model's input kind): goal
  >= 0.95x.
Where `auto` fuses, both arms are timed. Where it does not, its arm is the separate arm itself
(ratio 1 by construction) and the forced fused form is timed when the model costs at most
`force_max_macs` (its ratio in the notes: what fusing would cost); bigger models are not timed.

`bench_seed_fusion(session)` returns the rows (kdbench.bench's BenchRow); it registers nothing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from .bench import BenchRow, Goal, Session, fit_once, interleave, median
from .bench.compare import max_abs_diff, max_rel_diff
from .bench.timing import sync
from .fuse_plan import Sizer, decide


@dataclass(frozen=True)
class FuseSizes:
    """Problem sizes of the seed-fusion rows."""

    seeds: int
    tcn_dataset: str
    tcn_train: int  # training samples of the one timed epoch
    tcn_n: tuple[int, ...]
    zoo_train: int
    eval: int  # val / test samples
    zoo: tuple[tuple[str, str], ...]  # (dataset, student)
    force_max_macs: int  # time the forced fused form of students up to this size (MAC per sample)


ZOO = (("mnist", "image-student"), ("mnist", "kdgan-mlp"), ("cifar10-jpeg", "plain2"), ("cifar10-jpeg", "plain4"),
       ("cifar10-jpeg", "plain6"), ("cifar10-jpeg", "plain8"), ("cifar10-jpeg", "plain10"), ("cifar10-jpeg", "resnet8"),
       ("cifar10-jpeg", "resnet8b"), ("cifar10-jpeg", "resnet14"), ("cifar10-jpeg", "resnet20"), ("cifar10-jpeg", "resnet32"),
       ("cifar10-jpeg", "resnet44"), ("cifar10-jpeg", "resnet56"), ("cifar10-jpeg", "resnet110"), ("imdb-5k", "text-student"))
FULL = FuseSizes(seeds=3, tcn_dataset="mnist", tcn_train=6400, tcn_n=(8, 4, 2, 1), zoo_train=1024, eval=512, zoo=ZOO,
                 force_max_macs=3_000_000)
QUICK = FuseSizes(seeds=3, tcn_dataset="digits", tcn_train=256, tcn_n=(8,), zoo_train=128, eval=64,
                  zoo=(("digits", "image-student"), ("digits", "plain2")), force_max_macs=3_000_000)


@dataclass
class Arms:
    """The timed arms of one comparison and the per-seed fits of their first round."""

    times: dict[str, list[float]]
    cpu: dict[str, list[float]]  # this process's CPU seconds (a loaded machine inflates wall times)
    fits: dict[str, list[Any]]


def _compare(s: Session, method: str, fields: dict[str, Any], z: FuseSizes, n_train: int, arms: Sequence[str]) -> tuple[Arms, Any]:
    """Time `arms` ("separate": one fit per seed; "fused": fit_seeds) interleaved, after one untimed
    warm-up of each on a slice (kernels, lazy loads); returns them and `auto`'s decision for these runs."""
    setups = [s.setup(method, seed=i, **fields) for i in range(z.seeds)]
    decision = decide([st.resolved for st in setups], "auto", s.device.type, Sizer(s.cfg.data_root))
    fits: dict[str, list[Any]] = {a: [] for a in arms}
    cpu: dict[str, list[float]] = {a: [] for a in arms}

    def separate(n: int, keep: bool = True) -> float:
        ctxs = [s.context(st, n, n_eval=z.eval) for st in setups]
        t0, c0 = time.perf_counter(), time.process_time()
        out = [fit_once(st, c).fit for st, c in zip(setups, ctxs)]
        wall = time.perf_counter() - t0
        if keep:
            fits["separate"].append(out)
            cpu["separate"].append(time.process_time() - c0)
        return wall

    def fused(n: int, keep: bool = True) -> float:
        ctxs = [s.context(st, n, n_eval=z.eval) for st in setups]
        m = setups[0].resolved.method(setups[0].resolved.params)
        t0, c0 = time.perf_counter(), time.process_time()
        out = m.fit_seeds(ctxs)
        sync(s.device)
        wall = time.perf_counter() - t0
        if keep:
            fits["fused"].append(out)
            cpu["fused"].append(time.process_time() - c0)
        return wall

    funcs = {"separate": separate, "fused": fused}
    warm = min(n_train, 2 * setups[0].resolved.schedule.batch_size)
    for a in arms:
        funcs[a](warm, keep=False)
    times = interleave({a: (lambda a=a: funcs[a](n_train)) for a in arms}, s.cfg.n_rounds)
    return Arms(times, cpu, fits), decision


def _equal(arms: Arms) -> tuple[dict[str, bool], dict[str, float]]:
    """The per-seed outcomes of the fused arm against the separate arm's (first round)."""
    if "fused" not in arms.fits:
        return {}, {}
    sep, fus = arms.fits["separate"][0], arms.fits["fused"][0]
    state = max(max_abs_diff(a.last_state, b.last_state) for a, b in zip(sep, fus))
    hist = max(max_rel_diff([v for k, v in r.items() if k != "time_s" and isinstance(v, float)],
                            [v for k, v in q.items() if k != "time_s" and isinstance(v, float)])
               for a, b in zip(sep, fus) for r, q in zip(a.history, b.history))
    return ({"per-seed loss / validation history equal (rel 1e-3)": hist <= 1e-3},
            {"max_abs_state_diff": state, "max_rel_history_diff": hist})


def _row(name: str, arms: Arms, decision: Any, goal: Goal, notes: str, auto_arm: str) -> BenchRow:
    checks, diffs = _equal(arms)
    t = arms.times
    b = median(t[auto_arm])
    c = arms.cpu
    extra = f"; CPU-time ratio {median(c['separate']) / median(c[auto_arm]):.2f}" if auto_arm == "fused" else ""
    if "fused" in t and auto_arm != "fused":
        extra = (f"; forced fused {median(t['separate']) / median(t['fused']):.2f}x "
                 f"(CPU time {median(c['separate']) / median(c['fused']):.2f}x)")
    return BenchRow(name, "separate runs", median(t["separate"]), "auto" if auto_arm else "fused", b, "s", goal,
                    notes=f"{notes}; auto: {decision.reason}{extra}", checks=checks,
                    details={"times_s": t, "cpu_s": c, "decision": decision.note(), **diffs})


def _case(s: Session, z: FuseSizes, method: str, fields: dict[str, Any], n_train: int, name: str, goal: Goal, what: str) -> BenchRow:
    """One row: separate vs what `auto` does, the forced fused form timed too where affordable."""
    from .runner import resolve

    try:
        d = decide([resolve(s.spec(method, seed=i, **fields)) for i in range(z.seeds)], "auto", s.device.type, Sizer(s.cfg.data_root))
    except Exception as e:  # noqa: BLE001 - e.g. a dataset this machine lacks: the row says so
        return BenchRow(name, "separate runs", None, "auto", None, "s", goal, error=f"{type(e).__name__}: {e}")
    forced = d.macs is not None and d.macs <= z.force_max_macs and "dropout" not in d.reason
    if not (d.fused or forced):
        return BenchRow(name, "separate runs", 1.0, "auto", 1.0, "-", goal, details={"decision": d.note()},
                        notes=f"not timed: auto runs these seeds one after another, i.e. the separate arm itself (ratio 1 by "
                              f"construction); {_size(d)}auto: {d.reason}")
    arms, d = _compare(s, method, fields, z, n_train, ("separate", "fused"))
    return _row(name, arms, d, goal, f"{what}, {_size(d)}".rstrip("; "), "fused" if d.fused else "separate")


def _size(d: Any) -> str:
    return f"{d.params:,} params, {d.macs:,} MAC per sample; " if d.macs is not None else ""


def bench_seed_fusion(s: Session, sizes: FuseSizes | None = None) -> list[BenchRow]:
    """Seed fusion's rows (module doc), each a ratio of fit wall times: k separate runs / what
    `auto` does (the forced fused form's ratio in the notes where it was timed)."""
    z = sizes or (QUICK if s.cfg.quick else FULL)
    cpu = s.device.type == "cpu"
    rows = []
    for n, fused in [(n, "auto") for n in z.tcn_n] + ([(8, False)] if 8 in z.tcn_n else []):
        params = {"finetune": False, **({} if fused == "auto" else {"fused": fused})}
        fields = {"dataset": z.tcn_dataset, "n_students": n, "mode": "ff", "epochs": 1, "params": params}
        label = f"seed fusion: tcn ff n={n}{'' if fused == 'auto' else ' fused=false'}, {z.seeds} seeds, separate / auto"
        rows.append(_case(s, z, "tcn", fields, z.tcn_train, label, Goal(">=", 1.5) if n == 8 and fused == "auto" and cpu else Goal(),
                          f"1 epoch on {z.tcn_train} {z.tcn_dataset} samples, the budget students (one seed's fused unit)"))
    for dataset, student in z.zoo:
        fields = {"dataset": dataset, "student": student, "epochs": 1}
        rows.append(_case(s, z, "student", fields, z.zoo_train, f"seed fusion auto: {student} ({dataset}), {z.seeds} seeds",
                          Goal(">=", 0.95), f"student method, 1 epoch on {z.zoo_train} samples"))
    return rows
