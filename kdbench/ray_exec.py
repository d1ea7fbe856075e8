"""The `ray` executor: a sweep's runs as Ray tasks, on one machine or a cluster of them.

The driver (the sweep process) does what must happen once: it prepares every teacher and its
train / val targets in its own cache, as the local pool's parent does, and puts each of those cache
entries once into Ray's object store. A task that needs one installs the copy into its node's cache
(checksums verified) instead of training the teacher again, so the nodes share no disk and each
teacher is trained once per sweep, not once per node. Each node still reads the data from its own
data root.

The driver also holds each run's lock file (`OUT/.locks/KEY.lock`, as the local executor does)
from before its task is submitted until its record is written, so a run another sweep process is
running is not run again: it is waited for, and the record that process wrote is taken. The
records are written by the driver only, from the results of finished tasks; on Ctrl-C (or SIGTERM /
SIGHUP under `stop_on_signals`) the tasks in flight are cancelled (their workers killed) and leave
no record. When the driver dies however it dies, Ray ends its job's tasks.
"""
from __future__ import annotations

import os
import signal
import time
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from . import store
from .cache import entry_source, recording
from .errors import KdbenchError
from .executors import (EXECUTORS, STOP_SIGNALS, Executor, Finished, Job, _file_stamp, _signal_handlers, alone, claim,
                        failed_record, group_jobs, run_group)
from .registry import IMPORT_ENV, import_modules, worker_modules

