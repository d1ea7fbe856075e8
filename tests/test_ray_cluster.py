"""The Ray executor on a real two-node Ray cluster on this machine (`ray.cluster_utils.Cluster`):
each node has a KDBENCH_CACHE of its own and the driver (this process) a third, as machines that
share no disk. The driver trains the teacher once and ships it with its targets through Ray's
object store; the records equal the local pool's. The driver holds the runs' locks (a run another
process holds is not run again) and Ctrl-C cancels the runs in flight without a record of them."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers_ray_count import COUNTER_ENV, counted, patches
from helpers_sweep import comparable, records

from kdbench import api, registry, runner, store
from kdbench.cache import CacheEntry
from kdbench.executors import claim

TESTS = Path(__file__).resolve().parent
FAST = {"dataset": "digits", "epochs": 1, "max_train": 300, "teacher": "plain2", "teacher_epochs": 1, "student": "plain2",
        "device": "cpu"}
NODES = ("node-a", "node-b")


def _ray():
    if os.environ.get("CI", "").lower() == "true":
        import ray  # CI installs the ray extra: missing Ray must fail there
    else:
        ray = pytest.importorskip("ray")
    return ray


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two one-CPU nodes (the head and one more), each with its own cache; this process connected as
    the driver. Yields {"caches": {node: path}, "counter": path, "address": the head's}."""
    ray = _ray()
    from ray.cluster_utils import Cluster

    base = tmp_path_factory.mktemp("ray-cluster")
    counter = base / "counter.txt"
    caches = {name: base / f"cache-{name}" for name in NODES}

    def env(name: str) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
        return {"KDBENCH_CACHE": str(caches[name]), "KDBENCH_PROGRESS": "0", COUNTER_ENV: str(counter),
                "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_DISABLE_USAGE_STATS", "1")
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, "env_vars": env(NODES[0])})
        try:
            c.add_node(num_cpus=1, env_vars=env(NODES[1]))
            c.wait_for_nodes()
            ray.init(address=c.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            try:
                yield {"caches": caches, "counter": counter, "address": c.address}
            finally:
                ray.shutdown()
        finally:
            c.shutdown()


@pytest.fixture
def driver(tmp_path, monkeypatch):
    """The driver's own cache (a third one), no progress bars."""
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache-driver"))
    monkeypatch.setenv("KDBENCH_PROGRESS", "0")
    return tmp_path


def _entries(root: Path) -> dict[str, dict]:
    """kind/key -> info of every valid teacher and target entry under a cache root."""
    out = {}
    for kind in ("teachers", "targets"):
        for d in sorted((root / kind).glob("*")) if (root / kind).is_dir() else []:
            entry = CacheEntry(kind, d.name, root)
            if d.is_dir() and not d.name.startswith(".") and entry.valid(warn=False):
                out[f"{kind}/{d.name}"] = entry.meta()["info"]
    return out


def test_two_nodes_get_the_teacher_trained_once_on_the_driver_and_match_the_local_pool(cluster, driver, monkeypatch):
    monkeypatch.setenv("KDBENCH_CACHE", str(driver / "cache-local"))
    # unfused, so that each node runs one seed (fused, both would run as one task on one node)
    local = api.sweep(["kd"], seeds=2, workers=2, threads=1, out=driver / "local", latency=False, log=None,
                      fuse_seeds=False, **FAST)
    assert local.ok and len(local.records) == 2

    # the cluster: a fresh driver cache; every process counts its teacher trainings and entry builds
    driver_cache = driver / "cache-driver"
    monkeypatch.setenv("KDBENCH_CACHE", str(driver_cache))
    monkeypatch.setenv(registry.IMPORT_ENV, "helpers_ray_count")  # the workers import the counter
    monkeypatch.setattr(registry, "_imported", [])
    monkeypatch.syspath_prepend(str(TESTS))
    counter = cluster["counter"]
    counter.unlink(missing_ok=True)
    for owner, name, fn in patches(counter):
        monkeypatch.setattr(owner, name, fn)
    remote = api.sweep(["kd"], seeds=2, executor="ray", threads=1, out=driver / "ray", latency=False, log=None,
                       fuse_seeds=False, **FAST)
    assert remote.ok and remote.ran == 2

    events = counted(counter)
    assert [e for e in events if e[0] == "train"] == [("train", str(driver_cache))]  # once, on the driver
    assert Counter(e for e in events if e[0] != "train") == {("build:teachers", str(driver_cache)): 1,
                                                            ("build:targets", str(driver_cache)): 2}  # train, val
    shipped = _entries(driver_cache)
    teacher = f"teachers/{remote.records[0]['teacher']['key']}"
    assert len(shipped) == 3 and teacher in shipped  # the teacher, its train and val targets
    for name, cache in cluster["caches"].items():  # both nodes ran a run, from what they were sent
        got = _entries(cache)
        assert teacher in got and {k: shipped.get(k) for k in got} == got, f"{name}: {sorted(got)} vs {sorted(shipped)}"
    assert [comparable(r) for r in remote.records] == [comparable(r) for r in local.records]
    assert [r.get("warnings") for r in remote.records] == [r.get("warnings") for r in local.records]  # none "built on its node"
    assert [r["metrics"]["test_acc"] for r in remote.records] == [r["metrics"]["test_acc"] for r in local.records]


def test_seed_siblings_train_fused_as_one_task_and_match_the_local_pool(cluster, driver):
    """Fused seed siblings are one Ray task (one computation on one node); each still gets its own
    record, equal to the local pool's fused records."""
    sweep = dict(seeds=2, threads=1, latency=False, log=None, fuse_seeds=True, **FAST)
    local = api.sweep(["student"], workers=2, out=driver / "local", **sweep)
    remote = api.sweep(["student"], executor="ray", out=driver / "ray", **sweep)
    assert local.ok and remote.ok and remote.ran == 2
    assert all(r["env"]["seed_fusion"]["fused"] and r["env"]["seed_fusion"]["copies"] == 2 for r in remote.records)
    assert [comparable(r) for r in remote.records] == [comparable(r) for r in local.records]
    untimed = lambda note: {k: v for k, v in note.items() if k != "group_train_time_s"}  # noqa: E731
    assert [untimed(r["env"]["seed_fusion"]) for r in remote.records] == [untimed(r["env"]["seed_fusion"]) for r in local.records]


def test_a_run_another_process_holds_is_waited_for_and_not_run_again(cluster, driver):
    """Another sweep process holds run A's lock: the Ray sweep runs B, waits for A, and takes the
    record that process wrote instead of running A again."""
    out = driver / "out"
    planned = api.sweep(["student"], seeds=2, out=out, dry_run=True, log=None, **FAST).planned
    held, free = planned[0].resolved, planned[1].resolved
    locked, failures = threading.Event(), []

    def other_process() -> None:
        try:
            with claim(out, held.key) as mine:
                assert mine
                locked.set()
                deadline = time.monotonic() + 300
                while not store.record_path(out, free.key).exists():  # the sweep is in its runs
                    assert time.monotonic() < deadline, "the Ray sweep never ran the free run"
                    time.sleep(0.05)
                runner.execute(held.spec, out, resolved=held, latency=False, progress=False)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            failures.append(e)
            locked.set()

    thread = threading.Thread(target=other_process)
    thread.start()
    assert locked.wait(60)
    try:
        res = api.sweep(["student"], seeds=2, executor="ray", threads=1, out=out, latency=False, log=None, **FAST)
    finally:
        thread.join(300)
    assert not failures, failures
    stamp = store.record_path(out, held.key).stat().st_mtime_ns
    assert res.ok and res.ran == 1 and len(res.records) == 2  # A was not run by the sweep
    assert store.record_path(out, held.key).stat().st_mtime_ns == stamp
    for p in planned:
        with claim(out, p.key) as mine:
            assert mine  # every lock released


def test_ctrl_c_cancels_the_runs_in_flight_and_leaves_no_record_of_them(cluster, driver):
    """`kdbench sweep --executor ray --address ...` (a driver process of its own, as from a shell)
    gets SIGINT once its first record is written: it exits 130 with one line on stderr, the runs in
    flight are cancelled (their CPUs free again) without a failed or partial record, every lock is
    released, and a rerun does only the missing runs. The signal goes to that process only: a signal
    sent to pytest's own process could end the whole test session if it landed outside the sweep."""
    ray = _ray()
    out, n = driver / "out", 4
    sweep = dict(seeds=n, executor="ray", threads=1, out=out, latency=False, log=None, **{**FAST, "epochs": 4})
    args = [sys.executable, "-m", "kdbench", "sweep", "--method", "student", "--executor", "ray",
            "--address", cluster["address"], "--out", str(out), "--seeds", str(n), "--threads", "1", "--no-latency",
            *[a for k, v in {**FAST, "epochs": 4}.items() for a in (f"--{k.replace('_', '-')}", str(v))]]
    log = driver / "sweep.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as f:
        proc = subprocess.Popen(args, env=env, cwd=driver, stdout=subprocess.DEVNULL, stderr=f,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("*.json")):
            assert proc.poll() is None, f"the sweep ended before its first record:\n{log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no record within 300 s:\n{log.read_text()[-2000:]}"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = log.read_text()
    assert code == 130, err[-2000:]
    assert err.splitlines()[-1].startswith("kdbench: interrupted by SIGINT"), err[-2000:]
    kept = records(out)
    assert 1 <= len(kept) < n and all(r["status"] == "ok" for r in kept.values())
    planned = api.sweep(["student"], **{**sweep, "dry_run": True}).planned
    for p in planned:
        with claim(out, p.key) as mine:
            assert mine
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) < 2:  # the cancelled tasks' workers are gone
        assert time.monotonic() < deadline, f"Ray still busy: {ray.available_resources()}"
        time.sleep(0.2)
    resumed = api.sweep(["student"], **sweep)
    assert resumed.ok and resumed.ran == n - len(kept) and len(resumed.records) == n
    assert {k: r for k, r in records(out).items() if k in kept} == kept  # the finished records untouched


