"""The Python API, mirroring the CLI: `sweep(...)` is `kdbench sweep`, `run(...)` is `kdbench run`,
`load_results(dir)` reads a results directory into pandas.

    import kdbench
    res = kdbench.sweep(["student", "kd", "tcn"], dataset="mnist", students=[1, 2, 4, 8],
                        mode=["ff", "gan"], seeds=3, out="results/mine", workers=2)
    res.df            # one row per ok run
    res.summary()     # mean ± std per (method, mode, n)
    kdbench.load_results("results/mine")
"""
from __future__ import annotations

import importlib
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pandas as pd

from . import store
from .config import RunSpec, check_report_name
from .errors import KdbenchError
from .resume import DEFAULT_EVERY_S, every_seconds
from .store import load_results
from .sweep import DEFAULT_OUT, PlannedRun, SweepSpec, plan, plan_table, summary_table

__all__ = ["sweep", "run", "load_results", "SweepResult"]


@dataclass
class SweepResult:
    """What a sweep did: its plan, the records of its runs (already-done ones included), counts."""

    out_dir: Path
    spec: SweepSpec
    planned: list[PlannedRun]
    records: list[dict[str, Any]]
    ran: int = 0
    skipped: int = 0
    dry_run: bool = False
    report_dir: Path | None = None
    latency: Any = None  # the quiet latency pass's kdbench.latency.PassResult (None when it did not run)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("status") != "ok"]

    @property
    def ok(self) -> bool:
        """Every planned run has an ok record."""
        return not self.dry_run and not self.failed and len(self.records) == len(self.planned)

    def frame(self, include_failed: bool = False) -> pd.DataFrame:
        """The sweep's records as a tidy DataFrame (the same rows `load_results` gives)."""
        rows = [store.record_to_row(r) for r in self.records if include_failed or r.get("status") == "ok"]
        return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["run_key", "status", *store.SPEC_COLUMNS, "variant"])

    @property
    def df(self) -> pd.DataFrame:
        return self.frame()

    def summary(self, metric: str = "test_acc_valbest") -> pd.DataFrame:
        return summary_table(self.records, metric)

    def plan_table(self) -> pd.DataFrame:
        return plan_table(self.planned)


def resolve_out(spec: SweepSpec, out: str | Path | None) -> Path:
    """--out, else the config's `out`, else results/<preset name>, else results/runs; never an existing file."""
    return check_out_dir(out or spec.out or (f"results/{spec.name}" if spec.name else DEFAULT_OUT))


def check_out_dir(path: str | Path) -> Path:
    """The --out directory, checked (not created): it, or its nearest existing parent, must be a directory."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise KdbenchError(f"--out '{path}' exists and is not a directory")
    parent = _nearest_existing(p)
    if not p.exists() and parent is not None and not parent.is_dir():
        raise KdbenchError(f"--out '{path}' cannot be created: '{parent}' is not a directory")
    return p


def check_out_writable(path: str | Path) -> None:
    """A record can be written into --out (or --out can be created): probed by creating a file, which
    also catches what permission bits do not show (read-only mounts, immutable folders, root)."""
    p = Path(path)
    where = p if p.is_dir() else _nearest_existing(p)
    if where is None:
        return
    try:
        fd, probe = tempfile.mkstemp(prefix=".kdbench-write-probe-", dir=where)
    except OSError as e:
        what = "is not writable" if where == p else f"cannot be created in '{where}'"
        raise KdbenchError(f"--out '{path}' {what} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def _nearest_existing(p: Path) -> Path | None:
    return next((q for q in (p.absolute(), *p.absolute().parents) if q.exists()), None)


def preflight(datasets: Iterable[str], out: str | Path | None, data_root: str | Path | None, *,
              local: bool = True, runs: Sequence[Any] = ()) -> None:
    """What can be known about the environment before training, checked now, cheapest first: the
    cache folder, that --out takes records, then the data (missing or unreadable files) and what the
    `runs` (resolved) ask of it (a teacher normalisation per input channel), so that a run never fails
    on them after its work. `local=False` (a remote Ray cluster) skips the cache and the data, which
    live on the cluster's nodes."""
    from .cache import check_cache_root
    from .data.api import check_dataset
    from .teachers import check_teacher_inputs

    if local:
        check_cache_root()
    if out is not None:
        check_out_writable(out)
    if local:
        for name in dict.fromkeys(datasets):
            check_dataset(name, data_root)
        check_teacher_inputs(runs, data_root)
        check_student_scales(runs, data_root)


