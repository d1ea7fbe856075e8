"""Performance benchmarks of DESIGN.md §6 (issue 8): every claim is a ratio A / B measured in ONE
process, the two arms interleaved (A, B, A, B, ...; medians), with the torch thread count fixed
and recorded and the load average written next to each number (the machine may be shared).

Benchmarks (`BENCHES`, `kdbench bench --only NAME`):

- `targets`    teacher in the loop vs cached teacher targets (TCN ff, n = 4, one epoch)
- `fused`      n = 8 identical TCN students (ff and gan; and n = 4 ff) one after another vs fused
- `layout`     contiguous vs channels-last conv weights (kdbench's CPU default): teacher forward, TCN epoch
- `parallel`   a sweep of independent runs with `--workers 1` vs `--workers 2`
- `efficiency` achieved GFLOP/s of the student training loop vs this machine's matmul peak
- `inference`  the teacher vs TCN's 8 fused students (+ head) at batch 1 and 256
- `memory`     peak RSS of a TCN run and of a `--workers 2` sweep; mmap sharing of cached targets
- `profile`    where the time of a TCN ff epoch and a kd epoch goes (torch.profiler, top ops)

Goals are reported, never asserted; equality checks (same losses, same records) are, as `checks`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence
from unittest import mock

import torch
from torch import Tensor, nn

from .config import RunSpec, TeacherRecipe
from .data.base import Split, Splits
from .engine import keep_freed_memory, resolve_device, seed_everything
from .errors import KdbenchError
from .method import Context, FitResult, Targets
from .registry import Registry

# ---------------------------------------------------------------------------------------------
# Sizes: the full benchmark (issue 8's protocol) and the tiny one of `--quick` (the smoke test)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one bench profile; `None` train sizes mean the whole training split."""

    dataset: str
    recipe: TeacherRecipe | None  # teacher recipe (None: the dataset's default, i.e. the cached paper teacher)
    targets_train: int | None  # `targets`: samples of the TCN epoch
    fused_train: int  # `fused`: samples of the epoch
    sweep_dataset: str
    sweep_max_train: int
    sweep_teacher_epochs: int
    sweep_runs: int  # tiny students
    sweep_runs_paper: int  # paper-size students (each run is ~10x longer)
    sweep_epochs: int
    eff_train: int  # `efficiency`: samples of the timed loop
    eff_eval: int  # `efficiency`: val samples (validation is not counted as work)
    peak_size: int  # `efficiency`: n of the n x n x n matmul
    latency_repeats: int
    profile_train: int
    profile_eval: int  # `profile`: val / test samples (so validation does not dominate the epoch)
    memory_sweep_runs: int


FULL = Sizes(dataset="mnist", recipe=None, targets_train=None, fused_train=6400, sweep_dataset="mnist",
             sweep_max_train=1000, sweep_teacher_epochs=1, sweep_runs=8, sweep_runs_paper=4, sweep_epochs=1, eff_train=3200, eff_eval=256,
             peak_size=2048, latency_repeats=20, profile_train=4096, profile_eval=512, memory_sweep_runs=2)
QUICK = Sizes(dataset="digits", recipe=TeacherRecipe(epochs=2, batch_size=64), targets_train=256, fused_train=256,
              sweep_dataset="digits", sweep_max_train=200, sweep_teacher_epochs=1, sweep_runs=2, sweep_runs_paper=2, sweep_epochs=1,
              eff_train=256, eff_eval=64, peak_size=256, latency_repeats=3, profile_train=256, profile_eval=64, memory_sweep_runs=2)


@dataclass(frozen=True)
class BenchConfig:
    """How to run the benchmarks. `rounds` = A/B repetitions of each interleaved pair; the pairs
    whose arms take minutes each (`targets`, `parallel`) use `long_rounds`."""

    quick: bool = False
    threads: int = 1
    rounds: int | None = None  # default: 2 full, 1 quick
    long_rounds: int | None = None  # default: `rounds` when given, else 1
    device: str = "auto"
    data_root: str | None = None

    @property
    def sizes(self) -> Sizes:
        return QUICK if self.quick else FULL

    @property
    def n_rounds(self) -> int:
        return self.rounds if self.rounds is not None else (1 if self.quick else 2)

    @property
    def n_long_rounds(self) -> int:
        return self.long_rounds if self.long_rounds is not None else (self.rounds or 1)


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """`ratio >= value` or `ratio <= value`; None value = report only."""

    op: str = ""
    value: float | None = None

    def met(self, ratio: float | None) -> bool | None:
        if self.value is None or ratio is None or not math.isfinite(ratio):
            return None
        return ratio >= self.value if self.op == ">=" else ratio <= self.value

    def __str__(self) -> str:
        return "-" if self.value is None else f"{self.op} {self.value:g}"


@dataclass
class BenchRow:
    """One line of the table: ratio = A / B (A is the baseline or the measured quantity)."""

    name: str
    a_label: str
    a: float | None
    b_label: str
    b: float | None
    unit: str
    goal: Goal = field(default_factory=Goal)
    notes: str = ""
    checks: dict[str, bool] = field(default_factory=dict)  # equality assertions (must all hold)
    details: dict[str, Any] = field(default_factory=dict)
    load_avg: tuple[float, float] | None = None  # 1-min load average at start / end of its bench
    seconds: float = 0.0
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.a is None or self.b is None or self.b == 0:
            return None
        return self.a / self.b

    @property
    def met(self) -> bool | None:
        return self.goal.met(self.ratio)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["goal"] = str(self.goal)
        d["ratio"] = self.ratio
        d["met"] = self.met
        return d


