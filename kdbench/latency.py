"""The quiet latency pass: inference times measured after training, one model at a time.

Latency measured inside each run shares the cores with the other runs of a sweep, and its cells
spread by hundreds of percent. This pass times the deployed predictors of finished runs one after
another, in one process, with torch's threads pinned (`threads`, default 1, recorded), a warm-up,
and as many timed calls as it takes for the 95% CI of the median (distribution-free, from order
statistics: `measure.median_ci`) to lie within 10% of the median, up to a cap on calls and seconds
that is recorded when hit (`measure.StopRule`), in interleaved rounds (`quiet_pass`) whose
medians give the timing and its CI (`measure.Timing.across_rounds`). It is the last step of `kdbench sweep` and the
command `kdbench latency RESULTS_DIR`; results go into the records (atomically) under the in-run
names (`latency_ms_b1`, `latency_ms_b256`, `latency.*`) with `latency_quiet: true`, the CI, the
repeats and the thread count in `latency_pass`, and the machine's load in `env.load.latency`.

Design: records hold no weights, so each predictor is rebuilt from its record's spec
(`runner.resolve` + the method's `Method.fresh_predictor`) with fresh, seeded weights.
A forward pass costs the same whatever the weight values (dense float kernels; the one exception,
denormal floats, would make trained weights slower, not faster), so this times the architecture
that was trained without storing a copy of every model. The rebuilt predictor must have the
record's parameter count, else the record is skipped with that reason. Teachers are rebuilt the
same way (never trained here) and timed once per teacher per round.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from . import store
from .engine import progress_enabled, torch_threads
from .errors import KdbenchError
from .measure import LoadProbe, StopRule, Timing, adaptive_timing, environment, latency_ms, min_rounds

DEFAULT_THREADS = 1
DEFAULT_ROUNDS = 10
EXTRA_ROUNDS = 1.0  # a run with a timing still wider than asked after the rounds gets up to this many times more
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
            text += f", {len(self.capped)} with a timing whose CI across rounds is wider than asked"
        if self.skipped:
            text += f", {len(self.skipped)} skipped"
        return text


def quiet_pass(out_dir: str | Path, keys: Iterable[str] | None = None, *, threads: int = DEFAULT_THREADS,
               rule: StopRule = StopRule(), rounds: int = DEFAULT_ROUNDS, max_rounds: int | None = None,
               force: bool = False, data_root: str | Path | None = None, log: Log | None = print) -> PassResult:
    """Time the ok records of `out_dir` (those of `keys`, else all) that have no quiet latency yet
    (`force`: all of them again) and write the times into them. Bad input raises KdbenchError; a
    record that cannot be rebuilt here (data, device or module teacher missing) is skipped with why.

    The predictors are timed in `rounds` interleaved rounds (every predictor once per round, each
    round a `rounds`-th of the rule's seconds); a timing is the median of its rounds' medians, with
    the CI across rounds: the machine's drift from one minute to the next then falls on every run
    alike instead of on whichever run was being timed, and shows in the CI instead of hiding in
    the calls of one moment. A run with a timing whose CI across rounds is still wider than the rule
    asks gets further rounds, it alone, until every one of its timings is within the rule or it has
    `max_rounds` (default `rounds` x (1 + EXTRA_ROUNDS)); the CI shrinks about as one over the root
    of the rounds, so this closes moderate drift and records the rest as capped."""
    from filelock import FileLock

    out = store.results_dir(out_dir)
    check_threads(threads)
    check_rounds(rounds, rule)
    max_rounds = round(rounds * (1 + EXTRA_ROUNDS)) if max_rounds is None else max_rounds
    check_max_rounds(max_rounds, rounds)
    wanted = None if keys is None else set(keys)
    result = PassResult()
    with FileLock(str(out / LOCK_NAME)), torch_threads(threads):
        records = [r for r in store.read_records(out)[0] if r["status"] == "ok" and (wanted is None or r["run_key"] in wanted)]
        todo = [r for r in records if force or not (r.get("metrics") or {}).get("latency_quiet")]
        result.already = sorted({r["run_key"] for r in records} - {r["run_key"] for r in todo})
        timer = _Timer(rule, rounds, data_root)
        prepared = []
        for rec in sorted(todo, key=_data_order):
            try:
                prepared.append(timer.prepare(rec))
            except KdbenchError as e:
                result.skipped[rec["run_key"]] = str(e)
                if log:
                    log(f"latency: skipped {rec['run_key']}: {e}")
        probe = LoadProbe()
        for round_ in range(rounds if prepared else 0):
            for prep in progress(prepared, f"latency round {round_ + 1}/{rounds}", log):
                timer.time_round(prep, round_)
        for round_ in range(rounds, max_rounds):
            wide = [prep for prep in prepared if timer.wide(prep)]
            if not wide:
                break
            for prep in progress(wide, f"latency round {round_ + 1} (up to {max_rounds}, {len(wide)} wide)", log):
                timer.time_round(prep, round_)
        load = probe.finish()
        for prep in prepared:
            timed = timer.finish(prep, threads, load)
            store.write_record(out, timed)
            result.measured.append(prep.rec["run_key"])
            if timed["metrics"]["latency_pass"]["capped"]:
                result.capped.append(prep.rec["run_key"])
    if log:
        log(result.line(threads))
    return result


def check_threads(threads: Any) -> None:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise KdbenchError(f"latency threads must be an integer >= 1, got {threads!r}")


def check_rounds(rounds: Any, rule: StopRule = StopRule()) -> None:
    """The CI across rounds needs `min_rounds` of them (6 at 95%)."""
    least = min_rounds(rule.confidence)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < least:
        raise KdbenchError(f"latency rounds must be an integer >= {least} (a {rule.confidence:.0%} CI of the median "
                           f"across rounds needs {least}), got {rounds!r}")


def check_max_rounds(max_rounds: Any, rounds: int) -> None:
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < rounds:
        raise KdbenchError(f"latency max rounds must be an integer >= the rounds ({rounds}), got {max_rounds!r}")


def progress(items: list, desc: str, log: Log | None) -> Iterable:
    """A progress bar over a round (on a terminal, as the training loop's, and when logging)."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="run", leave=False, disable=log is None or not progress_enabled())


def _data_order(rec: dict[str, Any]) -> tuple:
    """Records sharing a data split next to each other: the split is loaded once for them."""
    s = rec["spec"]
    return tuple(str(s.get(k)) for k in ("dataset", "val_fraction", "split_seed", "max_train")) + (rec["run_key"],)


@dataclass
class _Prepared:
    """One record's rebuilt predictor and what it needs to be timed, with its timings so far."""

    rec: dict[str, Any]
    model: nn.Module
    latency_fn: Callable[..., dict[str, Any]] | None
    example: torch.Tensor
    device: torch.device
    teacher: tuple[str, nn.Module] | None  # (teacher key, model) when timed next to the variants
    parts: dict[str, list[Timing]] = field(default_factory=dict)
    variants: dict[str, Any] | None = None  # the nested shape the latency_fn returned


class _Timer:
    """Rebuilds records' predictors and times them round by round, each teacher once per round."""

    def __init__(self, rule: StopRule, rounds: int, data_root: str | Path | None):
        self.rule = rule
        self.rounds = rounds
        self.round_rule = replace(rule, min_seconds=rule.min_seconds / rounds, max_seconds=rule.max_seconds / rounds,
                                  max_repeats=max(rule.min_repeats, rule.max_repeats // rounds))
        self.data_root = data_root
        self.teachers: dict[str, nn.Module] = {}
        self.teacher_times: dict[tuple[str, str, int, int], Timing] = {}

    def prepare(self, rec: dict[str, Any]) -> _Prepared:
        """The record's predictor rebuilt with fresh weights (KdbenchError when it cannot be)."""
        from .engine import resolve_device
        from .runner import resolve, spec_from_record

        r = resolve(spec_from_record(rec))
        device = resolve_device(r.spec.device)
        data = _load_split(r.spec.dataset, r.spec.val_fraction, r.spec.split_seed, r.spec.max_train,
                           str(self.data_root) if self.data_root else None)
        tkey = str((rec.get("teacher") or {}).get("key") or r.spec.teacher)

        def teacher() -> nn.Module:
            if tkey not in self.teachers:
                self.teachers[tkey] = teacher_model(r.spec, data, device)
            return self.teachers[tkey]

        model, latency_fn = rebuild_predictor(r, data, device, teacher, rec)
        timed_teacher = (tkey, teacher()) if latency_fn is not None and r.method.needs_teacher else None
        return _Prepared(rec, model, latency_fn, data.test.x[:1].clone(), device, timed_teacher)

    def time_round(self, prep: _Prepared, round_: int) -> None:
        """One round of `prep`'s timings (as in-run: the teacher next to the variants)."""
        timings: dict[str, Timing] = {}
        for b in BATCHES:
            with adaptive_timing(self.round_rule) as got:
                latency_ms(prep.model, prep.example, b, prep.device)
            timings[f"latency_ms_b{b}"] = got[0]
        if prep.latency_fn is not None:  # the method's own variants (e.g. sequential / fused / parallel)
            with adaptive_timing(self.round_rule) as got:
                variants = prep.latency_fn(prep.example, prep.device)
            prep.variants = prep.variants or variants
            timings.update(pair_timings(dict(leaves(variants, "latency")), got))
            if prep.teacher is not None:
                for b in BATCHES:
                    timings[f"latency.b{b}.teacher"] = self._teacher_time(prep, b, round_)
        for name, t in timings.items():
            prep.parts.setdefault(name, []).append(t)

    def wide(self, prep: _Prepared) -> bool:
        """Whether one of `prep`'s timings so far has a CI across rounds wider than the rule asks."""
        return any(Timing.across_rounds(parts, self.rule).capped for parts in prep.parts.values())

    def _teacher_time(self, prep: _Prepared, batch: int, round_: int) -> Timing:
        tkey, model = prep.teacher
        key = (tkey, str(prep.device), batch, round_)
        if key not in self.teacher_times:
            with adaptive_timing(self.round_rule) as got:
                latency_ms(model, prep.example, batch, prep.device)
            self.teacher_times[key] = got[0]
        return self.teacher_times[key]

    def finish(self, prep: _Prepared, threads: int, load: dict[str, Any]) -> dict[str, Any]:
        """`prep`'s record with its latency metrics replaced by the quiet ones and the pass's load in env.load."""
        timings = {name: Timing.across_rounds(parts, self.rule) for name, parts in prep.parts.items()}
        metrics: dict[str, Any] = {f"latency_ms_b{b}": timings[f"latency_ms_b{b}"].median_ms for b in BATCHES}
        if prep.variants is not None:
            metrics["latency"] = copy.deepcopy(prep.variants)
            for name, t in timings.items():
                if name.startswith("latency."):
                    _set_leaf(metrics["latency"], name.split(".")[1:], t.median_ms)
        metrics["latency_quiet"] = True
        metrics["latency_pass"] = self._block(threads, prep.device, timings, len(prep.parts["latency_ms_b1"]))
        rec = prep.rec
        env = dict(rec.get("env") or {})
        env["load"] = {**(env.get("load") or {}), "latency": load}
        kept = {k: v for k, v in (rec.get("metrics") or {}).items() if k not in LATENCY_METRICS}
        return {**rec, "metrics": {**kept, **metrics}, "env": env}

    def _block(self, threads: int, device: torch.device, timings: dict[str, Timing], rounds: int) -> dict[str, Any]:
        return {"threads": threads, "device": str(device), "cpu": environment(device)["cpu"],
                "rule": asdict(self.rule), "rounds": rounds, "weights": WEIGHTS_NOTE,
                "capped": any(t.capped for t in timings.values()),
                "timings": {name: t.as_dict() for name, t in timings.items()},
                "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _set_leaf(d: dict[str, Any], path: list[str], value: float) -> None:
    for k in path[:-1]:
        d = d.setdefault(k, {})
    d[path[-1]] = value


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