def check_student_scales(runs: Iterable[Any], data_root: str | Path | None) -> None:
    """An `auto` student that no width of its family meets, under a `--student-scale` or on inputs its
    data options change (64-token text makes a relative budget smaller), fails now, not after the
    teacher is trained: the budget search is arithmetic, checked once per (dataset, options, n, scale)."""
    from .data import dataset_spec
    from .models.budget import budget_rule, check_auto_student
    from .teachers import default_teacher

    seen: set[tuple] = set()
    specs: dict[tuple, Any] = {}  # (dataset, options) -> its DataSpec: one load per dataset, not per cell
    for r in runs:
        s = r.spec
        options = dict(s.data_options or {})
        data = (s.dataset, tuple(sorted(options.items())))
        cell = (*data, s.n_students, s.budget, s.student_scale)
        if s.student != "auto" or (s.student_scale == 1 and not options) or cell in seen:
            continue
        seen.add(cell)
        if data not in specs:
            specs[data] = dataset_spec(s.dataset, data_root, **options)
        spec = specs[data]
        try:
            check_auto_student(spec, s.n_students, spec.num_classes, s.budget, budget_rule(s.dataset),
                               default_teacher(s.dataset), scale=s.student_scale)
        except KdbenchError as e:
            raise KdbenchError(f"{s.dataset}{f' {options}' if options else ''}, {s.n_students} student(s): {e}") from None