@dataclass
class BenchReport:
    rows: list[BenchRow]
    env: dict[str, Any]
    config: dict[str, Any]
    artifacts: dict[str, str] = field(default_factory=dict)  # extra files (profile tables): name -> text

    @property
    def checks_ok(self) -> bool:
        return all(all(r.checks.values()) and r.error is None for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"env": self.env, "config": self.config, "checks_ok": self.checks_ok,
                "rows": [r.to_dict() for r in self.rows]}


# ---------------------------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(arms: dict[Any, Callable[[], Any]], rounds: int) -> dict[Any, list[Any]]:
    """Call the arms in turn (A, B, A, B, ...) `rounds` times; each returns its own measurement.
    Interleaving makes slow drifts of a shared machine's load hit both arms alike."""
    out: dict[Any, list[Any]] = {k: [] for k in arms}
    for _ in range(rounds):
        for name, fn in arms.items():
            out[name].append(fn())
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def matmul_peak_gflops(n: int, device: torch.device, repeats: int = 5) -> tuple[float, float]:
    """float32 GFLOP/s of one n x n x n torch.matmul (median of `repeats` after a warm-up), per
    wall second and per CPU second of this process (the latter ignores time spent descheduled)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.matmul(a, b)
    sync(device)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        torch.matmul(a, b)
        sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 2 * n**3 / median(wall) / 1e9, 2 * n**3 / max(median(cpu), 1e-9) / 1e9


def forward_ms(model: nn.Module | Callable[[Tensor], Any], x: Tensor, device: torch.device, repeats: int) -> float:
    """Median forward time (ms) in inference mode, after warm-up."""
    from .measure import time_forward

    if isinstance(model, nn.Module):
        model.eval()
    return time_forward(lambda: model(x), device, repeats=repeats)


# ---------------------------------------------------------------------------------------------
# Teacher in the loop: Targets whose rows run the teacher when indexed
# ---------------------------------------------------------------------------------------------


class TeacherRows:
    """Teacher outputs on the rows of `x`, computed when indexed: `rows[idx]` runs `fn(x[idx])` under
    `torch.inference_mode()` (the teacher-in-the-loop baseline, with the method code unchanged).

    `rows[:, cols]` (no row selection) is kept lazy: it returns rows whose outputs are then
    column-indexed with `cols`, so `feats[:, cols][idx]` == `fn(x[idx])[:, cols]`."""

    def __init__(self, fn: Callable[[Tensor], Tensor], x: Tensor, width: int, cols: tuple = ()):
        self._fn, self._x, self._width, self._cols = fn, x, width, cols

    @property
    def device(self) -> torch.device:
        return self._x.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def shape(self) -> torch.Size:
        probe = torch.zeros(1, self._width, device=self._x.device)
        if self._cols:
            probe = probe[(slice(None), *self._cols)]
        return torch.Size((len(self), *probe.shape[1:]))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return int(self._x.shape[0])

    def __getitem__(self, key: Any) -> Any:
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(rows, slice) and rows == slice(None) and rest:
            if self._cols:
                raise NotImplementedError("TeacherRows supports one column selection")
            return TeacherRows(self._fn, self._x, self._width, tuple(rest))
        with torch.inference_mode():
            out = self._fn(self._x[rows])
        for cols in (self._cols, rest):
            if cols:
                out = out[(slice(None), *cols)]
        return out.clone() if out.is_inference() else out  # a plain tensor, like a cached target


def teacher_in_loop_targets(teacher: nn.Module, data: Splits) -> Callable[[str], Targets]:
    """A Context `targets` that runs the teacher per batch on the train split; other splits (val,
    used whole once per run) are computed once, eagerly, on first use."""
    from .engine import predict
    from .models import dense_view

    view = dense_view(teacher)
    logits_fn = lambda v: view.classifier(view.features(v))  # noqa: E731
    eager: dict[str, Targets] = {}

    def targets(split: str) -> Targets:
        x = getattr(data, split).x
        if split == "train":
            with torch.inference_mode():
                k = logits_fn(x[:1]).shape[1]
            return Targets(logits=TeacherRows(logits_fn, x, k), features=TeacherRows(view.features, x, view.dim))  # type: ignore[arg-type]
        if split not in eager:
            feats = predict(view.features, x)
            eager[split] = Targets(logits=predict(view.classifier, feats), features=feats)
        return eager[split]

    return targets


# ---------------------------------------------------------------------------------------------
# Session: data, teachers and contexts built once and shared by the benchmarks
# ---------------------------------------------------------------------------------------------


@dataclass
class Setup:
    resolved: Any  # runner.Resolved
    data: Splits
    teacher: Any  # teachers.Teacher | None
    device: torch.device


class Session:
    """One benchmark session: config, device, and data / teachers loaded once."""

    def __init__(self, cfg: BenchConfig):
        self.cfg = cfg
        self.sizes = cfg.sizes
        self.device = resolve_device(cfg.device)
        self._data: dict[tuple, Splits] = {}
        self._teachers: dict[tuple, Any] = {}
        self.artifacts: dict[str, str] = {}  # file name -> text, written next to the results

    def spec(self, method: str, **fields: Any) -> RunSpec:
        fields.setdefault("dataset", self.sizes.dataset)
        if self.sizes.recipe is not None and fields["dataset"] == self.sizes.dataset:
            fields.setdefault("teacher_recipe", self.sizes.recipe)
        fields.setdefault("device", self.cfg.device)
        return RunSpec(method=method, **fields)

    def setup(self, method: str, **fields: Any) -> Setup:
        """Resolve a spec and load its data and (cached) teacher, reusing what is already loaded."""
        from .runner import check_data, load_data, resolve, resolve_teacher

        r = resolve(self.spec(method, **fields))
        s = r.spec
        dkey = (s.dataset, s.val_fraction, s.split_seed, s.max_train)
        if dkey not in self._data:
            check_data(s.dataset, self.cfg.data_root)
            self._data[dkey] = load_data(s, self.cfg.data_root).to(self.device)
        data = self._data[dkey]
        teacher = None
        if r.method.needs_teacher:
            tkey = (dkey, s.teacher, s.teacher_recipe)
            if tkey not in self._teachers:
                self._teachers[tkey] = resolve_teacher(s, data, self.device, False)
            teacher = self._teachers[tkey]
        return Setup(r, data, teacher, self.device)

    def context(self, setup: Setup, n_train: int | None = None, in_loop: bool = False, n_eval: int | None = None) -> Context:
        """A fresh Context on the cached targets, optionally on the first `n_train` training samples
        and the first `n_eval` val / test samples (targets sliced to match, so no new cache entry is
        built) and/or with the teacher in the loop."""
        from .runner import build_context

        ctx = build_context(setup.resolved, setup.data, setup.device, setup.teacher, False, {})
        cut = {"train": n_train, "val": n_eval, "test": n_eval}
        cut = {k: v for k, v in cut.items() if v is not None and v < len(getattr(setup.data, k))}
        if cut:
            sub = dataclasses.replace(setup.data, **{k: Split(getattr(setup.data, k).x[:n], getattr(setup.data, k).y[:n])
                                                     for k, n in cut.items()})
            full_targets = ctx.targets

            def targets(split: str) -> Targets:
                t = full_targets(split)
                n = cut.get(split)
                return t if n is None else Targets(logits=t.logits[:n], features=t.features[:n])

            ctx = dataclasses.replace(ctx, data=sub, targets=targets)
        if in_loop:
            ctx = dataclasses.replace(ctx, targets=teacher_in_loop_targets(setup.teacher.model, ctx.data))
        return ctx


@dataclass
class Timed:
    """A fit with its wall time and this process's CPU time (user + sys, all threads). On a loaded
    machine wall time includes time spent descheduled; CPU time does not, so it is reported too."""

    fit: FitResult
    wall_s: float
    cpu_s: float
    train_cpu_s: float  # CPU time inside ctx.train (the training stage: batches + per-epoch validation)


def fit_once(setup: Setup, ctx: Context) -> Timed:
    """method.fit as the runner calls it (seeded first), timed; ctx.train is wrapped to time the
    training stage's CPU seconds too."""
    seed_everything(setup.resolved.spec.seed)
    method = setup.resolved.method(setup.resolved.params)
    stage: list[float] = []
    inner = ctx.train

    def train(*args: Any, **kw: Any) -> Any:
        c0 = time.process_time()
        try:
            return inner(*args, **kw)
        finally:
            stage.append(time.process_time() - c0)

    ctx.train = train  # type: ignore[method-assign]  # this fresh context only
    t0, c0 = time.perf_counter(), time.process_time()
    fit = method.fit(ctx)
    sync(setup.device)
    return Timed(fit, time.perf_counter() - t0, time.process_time() - c0, sum(stage))


