"""Epoch checkpoints: a run stopped in the middle of training resumes at its last saved epoch.

A run's training loops (`engine.train`, in the order its method calls them: TAKD's stages, TCN's
students, ...) each save their whole state to a folder of the run's own, `<out>/.partial/<run key>/
loop-<i>.pt`, at the end of an epoch once `every_s` seconds have passed since the loop's last save:
the modules, the optimisers, schedulers and gradient scalers, the batch-order generator, torch's
global random state (weight init, dropout, GAN noise), the history and the val-best selection. When
the run starts again (the sweep resumes it), each loop loads its file and goes on from the epoch
after the saved one, so the run ends in the record an uninterrupted run writes (exactly on CPU;
the code before a loop is deterministic given the seed, and the random state after it is
restored). A loop that had finished is restored without training. The folder is removed once the
run's record is written (ok or failed). Loops that do not take long enough never write a file.

The files are torch's own format, read with `weights_only=True` (safetensors holds only tensors;
the optimiser states, history and random states are nested Python values).
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import KdbenchError

log = logging.getLogger("kdbench.resume")

PARTIAL_DIR = ".partial"  # inside a sweep's output folder: one folder per run in training
DEFAULT_EVERY_S = 300.0  # save at most this often: short loops never write, long ones lose at most this much


def every_seconds(value: Any) -> float | None:
    """`--checkpoint-every` as given (seconds, 0 = every epoch; off / none: never) as seconds or None."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("off", "none", "no")):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise KdbenchError(f"checkpoint_every must be a number of seconds or 'off', got {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise KdbenchError(f"checkpoint_every must be >= 0 seconds or 'off', got {value!r}")
    return seconds


def run_folder(out_dir: str | Path, key: str) -> Path:
    return Path(out_dir) / PARTIAL_DIR / key


@dataclass
class RunCheckpoints:
    """The checkpoints of one run's loops; `resumed` lists what was restored (for the record)."""

    folder: Path
    every_s: float = DEFAULT_EVERY_S
    resumed: list[dict[str, Any]] = field(default_factory=list)
    _loops: int = 0

    def loop(self, desc: str) -> "LoopCheckpoint":
        """The checkpoint of the run's next training loop."""
        self._loops += 1
        return LoopCheckpoint(self.folder / f"loop-{self._loops}.pt", desc, self.every_s, self)

    @property
    def prior_train_s(self) -> float:
        """Training time spent before this process started, by the loops it resumed."""
        return sum(r["prior_train_s"] for r in self.resumed)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        parent = self.folder.parent
        if parent.name == PARTIAL_DIR and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


@dataclass
class LoopCheckpoint:
    """One loop's file. The loop calls `load(fingerprint)` before its first epoch and `maybe_save`
    after each; a file from a loop of another shape (changed code or spec) is ignored, with a warning."""

    path: Path
    desc: str
    every_s: float
    owner: RunCheckpoints | None = None
    _last: float = field(default_factory=time.perf_counter)

    def load(self, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
        self._last = time.perf_counter()
        if not self.path.is_file():
            return None
        import torch  # here, not at the top: the CLI and executors import this module without torch

        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a torn or foreign file: train from the start
            log.warning("ignoring unreadable checkpoint %s (%s); training %s from epoch 1", self.path, exc, self.desc)
            return None
        if state.get("fingerprint") != fingerprint:
            log.warning("ignoring checkpoint %s: it is of another loop (%s); training %s from epoch 1",
                        self.path, state.get("fingerprint"), self.desc)
            return None
        if self.owner is not None:
            self.owner.resumed.append({"loop": self.path.stem, "desc": self.desc, "epoch": state["epoch"],
                                       "prior_train_s": state["elapsed_s"]})
        log.info("%s: resuming after epoch %d from %s", self.desc, state["epoch"], self.path)
        return state

    def due(self) -> bool:
        return time.perf_counter() - self._last >= self.every_s

    def save(self, state: dict[str, Any]) -> None:
        """Write atomically (a kill while writing leaves the previous file)."""
        import torch

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        self._last = time.perf_counter()


def training_state(modules: dict[str, Any], optimizers: list[Any], schedulers: Any, scalers: list[Any],
                   gens: Any) -> dict[str, Any]:
    """What a loop's training continues from: module, optimiser, scheduler, scaler and generator
    states and torch's global random state (the loop adds its history and selection)."""
    return {"modules": {n: m.state_dict() for n, m in modules.items()},
            "optimizers": [o.state_dict() for o in optimizers], "schedulers": [s.state_dict() for s in schedulers],
            "scalers": [s.state_dict() for s in scalers], "gens": [g.get_state() for g in gens], "rng": rng_state()}


def restore_training(state: dict[str, Any], modules: dict[str, Any], optimizers: list[Any], schedulers: Any,
                     scalers: list[Any], gens: Any) -> None:
    """Load what `training_state` saved into the loop's objects."""
    for name, m in modules.items():
        m.load_state_dict(state["modules"][name])
    for objs, key in ((optimizers, "optimizers"), (schedulers, "schedulers"), (scalers, "scalers")):
        for obj, sd in zip(objs, state[key]):
            obj.load_state_dict(sd)
    for g, gs in zip(gens, state["gens"]):
        g.set_state(gs)
    set_rng_state(state["rng"])


def rng_state() -> dict[str, Any]:
    """torch's global random state (CPU, and every CUDA device's when present)."""
    import torch

    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
