"""Experiment tracking: each run's per-epoch metrics and its final record also go to TensorBoard,
MLflow or Weights & Biases (`--log tensorboard,mlflow,wandb`; each client an optional extra).

Tracking sits beside a run, never inside it: it is not part of the spec nor of the run key, it only
reads what the run computes, and a tracker that fails mid-run stops logging with one warning
instead of failing the run. A tracker asked for whose client is not installed, or an unknown name,
is one line before anything trains.

A tracker is a class with `start(run_key, spec)`, `log_epoch(epoch, metrics)` and `finish(record)`,
registered under a name with `@register_tracker(name, package=...)`; its constructor takes the
folder where local stores go (the run's --out) and is called in whatever process runs the run
(a pool worker, a Ray task), which gets the parent's tracker settings (MLFLOW_*, WANDB_*) passed on.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from .errors import KdbenchError
from .registry import Registry

log = logging.getLogger("kdbench.tracking")


class Tracker(Protocol):
    """One run's connection to one tracking backend."""

    def start(self, run_key: str, spec: dict[str, Any]) -> None: ...

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def finish(self, record: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class TrackerType:
    """How to make a tracker and what it needs: its client's import name and pip extra, and the
    prefixes of the environment variables that configure it (carried to worker processes)."""

    make: Callable[[Path], Tracker]
    package: str
    extra: str
    env_prefixes: tuple[str, ...] = ()

    def installed(self) -> bool:
        try:
            return importlib.util.find_spec(self.package) is not None
        except (ImportError, ValueError):
            return False


TRACKERS: Registry[TrackerType] = Registry("tracker")


def register_tracker(name: str, *, package: str, extra: str | None = None,
                     env_prefixes: Sequence[str] = ()) -> Callable[[type], type]:
    """Class decorator: `cls(root)` becomes the tracker `--log NAME`."""
    def deco(cls: type) -> type:
        TRACKERS.add(name, TrackerType(cls, package, extra or name, tuple(env_prefixes)))
        return cls

    return deco


# ---------------------------------------------------------------------------------------------
# What the CLI and the API hand to the runner (picklable: it travels in a sweep's jobs)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tracking:
    """The trackers of a run or sweep, the folder their local stores go to, and their settings from
    the environment of the process that asked for them."""

    names: tuple[str, ...]
    root: str
    env: tuple[tuple[str, str], ...] = ()

    def open(self, run_key: str, spec: dict[str, Any]) -> "Session":
        """Start every tracker on one run; one that cannot start is left out with a warning."""
        os.environ.update(dict(self.env))  # a worker process gets the parent's settings
        session = Session(spec.get("method"))
        for name in self.names:
            session.add(name, lambda name=name: _started(name, Path(self.root), run_key, spec))
        return session


def _started(name: str, root: Path, run_key: str, spec: dict[str, Any]) -> Tracker:
    tracker = TRACKERS.get(name).make(root)
    tracker.start(run_key, spec)
    return tracker


def parse_names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """`--log` values (repeatable, each a comma list) as tracker names, in order, once each."""
    items = [value] if isinstance(value, str) else list(value or ())
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise KdbenchError(f"tracker names must be strings, got {item!r}")
        for name in (part.strip() for part in item.split(",")):
            if not name:
                raise KdbenchError(f"--log {item!r} has an empty tracker name (trackers: {', '.join(TRACKERS.names())})")
            if name not in names:
                names.append(name)
    return tuple(names)


def setup(value: str | Sequence[str] | None, root: str | Path) -> Tracking | None:
    """Validate `--log` before anything trains: unknown names and trackers whose client is not
    installed are one line each. None when no tracker is asked for."""
    names = parse_names(value)
    for name in names:
        kind = TRACKERS.get(name)  # unknown -> did-you-mean
        if not kind.installed():
            raise KdbenchError(f"--log {name} needs the '{kind.package}' package, which is not installed: "
                               f"pip install 'kdbench[{kind.extra}]' (or pip install {kind.package})")
    if not names:
        return None
    prefixes = tuple(p for name in names for p in TRACKERS.get(name).env_prefixes)
    env = tuple(sorted((k, v) for k, v in os.environ.items() if prefixes and k.startswith(prefixes)))
    return Tracking(names, str(Path(root).absolute()), env)


class Session:
    """The trackers of one run. Epoch rows come from the training loop as (stage, row); stages other
    than the method's own (TCN's students, KDGAN's pre-training) prefix their metric names, and the
    step counts epochs over the whole run, so every tracker sees one increasing step."""

    def __init__(self, method: str | None = None):
        self.method = method
        self.trackers: dict[str, Tracker] = {}
        self.step = 0

    def add(self, name: str, start: Callable[[], Tracker]) -> None:
        tracker = self._guard(name, start)
        if tracker is not None:
            self.trackers[name] = tracker

    def epoch(self, stage: str, row: Mapping[str, Any]) -> None:
        """One finished epoch of any training stage of the run."""
        self.step += 1
        prefix = "" if stage == self.method else f"{_tag(stage)}/"
        metrics = {f"{prefix}{k}": float(v) for k, v in row.items() if k != "epoch" and _is_number(v)}
        for name, tracker in list(self.trackers.items()):
            self._guard(name, lambda: tracker.log_epoch(self.step, metrics))

    def finish(self, record: dict[str, Any]) -> None:
        for name, tracker in list(self.trackers.items()):
            self._guard(name, lambda: tracker.finish(record))
        self.trackers.clear()

    def _guard(self, name: str, call: Callable[[], Any]) -> Any:
        """A tracker's failure is its own: warn once, stop using it, let the run go on."""
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - client libraries raise many types
            self.trackers.pop(name, None)
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            log.warning("warning: tracker %s stopped logging this run (%s%s)", name, type(e).__name__,
                        f": {first}" if first else "")
            return None


@contextmanager
def session(tracking: Tracking | None, run_key: str, spec: dict[str, Any]) -> Iterator[Session]:
    """The run's tracking session (an empty one without trackers); a run that raises is finished
    as failed in the trackers before the error goes on."""
    s = tracking.open(run_key, spec) if tracking is not None else Session(spec.get("method"))
    try:
        yield s
    except BaseException as exc:
        s.finish({"run_key": run_key, "status": "failed", "spec": spec, "metrics": {},
                  "error": {"type": type(exc).__name__, "message": str(exc)}})
        raise


# ---------------------------------------------------------------------------------------------
# Helpers for the trackers
# ---------------------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _tag(stage: str) -> str:
    """A stage name as a metric-name part every backend takes (`tcn ff s0` -> `tcn_ff_s0`)."""
    return re.sub(r"[^\w.\-]+", "_", stage).strip("_") or "stage"


def flat(d: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested mappings as (dotted key, value) pairs."""
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            yield from flat(v, f"{key}.")
        else:
            yield key, v


def final_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The record's scalar metrics (nested ones dotted), as `final/NAME`: apart from the epoch rows
    of the same names (val_acc per epoch vs at the selected state)."""
    return {f"final/{k}": float(v) for k, v in flat(record.get("metrics") or {}) if _is_number(v)}


def spec_params(spec: Mapping[str, Any], limit: int = 500) -> dict[str, str]:
    """The spec flattened to text values (params / config), each cut to `limit` characters."""
    def text(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)

    return {k: text(v)[:limit] for k, v in flat(spec)}


def summary_text(record: Mapping[str, Any]) -> dict[str, str]:
    """Status, deviations and error of a finished run, as text."""
    err = record.get("error") or {}
    return {"status": str(record.get("status")), "deviations": "; ".join(record.get("deviations") or []) or "none",
            **({"error": f"{err.get('type')}: {err.get('message')}"} if err else {})}


# ---------------------------------------------------------------------------------------------
# The trackers
# ---------------------------------------------------------------------------------------------
@register_tracker("tensorboard", package="tensorboard")
class TensorBoardTracker:
    """Event files under ROOT/tensorboard/RUN_KEY (`tensorboard --logdir ROOT/tensorboard`)."""

    def __init__(self, root: Path):
        self.root = root
        self.step = 0

    def start(self, run_key: str, spec: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.root / "tensorboard" / run_key))
        spec_json = json.dumps(spec, indent=1, sort_keys=True, default=str)
        self.writer.add_text("spec", f"run {run_key}\n\n```\n{spec_json}\n```", 0)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.step = epoch
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, epoch)

    def finish(self, record: dict[str, Any]) -> None:
        for k, v in final_metrics(record).items():
            self.writer.add_scalar(k, v, self.step)
        for k, v in summary_text(record).items():
            self.writer.add_text(k, v, self.step)
        self.writer.close()


