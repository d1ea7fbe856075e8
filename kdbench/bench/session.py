"""One benchmark session: data and teachers loaded once and shared by the benchmarks, fresh
contexts on them (cut to fewer samples, or with the teacher in the loop), and a timed `method.fit`."""
from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..config import RunSpec
from ..data.base import Split, Splits
from ..engine import resolve_device, seed_everything
from ..method import Context, FitResult, Targets
from .base import BenchConfig
from .inloop import teacher_in_loop_targets
from .timing import sync


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
        return self.setup_spec(self.spec(method, **fields))

    def setup_spec(self, spec: RunSpec) -> Setup:
        """`setup` for a spec given whole (a sweep's planned run)."""
        from ..runner import check_data, load_data, resolve, resolve_teacher

        r = resolve(spec)
        s = r.spec
        dkey = (s.dataset, s.val_fraction, s.split_seed, s.max_train, tuple(sorted(s.data_options.items())))
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
        from ..runner import build_context

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


def cached_targets(teacher_key: str) -> list:
    """The cache entries (one per split) of one teacher's targets."""
    from ..cache import cache_root

    base = cache_root() / "targets"
    return [p for p in sorted(base.glob(f"{teacher_key}-*")) if p.is_dir()] if base.is_dir() else []


def forget_targets(teacher_key: str) -> int:
    """Delete the cached targets of one teacher (every split), so that the next run computes them
    again, as a fresh sweep would; its teacher stays cached. Returns how many entries went."""
    from ..cache import CacheEntry

    entries = cached_targets(teacher_key)
    for path in entries:
        with CacheEntry("targets", path.name).lock:
            shutil.rmtree(path, ignore_errors=True)
    return len(entries)