def sweep(method: str | Sequence[str] | None = None, *, preset: str | None = None, config: str | Path | None = None,
          out: str | Path | None = None, executor: str = "local", workers: int = 1, threads: int | None = None,
          address: str | None = None, data_root: str | Path | None = None, latency: bool = True, dry_run: bool = False,
          report: bool = False, report_dir: str | Path = "reports", report_name: str | None = None,
          progress: bool | None = None, log: Callable[[str], None] | None = print,
          trackers: str | Sequence[str] | None = None, latency_threads: int = 1, fuse_seeds: bool | str = "auto",
          yes: bool = False, checkpoint_every: float | str | None = DEFAULT_EVERY_S, **fields: Any) -> SweepResult:
    """Expand a grid, validate every run, skip the ones already done in `out`, run the rest.

    `fields` are the sweep fields of `kdbench sweep` / a YAML config (kdbench.fields): dataset, students,
    mode, seeds (a count or a list), budget, student, student_scale, teacher, teacher_epochs, epochs,
    batch_size, lr, val_fraction, split_seed, max_train, device, params (a dict), data_options (a dict:
    the dataset's options, e.g. {"maxlen": 200}). They override the preset / config. A list (or
    comma-separated text) of a field's or a parameter's values is a grid axis, crossed with the others;
    a grid of more than 10,000 runs is refused unless `yes=True`.
    A failed run is recorded and the sweep goes on; bad input raises KdbenchError before anything is written.
    `trackers` (`--log`): e.g. "tensorboard,mlflow" or ["wandb"], fed by every run (kdbench.tracking);
    `log` is where progress lines go.
    `latency`: time inference after training in the quiet pass (kdbench.latency, `latency_threads`
    torch threads), one model at a time, for the planned runs not yet timed; on a remote Ray cluster
    (`address`) the runs time themselves on their nodes instead.
    `fuse_seeds` ("auto", True, False; `--no-fuse-seeds` is False): runs that differ only in their
    seed train as one fused computation on the local executor (kdbench.seed_fuse), with the records of
    the runs alone; auto fuses where that is faster for the device and model size.
    `checkpoint_every` (seconds, 0 = every epoch; None or "off": never): a run saves its training
    state at most this often under `out/.partial/`, and a stopped sweep's runs resume from it
    (kdbench.resume; the local executor; seed-fused groups and Ray tasks start over).
    `teacher` may be an nn.Module (its weights are the teacher; `dense=` names the layer whose input is
    the dense representation, or is a function `dense(model, x)`); `normalize=` is `teacher_normalize`.
    """
    from . import ray_exec  # noqa: F401 - registers the `ray` executor (above executors: it imports them)
    from .executors import EXECUTORS
    from .seed_fuse import fuse_mode
    from .sweep import MAX_RUNS
    from .teachers import api_teacher_fields, check_sendable
    from .tracking import setup

    fields = api_teacher_fields(fields)
    every = every_seconds(checkpoint_every)
    spec = SweepSpec.build(preset=preset, config=config, overrides={"method": method, **fields})
    out_dir = resolve_out(spec, out)
    track = setup(trackers, out_dir)  # unknown or missing trackers: one line, before anything runs
    planned = plan(spec, out_dir, limit=None if yes else MAX_RUNS)  # validates every run
    executor_cls = EXECUTORS.get(executor)
    fuse = fuse_mode(fuse_seeds)  # `fuse_seeds` (auto / True / False): seed siblings train fused (kdbench.seed_fuse)
    for name, value in (("workers", workers), ("threads", threads), ("latency-threads", latency_threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise KdbenchError(f"--{name} must be an integer >= 1, got {value!r}")
    quiet = latency and not (executor == "ray" and address)  # a remote cluster's nodes hold the data
    if address and executor != "ray":
        raise KdbenchError("--address is for --executor ray")
    if executor == "local" and workers > 1:  # pickled to the pool's processes (Ray's cloudpickle takes more)
        check_sendable(p.resolved.module_teacher for p in planned)
    name = (report_name or spec.name or out_dir.name) if report else None
    if name is not None:
        check_report_name(name)  # not after the whole sweep ran
    if dry_run:
        return SweepResult(out_dir, spec, planned, _records(out_dir, planned), dry_run=True,
                           skipped=sum(p.status == "done" for p in planned))
    todo = [p for p in planned if p.status != "done"]
    if todo:  # a remote cluster's nodes have their own data roots and caches
        preflight([p.spec.dataset for p in todo], out_dir, data_root, local=not (executor == "ray" and address),
                  runs=[p.resolved for p in todo])
    skipped = len(planned) - len(todo)
    ran = 0
    if todo:
        ran = _execute(todo, out_dir, executor_cls, workers=workers, threads=threads, address=address,
                       data_root=data_root, latency=latency and not quiet, progress=progress, log=log, track=track,
                       fuse_seeds=fuse, checkpoint_every=every)
    timed = None
    if quiet and out_dir.is_dir():
        from .latency import quiet_pass

        timed = quiet_pass(out_dir, [p.key for p in planned], threads=latency_threads, data_root=data_root, log=log)
    result = SweepResult(out_dir, spec, planned, _records(out_dir, planned), ran=ran, skipped=skipped, latency=timed)
    if name is not None:
        result.report_dir = _report(out_dir, report_dir, name, log)
    return result


def _records(out_dir: Path, planned: Sequence[PlannedRun]) -> list[dict[str, Any]]:
    recs = []
    for p in planned:
        rec = store.read_record(store.record_path(out_dir, p.key)) if out_dir.is_dir() else None
        if rec is not None:
            recs.append(rec)
    return recs


def _execute(todo: Sequence[PlannedRun], out_dir: Path, executor_cls: type, *, workers: int, threads: int | None,
             address: str | None, data_root: str | Path | None, latency: bool, progress: bool | None,
             log: Callable[[str], None] | None, track: Any = None, fuse_seeds: str = "auto",
             checkpoint_every: float | None = DEFAULT_EVERY_S) -> int:
    from tqdm.auto import tqdm

    from .engine import progress_enabled
    from .executors import make_job, prepare

    show = progress_enabled() if progress is None else progress
    ex = executor_cls(workers=workers, threads=threads, address=address)
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), desc="sweep", unit="run", disable=not show, dynamic_ncols=True)
    say = (lambda msg: bar.write(msg)) if log is print else log  # noqa: E731 - keep the bar intact
    in_process = isinstance(workers, int) and workers == 1 and ex.name == "local"
    done = ran = 0
    try:
        with ex:
            # the jobs note their record files as planned, before a long preparation: a record that
            # appears later is a concurrent sweep's, not one to compute again
            jobs = [make_job(p.resolved, out_dir, data_root=str(data_root) if data_root else None, latency=latency,
                             threads=ex.threads_per_run(), progress=(None if show else False) if in_process else False,
                             write=ex.writes_in_worker, track=track, fuse_seeds=fuse_seeds, checkpoint_every=checkpoint_every)
                    for p in todo]
            if ex.prepares_in_parent:
                prepare([p.resolved for p in todo], data_root, progress=show, log=say)
            for fin in ex.map(jobs):
                done += 1
                ran += not fin.elsewhere  # a concurrent sweep into the same directory ran it
                if say:
                    by = " (run by another process)" if fin.elsewhere else ""
                    say(f"[{done}/{len(jobs)}] {run_line(fin.record, fin.wall_s)}{by}")
                bar.update(1)
    finally:
        bar.close()
    return ran


