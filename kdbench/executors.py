"""Executors run a sweep's resolved runs and hand back their records as they finish.

- `local` (default): in-process when `workers == 1`, else a process pool (forkserver, else spawn:
  never a fork of a process whose torch thread pools started), each worker limited to its share
  of the CPU threads.
- `ray`: the same jobs as Ray tasks (`--executor ray --address ADDR`, the `ray` extra,
  kdbench/ray_exec.py); workers return records and the driver writes them, so a cluster needs no
  shared results directory.

Every run goes through `runner.execute`, so a run that raises becomes a `failed` record and the
others go on. Teachers and their targets are built once in the parent before fanning out (the
local pool; Ray's driver, which also ships them to the nodes through Ray's object store).

Seed siblings (runs that differ only in their seed, kdbench.seed_fuse) go to one worker of the
local executor (one Ray task) as one group and train fused where `fuse_seeds` (auto by default) decides so; each
member is claimed, skipped when already written, and recorded on its own, as a run alone is.

A local run holds a lock file of its own (`OUT/.locks/KEY.lock`) while it runs, so concurrent
sweeps into one results directory split the runs. Pool workers die with the sweep process however
it ends, and an interrupted sweep (Ctrl-C, or SIGTERM / SIGHUP under `stop_on_signals`) kills its
workers at once instead of waiting for their runs.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import tempfile
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from . import store
from .config import CODE_VERSION, canonical_json
from .errors import KdbenchError
from .record import RunRecord
from .resume import DEFAULT_EVERY_S
from .registry import IMPORT_ENV, Registry, import_from_env, worker_modules

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not claimed
    fcntl = None  # type: ignore[assignment]

LOCK_DIR = ".locks"  # in a results directory: one lock file per run key


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
    write: bool = True  # the worker writes the record (False: the driver writes it; no lock is taken)
    wait: bool = False  # another process held the run's lock: wait for it instead of skipping
    seen: tuple[int, int] | None = None  # the record file as planned (inode, mtime); changed: another process ran it
    track: Any = None  # tracking.Tracking: trackers that also get the run's epochs and record (none: None)
    fuse_seeds: str = "auto"  # seed fusion with the run's seed siblings: auto / on / off (kdbench.seed_fuse)
    seed_fusion: dict[str, Any] | None = None  # the decision for its group, recorded in env.seed_fusion
    checkpoint_every: float | None = DEFAULT_EVERY_S  # epoch checkpoints of a run alone (kdbench.resume); None: none

    @property
    def key(self) -> str:
        return self.resolved.key


@dataclass
class Finished:
    """A job's outcome: its record (written by whoever ran it) and wall time."""

    job: Job
    record: dict[str, Any]
    wall_s: float
    elsewhere: bool = False  # another process (a concurrent sweep into the same directory) ran it


def make_job(resolved: Any, out_dir: str | Path, **kw: Any) -> Job:
    """A job whose `device: auto` is pinned to the device its key was computed for (a Ray node
    with a GPU must not run a spec planned for the CPU under the CPU's key)."""
    if resolved.spec.device == "auto":
        resolved = dataclasses.replace(resolved, spec=resolved.spec.replace(device=resolved.canonical["device"]))
    return Job(resolved, str(out_dir), seen=_file_stamp(store.record_path(Path(out_dir), resolved.key)), **kw)


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def run_job(job: Job) -> Finished | None:
    """Execute one job (in whatever process runs it). None: another process holds the run's lock
    (a job with `wait` waits for it instead); a record that process wrote is returned, not redone."""
    if not job.write:
        return _compute(job)
    with claim(Path(job.out_dir), job.key, wait=job.wait) as claimed:
        if not claimed:
            return None
        path = store.record_path(Path(job.out_dir), job.key)
        if _file_stamp(path) != job.seen:  # written since the sweep planned: by the process that held the run
            record = store.read_record(path)
            if record is not None:
                return Finished(job, record, 0.0, elsewhere=True)
        return _compute(job)