POLL_S = 0.5  # how often the driver looks at the lock files of runs another process holds
Shipped = Mapping[tuple[str, str], Any]  # (cache kind, key) -> ObjectRef of the packed entry


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Ray tasks, one per run, each reserving `threads` CPUs (default 1) and using that many torch
    threads, and a GPU for a run on CUDA; the driver prepares teachers and targets once and ships
    them, and writes the records.
    Connects to `address` (else $RAY_ADDRESS; 'auto' joins the Ray already running on this machine),
    or to the Ray instance this process already started (`ray.init(...)`), or starts a fresh local
    one: never, silently, a stale cluster left running by an earlier process. Cache entries this
    process uses while the executor is open (the sweep's preparation) are the ones sent to the workers."""

    name = "ray"
    prepares_in_parent = True
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
            address = address or os.environ.get("RAY_ADDRESS") or "local"
            try:
                ray.init(address=address, log_to_driver=False, include_dashboard=False)
            except Exception as e:  # noqa: BLE001 - connection errors come in many types
                raise KdbenchError(f"cannot start or reach Ray{f' at {address}' if address != 'local' else ''}: "
                                   f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
            self._started = True
        self._open = ExitStack()
        self._prepared = self._open.enter_context(recording())

    def threads_per_run(self) -> int | None:
        return self.threads

    def ship(self) -> dict[tuple[str, str], Any]:
        """Every cache entry this process used since the executor opened (teachers and targets the
        preparation built or found), put once into Ray's object store."""
        shipped: dict[tuple[str, str], Any] = {}
        for ident, (entry, _) in list(self._prepared.items()):
            try:
                shipped[ident] = self.ray.put(entry.pack())
            except KdbenchError as e:
                warnings.warn(f"{e}; Ray workers that need it will build it themselves", stacklevel=2)
        return shipped

    def map(self, jobs: Sequence[Job]) -> Iterator[Finished]:
        ray = self.ray
        if any(_on_cuda(job) for job in jobs) and not ray.cluster_resources().get("GPU"):
            raise KdbenchError("the runs are planned for CUDA (the sweep's device), but the Ray cluster has no GPU "
                               "(its tasks would wait forever); pass --device cpu")
        task = ray.remote(max_retries=0)(_ray_run)
        modules = worker_modules()
        shipped = self.ship()
        queue = group_jobs(jobs)  # seed siblings fused where `fuse_plan.decide` says so: one task each
        pending: dict[Any, list[Job]] = {}  # ObjectRef -> the jobs of its task
        held: dict[str, ExitStack] = {}  # run key -> its claimed lock, until the record is written
        try:
            while queue or pending:
                waiting = []
                for unit in queue:  # claim what is free; a run another process holds is looked at again later
                    mine = []
                    for job in unit:
                        lock = _claim(job)
                        if lock is None:
                            waiting.append([alone(job, "another process held it")])
                            continue
                        record = _written_since_planned(job)
                        if record is not None:  # the process that held it finished it
                            lock.close()
                            yield Finished(job, record, 0.0, elsewhere=True)
                            continue
                        held[job.key] = lock
                        mine.append(job)
                    if len(mine) == 1 < len(unit):
                        mine = [alone(mine[0], "its seed siblings were run by another process")]
                    if mine:
                        pending[task.options(**task_resources(mine[0], self.threads)).remote(mine, modules, shipped)] = mine
                queue = waiting
                if not pending:
                    time.sleep(POLL_S)
                    continue
                done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                for ref in done:
                    unit = pending.pop(ref)
                    for job, fin in zip(unit, _results(ray, ref, unit)):
                        store.write_record(Path(job.out_dir), fin.record)
                        held.pop(job.key).close()
                        yield Finished(job, fin.record, fin.wall_s)
        except BaseException:
            with _signal_handlers(signal.SIG_IGN, (signal.SIGINT, *STOP_SIGNALS)):  # a second Ctrl-C: not halfway
                # only the tasks still running: cancelling one whose reply is arriving can trip a check in
                # Ray's core worker ("it != submissible_tasks_.end()") that aborts the driver
                _, running = ray.wait(list(pending), num_returns=len(pending), timeout=0) if pending else ([], [])
                for ref in running:
                    ray.cancel(ref, force=True)
            raise
        finally:
            for lock in held.values():
                lock.close()

    def close(self) -> None:
        self._open.close()
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()


def _on_cuda(job: Job) -> bool:
    return job.resolved.canonical["device"] == "cuda"


def task_resources(job: Job, threads: int) -> dict[str, float]:
    """What a run's task (one run, or its seed siblings fused: one computation) reserves: `threads`
    CPUs, and one GPU for a run on CUDA (Ray then shows the task that GPU alone; a task that
    reserves none would see every GPU of its node)."""
    return {"num_cpus": threads, "num_gpus": 1 if _on_cuda(job) else 0}


def _claim(job: Job) -> ExitStack | None:
    """The run's lock, held until the returned stack is closed; None when another process holds it."""
    stack = ExitStack()
    if stack.enter_context(claim(Path(job.out_dir), job.key)):
        return stack
    stack.close()
    return None


def _written_since_planned(job: Job) -> dict[str, Any] | None:
    """The run's record, when another process wrote it after this sweep planned the run."""
    path = store.record_path(Path(job.out_dir), job.key)
    return store.read_record(path) if _file_stamp(path) != job.seen else None


def _results(ray: Any, ref: Any, unit: list[Job]) -> list[Finished]:
    """A finished task's outcomes, one per job of its unit; a task that failed in Ray (its worker
    died, its result did not come back) becomes a failed record for each. A task cancelled from
    outside stops the sweep, as Ctrl-C would: an interrupted run leaves no record, so that a resumed
    sweep runs it."""
    keys = ", ".join(job.key for job in unit)
    try:
        return ray.get(ref)  # write=False: never claimed in the worker, never None
    except ray.exceptions.TaskCancelledError:
        raise KeyboardInterrupt(f"Ray cancelled the task of run(s) {keys}") from None
    except ray.exceptions.RayError as exc:
        if isinstance(getattr(exc, "cause", None), KeyboardInterrupt):
            raise KeyboardInterrupt(f"the task of run(s) {keys} was interrupted") from None
        what = f"Ray task failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        return [Finished(job, failed_record(job, exc, what), 0.0) for job in unit]


def _ray_run(unit: list[Job], modules: Sequence[str], shipped: Shipped) -> list[Finished | None]:
    """A Ray task: the driver's plugin modules first (their datasets and models), then the run (or
    its seed siblings, fused), with the cache entries the driver sent installed into this node's
    cache as the runs ask for them."""
    import ray

    import_modules(modules, f"${IMPORT_ENV} (Ray worker)")

    def fetch(kind: str, key: str) -> Any:
        ref = shipped.get((kind, key))
        return None if ref is None else ray.get(ref)

    with entry_source(fetch), recording() as used:
        fins = run_group(unit)
    built = sorted(f"{kind}/{key}" for (kind, key), (_, how) in used.items() if how == "built")
    for fin in fins:
        if fin is not None and built and shipped:
            fin.record.setdefault("warnings", []).append(
                f"built on its Ray node, not sent by the driver: {', '.join(built)} (the driver could not prepare it, "
                f"or this node's data or code give another cache key than the driver's)")
    return fins
