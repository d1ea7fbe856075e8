"""Executors: resume after kill -9, the local process pool (failures, crashes, shared teachers), Ray."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_sweep import TEST_METHODS, comparable, quiet_env, records, test_methods  # noqa: F401  (fixtures)

from kdbench import api, store
from kdbench.cli import main

REPO = Path(__file__).resolve().parents[1]
FAST = {"dataset": "digits", "epochs": 1, "max_train": 300, "teacher": "plain2", "teacher_epochs": 1, "student": "plain2",
        "device": "cpu"}


def test_resume_after_kill_9_redoes_only_the_missing_runs(tmp_path, capsys):
    """SIGKILL the whole sweep (process group) once its first record exists: every record on disk
    is complete, and the rerun runs only what is missing, leaving the finished records untouched."""
    out = tmp_path / "runs"
    n = 6
    args = ["sweep", "--method", "student", "--seeds", str(n), "--dataset", "digits", "--epochs", "1",
            "--max-train", "300", "--no-latency", "--threads", "1", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "kdbench", *args], cwd=REPO, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while not list(out.glob("*.json")):
            if proc.poll() is not None:
                pytest.fail(f"sweep ended before it was killed:\n{proc.stdout.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("no record appeared within 120 s")
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = records(out)  # every visible record parses completely
    assert 1 <= len(before) < n and all(r["status"] == "ok" for r in before.values())
    mtimes = {k: store.record_path(out, k).stat().st_mtime_ns for k in before}
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"{n} runs, {n - len(before)} run now, {len(before)} already done, 0 failed" in text
    after = records(out)
    assert len(after) == n and all(r["status"] == "ok" for r in after.values())
    assert {k: store.record_path(out, k).stat().st_mtime_ns for k in before} == mtimes


def test_pool_records_failures_and_crashes_and_goes_on(test_methods, tmp_path):
    """Two spawn workers: a run that raises and a run that kills its worker are recorded as failed;
    the other runs finish."""
    res = api.sweep(["student", "sweeptest-raise", "sweeptest-crash"], seeds=2, workers=2, threads=1,
                    out=tmp_path / "pool", latency=False, log=None, **FAST)
    recs = records(tmp_path / "pool")
    by_method: dict[str, list[dict]] = {}
    for r in recs.values():
        by_method.setdefault(r["spec"]["method"], []).append(r)
    assert [r["status"] for r in by_method["student"]] == ["ok", "ok"]
    assert all(r["status"] == "failed" and r["error"]["type"] == "RuntimeError" for r in by_method["sweeptest-raise"])
    crash = by_method["sweeptest-crash"]
    assert len(crash) == 2 and all(r["status"] == "failed" and "died" in r["error"]["message"] for r in crash)
    assert len(res.failed) == 4 and not res.ok and res.ran == 6


def _run_local_pool(out: Path):
    return api.sweep(["student", "kd"], seeds=2, workers=2, threads=1, out=out, latency=False, log=None, **FAST)


def test_ray_gives_the_same_records_as_the_local_pool(tmp_path):
    if os.environ.get("CI", "").lower() == "true":
        import ray  # CI installs the ray extra: missing Ray must fail there
    else:
        ray = pytest.importorskip("ray")
    local = _run_local_pool(tmp_path / "local")
    assert local.ok and len(local.records) == 4
    # the parent built the teacher and its targets before fanning out: no worker computed targets
    kd = [r for r in local.records if r["spec"]["method"] == "kd"]
    assert [r["metrics"]["targets_time_s"] for r in kd] == [0.0, 0.0]
    assert len({r["teacher"]["key"] for r in kd}) == 1
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = api.sweep(["student", "kd"], seeds=2, executor="ray", threads=1, out=tmp_path / "ray",
                           latency=False, log=None, **FAST)
    finally:
        ray.shutdown()
    assert remote.ok and remote.ran == 4
    assert [comparable(r) for r in remote.records] == [comparable(r) for r in local.records]
    assert sorted(p.name for p in (tmp_path / "ray").glob("*.json")) == sorted(p.name for p in (tmp_path / "local").glob("*.json"))


def test_pool_workers_take_the_visible_gpus_in_turn():
    from kdbench.executors import gpu_for_worker

    assert [gpu_for_worker(i, 4, None) for i in range(5)] == ["0", "1", "2", "3", "0"]
    assert [gpu_for_worker(i, 2, "5,7") for i in range(3)] == ["5", "7", "5"]  # the user's selection is kept
    assert gpu_for_worker(0, 1, None) is None and gpu_for_worker(3, 0, None) is None  # one or no GPU: untouched