def loop_seconds(fit: FitResult, stage: str = "students") -> float:
    """Time spent in the training loop's batches (the engine's per-epoch `time_s`, validation and
    set-up excluded), summed over the rows of `stage` (rows without a stage count too)."""
    return float(sum(r.get("time_s", 0.0) for r in fit.history if r.get("stage", stage) == stage))


def loss_history(fit: FitResult, stage: str = "students") -> list[dict[str, Any]]:
    """Per-epoch losses and validation numbers of a fit, timings removed (for equality checks)."""
    return [{k: v for k, v in r.items() if k != "time_s"} for r in fit.history if r.get("stage", stage) == stage]


def max_abs_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    if a.keys() != b.keys():
        return math.inf
    return max((float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()), default=0.0)


def off_fraction(a: dict[str, Tensor], b: dict[str, Tensor], atol: float) -> float:
    """Fraction of all state entries whose values differ by more than `atol` (1 for other keys)."""
    if a.keys() != b.keys():
        return 1.0
    off = sum(int(((a[k].double() - b[k].double()).abs() > atol).sum()) for k in a)
    return off / max(sum(a[k].numel() for k in a), 1)


def max_rel_diff(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b):
        return math.inf
    return max((abs(x - y) / max(abs(x), abs(y), 1e-12) for x, y in zip(a, b)), default=0.0)


# ---------------------------------------------------------------------------------------------
# The benchmarks
# ---------------------------------------------------------------------------------------------
Bench = Callable[[Session], list[BenchRow]]
BENCHES: Registry[Bench] = Registry("benchmark")


@BENCHES.register("targets")
def bench_targets(s: Session) -> list[BenchRow]:
    """One TCN ff epoch, n = 4, students one after another in both arms: the teacher run on each
    batch (in the loop) vs its cached dense features. The loss history must be identical."""
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
        median(times["cached"]), "s", Goal(">=", 4.0),
        notes=f"TCN ff n=4 sequential, 1 epoch on {n_train} {setup.resolved.spec.dataset} samples; "
              f"per-student ratios {', '.join(f'{r:.2f}' for r in ratios)}; CPU-time ratio of the training stage {cpu['loop'] / cpu['cached']:.2f}",
        checks={"identical per-epoch loss history": same},
        details={"loop_s": times["loop"], "cached_s": times["cached"], "per_student_s": per_student,
                 "fit_wall_s": {k: [t.wall_s for t in v] for k, v in fits.items()},
                 "fit_cpu_s": {k: [t.cpu_s for t in v] for k, v in fits.items()},
                 "train_stage_cpu_s": {k: [t.train_cpu_s for t in v] for k, v in fits.items()}, "loss_history": ref,
                 "n_train": n_train, "timed": "sum of the engine's per-epoch batch-loop time over the 4 students"},
    )]


