"""Test-only methods and helpers for the sweep / executor tests.

The methods are NOT registered on import (other tests list the registry): the `test_methods`
fixture adds them for one test. Pool workers unpickle a run's method class by module name, so
they import this module (tests/ is on sys.path, and spawn passes sys.path on) and need no registry.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kdbench.method import METHODS, load_methods
from kdbench.method import Context, FitResult, Method, Schedule

TIMING_KEYS = ("time", "latency", "rss", "cuda_mb", "load_s")


class RaisingMethod(Method):
    """Fails at run time, after validation: the sweep must record it and go on."""

    name = "sweeptest-raise"
    needs_teacher = False

    @dataclass
    class Params:
        pass

    @classmethod
    def schedule(cls, spec, params) -> Schedule:
        return Schedule(epochs=1, batch_size=64, lr=1e-3)

    def fit(self, ctx: Context) -> FitResult:
        raise RuntimeError("deliberate failure of the sweep test")


class CrashingMethod(RaisingMethod):
    """Kills its own process (as a segfault or the OOM killer would)."""

    name = "sweeptest-crash"

    def fit(self, ctx: Context) -> FitResult:
        os._exit(7)


class MultiMethod(RaisingMethod):
    """Declares modes and several students like tcn (only expanded, never run)."""

    name = "sweeptest-multi"
    modes = ("ff", "gan")
    multi_student = True

    @dataclass
    class Params:
        width: int = 4


TEST_METHODS = (RaisingMethod, CrashingMethod, MultiMethod)


def records(out_dir: Path) -> dict[str, dict[str, Any]]:
    """run key -> record of every record file; each must be complete JSON (no corrupt file is tolerated)."""
    out = {}
    for path in sorted(Path(out_dir).glob("*.json")):
        if path.name.startswith("."):
            continue
        rec = json.loads(path.read_text())  # raises on a half-written file
        assert {"run_key", "status", "spec"} <= set(rec), path
        assert path.stem == rec["run_key"]
        out[rec["run_key"]] = rec
    return out


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """The parts of a record that must be bit-identical between two runs of the same spec:
    everything but wall times, latencies, memory, the environment and timestamps."""
    def keep(k: str) -> bool:
        return not any(t in k for t in TIMING_KEYS)

    def untimed(v: Any) -> Any:  # nested values too (a TAKD stage's train time)
        if isinstance(v, dict):
            return {k: untimed(x) for k, x in v.items() if keep(k)}
        return [untimed(x) for x in v] if isinstance(v, list) else v

    metrics = untimed({k: v for k, v in record["metrics"].items() if keep(k)})
    history = [{k: v for k, v in row.items() if keep(k)} for row in record.get("history") or []]
    spec = {k: v for k, v in record["spec"].items() if k != "device"}
    data = {k: v for k, v in (record.get("data") or {}).items() if k != "cache"}  # cache hit / built varies
    return {"run_key": record["run_key"], "status": record["status"], "spec": spec, "metrics": metrics,
            "history": history, "teacher": record.get("teacher"), "deviations": record.get("deviations"), "data": data}


@pytest.fixture(autouse=True)
def quiet_env(monkeypatch, tmp_path_factory):
    """No progress bars; one cache shared by the session, so the tiny teachers train once."""
    cache = tmp_path_factory.getbasetemp() / "sweep-cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("KDBENCH_CACHE", str(cache))
    monkeypatch.setenv("KDBENCH_PROGRESS", "0")


@pytest.fixture
def test_methods(monkeypatch):
    """Register the test-only methods for one test."""
    load_methods()
    for cls in TEST_METHODS:
        monkeypatch.setitem(METHODS._entries, cls.name, cls)
