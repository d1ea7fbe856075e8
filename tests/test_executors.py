"""Executors: resume after kill -9, the local process pool (failures, crashes, shared teachers), one
teacher whatever the executor, concurrent sweeps that split the runs, Ray."""
from __future__ import annotations

import json
import os
import re
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
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
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


def test_teacher_is_the_same_whatever_the_executor(tmp_path, monkeypatch):
    """One run key, one result: `--workers 1` trains the teacher inside the run (at `--threads 1`),
    `--workers 2` in the parent (whose torch threads are many on a big machine). Both use the fixed,
    recorded TEACHER_THREADS, so fresh caches give identical teacher weights and records."""
    import torch

    from kdbench.teachers import TEACHER_THREADS

    before = torch.get_num_threads()
    torch.set_num_threads(4)  # the parent's default on a 4-core machine: other floats than 1 thread
    try:
        recs = {}
        for workers in (1, 2):
            monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / f"cache{workers}"))
            res = api.sweep(["kd"], seeds=1, workers=workers, threads=1, out=tmp_path / f"w{workers}", latency=False,
                            log=None, **FAST)
            assert res.ok and len(res.records) == 1
            recs[workers] = res.records[0]
    finally:
        torch.set_num_threads(before)
    assert recs[1]["teacher"]["weights_sha256"] == recs[2]["teacher"]["weights_sha256"]
    assert recs[1]["teacher"]["threads"] == TEACHER_THREADS
    assert comparable(recs[1]) == comparable(recs[2])


def test_a_run_lock_held_by_a_dead_process_is_free(tmp_path):
    """The claim is an flock: held by a live process, it is refused (or waited for); once that process
    is SIGKILLed the OS has dropped it, and nothing stale blocks a resume."""
    from kdbench.executors import LOCK_DIR, claim

    lock = tmp_path / LOCK_DIR / "k.lock"
    lock.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)", str(lock)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with claim(tmp_path, "k") as mine:
            assert not mine
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with claim(tmp_path, "k") as mine:
        assert mine
        with claim(tmp_path, "k") as again:  # another claim (another process, another machine) is refused
            assert not again


# Two sweeps into one directory: both plan every run as to do (a barrier after planning), then each
# run is computed once in all. Pool workers run this script's top level too (as __mp_main__), so
# the hook counts their runs as well.
SPLITTER = """
import json, os, sys, time
from pathlib import Path
import kdbench.api as api, kdbench.runner as runner

LOG, BARRIER = Path(os.environ["HOOK_LOG"]), Path(os.environ["HOOK_BARRIER"])
real_plan, real_execute = api.plan, runner.execute

def plan(*a, **k):
    planned = real_plan(*a, **k)
    (BARRIER / str(os.getpid())).touch()
    deadline = time.time() + 300
    while len(list(BARRIER.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.01)
    return planned

def execute(spec, out_dir, **k):
    with open(LOG, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "key": k["resolved"].key}) + "\\n")
    return real_execute(spec, out_dir, **k)

api.plan, runner.execute = plan, execute
if __name__ == "__main__":
    from kdbench.cli import main
    sys.exit(main(sys.argv[1:]))
"""


def test_concurrent_sweeps_into_one_directory_split_the_runs(tmp_path):
    """Two sweeps of the same grid into one --out at the same moment (one in-process, one on a pool):
    every run is computed exactly once in total, each record is complete and ok, and the two
    sweeps' `run now` counts add up to the grid."""
    script, hook_log, barrier = tmp_path / "splitter.py", tmp_path / "hook.jsonl", tmp_path / "barrier"
    script.write_text(SPLITTER)
    barrier.mkdir()
    out, n = tmp_path / "out", 6
    argv = ["sweep", "--method", "student", "--seeds", str(n), "--dataset", "digits", "--epochs", "2", "--max-train", "300",
            "--no-latency", "--threads", "1", "--out", str(out)]
    env = {**os.environ, "HOOK_LOG": str(hook_log), "HOOK_BARRIER": str(barrier), "KDBENCH_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(script), *argv, "--workers", str(w)], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for w in (1, 2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert len(list(barrier.iterdir())) == 2  # both planned all runs before either ran one
    computed = [json.loads(line)["key"] for line in hook_log.read_text().splitlines()]
    recs = records(out)
    assert len(recs) == n and all(r["status"] == "ok" for r in recs.values())
    assert sorted(computed) == sorted(recs), "a run was computed twice, or not at all"
    ran = [int(re.search(rf"{n} runs, (\d+) run now", text).group(1)) for text in outputs]
    assert sum(ran) == n, outputs


@pytest.mark.parametrize("given, env, expected", [(None, None, "local"), (None, "10.0.0.1:6379", "10.0.0.1:6379"),
                                                  ("auto", "10.0.0.1:6379", "auto")])
def test_ray_without_an_address_starts_a_fresh_local_ray_never_a_stale_one(monkeypatch, given, env, expected):
    """Ray's own default (address=None) joins any Ray left running on the machine; kdbench's default
    is $RAY_ADDRESS, else a fresh local instance."""
    import sys
    import types
    calls = []
    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: calls.append(kw))
    monkeypatch.setitem(sys.modules, "ray", fake)
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    from kdbench.ray_exec import RayExecutor
    RayExecutor(address=given).close()
    assert [c["address"] for c in calls] == [expected]