def test_a_run_on_cuda_reserves_a_gpu_and_a_cluster_without_one_is_refused(cluster, driver):
    import dataclasses

    from kdbench.errors import KdbenchError
    from kdbench.executors import make_job
    from kdbench.ray_exec import RayExecutor, task_resources

    r = api.sweep(["student"], seeds=1, out=driver / "out", dry_run=True, log=None, **FAST).planned[0].resolved
    cpu = make_job(r, driver / "out")
    cuda = make_job(dataclasses.replace(r, canonical={**r.canonical, "device": "cuda"}), driver / "out")
    assert task_resources(cpu, 2) == {"num_cpus": 2, "num_gpus": 0}
    assert task_resources(cuda, 1) == {"num_cpus": 1, "num_gpus": 1}
    with RayExecutor(threads=1) as ex, pytest.raises(KdbenchError, match="the Ray cluster has no GPU"):
        next(iter(ex.map([cpu, cuda])))
    assert not (driver / "out").exists()  # nothing ran, nothing was written


# --------------------------------------------------------------------------------------------- without Ray
def _entry(root: Path, payload: bytes = b"weights") -> CacheEntry:
    entry = CacheEntry("teachers", "t-key", root)
    entry.get_or_build(lambda tmp: ((tmp / "model.bin").write_bytes(payload), {"source": "trained"})[1])
    return entry