def run_line(record: dict[str, Any], wall_s: float) -> str:
    """key, status, test accuracy (last / val-best) and wall time of one finished run."""
    key = record.get("run_key", "?")
    if record.get("status") != "ok":
        err = record.get("error") or {}
        return f"{key} FAILED {err.get('type', '')}: {str(err.get('message', '')).splitlines()[0] if err.get('message') else ''} ({wall_s:.1f}s)"
    m = record.get("metrics") or {}

    def fmt(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"

    return f"{key} ok test_acc={fmt(m.get('test_acc'))} valbest={fmt(m.get('test_acc_valbest'))} ({wall_s:.1f}s)"


def _report(out_dir: Path, report_dir: str | Path, name: str, log: Callable[[str], None] | None,
            select: str = "none") -> Path | None:
    try:
        build = getattr(importlib.import_module("kdbench.report"), "build_report")
    except (ImportError, AttributeError):
        if log:
            log("note: kdbench.report is not available; no report written")
        return None
    path = Path(build(out_dir, report_dir, name=name, select=select))  # select "val": tuning on val
    if log:
        log(f"report: {path}")
    return path


def run(method: str, *, out: str | Path | None = None, data_root: str | Path | None = None, latency: bool = True,
        progress: bool | None = None, trackers: str | Sequence[str] | None = None,
        checkpoint_every: float | str | None = DEFAULT_EVERY_S, **fields: Any) -> dict[str, Any]:
    """One run (`kdbench run`): returns its record; with `out`, also writes it there (failures as
    `failed` records). Without `out` a failure raises. `trackers` (`--log`) also get its epochs and
    record; their local stores go under `out` (else the current directory). `teacher=`, `dense=`,
    `normalize=`, `checkpoint_every` (with `out`): as for `sweep`."""
    from .runner import execute, resolve
    from .runner import run as run_spec
    from .teachers import api_teacher_fields
    from .tracking import setup

    path = check_out_dir(out) if out is not None else None
    every = every_seconds(checkpoint_every)
    track = setup(trackers, path if path is not None else Path("."))
    r = resolve(RunSpec.from_dict({"method": method, **api_teacher_fields(fields)}))
    preflight([r.spec.dataset], path, data_root, runs=[r])
    if path is None:
        return run_spec(r.spec, data_root=data_root, progress=progress, latency=latency, resolved=r, track=track)
    return execute(r.spec, path, data_root=data_root, progress=progress, latency=latency, resolved=r, track=track,
                   checkpoint_every=every)
