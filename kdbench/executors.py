"""Executors run a sweep's resolved runs and hand back their records as they finish.

- `local` (default): in-process when `workers == 1`, else a process pool (forkserver, else spawn:
  never a fork of a process whose torch thread pools started), each worker limited to its share
  of the CPU threads.
- `ray`: the same jobs as Ray tasks (`--executor ray --address ADDR`, the `ray` extra); workers
  return records and the driver writes them, so a cluster needs no shared results directory.

Every run goes through `runner.execute`, so a run that raises becomes a `failed` record and the
others go on. Teachers and their targets are built once in the parent before fanning out (the
local pool), or serialised by the cache's file lock (Ray workers on one machine).

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
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from . import store
from .config import CODE_VERSION, canonical_json
from .errors import KdbenchError
from .registry import IMPORT_ENV, Registry, import_from_env, import_modules, worker_modules

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
    try:
        if job.write:
            record = execute(job.resolved.spec, job.out_dir, data_root=job.data_root, progress=job.progress,
                             latency=job.latency, resolved=job.resolved, track=job.track)
        else:
            with tempfile.TemporaryDirectory(prefix="kdbench-run-") as tmp:
                record = execute(job.resolved.spec, tmp, data_root=job.data_root, progress=job.progress,
                                 latency=job.latency, resolved=job.resolved, track=job.track)
    finally:
        if job.threads:
            torch.set_num_threads(previous)
    return Finished(job, record, time.perf_counter() - t0)


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
    """In this process; runs another process holds come last, waited for."""
    later = []
    for job in jobs:
        fin = run_job(job)
        if fin is None:
            later.append(dataclasses.replace(job, wait=True))
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


def _pool_run(job: Job) -> Finished | None:
    if _STARTED is not None:
        _STARTED.put(job.key)
    if _IMPORT_ERROR is not None:
        raise KdbenchError(f"in a worker process: {_IMPORT_ERROR}")
    return run_job(job)


def _ray_run(job: Job, modules: Sequence[str]) -> Finished | None:
    """A Ray task: the driver's plugin modules first (their datasets and models), then the run."""
    import_modules(modules, f"${IMPORT_ENV} (Ray worker)")
    return run_job(job)


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
    """Process pool. A worker that dies (segfault, OOM kill) breaks the pool: runs that had not
    started go to a fresh pool; runs that were in flight are retried one at a time in a worker of
    their own, where a run that kills its worker again is recorded as failed. Runs another process
    holds go to the back of the queue, waited for."""
    ctx = _mp_context()
    todo, suspects = list(jobs), []
    n_gpus = _cuda_count()
    while todo:
        started = ctx.SimpleQueue()
        lost: list[Job] = []
        with _pool(ctx, min(workers, len(todo)), threads, started, n_gpus) as pool:
            pending: dict[Future, Job] = {}
            for job in todo:
                _submit(pool, job, pending, lost)
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    job = pending.pop(fut)
                    try:
                        fin = fut.result()
                    except BrokenProcessPool:
                        lost.append(job)
                        continue
                    except Exception as exc:  # noqa: BLE001 - e.g. the record could not be sent back
                        fin = Finished(job, _record_failure(job, exc), 0.0)
                    if fin is None:  # another process is running it
                        _submit(pool, dataclasses.replace(job, wait=True), pending, lost)
                    else:
                        yield fin
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


def _submit(pool: ProcessPoolExecutor, job: Job, pending: dict[Future, Job], lost: list[Job]) -> None:
    try:
        pending[pool.submit(_pool_run, job)] = job
    except BrokenProcessPool:
        lost.append(job)


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
        task = ray.remote(num_cpus=self.threads, max_retries=0)(_ray_run)
        modules = worker_modules()
        pending = {task.remote(job, modules): job for job in jobs}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(done[0])
                try:
                    fin = ray.get(done[0])  # write=False: never claimed, never None
                except ray.exceptions.RayError as exc:
                    what = f"Ray task failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                    fin = Finished(job, failed_record(job, exc, what), 0.0)
                store.write_record(Path(job.out_dir), fin.record)
                yield Finished(job, fin.record, fin.wall_s)
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
