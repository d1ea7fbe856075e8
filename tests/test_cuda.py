"""CUDA checks (`pytest -m cuda`, run by scripts/gpu-check on a GPU machine; skipped elsewhere): every
method runs a short job on `cuda`, fused TCN students equal sequential ones within float tolerance,
and mixed precision gives finite results."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kdbench.cli import main
from kdbench.method import load_methods

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
QUICK = ["--dataset", "digits", "--max-train", "300", "--epochs", "2", "--no-latency", "--device", "cuda",
         "--teacher", "plain2", "--teacher-epochs", "1"]


@pytest.fixture
def env(own_cache: Path) -> Path:
    return own_cache


def _record(out: Path, *args: str) -> dict:
    assert main(["run", *args, *QUICK, "--out", str(out)]) == 0
    (path,) = out.glob("*.json")
    return json.loads(path.read_text())


CASES = [(name, mode) for name, cls in sorted(load_methods().items()) for mode in cls.modes]


@pytest.mark.parametrize("method,mode", CASES, ids=[f"{m}-{mode}" if mode else m for m, mode in CASES])
def test_every_method_runs_on_cuda(method, mode, env):
    extra = ["--mode", mode] if mode else []
    rec = _record(env / "out", "--method", method, *extra)
    assert rec["status"] == "ok" and rec["spec"]["device"] == "cuda"
    assert math.isfinite(rec["metrics"]["test_acc"]) and rec["env"]["gpu"]


@pytest.mark.parametrize("students", ["2", "4"])
def test_fused_tcn_students_equal_sequential_ones_on_cuda(students, env):
    fused = _record(env / "fused", "--method", "tcn", "--students", students, "--param", "fused=true")
    seq = _record(env / "seq", "--method", "tcn", "--students", students, "--param", "fused=false")
    for a, b in zip(fused["metrics"]["feature_mse_per_student"], seq["metrics"]["feature_mse_per_student"]):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-5)
    assert abs(fused["metrics"]["test_acc"] - seq["metrics"]["test_acc"]) <= 1.0  # within a point on 1,497 images


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_runs_are_finite(amp, env):
    rec = _record(env / amp, "--method", "kd", "--amp", amp)
    assert rec["status"] == "ok" and rec["env"]["amp"] == amp and rec["env"]["determinism"]
    assert all(math.isfinite(h["ce"]) for h in rec["history"])