@BENCHES.register("fused")
def bench_fused(s: Session) -> list[BenchRow]:
    """Identical TCN students one after another vs fused (one grouped computation): n = 8, ff and gan
    (the goal), and n = 4 ff, where `fused=auto` trains them one after another on CPU (no goal)."""
    from .methods.tcn import fuse_students

    rows = []
    for mode, n in (("ff", 8), ("gan", 8), ("ff", 4)):
        setups = {kind: s.setup("tcn", n_students=n, mode=mode, epochs=1, params={"fused": kind == "fused", "finetune": False})
                  for kind in ("sequential", "fused")}
        fits: dict[str, list[Timed]] = {k: [] for k in setups}

        def arm(kind: str, setups=setups, fits=fits) -> float:
            fits[kind].append(fit_once(setups[kind], s.context(setups[kind], s.sizes.fused_train)))
            return loop_seconds(fits[kind][-1].fit)

        times = interleave({k: (lambda k=k: arm(k)) for k in setups}, s.cfg.n_rounds)
        seq, fus = fits["sequential"][0].fit, fits["fused"][0].fit
        cpu = {k: median([t.train_cpu_s for t in v]) for k, v in fits.items()}
        state_diff = max_abs_diff(seq.last_state, fus.last_state)
        mse_diff = max_rel_diff(seq.metrics["feature_mse_per_student"], fus.metrics["feature_mse_per_student"])
        off = off_fraction(seq.last_state, fus.last_state, 1e-4)
        if mode == "ff":  # exact up to float reassociation, which Adam turns into lr-sized steps on
            # entries whose gradient is ~0 (noise): a few entries may differ, the outcome may not
            checks = {"per-student states equal (atol 1e-4) on >= 99.9% of entries": off <= 1e-3,
                      "per-student feature MSE equal (rel 1e-4)": mse_diff <= 1e-4}
        else:  # Adam + BN: statistically equal only (see methods/tcn.py)
            checks = {"per-student feature MSE agree (rel 5e-2; gan+Adam is statistical)": mse_diff <= 5e-2}
        repeat_same = all(max_abs_diff(t.fit.last_state, fits[k][0].fit.last_state) == 0.0 for k in fits for t in fits[k])
        checks["repeated fits bit-identical"] = repeat_same
        n_train = min(s.sizes.fused_train, len(setups["fused"].data.train))
        students = seq.parts["students"]
        auto = "fused" if fuse_students(students, "auto", setups["fused"].data.spec, s.device) else "one after another"
        rows.append(BenchRow(
            f"fused: {mode} n={n} sequential / fused", "sequential", median(times["sequential"]), "fused",
            median(times["fused"]), "s", Goal(">=", 1.4) if n == 8 else Goal(),
            notes=f"1 epoch on {n_train} samples; fusion {'/'.join(fus.metrics['fusion'])}; fused=auto trains these {auto}; "
                  f"CPU-time ratio of the training stage {cpu['sequential'] / cpu['fused']:.2f}; "
                  f"max |state diff| {state_diff:.2g} ({off:.2%} of entries > 1e-4), max rel feature-MSE diff {mse_diff:.2g}",
            checks=checks,
            details={"sequential_s": times["sequential"], "fused_s": times["fused"], "max_state_diff": state_diff, "fraction_of_entries_off": off,
                     "max_rel_feature_mse_diff": mse_diff, "fused_groups": fus.metrics["fused_groups"],
                     "feature_mse_per_student": {"sequential": seq.metrics["feature_mse_per_student"],
                                                 "fused": fus.metrics["feature_mse_per_student"]},
                     "fit_wall_s": {k: [t.wall_s for t in v] for k, v in fits.items()},
                     "fit_cpu_s": {k: [t.cpu_s for t in v] for k, v in fits.items()},
                     "train_stage_cpu_s": {k: [t.train_cpu_s for t in v] for k, v in fits.items()}},
        ))
    return rows


def is_timing(key: str) -> bool:
    """Metric names that hold wall times, latencies or memory peaks (they differ run to run)."""
    return "time" in key or "latency" in key or key.startswith("peak_") or key.endswith("_s") or "_s_" in key


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A record's metrics and history without timings or memory (what must match across executors)."""
    metrics = {k: v for k, v in (record.get("metrics") or {}).items() if not is_timing(k)}
    history = [{k: v for k, v in row.items() if k != "time_s"} for row in record.get("history") or []]
    return {"status": record.get("status"), "metrics": metrics, "history": history}


@BENCHES.register("parallel")
def bench_parallel(s: Session) -> list[BenchRow]:
    """A sweep of independent runs (seeds) with --workers 1 vs --workers 2, the same torch threads per
    run in both arms; the records (timings excluded) must be identical."""
    from .api import sweep

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