def _compute(job: Job) -> Finished:
    import torch

    from .runner import execute

    previous = torch.get_num_threads()
    if job.threads:
        torch.set_num_threads(job.threads)
    t0 = time.perf_counter()
    env = {"seed_fusion": job.seed_fusion} if job.seed_fusion else None
    try:
        if job.write:
            record = execute(job.resolved.spec, job.out_dir, data_root=job.data_root, progress=job.progress,
                             latency=job.latency, resolved=job.resolved, track=job.track, env=env,
                             checkpoint_every=job.checkpoint_every)
        else:  # the driver writes the record: the run (a Ray task) keeps no checkpoints
            with tempfile.TemporaryDirectory(prefix="kdbench-run-") as tmp:
                record = execute(job.resolved.spec, tmp, data_root=job.data_root, progress=job.progress,
                                 latency=job.latency, resolved=job.resolved, track=job.track, env=env, checkpoint_every=None)
    finally:
        if job.threads:
            torch.set_num_threads(previous)
    return Finished(job, record, time.perf_counter() - t0)


def run_group(jobs: Sequence[Job]) -> list[Finished | None]:
    """`run_job` for a group of seed siblings (one job: `run_job`): each member is claimed (None when
    another process holds it), one written since the sweep planned is returned as it is, and the
    rest train fused (`runner.execute_seeds`), each locked until the group is done."""
    if len(jobs) == 1:
        return [run_job(jobs[0])]
    out: dict[str, Finished | None] = {}
    with ExitStack() as stack:
        todo = []
        for job in jobs:
            if not job.write:
                todo.append(job)
                continue
            if not stack.enter_context(claim(Path(job.out_dir), job.key, wait=job.wait)):
                out[job.key] = None
                continue
            path = store.record_path(Path(job.out_dir), job.key)
            record = store.read_record(path) if _file_stamp(path) != job.seen else None
            if record is not None:  # written since the sweep planned: by the process that held the run
                out[job.key] = Finished(job, record, 0.0, elsewhere=True)
            else:
                todo.append(job)
        if len(todo) == 1:
            out[todo[0].key] = _compute(alone(todo[0], "its seed siblings were run by another process"))
        elif todo:
            out.update((f.job.key, f) for f in _compute_group(todo))
    return [out[job.key] for job in jobs]


def _compute_group(jobs: list[Job]) -> list[Finished]:
    import torch

    from .runner import execute_seeds

    first = jobs[0]
    previous = torch.get_num_threads()
    if first.threads:
        torch.set_num_threads(first.threads)
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="kdbench-run-") as tmp:
            records = execute_seeds([j.resolved for j in jobs], first.out_dir if first.write else tmp, data_root=first.data_root,
                                    progress=first.progress, latency=first.latency, track=first.track, note=first.seed_fusion)
    finally:
        if first.threads:
            torch.set_num_threads(previous)
    wall = time.perf_counter() - t0
    return [Finished(job, record, wall) for job, record in zip(jobs, records)]


def alone(job: Job, why: str) -> Job:
    """The job run on its own although its group was to train fused (its record says why)."""
    note = job.seed_fusion
    if not note or not note.get("fused"):
        return job
    return dataclasses.replace(job, seed_fusion={**note, "fused": False, "copies": 1, "reason": f"{why}; ran alone"})


