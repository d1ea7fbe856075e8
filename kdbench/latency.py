"""The quiet latency pass: inference times measured after training, one model at a time.

Latency measured inside each run shares the cores with the other runs of a sweep, and its cells
spread by hundreds of percent. This pass times the deployed predictors of finished runs one after
another, in one process, with torch's threads pinned (`threads`, default 1, recorded), a warm-up,
and as many timed calls as it takes for the 95% CI of the median (distribution-free, from order
statistics: `measure.median_ci`) to lie within 10% of the median, up to a cap on calls and seconds
that is recorded when hit (`measure.StopRule`). It is the last step of `kdbench sweep` and the
command `kdbench latency RESULTS_DIR`; results go into the records (atomically) under the in-run
names (`latency_ms_b1`, `latency_ms_b256`, `latency.*`) with `latency_quiet: true`, the CI, the
repeats and the thread count in `latency_pass`, and the machine's load in `env.load.latency`.

Design: records hold no weights, so each predictor is rebuilt from its record's spec
(`runner.resolve` + the method's `Method.fresh_predictor`) with fresh, seeded weights.
A forward pass costs the same whatever the weight values (dense float kernels; the one exception,
denormal floats, would make trained weights slower, not faster), so this times the architecture
that was trained without storing a copy of every model. The rebuilt predictor must have the
record's parameter count, else the record is skipped with that reason. Teachers are rebuilt the
same way (never trained here) and timed once per teacher per pass.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from . import store
from .engine import torch_threads
from .errors import KdbenchError
from .measure import LoadProbe, StopRule, Timing, adaptive_timing, environment, latency_ms

DEFAULT_THREADS = 1
BATCHES = (1, 256)
LOCK_NAME = ".latency.lock"  # one pass per results directory at a time (two at once would not be quiet)
# metrics this pass owns: replaced as a whole, so no in-run value survives next to a quiet one
LATENCY_METRICS = ("latency_ms_b1", "latency_ms_b256", "latency", "latency_quiet", "latency_pass")
WEIGHTS_NOTE = "fresh seeded weights, architecture rebuilt from the spec (latency does not depend on weight values)"

Log = Callable[[str], None]


@dataclass
class PassResult:
    """What a pass did: run keys measured (and of those, the ones where a cap stopped a timing),
    already quiet, and skipped with the reason."""

    measured: list[str] = field(default_factory=list)
    capped: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def line(self, threads: int) -> str:
        """One summary line for the log."""
        text = (f"latency (quiet pass, {threads} thread{'s' if threads != 1 else ''}): {len(self.measured)} "
                f"run(s) timed, {len(self.already)} already timed")
        if self.capped:
            text += f", {len(self.capped)} with a timing stopped by the cap (CI wider than asked)"
        if self.skipped:
            text += f", {len(self.skipped)} skipped"
        return text


def quiet_pass(out_dir: str | Path, keys: Iterable[str] | None = None, *, threads: int = DEFAULT_THREADS,
               rule: StopRule = StopRule(), force: bool = False, data_root: str | Path | None = None,
               log: Log | None = print) -> PassResult:
    """Time the ok records of `out_dir` (those of `keys`, else all) that have no quiet latency yet
    (`force`: all of them again) and write the times into them. Bad input raises KdbenchError; a
    record that cannot be rebuilt here (data, device or module teacher missing) is skipped with why."""
    from filelock import FileLock

    out = store.results_dir(out_dir)
    check_threads(threads)
    wanted = None if keys is None else set(keys)
    result = PassResult()
    with FileLock(str(out / LOCK_NAME)), torch_threads(threads):
        records = [r for r in store.read_records(out)[0] if r["status"] == "ok" and (wanted is None or r["run_key"] in wanted)]
        todo = [r for r in records if force or not (r.get("metrics") or {}).get("latency_quiet")]
        result.already = sorted({r["run_key"] for r in records} - {r["run_key"] for r in todo})
        timer = _Timer(rule, data_root)
        for rec in sorted(todo, key=_data_order):
            key = rec["run_key"]
            try:
                timed = timer.record(rec, threads)
            except KdbenchError as e:
                result.skipped[key] = str(e)
                if log:
                    log(f"latency: skipped {key}: {e}")
                continue
            store.write_record(out, timed)
            result.measured.append(key)
            if timed["metrics"]["latency_pass"]["capped"]:
                result.capped.append(key)
    if log:
        log(result.line(threads))
    return result


def check_threads(threads: Any) -> None:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise KdbenchError(f"latency threads must be an integer >= 1, got {threads!r}")


def _data_order(rec: dict[str, Any]) -> tuple:
    """Records sharing a data split next to each other: the split is loaded once for them."""
    s = rec["spec"]
    return tuple(str(s.get(k)) for k in ("dataset", "val_fraction", "split_seed", "max_train")) + (rec["run_key"],)


class _Timer:
    """Times records one by one, keeping the last data split and each teacher's timings."""

    def __init__(self, rule: StopRule, data_root: str | Path | None):
        self.rule = rule
        self.data_root = data_root
        self.teacher_times: dict[tuple[str, str, int], Timing] = {}

    def record(self, rec: dict[str, Any], threads: int) -> dict[str, Any]:
        """`rec` with its latency metrics replaced by quiet ones and the pass's load in env.load."""
        from .engine import resolve_device
        from .runner import resolve, spec_from_record

        r = resolve(spec_from_record(rec))
        device = resolve_device(r.spec.device)
        data = _load_split(r.spec.dataset, r.spec.val_fraction, r.spec.split_seed, r.spec.max_train,
                           str(self.data_root) if self.data_root else None)
        teacher = functools.lru_cache(maxsize=1)(lambda: teacher_model(r.spec, data, device))
        model, latency_fn = rebuild_predictor(r, data, device, teacher, rec)
        example = data.test.x[:1]
        probe = LoadProbe()
        metrics, timings = self._time(model, latency_fn, example, device)
        if "latency" in metrics and r.method.needs_teacher:  # as in-run: the teacher next to the variants
            tkey = str((rec.get("teacher") or {}).get("key") or r.spec.teacher)
            for b in BATCHES:
                t = self._teacher_time(tkey, teacher, example, b, device)
                metrics["latency"].setdefault(f"b{b}", {})["teacher"] = t.median_ms
                timings[f"latency.b{b}.teacher"] = t
        load = probe.finish()
        metrics["latency_quiet"] = True
        metrics["latency_pass"] = self._block(threads, device, timings)
        env = dict(rec.get("env") or {})
        env["load"] = {**(env.get("load") or {}), "latency": load}
        kept = {k: v for k, v in (rec.get("metrics") or {}).items() if k not in LATENCY_METRICS}
        return {**rec, "metrics": {**kept, **metrics}, "env": env}

    def _time(self, model: nn.Module, extra: Callable[..., dict[str, Any]] | None, example: torch.Tensor,
              device: torch.device) -> tuple[dict[str, Any], dict[str, Timing]]:
        metrics: dict[str, Any] = {}
        timings: dict[str, Timing] = {}
        for b in BATCHES:
            with adaptive_timing(self.rule) as got:
                metrics[f"latency_ms_b{b}"] = latency_ms(model, example, b, device)
            timings[f"latency_ms_b{b}"] = got[0]
        if extra is not None:  # the method's own variants (e.g. sequential / fused / parallel)
            with adaptive_timing(self.rule) as got:
                metrics["latency"] = extra(example, device)
            timings.update(pair_timings(dict(leaves(metrics["latency"], "latency")), got))
        return metrics, timings

    def _teacher_time(self, tkey: str, teacher: Callable[[], nn.Module], example: torch.Tensor, batch: int,
                      device: torch.device) -> Timing:
        key = (tkey, str(device), batch)
        if key not in self.teacher_times:
            with adaptive_timing(self.rule) as got:
                latency_ms(teacher(), example, batch, device)
            self.teacher_times[key] = got[0]
        return self.teacher_times[key]

    def _block(self, threads: int, device: torch.device, timings: dict[str, Timing]) -> dict[str, Any]:
        return {"threads": threads, "device": str(device), "cpu": environment(device)["cpu"],
                "rule": asdict(self.rule), "weights": WEIGHTS_NOTE,
                "capped": any(t.capped for t in timings.values()),
                "timings": {name: t.as_dict() for name, t in timings.items()},
                "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


@functools.lru_cache(maxsize=1)
def _load_split(dataset: str, val_fraction: float, split_seed: int, max_train: int | None, data_root: str | None) -> Any:
    """The run's data split (its spec and a test example), the last one kept."""
    from .data import load_dataset
    from .runner import check_data

    check_data(dataset, data_root)  # missing data: the one line saying how to get it
    return load_dataset(dataset, data_root, val_fraction=val_fraction, split_seed=split_seed, max_train=max_train)


def leaves(d: dict[str, Any], prefix: str) -> Iterator[tuple[str, float]]:
    """(dotted name, number) of every number in a nested dict: `latency.b1.fused`, ..."""
    for k, v in d.items():
        name = f"{prefix}.{k}"
        if isinstance(v, dict):
            yield from leaves(v, name)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield name, float(v)


def pair_timings(values: dict[str, float], timings: list[Timing]) -> dict[str, Timing]:
    """The Timing behind each value a `latency_fn` returned: the one whose median it is (each used once)."""
    left = list(timings)
    out: dict[str, Timing] = {}
    for name, v in values.items():
        i = next((i for i, t in enumerate(left) if t.median_ms == v), None)
        if i is not None:
            out[name] = left.pop(i)
    return out


# ------------------------------------------------------------------------------------------ rebuilding

def rebuild_predictor(r: Any, data: Any, device: torch.device, teacher: Callable[[], nn.Module],
                      rec: dict[str, Any]) -> tuple[nn.Module, Callable[..., dict[str, Any]] | None]:
    """The deployed predictor of resolved run `r`, with fresh weights seeded by the run's seed, and
    its `latency_fn` (or None); it must have the record's parameter count (else the pass would time another model)."""
    from .models import count_params
    from .runner import build_context

    ctx = build_context(r, data, device, None, False, {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(r.spec.seed)
        model, latency_fn = r.method.fresh_predictor(ctx, teacher)  # the method's own deployed form
    model.eval()
    want, got = (rec.get("metrics") or {}).get("params"), count_params(model)
    if want is not None and want != got:
        raise KdbenchError(f"the rebuilt {r.spec.method} predictor has {got} parameters, the record {want}: "
                           f"this kdbench cannot rebuild it (the record's code version is {rec.get('code_version')})")
    return model, latency_fn


def teacher_model(spec: Any, data: Any, device: torch.device) -> nn.Module:
    """The run's teacher architecture with fresh weights, never trained here: a zoo model or an
    importable class (also for `file:` teachers), or a copy of the `module:` teacher registered in
    this process (elsewhere: one line saying it cannot be rebuilt)."""
    from .models import place
    from .models.dense import ExternalModel
    from .teachers import (FILE_PREFIX, MODULE_PREFIX, build_teacher_model, checkpoint_teacher, input_normalization,
                           model_options, module_teacher)

    if spec.teacher.startswith(MODULE_PREFIX):
        mt = module_teacher(spec.teacher)
        norm = input_normalization(spec.teacher_normalize, data.spec)
        model = place(ExternalModel(copy.deepcopy(mt.module), mt.dense, norm), device)
    else:
        arch = spec.teacher
        if arch.startswith(FILE_PREFIX):
            arch = checkpoint_teacher(arch, spec.dataset)[0]
        model = build_teacher_model(arch, data.spec, device, **model_options(spec.teacher_normalize))
    return model.eval().requires_grad_(False)
