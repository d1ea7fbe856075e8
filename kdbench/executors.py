"""Executors run a sweep's resolved runs and hand back their records as they finish.

- `local` (default): in-process when `workers == 1`, else a process pool (forkserver, else spawn:
  never a fork of a process whose torch thread pools started), each worker limited to its share
  of the CPU threads.
- `ray`: the same jobs as Ray tasks (`--executor ray --address ADDR`, the `ray` extra); workers
  return records and the driver writes them, so a cluster needs no shared results directory.

Every run goes through `runner.execute`, so a run that raises becomes a `failed` record and the
others go on. Teachers and their targets are built once in the parent before fanning out (the
local pool), or serialised by the cache's file lock (Ray workers on one machine).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from . import store
from .config import CODE_VERSION, canonical_json
from .errors import KdbenchError
from .registry import Registry


@dataclass(frozen=True)
class Job:
    """One run as a worker needs it: the resolved spec (device pinned, so the key stays valid on
    any machine), where records go, and how the worker is set up."""

    resolved: Any  # runner.Resolved
    out_dir: str
    data_root: str | None = None
    latency: bool = True
    threads: int | None = None  # torch.set_num_threads in the worker; None = leave as is
    progress: bool | None = False
    write: bool = True  # the worker writes the record (False: the driver writes it)

    @property
    def key(self) -> str:
        return self.resolved.key


@dataclass
class Finished:
    job: Job
    record: dict[str, Any]
    wall_s: float


def make_job(resolved: Any, out_dir: str | Path, **kw: Any) -> Job:
    """A job whose `device: auto` is pinned to the device its key was computed for (a Ray node
    with a GPU must not run a spec planned for the CPU under the CPU's key)."""
    if resolved.spec.device == "auto":
        resolved = dataclasses.replace(resolved, spec=resolved.spec.replace(device=resolved.canonical["device"]))
    return Job(resolved, str(out_dir), **kw)


def run_job(job: Job) -> tuple[dict[str, Any], float]:
    """Execute one job (in whatever process runs it); returns (record, wall seconds)."""
    import torch

    from .runner import execute

    previous = torch.get_num_threads()
    if job.threads:
        torch.set_num_threads(job.threads)
    t0 = time.perf_counter()
    try:
        if job.write:
            record = execute(job.resolved.spec, job.out_dir, data_root=job.data_root, progress=job.progress,
                             latency=job.latency, resolved=job.resolved)
        else:
            with tempfile.TemporaryDirectory(prefix="kdbench-run-") as tmp:
                record = execute(job.resolved.spec, tmp, data_root=job.data_root, progress=job.progress,
                                 latency=job.latency, resolved=job.resolved)
    finally:
        if job.threads:
            torch.set_num_threads(previous)
    return record, time.perf_counter() - t0


def failed_record(job: Job, exc: BaseException, what: str | None = None) -> dict[str, Any]:
    """A `failed` record for a run whose worker died or could not report (the run itself never got to)."""
    from .measure import environment
    from .method import params_changed

    r = job.resolved
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {
        "run_key": r.key, "status": "failed", "spec": {**r.canonical, "params_changed": params_changed(r.method, r.params)},
        "error": {"type": type(exc).__name__, "message": what or str(exc) or type(exc).__name__,
                  "traceback": "".join(traceback.format_exception(exc))[-4000:]},
        "metrics": {}, "env": environment(), "code_version": CODE_VERSION, "started_at": now, "finished_at": now,
    }


def _record_failure(job: Job, exc: BaseException, what: str | None = None) -> dict[str, Any]:
    record = failed_record(job, exc, what)
    try:
        store.write_record(Path(job.out_dir), record)
    except OSError:
        pass
    return record


# ---------------------------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------------------------
class Executor:
    """Runs jobs; `map` yields `Finished` in completion order. Subclasses set the class fields."""

    name = "base"
    prepares_in_parent = False  # build teachers / targets in the parent before fanning out
    writes_in_worker = True

    def threads_per_run(self) -> int | None:
        return None

    def map(self, jobs: Sequence[Job]) -> Iterator[Finished]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


EXECUTORS: Registry[type[Executor]] = Registry("executor")


def get_executor(name: str, **options: Any) -> Executor:
    return EXECUTORS.get(name)(**options)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """`workers == 1`: in this process, one run after another. Otherwise a process pool with
    `threads` torch threads per worker (default: this machine's cores divided among the workers)."""

    name = "local"

    def __init__(self, workers: int = 1, threads: int | None = None, address: str | None = None):
        if address:
            raise KdbenchError("--address is for --executor ray; the local executor runs on this machine")
        if workers < 1:
            raise KdbenchError(f"--workers must be >= 1, got {workers}")
        if threads is not None and threads < 1:
            raise KdbenchError(f"--threads must be >= 1, got {threads}")
        self.workers = workers
        self.threads = threads
        self.prepares_in_parent = workers > 1

    def threads_per_run(self) -> int | None:
        if self.threads is not None:
            return self.threads
        return None if self.workers == 1 else max(1, cpu_count() // self.workers)

    def map(self, jobs: Sequence[Job]) -> Iterator[Finished]:
        if self.workers == 1:
            for job in jobs:
                record, wall = run_job(job)
                yield Finished(job, record, wall)
            return
        yield from _pool_map(list(jobs), min(self.workers, len(jobs)) or 1, self.threads_per_run())


_STARTED: Any = None  # in a pool worker: queue on which each run announces its start


def gpu_for_worker(slot: int, n_gpus: int, visible: str | None) -> str | None:
    """CUDA_VISIBLE_DEVICES for the pool's `slot`-th worker: workers take the visible GPUs in turn,
    so `--workers 4` on a 4-GPU machine gives each run a GPU of its own (None: leave as is)."""
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(n_gpus)]
    return ids[slot % len(ids)] if len(ids) > 1 else None


def _init_worker(threads: int | None, started: Any = None, env: dict[str, str] | None = None,
                 slots: Any = None, n_gpus: int = 0) -> None:
    """Pool worker set-up: the parent's KDBENCH_* settings as of now (a forkserver started earlier
    holds old ones), a GPU of its own where there are several, die with the parent (Linux), use
    our share of the threads, stay quiet."""
    global _STARTED
    _STARTED = started
    if env is not None:
        for k in [k for k in os.environ if k.startswith("KDBENCH_") and k not in env]:
            del os.environ[k]
        os.environ.update(env)
    if slots is not None and n_gpus > 1:  # before this process touches CUDA (the forkserver never does)
        with slots.get_lock():
            slot, slots.value = slots.value, slots.value + 1
        gpu = gpu_for_worker(slot, n_gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    os.environ["KDBENCH_PROGRESS"] = "0"
    if threads:
        import torch

        torch.set_num_threads(threads)


def _kdbench_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("KDBENCH_")}


def _mp_context() -> Any:
    """forkserver where available: a clean server process (no torch threads started) imports torch
    and kdbench once, and every worker is forked from it, ready in milliseconds; else spawn."""
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "kdbench.runner", "kdbench.executors"])
        return ctx
    return multiprocessing.get_context("spawn")