def group_jobs(jobs: Sequence[Job]) -> list[list[Job]]:
    """The jobs in units for one worker each: seed siblings together where `fuse_plan.decide` fuses
    them (their decision noted on each job, for its record), every other job alone. Order: each unit
    where its first job was."""
    from .fuse_plan import Sizer, decide
    from .seed_fuse import sibling_key, supports

    by_key: dict[tuple, list[Job]] = {}
    for job in jobs:
        r = job.resolved
        key = (job.out_dir, job.write, job.fuse_seeds, sibling_key(r)) if supports(r.method) else ("alone", job.key)
        by_key.setdefault(key, []).append(job)
    sizer = Sizer(jobs[0].data_root if jobs else None)
    units: list[list[Job]] = []
    for members in by_key.values():
        if len(members) < 2:
            units.append(members)
            continue
        d = decide([j.resolved for j in members], members[0].fuse_seeds, members[0].resolved.canonical["device"], sizer)
        noted = [dataclasses.replace(j, seed_fusion=d.note()) for j in members]
        units += [noted] if d.fused else [[j] for j in noted]
    first = {job.key: i for i, job in enumerate(jobs)}
    return sorted(units, key=lambda u: first[u[0].key])


@contextmanager
def claim(out_dir: Path, key: str, wait: bool = False) -> Iterator[bool]:
    """Hold the run's lock file while the body runs: True if this process holds it, False if another
    one does (`wait`: block until it is free). An flock, which the OS drops when its holder dies, so
    a killed sweep never blocks the one that resumes it; it also works across machines on NFS."""
    if fcntl is None:  # pragma: no cover
        yield True
        return
    path = Path(out_dir) / LOCK_DIR / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        yield _flock(fd, wait)
    finally:
        os.close(fd)  # releases the lock