def test_an_entry_packed_in_one_cache_installs_into_another_checksums_verified(tmp_path):
    from kdbench.errors import KdbenchError

    packed = _entry(tmp_path / "a").pack()
    copy = CacheEntry("teachers", "t-key", tmp_path / "b")
    assert copy.install(packed) == _entry(tmp_path / "a").meta() and copy.valid(warn=False)
    assert (copy.dir / "model.bin").read_bytes() == b"weights"
    bad = {**packed, "model.bin": b"weightz"}
    other = CacheEntry("teachers", "t-key", tmp_path / "c")
    with pytest.raises(KdbenchError, match="model.bin fails its checksum"):
        other.install(bad)
    assert not other.dir.exists()
    (tmp_path / "a" / "teachers" / "t-key" / "model.bin").write_bytes(b"changed")
    with pytest.raises(KdbenchError, match="cannot be sent: model.bin fails its checksum"):
        CacheEntry("teachers", "t-key", tmp_path / "a").pack()


def test_an_entry_source_is_asked_before_building_and_recording_says_how_each_entry_came(tmp_path):
    from kdbench.cache import entry_source, recording

    packed = _entry(tmp_path / "driver", b"from the driver").pack()
    asked = []

    def fetch(kind, key):
        asked.append((kind, key))
        return packed if key == "t-key" else None

    def writer(tmp):
        (tmp / "model.bin").write_bytes(b"built here")
        return {"source": "trained"}

    node = tmp_path / "node"
    with entry_source(fetch), recording() as used:
        meta, built = CacheEntry("teachers", "t-key", node).get_or_build(writer)
        assert not built and (node / "teachers" / "t-key" / "model.bin").read_bytes() == b"from the driver"
        assert CacheEntry("teachers", "t-key", node).get_or_build(writer) == (meta, False)  # now a hit, not asked
        assert CacheEntry("teachers", "other", node).get_or_build(writer)[1]  # the source has none: built
    assert asked == [("teachers", "t-key"), ("teachers", "other")]
    assert {k: how for k, (_, how) in used.items()} == {("teachers", "t-key"): "installed", ("teachers", "other"): "built"}
    assert CacheEntry("teachers", "again", node).get_or_build(writer)[1] and len(asked) == 2  # source gone after the body