def _cuda_count() -> int:
    """GPUs this process sees, without creating a CUDA context here (the workers create their own)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _pool_run(job: Job) -> tuple[dict[str, Any], float]:
    if _STARTED is not None:
        _STARTED.put(job.key)
    return run_job(job)


def _pool_map(jobs: list[Job], workers: int, threads: int | None) -> Iterator[Finished]:
    """Process pool. A worker that dies (segfault, OOM kill) breaks the pool: runs that had not
    started go to a fresh pool; runs that were in flight are retried one at a time in a worker of
    their own, where a run that kills its worker again is recorded as failed."""
    ctx = _mp_context()
    todo, suspects = list(jobs), []
    n_gpus = _cuda_count()
    while todo:
        started = ctx.SimpleQueue()
        pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx, initializer=_init_worker,
                                   initargs=(threads, started, _kdbench_env(), ctx.Value("i", 0), n_gpus))
        lost: list[Job] = []
        try:
            pending: dict[Future, Job] = {pool.submit(_pool_run, job): job for job in todo}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    job = pending.pop(fut)
                    try:
                        record, wall = fut.result()
                    except BrokenProcessPool:
                        lost.append(job)
                        continue
                    except Exception as exc:  # noqa: BLE001 - e.g. the record could not be sent back
                        record, wall = _record_failure(job, exc), 0.0
                    yield Finished(job, record, wall)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            _kill_workers(pool)
            raise
        pool.shutdown(wait=True)
        began = set()
        while not started.empty():
            began.add(started.get())
        todo = []
        for job in lost:
            record = store.read_record(store.record_path(Path(job.out_dir), job.key))
            if record is not None and record.get("status") == "ok":  # finished before the pool broke
                yield Finished(job, record, 0.0)
            elif job.key in began or not began:  # no run started at all: the pool itself is broken
                suspects.append(job)
            else:
                todo.append(job)
    for job in suspects:
        yield _isolated(ctx, job, threads)


def _isolated(ctx: Any, job: Job, threads: int | None) -> Finished:
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_init_worker,
                             initargs=(threads, None, _kdbench_env())) as solo:
        try:
            record, wall = solo.submit(run_job, job).result()
        except BrokenProcessPool as exc:
            record, wall = _record_failure(job, exc, "the worker process running this run died (killed or crashed)"), 0.0
    return Finished(job, record, wall)


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    for proc in list(getattr(pool, "_processes", {}).values()):
        try:
            proc.kill()
        except (OSError, AttributeError):
            pass


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Ray tasks, one per run, each reserving `threads` CPUs (default 1) and using that many torch
    threads; the driver writes the records. Connects to `address`, or to the Ray instance this
    process already started (`ray.init(...)`), or starts a local one."""

    name = "ray"
    writes_in_worker = False

    def __init__(self, workers: int = 1, threads: int | None = None, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise KdbenchError("--executor ray needs Ray: pip install 'kdbench[ray]' (or pip install ray)") from None
        if threads is not None and threads < 1:
            raise KdbenchError(f"--threads must be >= 1, got {threads}")
        self.ray = ray
        self.threads = threads or 1
        self._started = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, log_to_driver=False, include_dashboard=False)
            except Exception as e:  # noqa: BLE001 - connection errors come in many types
                raise KdbenchError(f"cannot start or reach Ray{f' at {address}' if address else ''}: "
                                   f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
            self._started = True

    def threads_per_run(self) -> int | None:
        return self.threads

    def map(self, jobs: Sequence[Job]) -> Iterator[Finished]:
        ray = self.ray
        task = ray.remote(num_cpus=self.threads, max_retries=0)(run_job)
        pending = {task.remote(job): job for job in jobs}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(done[0])
                try:
                    record, wall = ray.get(done[0])
                except ray.exceptions.RayError as exc:
                    record, wall = failed_record(job, exc, f"Ray task failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"), 0.0
                store.write_record(Path(job.out_dir), record)
                yield Finished(job, record, wall)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    def close(self) -> None:
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()


# ---------------------------------------------------------------------------------------------
# Preparation: data, teachers and targets once, in the parent
# ---------------------------------------------------------------------------------------------
def prepare(resolved: Sequence[Any], data_root: str | Path | None, progress: bool | None = None,
            log: Callable[[str], None] | None = None) -> dict[str, str]:
    """Load each distinct dataset split once and build each distinct teacher and its train / val
    targets once (all cached on disk), so workers only read them. Returns {group: error} for the
    groups that failed: their runs will fail on their own and record the error."""
    from .engine import resolve_device
    from .runner import load_data, resolve_teacher
    from .teachers import teacher_targets

    errors: dict[str, str] = {}
    data_ok: dict[str, bool] = {}
    teachers_done: set[str] = set()
    last: tuple[str, Any] | None = None  # (data id, splits): consecutive runs usually share them

    def note(what: str, e: Exception) -> str:
        msg = f"{type(e).__name__}: {e}"
        if log:
            log(f"warning: preparing {what} failed ({msg}); its runs will record the error")
        return msg

    for r in resolved:
        s = r.spec
        data_id = canonical_json([s.dataset, s.val_fraction, s.split_seed, s.max_train])
        if data_id not in data_ok:
            try:
                last = (data_id, load_data(s, data_root))
                data_ok[data_id] = True
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - the runs themselves will record the failure
                data_ok[data_id] = False
                errors[data_id] = note(f"dataset {s.dataset}", e)
        if not data_ok[data_id] or not r.method.needs_teacher:
            continue
        teacher_id = canonical_json([data_id, s.teacher, s.teacher_recipe, r.canonical["device"]])
        if teacher_id in teachers_done:
            continue
        teachers_done.add(teacher_id)
        try:
            if last is None or last[0] != data_id:
                last = (data_id, load_data(s, data_root))
            device = resolve_device(r.canonical["device"])
            data = last[1].to(device)
            if log:
                log(f"preparing teacher {s.teacher} on {s.dataset} once, for every run that uses it")
            teacher = resolve_teacher(s, data, device, progress)
            for split in ("train", "val"):
                teacher_targets(teacher, data, split, device)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001
            errors[teacher_id] = note(f"teacher {s.teacher} on {s.dataset}", e)
    return errors