def _flock(fd: int, wait: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:  # a file system without locks: run unclaimed, as without a concurrent sweep
        pass
    return True


def failed_record(job: Job, exc: BaseException, what: str | None = None) -> dict[str, Any]:
    """A `failed` record for a run whose worker died or could not report (the run itself never got to)."""
    from .measure import environment
    from .method import params_changed

    r = job.resolved
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return RunRecord.failed(
        r.key, {**r.canonical, "params_changed": params_changed(r.method, r.params)},
        {"type": type(exc).__name__, "message": what or str(exc) or type(exc).__name__,
         "traceback": "".join(traceback.format_exception(exc))[-4000:]},
        env=environment(), code_version=CODE_VERSION, started_at=now, finished_at=now,
    ).to_dict()


def _record_failure(job: Job, exc: BaseException, what: str | None = None) -> dict[str, Any]:
    record = failed_record(job, exc, what)
    try:
        store.write_record(Path(job.out_dir), record)
    except OSError:
        pass
    return record


# ---------------------------------------------------------------------------------------------
# Interrupts
# ---------------------------------------------------------------------------------------------
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP as an exception: a sweep stops on them the way it stops on Ctrl-C (workers
    killed at once, finished records kept). A KeyboardInterrupt, so no `except Exception` that turns
    a run's error into a failed record swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupt_signal(exc: KeyboardInterrupt) -> signal.Signals:
    """The signal behind an interrupt: SIGTERM / SIGHUP for `Interrupted`, else SIGINT (Ctrl-C)."""
    return signal.Signals(getattr(exc, "signum", signal.SIGINT))


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


@contextmanager
def _signal_handlers(handler: Any, signums: Sequence[int]) -> Iterator[None]:
    """`handler` for `signums` while the body runs, then the previous ones (main thread only: Python
    sets handlers nowhere else, so elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)


def stop_on_signals() -> Any:
    """While the body runs, SIGTERM and SIGHUP raise `Interrupted` (the CLI's sweep; a library
    caller keeps its own handlers, and the workers still die with it)."""
    return _signal_handlers(_raise_interrupted, STOP_SIGNALS)


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
            yield from _serial_map(jobs)
            return
        yield from _pool_map(list(jobs), min(self.workers, len(jobs)) or 1, self.threads_per_run())


def _serial_map(jobs: Sequence[Job]) -> Iterator[Finished]:
    """In this process, seed siblings fused where decided; runs another process holds come last,
    waited for (one by one)."""
    later = []
    for unit in group_jobs(jobs):
        for job, fin in zip(unit, run_group(unit)):
            if fin is None:
                later.append(alone(dataclasses.replace(job, wait=True), "another process held it"))
            else:
                yield fin
    for job in later:
        fin = run_job(job)
        assert fin is not None  # a waiting job always gets the lock
        yield fin


_STARTED: Any = None  # in a pool worker: queue on which each run announces its start
_IMPORT_ERROR: str | None = None  # in a pool worker: why the user's plugin modules did not import


def gpu_for_worker(slot: int, n_gpus: int, visible: str | None) -> str | None:
    """CUDA_VISIBLE_DEVICES for the pool's `slot`-th worker: workers take the visible GPUs in turn,
    so `--workers 4` on a 4-GPU machine gives each run a GPU of its own (None: leave as is)."""
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(n_gpus)]
    return ids[slot % len(ids)] if len(ids) > 1 else None


def _init_worker(threads: int | None, started: Any = None, env: dict[str, str] | None = None,
                 slots: Any = None, n_gpus: int = 0, sweep_pid: int | None = None) -> None:
    """Pool worker set-up: the parent's KDBENCH_* settings as of now (a forkserver started earlier
    holds old ones), a GPU of its own where there are several, die with the sweep process, leave
    Ctrl-C to it (it kills us), use our share of the threads, stay quiet, import the user's plugin
    modules ($KDBENCH_IMPORT: their datasets and models exist here too)."""
    global _STARTED, _IMPORT_ERROR
    _STARTED = started
    if env is not None:
        for k in [k for k in os.environ if k.startswith("KDBENCH_") and k not in env]:
            del os.environ[k]
        os.environ.update(env)
    try:
        import_from_env()
    except KdbenchError as e:  # each run of this worker records it (an initializer error would break the pool)
        _IMPORT_ERROR = str(e)
    if slots is not None and n_gpus > 1:  # before this process touches CUDA (the forkserver never does)
        with slots.get_lock():
            slot, slots.value = slots.value, slots.value + 1
        gpu = gpu_for_worker(slot, n_gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    if sweep_pid is not None:
        exit_with(sweep_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["KDBENCH_PROGRESS"] = "0"
    _quiet_tqdm_lock()
    if threads:
        import torch

        torch.set_num_threads(threads)


def _quiet_tqdm_lock() -> None:
    """tqdm's default lock is a named semaphore even for a disabled bar; a killed worker leaks it and
    the resource tracker then warns on the sweep's stderr. Workers draw no bars: a thread lock does."""
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def exit_with(pid: int, poll_s: float = 0.5) -> threading.Thread:
    """End this process as soon as process `pid` ends, however it ends (SIGKILL included). A pool
    worker's parent is the forkserver, not the sweep, so a parent-death signal would never fire;
    a pidfd becomes readable when `pid` exits (no pid-reuse race), else poll."""
    import select

    def watch() -> None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            os._exit(1)
        except (AttributeError, OSError):  # not Linux >= 5.3
            while _alive(pid):
                time.sleep(poll_s)
        else:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.poll()
        os._exit(1)

    watchdog = threading.Thread(target=watch, name=f"kdbench-exit-with-{pid}", daemon=True)
    watchdog.start()
    return watchdog


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and someone else's
        pass
    return True


def _kdbench_env() -> dict[str, str]:
    """The KDBENCH_* settings workers get; $KDBENCH_IMPORT also names the modules `--import` imported here."""
    env = {k: v for k, v in os.environ.items() if k.startswith("KDBENCH_")}
    modules = worker_modules()
    if modules:
        env[IMPORT_ENV] = ",".join(modules)
    return env


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


def _pool_run(unit: list[Job]) -> list[Finished | None]:
    if _STARTED is not None:
        for job in unit:
            _STARTED.put(job.key)
    if _IMPORT_ERROR is not None:
        raise KdbenchError(f"in a worker process: {_IMPORT_ERROR}")
    return run_group(unit)