@BENCHES.register("efficiency")
def bench_efficiency(s: Session) -> list[BenchRow]:
    """Achieved GFLOP/s of the TCN student training loop (fvcore forward FLOPs x 3 for forward +
    backward, x samples / loop time) against the float32 matmul peak measured alongside; also per
    CPU second (both sides), which a loaded machine does not distort."""
    from .models import count_macs

    z = s.sizes
    rows = []
    for n in (1, 4, 8):
        setup = s.setup("tcn", n_students=n, mode="ff", epochs=1, params={"finetune": False})
        flops: dict[str, int] = {}

        def loop(setup=setup, flops=flops) -> tuple[float, float]:
            ctx = s.context(setup, z.eff_train, n_eval=z.eff_eval)
            timed = fit_once(setup, ctx)
            if "per_sample" not in flops:
                flops["per_sample"] = sum(2 * count_macs(m, ctx.data.spec) for m in timed.fit.parts["students"])
                flops["fusion"] = "/".join(sorted(set(timed.fit.metrics["fusion"])))
                flops["samples"] = len(ctx.data.train)
            work = 3 * flops["per_sample"] * flops["samples"] / 1e9
            return work / loop_seconds(timed.fit), work / timed.train_cpu_s

        res = interleave({"peak": lambda: matmul_peak_gflops(z.peak_size, s.device), "loop": loop}, s.cfg.n_rounds)
        achieved, peak = median([w for w, _ in res["loop"]]), median([w for w, _ in res["peak"]])
        achieved_cpu, peak_cpu = median([c for _, c in res["loop"]]), median([c for _, c in res["peak"]])
        rows.append(BenchRow(
            f"efficiency: TCN n={n} training loop / matmul peak", "achieved", achieved, "peak", peak, "GFLOP/s",
            Goal(">=", 0.30),
            notes=f"{n} student(s), trained {flops['fusion']} (fused=auto), {flops['per_sample'] / 1e6:.3g} MFLOP/sample forward (x3), "
                  f"{flops['samples']} samples; peak = {z.peak_size}^3 float32 matmul; per CPU second "
                  f"{achieved_cpu:.3g} / {peak_cpu:.3g} = {achieved_cpu / peak_cpu:.2f}",
            details={"achieved_gflops": [w for w, _ in res["loop"]], "peak_gflops": [w for w, _ in res["peak"]],
                     "achieved_gflops_per_cpu_s": [c for _, c in res["loop"]], "peak_gflops_per_cpu_s": [c for _, c in res["peak"]],
                     "fraction_per_cpu_s": achieved_cpu / peak_cpu, "forward_flops_per_sample": flops["per_sample"],
                     "cpu_time_note": "achieved per CPU s includes the (cut) per-epoch validation in its time, not in its FLOPs"},
        ))
    return rows


@BENCHES.register("inference")
def bench_inference(s: Session) -> list[BenchRow]:
    """The teacher vs the deployed TCN predictor with 8 students fused (+ the teacher's head)."""
    import copy

    from .methods.tcn import TCNPredictor, chunk_sizes
    from .models import dense_view
    from .tcn_fuse import FusedConcat

    setup = s.setup("tcn", n_students=8, mode="ff")
    ctx = s.context(setup)
    view = dense_view(setup.teacher.model)
    torch.manual_seed(0)
    students = [ctx.make_student(out_features=w, n_students=8) for w in chunk_sizes(view.dim, 8)]
    head = copy.deepcopy(view.classifier)
    sequential = TCNPredictor(students, head).to(s.device).eval()
    fused = nn.Sequential(FusedConcat(students), head).to(s.device).eval()
    example = setup.data.test.x[:1]
    rows = []
    for batch in (1, 256):
        x = example.expand(batch, *example.shape[1:]).contiguous().to(s.device)
        with torch.inference_mode():
            same = torch.allclose(fused(x), sequential(x), rtol=1e-5, atol=1e-5)
        reps = s.sizes.latency_repeats
        res = interleave({"teacher": lambda: forward_ms(setup.teacher.model, x, s.device, reps),
                          "fused": lambda: forward_ms(fused, x, s.device, reps),
                          "sequential": lambda: forward_ms(sequential, x, s.device, reps)}, s.cfg.n_rounds)
        rows.append(BenchRow(
            f"inference: teacher / TCN n=8 fused, batch {batch}", "teacher", median(res["teacher"]), "TCN fused",
            median(res["fused"]), "ms", Goal(">=", 3.0) if batch == 256 else Goal(),
            notes=f"median of {reps} forwards x {s.cfg.n_rounds} rounds; TCN sequential {median(res['sequential']):.3g} ms",
            checks={"fused output equals sequential": same},
            details={k + "_ms": v for k, v in res.items()},
        ))
    return rows