@register_tracker("mlflow", package="mlflow", env_prefixes=("MLFLOW_",))
class MLflowTracker:
    """An MLflow run per kdbench run, in experiment $MLFLOW_EXPERIMENT_NAME (default `kdbench`) of
    $MLFLOW_TRACKING_URI, else of a local file store ROOT/mlruns (`mlflow ui --backend-store-uri
    ROOT/mlruns`; MLflow 3 wants MLFLOW_ALLOW_FILE_STORE=true for it). The spec goes in as params,
    the record as the artifact record.json."""

    def __init__(self, root: Path):
        self.root = root
        self.step = 0

    def _uri(self) -> str:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return uri
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores behind this switch
        return (self.root / "mlruns").absolute().as_uri()

    def _experiment(self) -> str:
        """The experiment's id, created when missing. A local file store checks a new name against
        the folders it lists, so two pool workers creating it at once made two experiments of one
        name (one run then missing from the one found by name): there, one lock around find-or-create."""
        from filelock import FileLock
        from mlflow.exceptions import MlflowException

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "kdbench"
        local = not os.environ.get("MLFLOW_TRACKING_URI")
        if local:
            self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".mlruns.lock")) if local else nullcontext():
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            try:
                return self.client.create_experiment(name)
            except MlflowException:  # a concurrent client of a tracking server created it first
                return self.client.get_experiment_by_name(name).experiment_id

    def start(self, run_key: str, spec: dict[str, Any]) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(tracking_uri=self._uri())
        tags = {"kdbench.run_key": run_key, **{k: str(spec[k]) for k in ("method", "dataset") if spec.get(k)}}
        self.run_id = self.client.create_run(self._experiment(), run_name=run_key, tags=tags).info.run_id
        params = [Param(k, v) for k, v in spec_params(spec).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.step = epoch
        self._metrics(metrics, epoch)

    def finish(self, record: dict[str, Any]) -> None:
        self._metrics(final_metrics(record), self.step)
        for k, v in summary_text(record).items():
            self.client.set_tag(self.run_id, f"kdbench.{k}", v[:5000])
        self.client.log_text(self.run_id, json.dumps(record, indent=1, sort_keys=True, default=str), "record.json")
        self.client.set_terminated(self.run_id, "FINISHED" if record.get("status") == "ok" else "FAILED")


@register_tracker("wandb", package="wandb", env_prefixes=("WANDB_",))
class WandbTracker:
    """A W&B run per kdbench run in project $WANDB_PROJECT (default `kdbench`), offline unless
    WANDB_MODE says otherwise (`wandb sync ROOT/wandb/offline-run-*` uploads it later); the spec
    is its config, the final metrics and deviations its summary."""

    def __init__(self, root: Path):
        self.root = root

    def start(self, run_key: str, spec: dict[str, Any]) -> None:
        import wandb

        self.root.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=True, console="off", disable_git=True, x_disable_stats=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "kdbench", name=run_key, dir=str(self.root),
                              mode=os.environ.get("WANDB_MODE") or "offline", config={"run_key": run_key, **spec},
                              tags=[str(spec[k]) for k in ("method", "dataset") if spec.get(k)], settings=settings)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=epoch)

    def finish(self, record: dict[str, Any]) -> None:
        self.run.summary.update({**final_metrics(record), **summary_text(record)})
        self.run.finish(exit_code=0 if record.get("status") == "ok" else 1)