@contextmanager
def _pool(ctx: Any, workers: int, threads: int | None, started: Any = None,
          n_gpus: int = 0) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers die with this process; when the body is interrupted (Ctrl-C,
    SIGTERM, a consumer that stops) or fails, the workers are killed at once, not waited for."""
    slots = ctx.Value("i", 0) if n_gpus > 1 else None
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(threads, started, _kdbench_env(), slots, n_gpus, os.getpid()))
    try:
        yield pool
    except BaseException:
        with _signal_handlers(signal.SIG_IGN, (signal.SIGINT, *STOP_SIGNALS)):  # a second Ctrl-C: not halfway
            _kill_workers(pool)
        raise
    pool.shutdown(wait=True)


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """SIGKILL the pool's workers, then shut it down without waiting (their runs are lost; finished
    records are complete on disk, a half-written one is only an ignored temporary)."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):  # read before shutdown clears it
        try:
            proc.kill()
        except (OSError, AttributeError, ValueError):
            pass
    pool.shutdown(wait=False, cancel_futures=True)


def _pool_map(jobs: list[Job], workers: int, threads: int | None) -> Iterator[Finished]:
    """Process pool; each worker gets a unit of `group_jobs` (a run, or seed siblings that train
    fused). A worker that dies (segfault, OOM kill) breaks the pool: runs that had not started go to
    a fresh pool; runs that were in flight are retried one at a time (unfused) in a worker of their
    own, where a run that kills its worker again is recorded as failed. Runs another process holds
    go to the back of the queue, waited for, one by one."""
    ctx = _mp_context()
    units, suspects = group_jobs(jobs), []
    n_gpus = _cuda_count()
    while units:
        started = ctx.SimpleQueue()
        lost: list[Job] = []
        with _pool(ctx, min(workers, len(units)), threads, started, n_gpus) as pool:
            pending: dict[Future, list[Job]] = {}
            for unit in units:
                _submit(pool, unit, pending, lost)
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    unit = pending.pop(fut)
                    try:
                        fins = fut.result()
                    except BrokenProcessPool:
                        lost += unit
                        continue
                    except Exception as exc:  # noqa: BLE001 - e.g. the record could not be sent back
                        fins = [Finished(job, _record_failure(job, exc), 0.0) for job in unit]
                    for job, fin in zip(unit, fins):
                        if fin is None:  # another process is running it
                            _submit(pool, [alone(dataclasses.replace(job, wait=True), "another process held it")], pending, lost)
                        else:
                            yield fin
        began = set()
        while not started.empty():
            began.add(started.get())
        todo: list[Job] = []
        for job in lost:
            record = store.read_record(store.record_path(Path(job.out_dir), job.key))
            if record is not None and record.get("status") == "ok":  # finished before the pool broke
                yield Finished(job, record, 0.0)
            elif job.key in began or not began:  # no run started at all: the pool itself is broken
                suspects.append(alone(job, "the worker training its group died"))
            else:
                todo.append(job)
        units = group_jobs(todo) if todo else []
    for job in suspects:
        yield _isolated(ctx, job, threads)


def _submit(pool: ProcessPoolExecutor, unit: list[Job], pending: dict[Future, list[Job]], lost: list[Job]) -> None:
    try:
        pending[pool.submit(_pool_run, unit)] = unit
    except BrokenProcessPool:
        lost += unit


def _isolated(ctx: Any, job: Job, threads: int | None) -> Finished:
    job = dataclasses.replace(job, wait=True)
    with _pool(ctx, 1, threads) as solo:
        try:
            fin = solo.submit(run_job, job).result()
        except BrokenProcessPool as exc:
            died = "the worker process running this run died (killed or crashed)"
            fin = Finished(job, _record_failure(job, exc, died), 0.0)
    assert fin is not None  # a waiting job always gets the lock
    return fin


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
        data_id = canonical_json([s.dataset, s.val_fraction, s.split_seed, s.max_train, s.data_options])
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
        teacher_id = canonical_json([data_id, s.teacher, s.teacher_recipe, s.teacher_normalize, r.canonical["device"]])
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