@BENCHES.register("layout")
def bench_layout(s: Session) -> list[BenchRow]:
    """Conv weights in the default (contiguous) vs channels-last memory format, which kdbench uses on
    CPU (`models.place`; KDBENCH_CHANNELS_LAST=0 turns it off): the teacher's forward over a batch
    of 1000 (how targets are computed) and one TCN ff n = 4 epoch (students built by the runner)."""
    import copy

    rows: list[BenchRow] = []
    setup = s.setup("tcn", n_students=4, mode="ff", epochs=1, params={"finetune": False})
    teacher = setup.teacher.model
    x = setup.data.train.x[:1000]
    arms = {"contiguous": copy.deepcopy(teacher).to(memory_format=torch.contiguous_format),
            "channels_last": copy.deepcopy(teacher).to(memory_format=torch.channels_last)}
    with torch.inference_mode():
        same = torch.allclose(arms["contiguous"](x), arms["channels_last"](x), rtol=1e-4, atol=1e-4)
    reps = max(2, s.sizes.latency_repeats // 4)
    res = interleave({k: (lambda m=m: forward_ms(m, x, s.device, reps)) for k, m in arms.items()}, s.cfg.n_rounds)
    rows.append(BenchRow(
        "layout: teacher forward contiguous / channels_last", "contiguous", median(res["contiguous"]), "channels_last",
        median(res["channels_last"]), "ms", Goal(),
        notes=f"{setup.resolved.spec.teacher} teacher, batch {len(x)}, median of {reps} forwards x {s.cfg.n_rounds} rounds",
        checks={"outputs equal (1e-4)": same}, details={k + "_ms": v for k, v in res.items()},
    ))
    fits: dict[str, list[Timed]] = {"contiguous": [], "channels_last": []}

    def arm(kind: str) -> float:
        with mock.patch.dict(os.environ, {"KDBENCH_CHANNELS_LAST": "1" if kind == "channels_last" else "0"}):
            fits[kind].append(fit_once(setup, s.context(setup, s.sizes.fused_train)))
        return loop_seconds(fits[kind][-1].fit)

    times = interleave({k: (lambda k=k: arm(k)) for k in fits}, s.cfg.n_rounds)
    a, b = fits["contiguous"][0].fit, fits["channels_last"][0].fit
    mse_diff = max_rel_diff(a.metrics["feature_mse_per_student"], b.metrics["feature_mse_per_student"])
    rows.append(BenchRow(
        "layout: TCN ff n=4 epoch contiguous / channels_last", "contiguous", median(times["contiguous"]), "channels_last",
        median(times["channels_last"]), "s", Goal(),
        notes=f"1 epoch on {min(s.sizes.fused_train, len(setup.data.train))} samples, students {'/'.join(b.metrics['fusion'])}; "
              f"max rel feature-MSE diff {mse_diff:.2g} (summation order only)",
        checks={"per-student feature MSE agree (rel 1e-3)": mse_diff <= 1e-3},
        details={k + "_s": v for k, v in times.items()},
    ))
    return rows


# -- memory ------------------------------------------------------------------------------------


def _tree_memory(proc: Any) -> tuple[float, float]:
    """(sum of RSS, sum of PSS) in MiB over a process and its descendants (PSS: shared pages split
    among the processes mapping them, so shared memory is counted once)."""
    import psutil

    rss = pss = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return rss / 2**20, pss / 2**20


def run_polled(cmd: list[str], env: dict[str, str], interval: float = 0.1) -> dict[str, Any]:
    """Run a command, sampling the memory of its process tree; returns peaks and the exit code."""
    import psutil

    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        popen = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        proc = psutil.Process(popen.pid)
        peak_rss = peak_pss = 0.0
        while popen.poll() is None:
            rss, pss = _tree_memory(proc)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(interval)
        log.seek(0)
        tail = log.read()[-2000:].decode(errors="replace")
    return {"returncode": popen.returncode, "peak_tree_rss_mb": peak_rss, "peak_tree_pss_mb": peak_pss,
            "wall_s": time.perf_counter() - t0, "output_tail": tail}


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"KDBENCH_PROGRESS": "0", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return env


def mapped_file(t: Tensor) -> str | None:
    """The file whose memory mapping holds tensor `t`'s data (Linux /proc/self/maps), else None."""
    ptr = t.untyped_storage().data_ptr()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                lo, hi = (int(v, 16) for v in parts[0].split("-"))
                if lo <= ptr < hi and len(parts) == 6 and parts[5].strip().startswith("/"):
                    return parts[5].strip()
    except OSError:
        return None
    return None


_MMAP_CHILD = """
import sys, numpy as np
print("base", flush=True); sys.stdin.readline()
a = np.load(sys.argv[1], mmap_mode="r" if sys.argv[2] == "1" else None)
float(a.sum(dtype=np.float64))  # touch every page
print("ready", flush=True); sys.stdin.readline()
"""


def mmap_sharing(path: str, workers: int = 2) -> dict[str, Any]:
    """Load a cached .npy in `workers` concurrent processes with and without np.load(mmap_mode='r')
    and measure what it adds to their memory: PSS (shared pages split among sharers), USS (private)."""
    import psutil

    out: dict[str, Any] = {}
    for mmap in (True, False):
        procs = [subprocess.Popen([sys.executable, "-c", _MMAP_CHILD, path, "1" if mmap else "0"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True) for _ in range(workers)]
        try:
            def snap() -> list[tuple[float, float, float]]:
                infos = [psutil.Process(p.pid).memory_full_info() for p in procs]
                return [(i.rss / 2**20, getattr(i, "pss", i.rss) / 2**20, i.uss / 2**20) for i in infos]

            for p in procs:
                assert p.stdout.readline().strip() == "base"
            base = snap()
            for p in procs:
                p.stdin.write("\n")
                p.stdin.flush()
            for p in procs:
                assert p.stdout.readline().strip() == "ready"
            after = snap()
        finally:
            for p in procs:
                try:
                    p.stdin.write("\n")
                    p.stdin.close()
                except OSError:
                    pass
                p.wait(timeout=60)
        delta = [tuple(a - b for a, b in zip(x, y)) for x, y in zip(after, base)]
        out["mmap" if mmap else "copy"] = {"rss_mb": sum(d[0] for d in delta), "pss_mb": sum(d[1] for d in delta),
                                           "uss_mb": sum(d[2] for d in delta)}
    out["file_mb"] = Path(path).stat().st_size / 2**20
    out["workers"] = workers
    return out


@BENCHES.register("memory")
def bench_memory(s: Session) -> list[BenchRow]:
    """Peak memory of a TCN run (its record's ru_maxrss, and the polled process tree) and of a
    `--workers 2` sweep (parent + workers, polled: RSS sum and PSS sum), against 3 GB; and whether
    the cached targets are memory-mapped and shared between workers rather than copied."""
    z = s.sizes
    limit = 3072.0
    env = _child_env(s.cfg.threads)
    rows = []
    common = ["--method", "tcn", "--dataset", z.dataset, "--students", "8", "--epochs", "1", "--no-latency",
              "--param", "finetune_epochs=1", "--device", s.cfg.device]
    if s.cfg.data_root:
        common += ["--data-root", s.cfg.data_root]
    if z.recipe is not None:
        common += ["--teacher-epochs", str(z.recipe.epochs)]
    setup = s.setup("tcn", n_students=8, mode="ff")  # teacher and targets cached before the children start
    targets = s.context(setup).targets("train")
    with tempfile.TemporaryDirectory(prefix="kdbench-bench-") as tmp:
        run = run_polled([sys.executable, "-m", "kdbench", "run", *common, "--out", str(Path(tmp, "run"))], env)
        rec = next(Path(tmp, "run").glob("*.json"), None) if run["returncode"] == 0 else None
        rec_rss = json.loads(rec.read_text())["metrics"].get("peak_rss_mb") if rec else None
        rows.append(BenchRow(
            "memory: TCN run peak RSS / 3 GB", "peak RSS", rec_rss, "limit", limit, "MiB", Goal("<=", 1.0),
            notes=f"TCN ff n=8, 1 epoch on full {z.dataset} (ru_maxrss of the run); polled tree peak "
                  f"{run['peak_tree_rss_mb']:.0f} MiB",
            checks={"run ok": run["returncode"] == 0},
            details={**{k: v for k, v in run.items() if k != "output_tail"}, **({} if run["returncode"] == 0 else {"output_tail": run["output_tail"]})},
        ))
        sw = run_polled([sys.executable, "-m", "kdbench", "sweep", *common, "--seeds", str(z.memory_sweep_runs),
                         "--workers", "2", "--threads", str(s.cfg.threads), "--out", str(Path(tmp, "sweep"))], env)
        rows.append(BenchRow(
            "memory: sweep --workers 2 peak PSS / 3 GB", "peak PSS (tree)", sw["peak_tree_pss_mb"], "limit", limit, "MiB",
            Goal("<=", 1.0),
            notes=f"{z.memory_sweep_runs} such runs; parent + forkserver + workers summed, polled every 0.1 s; PSS counts "
                  f"pages shared by forked workers (torch, preloaded by the forkserver) once; the plain RSS sum, which "
                  f"counts them per process, peaked at {sw['peak_tree_rss_mb']:.0f} MiB",
            checks={"sweep ok": sw["returncode"] == 0},
            details={**{k: v for k, v in sw.items() if k != "output_tail"}, **({} if sw["returncode"] == 0 else {"output_tail": sw["output_tail"]})},
        ))
    path = mapped_file(targets.features)
    checks = {"train targets tensor is a view of the memory-mapped .npy": path is not None and path.endswith(".npy")}
    if path is None:
        rows.append(BenchRow("memory: cached targets shared (PSS copy / mmap)", "copy", None, "mmap", None, "MiB",
                             notes="targets not memory-mapped (or no /proc/self/maps)", checks=checks))
        return rows
    share = mmap_sharing(path, workers=2)
    rows.append(BenchRow(
        "memory: cached targets in 2 workers, PSS copy / mmap", "np.load copy", share["copy"]["pss_mb"], "np.load mmap",
        share["mmap"]["pss_mb"], "MiB", Goal(">=", 1.8),
        notes=f"{Path(path).name} ({share['file_mb']:.0f} MiB) loaded in 2 processes at once; private (USS) "
              f"copy {share['copy']['uss_mb']:.0f} vs mmap {share['mmap']['uss_mb']:.0f} MiB (mmap PSS is also shared "
              f"with this bench process, which maps the same file)",
        checks=checks, details={**share, "file": path},
    ))
    return rows


# -- profile -----------------------------------------------------------------------------------

OP_CATEGORIES = {  # substring of an aten op name -> category (first match wins)
    "convolution_backward": "conv backward", "convolution": "conv forward", "conv": "conv forward",
    "mm": "matmul", "linear": "matmul", "max_pool": "pooling", "_foreach": "optimizer", "Optimizer": "optimizer",
    "adam": "optimizer", "index": "indexing / gather", "gather": "indexing / gather", "copy_": "copies", "cat": "copies",
    "stack": "copies", "clone": "copies",
}


def _category(op: str) -> str:
    return next((c for key, c in OP_CATEGORIES.items() if key in op), "elementwise / other")


def profile_fit(setup: Setup, ctx: Context, device: torch.device) -> dict[str, Any]:
    """One fit under torch.profiler: top ops by self time, time by category, time outside ops."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        timed = fit_once(setup, ctx)
    fit, wall = timed.fit, timed.wall_s
    loop = loop_seconds(fit, stage="students")
    events = [e for e in prof.key_averages() if e.key.startswith("aten::") or "Optimizer" in e.key]
    self_s = {e.key: e.self_cpu_time_total / 1e6 for e in events}
    calls = {e.key: e.count for e in events}
    in_ops = sum(self_s.values())
    top = sorted(self_s.items(), key=lambda kv: -kv[1])[:12]
    cats: dict[str, float] = {}
    for op, t in self_s.items():
        cats[_category(op)] = cats.get(_category(op), 0.0) + t
    return {"wall_s": wall, "loop_s": loop, "ops_s": in_ops,
            "top_ops": [{"op": op, "self_s": t, "pct_of_wall": 100 * t / wall, "calls": calls[op]} for op, t in top],
            "categories": {k: {"self_s": v, "pct_of_wall": 100 * v / wall} for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
            "table": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)}


@BENCHES.register("profile")
def bench_profile(s: Session) -> list[BenchRow]:
    """Where the time goes: one TCN ff epoch (n = 4, fused, the default) and one kd epoch (n = 1
    paper student), on the first `profile_train` samples."""
    rows = []
    for name, method, fields in (("tcn ff n=4", "tcn", dict(n_students=4, mode="ff", params={"finetune": False})),
                                 ("kd", "kd", {})):
        setup = s.setup(method, epochs=1, **fields)
        res = profile_fit(setup, s.context(setup, s.sizes.profile_train, n_eval=s.sizes.profile_eval), s.device)
        slug = "profile_" + name.replace(" ", "_").replace("=", "")
        s.artifacts[f"{slug}.txt"] = res.pop("table")
        top = ", ".join(f"{o['op'].removeprefix('aten::')} {o['pct_of_wall']:.0f}%" for o in res["top_ops"][:4])
        rows.append(BenchRow(
            f"profile: {name} epoch, wall / time in ops", "wall", res["wall_s"], "in aten ops", res["ops_s"], "s",
            notes=f"whole fit: 1 epoch on {s.sizes.profile_train} samples (loop {res['loop_s']:.3g} s), val/test cut to "
                  f"{s.sizes.profile_eval}; top: {top}", details=res,
        ))
    return rows


# ---------------------------------------------------------------------------------------------
# Running, environment, output
# ---------------------------------------------------------------------------------------------


def environment(s: Session) -> dict[str, Any]:
    from .measure import environment as env

    out = env(s.device)
    out.update({"threads": torch.get_num_threads(), "load_avg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                "omp": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")},
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return out


def select(only: str | Iterable[str] | None) -> list[str]:
    """Benchmark names to run (all when `only` is empty); unknown names are one clear error."""
    if not only:
        return [n for n in ORDER if n in BENCHES] + [n for n in BENCHES.names() if n not in ORDER]
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
    for n in names:
        BENCHES.get(n)  # KdbenchError with a did-you-mean
    return [n for n in ORDER if n in names]


ORDER = ["targets", "fused", "layout", "parallel", "efficiency", "inference", "memory", "profile"]


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


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "n/a"
    return f"{v:.3g}{(' ' + unit) if unit else ''}"


def table_rows(report: BenchReport) -> list[dict[str, str]]:
    out = []
    for r in report.rows:
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        checks = "" if not r.checks else ("checks ok" if all(r.checks.values()) else
                                          "CHECK FAILED: " + "; ".join(k for k, v in r.checks.items() if not v))
        notes = "; ".join(x for x in (r.error and f"ERROR {r.error}", checks, r.notes,
                                      r.load_avg and f"load {r.load_avg[0]}->{r.load_avg[1]}") if x)
        out.append({"name": r.name, "A": f"{_fmt(r.a, r.unit)} ({r.a_label})" if r.a_label else "n/a",
                    "B": f"{_fmt(r.b, r.unit)} ({r.b_label})" if r.b_label else "n/a",
                    "ratio A/B": _fmt(r.ratio), "goal": str(r.goal), "met?": met, "notes": notes})
    return out


def one_line(r: BenchRow) -> str:
    return f"{r.name}: A={_fmt(r.a, r.unit)} B={_fmt(r.b, r.unit)} ratio={_fmt(r.ratio)} goal {r.goal}" + (
        f" ERROR {r.error}" if r.error else "") + ("" if all(r.checks.values()) else " CHECK FAILED")


def markdown(report: BenchReport) -> str:
    import pandas as pd

    env = report.env
    head = [
        "# kdbench bench", "",
        f"{env.get('date')}, kdbench {env.get('kdbench_version')} @ {env.get('git_commit')}, torch {env.get('torch')}, "
        f"device {env.get('device')}, CPU {env.get('cpu')} ({env.get('cpu_count')} cores), "
        f"torch threads {report.config['threads']}, rounds {report.config['rounds']} "
        f"(targets, parallel: {report.config['long_rounds']}), {'quick' if report.config['quick'] else 'full'} sizes.",
        f"Load average (1/5/15 min) at start {env.get('load_avg_1_5_15')}, at end {env.get('load_avg_end_1_5_15')}; "
        "per-benchmark 1-min load at its start -> end in the notes. Ratio = A / B; goals are reported, not asserted; "
        "equality checks are asserted.", "",
        pd.DataFrame(table_rows(report)).to_markdown(index=False), "",
    ]
    for r in report.rows:
        if r.name.startswith("profile") and r.details.get("categories"):
            head += [f"## {r.name}", "", "| category | self s | % of wall |", "|---|---|---|"]
            head += [f"| {k} | {v['self_s']:.3g} | {v['pct_of_wall']:.1f} |" for k, v in r.details["categories"].items()]
            head += ["", "| top op | self s | % of wall | calls |", "|---|---|---|---|"]
            head += [f"| {o['op']} | {o['self_s']:.3g} | {o['pct_of_wall']:.1f} | {o['calls']} |" for o in r.details["top_ops"]]
            head += ["", f"Time outside aten ops (Python, loop, allocator): "
                          f"{r.details['wall_s'] - r.details['ops_s']:.3g} s of {r.details['wall_s']:.3g} s.", ""]
    return "\n".join(head) + "\n"


def write_report(report: BenchReport, out_dir: str | Path) -> list[Path]:
    """bench.json + bench.md (+ profile tables) in `out_dir`, each written atomically."""
    from .store import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench.json", out / "bench.md"]
    atomic_write_text(paths[0], json.dumps(report.to_dict(), indent=1, default=str) + "\n")
    atomic_write_text(paths[1], markdown(report))
    for name, text in report.artifacts.items():
        paths.append(out / name)
        atomic_write_text(paths[-1], text + "\n")
    return paths
