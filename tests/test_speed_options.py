"""--amp and --compile: options that change floats, so they are recorded and part of the run key,
never defaults; where the device or the installation cannot run them, one line and exit code 2."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kdbench.cli import main
from kdbench.config import RunSpec
from kdbench.engine import Precision
from kdbench.runner import resolve

QUICK = ["--dataset", "digits", "--max-train", "300", "--epochs", "2", "--no-latency"]


@pytest.fixture
def env(own_cache: Path) -> Path:
    return own_cache


def _run(out: Path, *extra: str) -> dict:
    """The record of one quick student run into its own folder."""
    assert main(["run", "--method", "student", *QUICK, "--out", str(out), *extra]) == 0
    (path,) = out.glob("student-*.json")
    return json.loads(path.read_text())


def test_bf16_autocast_runs_on_cpu_is_recorded_and_keyed(env: Path):
    plain = _run(env / "plain")
    bf16 = _run(env / "bf16", "--amp", "bf16")
    assert bf16["status"] == "ok" and math.isfinite(bf16["metrics"]["test_acc"])
    assert bf16["spec"]["amp"] == "bf16" and bf16["env"]["amp"] == "bf16"
    assert "amp" not in plain["spec"] and plain["env"]["amp"] is None  # the default stays out of old run keys
    assert bf16["run_key"] != plain["run_key"]
    assert [h["ce"] for h in bf16["history"]] != [h["ce"] for h in plain["history"]]  # it did change the floats


def test_autocast_really_computes_in_bf16():
    precision = Precision("bf16", "cpu", 1)
    layer = torch.nn.Linear(4, 4)
    with precision.autocast():
        assert layer(torch.ones(2, 4)).dtype == torch.bfloat16
    with Precision(None, "cpu", 1).autocast():
        assert layer(torch.ones(2, 4)).dtype == torch.float32


def test_fp16_scales_gradients_with_one_scaler_per_step():
    if not torch.cuda.is_available():
        pytest.skip("GradScaler for fp16 needs CUDA")
    precision = Precision("fp16", "cuda", 2)
    assert len(precision.scalers) == 2 and all(s.is_enabled() for s in precision.scalers)


def test_compile_runs_and_is_recorded(env: Path):
    rec = _run(env / "compiled", "--compile")
    assert rec["status"] == "ok" and rec["spec"]["compile"] is True and rec["env"]["compile"] is True
    assert rec["metrics"]["macs"] > 0  # FLOPs are counted on the eager module (fvcore cannot trace compiled ones)


def test_fp16_on_cpu_is_one_line_and_exit_2(env: Path, capsys):
    code = main(["run", "--method", "student", *QUICK, "--device", "cpu", "--amp", "fp16", "--out", str(env / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "fp16 needs a CUDA device" in err[0]
    assert not (env / "o").exists()


def test_compile_where_torch_compile_is_unavailable_is_one_line_and_exit_2(env: Path, capsys, monkeypatch):
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    code = main(["run", "--method", "student", *QUICK, "--compile", "--out", str(env / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "torch.compile is not supported" in err[0]


def test_amp_value_is_checked_in_the_spec():
    from kdbench.errors import KdbenchError

    with pytest.raises(KdbenchError, match="run field 'amp'"):
        resolve(RunSpec.from_dict({"method": "student", "dataset": "digits", "amp": "fp8"}))


def test_bf16_on_a_gpu_without_bfloat16_is_one_line(monkeypatch):
    """Checked before anything runs, also with --compile (whose import once shadowed `torch` here)."""
    from kdbench.errors import KdbenchError
    from kdbench.runner import check_speed_options

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "an old GPU")
    spec = RunSpec.from_dict({"method": "student", "dataset": "digits", "amp": "bf16", "compile": True})
    with pytest.raises(KdbenchError, match="--amp bf16: an old GPU has no bfloat16 support; use --amp fp16"):
        check_speed_options(spec, torch.device("cuda"))
