"""Reliability rules of docs/design.md §7, each proved by a test:

- kill anywhere: sweep processes SIGKILLed at random moments of their work (and at four precise
  moments a random kill rarely hits: halfway through a record, inside teacher training, between a
  finished teacher build and its rename, halfway through the targets) resume to exactly the records of
  an uninterrupted `python -m kdbench sweep`, and nothing half-written is ever read as a result;
- two sweeps at once into one results directory and one cache: no lost or corrupt record, each cache
  entry (dataset, teacher, targets) built exactly once;
- corrupt caches (teacher, targets, decoded dataset) are detected by checksum, rebuilt with a warning
  and never used; targets of other teacher weights are never reused;
- hostile checkpoints run no code; mismatched ones name the mismatch;
- a diverging run is recorded as failed with its epoch and reason while the sweep goes on;
- the same RunSpec gives bit-identical metrics, and a record reruns itself (`--from-record`).
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_sweep import comparable, records

from kdbench import store
from kdbench.cache import CacheEntry, CorruptCacheWarning
from kdbench.cli import main
from kdbench.config import RunSpec, TeacherRecipe
from kdbench.data.cache import CacheCorruptionWarning
from kdbench.data.idx import IDX_FILES, write_idx
from kdbench.errors import KdbenchError
from kdbench.runner import resolve, run, spec_from_record

REPO = Path(__file__).resolve().parents[1]

# a tiny but complete sweep: 8x8 digits, 300 training images, a plain2 teacher, 2 epochs,
# student / kd / tcn with 2 students, 2 seeds = 6 runs
KILL_SWEEP = ["sweep", "--method", "student,kd,tcn", "--dataset", "digits", "--max-train", "300", "--epochs", "2",
              "--seeds", "2", "--students", "2", "--teacher", "plain2", "--teacher-epochs", "3", "--no-latency",
              "--threads", "1"]
N_KILLS = 10


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread for in-process runs: on a small, shared CPU several threads per tiny batch
    spend their time waiting for each other (results are compared within one thread setting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _env(cache: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "KDBENCH_CACHE": str(cache), "KDBENCH_PROGRESS": "0", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **extra}


def _popen(args: list[str], cache: Path, log: Path, **env: str) -> subprocess.Popen:
    with open(log, "ab") as f:  # the child keeps its own descriptor
        return subprocess.Popen(args, env=_env(cache, **env), cwd=log.parent, stdout=f, stderr=subprocess.STDOUT)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else ""


def _record_files(out: Path) -> list[Path]:
    return [p for p in sorted(out.glob("*.json")) if not p.name.startswith(".")] if out.exists() else []


def _check_readable(out: Path) -> None:
    """Every record file present is complete JSON of a finished run (a kill never leaves a half one),
    and the results loader sees exactly those."""
    recs = records(out)  # raises on a half-written file
    assert all(r["status"] == "ok" for r in recs.values()), {k: r.get("error") for k, r in recs.items()}
    assert len(store.load_results(out)) == len(recs)


def _check_final(out: Path, cache: Path, ref: dict[str, dict]) -> None:
    recs = records(out)
    assert set(recs) == set(ref), f"missing {set(ref) - set(recs)}, unexpected {set(recs) - set(ref)}"
    for key, rec in recs.items():
        assert rec["status"] == "ok", rec.get("error")
        assert comparable(rec) == comparable(ref[key]), f"{key} differs from the uninterrupted run"
    df = store.load_results(out)
    assert len(df) == len(ref) and df["run_key"].is_unique
    strays = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".locks"]  # .locks: run claims
    assert all(p.endswith(".tmp") for p in strays), strays  # a killed writer leaves only ignored temporaries
    for kind in ("teachers", "targets"):  # a rebuild removes the temporary folders of killed builders
        left = [p.name for p in (cache / kind).iterdir() if p.name.startswith(".")] if (cache / kind).exists() else []
        assert not left, f"stray temporary cache folders: {left}"


def _temps(out: Path) -> set[str]:
    return {p.name for p in out.glob(".*.tmp")} if out.exists() else set()


def _phase(out: Path, cache: Path, temps_before: set[str]) -> str:
    """Where the sweep was when it was killed, read from what it left on disk."""
    if _temps(out) - temps_before:
        return "record writing"
    teachers = cache / "teachers"
    done = teachers.exists() and any((d / "meta.json").exists() for d in teachers.iterdir() if not d.name.startswith("."))
    if teachers.exists() and not done:
        return "teacher training"
    n_targets = sum(1 for d in (cache / "targets").glob("*") if (d / "meta.json").exists()) if done else 0
    n = len(_record_files(out))
    if done and n_targets == 0:
        return "target caching"
    if n == 0:
        return "start-up / data"
    return f"student training ({n} records{', teacher cached' if done else ''})"


# A fork server: it imports kdbench, torch and the methods once, then for each request (a JSON line:
# argv, cache, log, optional kill point) forks a child process that runs `kdbench.cli.main(argv)`,
# exactly what `python -m kdbench` runs (kdbench/__main__.py), and reports "pid N", then "exit CODE".
# Each sweep is its own OS process, killed with SIGKILL like any other; the fork only skips the
# interpreter start-up, which on a small shared machine is most of a tiny sweep's wall time, so the
# kill moments land in the work. A kill point makes the child kill itself at one precise moment.
FORK_SERVER = """
import json, os, signal, sys, traceback
import torch, torch._dynamo, sklearn.datasets  # what a sweep imports on its first run anyway
import kdbench.api, kdbench.executors, kdbench.runner
from kdbench.cli import main
from kdbench.method import load_methods
load_methods()


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point):
    from pathlib import Path
    import kdbench.store as store, kdbench.teachers as teachers
    if point == "record-half":  # the third record: half of it in its temporary file, then die
        real, n = store.atomic_write_text, [0]
        def write(path, text):
            n[0] += 1
            if n[0] == 3:
                with open(path.parent / f".{path.name}.killed.tmp", "w") as f:
                    f.write(text[: len(text) // 2]); f.flush(); os.fsync(f.fileno())
                die()
            return real(path, text)
        store.atomic_write_text = write
    elif point == "teacher-training":  # at the start of the teacher's second epoch
        real_train = teachers.train
        teachers.train = lambda *a, **k: real_train(*a, **k, on_epoch_start=lambda e: die() if e == 2 else None)
    elif point == "teacher-publish":  # trained and written, about to be renamed into place
        real_replace = os.replace
        def replace(src, dst, **k):
            if Path(src).is_dir() and Path(src).parent.name == "teachers":
                die()
            return real_replace(src, dst, **k)
        os.replace = replace
    elif point == "targets-write":  # features written, logits half written
        real_save = teachers.save_array
        def save(dirpath, name, array):
            if name == "logits":
                (dirpath / "logits.npy").write_bytes(b"\\x93NUMPY" + bytes(40)); die()
            return real_save(dirpath, name, array)
        teachers.save_array = save


print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.environ["KDBENCH_CACHE"] = req["cache"]
        fd = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            if req.get("kill"):
                arm(req["kill"])
            code = main(req["argv"])
        except BaseException:
            traceback.print_exc()
            code = 99
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(f"pid {pid}", flush=True)
    _, status = os.waitpid(pid, 0)
    print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)
"""


class ForkServer:
    """Drives FORK_SERVER: `start` one sweep, `wait` for its exit code (None on timeout)."""

    def __init__(self, folder: Path):
        import queue
        import threading

        self.log = folder / "sweeps.log"
        script = folder / "fork_server.py"
        script.write_text(FORK_SERVER)
        self.proc = subprocess.Popen([sys.executable, str(script)], env=_env(folder / "unused-cache"), cwd=folder,
                                     text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.log, "ab"))
        self.lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x.strip()) for x in self.proc.stdout], daemon=True).start()

    def _next(self, timeout: float) -> str:
        import queue

        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None

    def start(self, out: Path, cache: Path, kill: str | None = None, argv: list[str] = KILL_SWEEP) -> int:
        if not getattr(self, "ready", False):
            assert self._next(600) == "ready", _tail(self.log)
            self.ready = True
        req = {"argv": [*argv, "--out", str(out)], "cache": str(cache), "log": str(self.log), "kill": kill}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        word, pid = self._next(60).split()
        assert word == "pid"
        return int(pid)

    def wait(self, timeout: float) -> int | None:
        try:
            word, code = self._next(timeout).split()
        except TimeoutError:
            return None
        assert word == "exit"
        return int(code)

    def run(self, out: Path, cache: Path, kill: str | None = None) -> int:
        self.start(out, cache, kill)
        code = self.wait(600)
        assert code is not None, _tail(self.log)
        return code

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """(fork server, records of an uninterrupted `python -m kdbench sweep`); the server imports while
    the reference runs."""
    folder = tmp_path_factory.mktemp("kill")
    server = ForkServer(folder)
    try:
        out, cache = folder / "ref" / "out", folder / "ref" / "cache"
        out.parent.mkdir()
        p = _popen([sys.executable, "-m", "kdbench", *KILL_SWEEP, "--out", str(out)], cache, server.log)
        assert p.wait(timeout=600) == 0, _tail(server.log)
        ref = records(out)
        assert len(ref) == 6 and all(r["status"] == "ok" for r in ref.values())
        yield server, ref
    finally:
        server.close()


@pytest.mark.slow
def test_kill_anywhere_then_resume(sweeps, tmp_path: Path) -> None:
    """SIGKILL real sweep processes at random moments of their work (fixed seed) and resume each time;
    every chain of kills and resumes ends with exactly the records of the uninterrupted
    `python -m kdbench sweep`, and after every kill nothing half-written is read as a result."""
    server, ref = sweeps
    t0 = time.monotonic()  # the work of one uninterrupted sweep, without the interpreter start-up
    assert server.run(tmp_path / "timing", tmp_path / "timing-cache") == 0, _tail(server.log)
    work = time.monotonic() - t0
    assert {k: comparable(r) for k, r in records(tmp_path / "timing").items()} == {
        k: comparable(r) for k, r in ref.items()}  # a forked sweep computes what the command line does

    rng = random.Random(7)
    phases: list[str] = []
    chain, in_chain, launches = 0, 0, 0
    out, cache = tmp_path / "c0" / "out", tmp_path / "c0" / "cache"
    while len(phases) < N_KILLS:
        launches += 1
        assert launches <= 4 * N_KILLS, f"only {len(phases)} kills in {launches} launches: {phases}"
        at = rng.uniform(0.05, work)
        temps = _temps(out)
        pid = server.start(out, cache)
        rc = server.wait(timeout=at if in_chain < 3 else 600)  # 3 kills per chain, then resume to the end
        if rc is None:
            with contextlib.suppress(ProcessLookupError):  # it may have ended and been reaped meanwhile
                os.kill(pid, signal.SIGKILL)
            rc = server.wait(timeout=60)
            if rc != 0:  # 0: the sweep ended between the timeout and the signal (a loaded machine), a completion
                assert rc == -signal.SIGKILL, _tail(server.log)
                phases.append(_phase(out, cache, temps))
                in_chain += 1
                _check_readable(out)
                continue
        assert rc == 0, _tail(server.log)  # this chain is complete: check it, start a fresh one
        _check_final(out, cache, ref)
        chain, in_chain = chain + 1, 0
        out, cache = tmp_path / f"c{chain}" / "out", tmp_path / f"c{chain}" / "cache"
    if out.exists():  # resume the last chain to the end
        assert server.run(out, cache) == 0, _tail(server.log)
        _check_final(out, cache, ref)
    print(f"\nsweep work {work:.1f}s; {len(phases)} kills in {launches} launches, {chain + 1} chains; "
          f"killed during: {phases}")
    assert any(ph != "start-up / data" for ph in phases), phases


def _teacher_temps(cache: Path) -> list[Path]:
    return [d for d in (cache / "teachers").glob(".*") if d.is_dir()]


KILL_POINTS = {  # what each precise kill leaves behind, checked before the resume
    "record-half": lambda out, cache: len(_record_files(out)) == 2 and len(list(out.glob(".*.killed.tmp"))) == 1,
    "teacher-training": lambda out, cache: len(_teacher_temps(cache)) == 1 and not _entries(cache, "teachers"),
    "teacher-publish": lambda out, cache: [sorted(p.name for p in d.iterdir()) for d in _teacher_temps(cache)]
    == [["meta.json", "model.safetensors"]] and not _entries(cache, "teachers"),
    "targets-write": lambda out, cache: len(_entries(cache, "teachers")) == 1 and not _entries(cache, "targets")
    and len([d for d in (cache / "targets").glob(".*") if d.is_dir()]) == 1,
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_at_a_precise_moment_then_resume(point: str, sweeps, tmp_path: Path) -> None:
    """Kills at the moments a random kill rarely hits: halfway through a record's temporary file,
    inside teacher training, between a finished teacher build and its rename, halfway through the
    targets. The leftovers are never used; the resumed sweep ends with the reference records."""
    server, ref = sweeps
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert server.run(out, cache, kill=point) == -signal.SIGKILL, _tail(server.log)
    assert KILL_POINTS[point](out, cache), (sorted(p.name for p in out.iterdir()) if out.exists() else None,
                                            sorted(str(p.relative_to(cache)) for p in cache.rglob("*")))
    _check_readable(out)
    assert server.run(out, cache) == 0, _tail(server.log)
    _check_final(out, cache, ref)


# ----------------------------------------------------------------------------------- concurrency
RACER = """
import json, os, sys, time
from pathlib import Path
LOG, BARRIER = Path(os.environ["HOOK_LOG"]), Path(os.environ["HOOK_BARRIER"])

def log(event, where):
    with open(LOG, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "event": event, "entry": str(where), "t": time.time()}) + "\\n")

import kdbench.cache as cache
import kdbench.data.cache as dcache
build, get_or_build, write_entry = cache.CacheEntry.build, cache.CacheEntry.get_or_build, dcache._write_entry

def logged_build(self, writer):
    log("build-start", self.dir)
    if self.dir.parent.name == "teachers":
        time.sleep(1.0)  # a slow teacher: the other process must wait for it, not train it too
    try:
        return build(self, writer)
    finally:
        log("build-end", self.dir)

def synced_get_or_build(self, writer):
    if self.dir.parent.name == "teachers" and not getattr(sys, "_synced", False):
        sys._synced = True  # both processes ask for the teacher at the same moment
        (BARRIER / str(os.getpid())).touch()
        deadline = time.time() + 300
        while len(list(BARRIER.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.01)
    out = get_or_build(self, writer)
    log("got", self.dir)
    return out

def logged_write_entry(d, *a, **k):
    log("build-start", d)
    try:
        return write_entry(d, *a, **k)
    finally:
        log("build-end", d)

cache.CacheEntry.build = logged_build
cache.CacheEntry.get_or_build = synced_get_or_build
dcache._write_entry = logged_write_entry
from kdbench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def make_idx_mnist(root: Path, n_train: int = 240, n_test: int = 60, seed: int = 0) -> Path:
    """A tiny MNIST-layout data root (IDX files, 10x10 images to keep training instant), so the
    decoded-dataset cache is exercised too."""
    rng = np.random.default_rng(seed)
    y_tr, y_te = (np.arange(n_train) % 10).astype(np.uint8), (np.arange(n_test) % 10).astype(np.uint8)

    def images(y: np.ndarray) -> np.ndarray:  # noisy class-dependent stripes: learnable, deterministic
        x = rng.integers(0, 60, size=(len(y), 10, 10)).astype(np.int32)
        for i, c in enumerate(y):
            x[i, c, 1:9] += 180
        return np.clip(x, 0, 255).astype(np.uint8)

    arrays = {"train_x": images(y_tr), "train_y": y_tr, "test_x": images(y_te), "test_y": y_te}
    for key, stem in IDX_FILES.items():
        write_idx(root / "MNIST" / "raw" / stem, arrays[key])
    return root


@pytest.mark.slow
def test_concurrent_sweeps_share_directory_and_cache(tmp_path: Path, monkeypatch) -> None:
    """Two sweeps (overlapping grids) into one results directory and one cache: both finish, every
    record is there and complete, and each cache entry is built once (the file lock serialises them)."""
    data = make_idx_mnist(tmp_path / "data")
    script, hook_log, barrier = tmp_path / "racer.py", tmp_path / "hook.jsonl", tmp_path / "barrier"
    script.write_text(RACER)
    barrier.mkdir()
    out, cache = tmp_path / "out", tmp_path / "cache"
    common = ["sweep", "--method", "student,kd", "--dataset", "mnist", "--data-root", str(data), "--epochs", "1",
              "--teacher", "plain2", "--teacher-epochs", "2", "--no-latency", "--threads", "1", "--out", str(out)]
    procs = []
    for i, seeds in enumerate(("0,1", "1,2")):
        log = tmp_path / f"racer{i}.log"
        procs.append((log, _popen([sys.executable, str(script), *common, "--seeds", seeds], cache, log,
                                  HOOK_LOG=str(hook_log), HOOK_BARRIER=str(barrier))))
    for log, p in procs:
        assert p.wait(timeout=600) == 0, _tail(log)
    assert len(list(barrier.iterdir())) == 2  # both processes asked for the teacher at the same moment

    events = [json.loads(line) for line in hook_log.read_text().splitlines()]
    builds: dict[str, list[dict]] = {}
    for e in events:
        if e["event"] == "build-start":
            builds.setdefault(e["entry"], []).append(e)
    kinds = {Path(k).parent.name if "datasets" not in k else "datasets" for k in builds}
    assert kinds == {"teachers", "targets", "datasets"}, builds.keys()
    twice = {k: len(v) for k, v in builds.items() if len(v) != 1}
    assert not twice, f"cache entries built more than once: {twice}"
    teacher = next(k for k in builds if Path(k).parent.name == "teachers")
    end = next(e["t"] for e in events if e["entry"] == teacher and e["event"] == "build-end")
    got = [e for e in events if e["entry"] == teacher and e["event"] == "got"]
    assert {e["pid"] for e in got} == {p.pid for _, p in procs}
    assert all(e["t"] >= end for e in got), "a process used the teacher before it was completely built"

    recs = records(out)  # complete JSON, named by key
    assert len(recs) == 6 and all(r["status"] == "ok" for r in recs.values())
    assert sorted((r["spec"]["method"], r["spec"]["seed"]) for r in recs.values()) == [
        (m, s) for m in ("kd", "student") for s in (0, 1, 2)]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # the same runs done one after another (warm cache) give the same numbers
    ref = tmp_path / "ref"
    monkeypatch.setenv("KDBENCH_CACHE", str(cache))
    monkeypatch.setenv("KDBENCH_PROGRESS", "0")
    assert main(common[:-1] + [str(ref), "--seeds", "0,1,2"]) == 0
    assert {k: comparable(r) for k, r in records(ref).items()} == {k: comparable(r) for k, r in recs.items()}


# ----------------------------------------------------------------------------------- corrupt caches
@pytest.fixture
def quiet_cache(tmp_path: Path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("KDBENCH_CACHE", str(cache))
    monkeypatch.setenv("KDBENCH_PROGRESS", "0")
    return cache


def _kd_spec(**kw) -> RunSpec:
    base = dict(method="kd", dataset="mnist", teacher="plain2", teacher_recipe=TeacherRecipe(epochs=2, batch_size=64),
                student="plain2", epochs=2, batch_size=64, device="cpu", seed=0)
    return RunSpec(**{**base, **kw})


def _spoil(path: Path, how: str) -> None:
    """Damage a cached file the way a bad disk or a killed writer would: `truncate` cuts its end, `flip`
    overwrites bytes in the middle of its data with 0x7F (huge floats / bright pixels if ever used)."""
    raw = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(raw[: len(raw) * 2 // 3]))
    else:
        mid, n = len(raw) // 2, min(4096, len(raw) // 4)
        raw[mid: mid + n] = b"\x7f" * n
        path.write_bytes(bytes(raw))


def _entries(cache: Path, kind: str) -> list[Path]:
    return sorted(d for d in (cache / kind).glob("*") if d.is_dir() and not d.name.startswith("."))


DAMAGES = [("teacher", "flip"), ("teacher", "truncate"), ("teacher", "meta"), ("targets", "flip"),
           ("targets", "truncate"), ("dataset", "flip"), ("dataset", "truncate")]


@pytest.mark.parametrize("what,how", DAMAGES, ids=[f"{w}-{h}" for w, h in DAMAGES])
def test_corrupt_cache_entry_is_rebuilt_never_used(what: str, how: str, tmp_path: Path, quiet_cache: Path) -> None:
    data = make_idx_mnist(tmp_path / "data")
    spec = _kd_spec()
    clean = run(spec, data_root=data, latency=False, progress=False)
    if what == "teacher":
        (entry,) = _entries(quiet_cache, "teachers")
        target = entry / ("meta.json" if how == "meta" else "model.safetensors")
        if how == "meta":
            target.write_text('{"files": {"model.safet')
        else:
            _spoil(target, how)
        for d in _entries(quiet_cache, "targets"):  # targets must then come from the teacher actually loaded
            (d / "meta.json").unlink()
        warning = CorruptCacheWarning
    elif what == "targets":
        target = next(d for d in _entries(quiet_cache, "targets") if "-train-" in d.name) / "logits.npy"
        _spoil(target, how)
        warning = CorruptCacheWarning
    else:
        (target,) = list((quiet_cache / "datasets" / "mnist").glob("*/train_x.npy"))
        _spoil(target, how)
        warning = CacheCorruptionWarning
    with pytest.warns(warning, match="rebuild"):
        again = run(spec, data_root=data, latency=False, progress=False)
    assert comparable(again) == comparable(clean)  # the damaged bytes were never used
    # the entry is whole again: a third run reads it without any warning
    for kind in ("teachers", "targets"):
        assert all(CacheEntry(kind, d.name, quiet_cache).valid(warn=False) for d in _entries(quiet_cache, kind))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptCacheWarning)
        warnings.simplefilter("error", CacheCorruptionWarning)
        third = run(spec, data_root=data, latency=False, progress=False)
    assert comparable(third) == comparable(clean)


def test_targets_of_other_teacher_weights_are_not_reused(tmp_path: Path, quiet_cache: Path) -> None:
    """A teacher entry replaced by other (valid, checksummed) weights, as a rebuild on other hardware
    could produce, must not be paired with targets computed from the old weights."""
    from safetensors.torch import load_file, save_file

    from kdbench.cache import sha256_file
    from kdbench.data import load_dataset
    from kdbench.engine import predict
    from kdbench.models import create_model
    from kdbench.teachers import get_teacher, teacher_targets

    data = load_dataset("mnist", make_idx_mnist(tmp_path / "data"))
    cpu = torch.device("cpu")

    def build(arch: str):
        return create_model(arch, data.spec)

    recipe = TeacherRecipe(epochs=1, batch_size=64)
    old, _ = teacher_targets(get_teacher("plain2", data, recipe, cpu, build, False), data, "train", cpu)
    (entry,) = _entries(quiet_cache, "teachers")
    weights = entry / "model.safetensors"
    save_file({k: v * 1.5 if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}, str(weights))
    meta = json.loads((entry / "meta.json").read_text())
    meta["files"]["model.safetensors"] = sha256_file(weights)
    (entry / "meta.json").write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptCacheWarning)  # the entry is valid: no warning, no rebuild
        teacher = get_teacher("plain2", data, recipe, cpu, build, False)
    new, _ = teacher_targets(teacher, data, "train", cpu)
    assert not torch.equal(new.logits, old.logits)
    assert torch.allclose(new.logits, predict(teacher.model, data.train.x), atol=1e-5)


def test_stray_build_folders_are_removed_on_rebuild(tmp_path: Path) -> None:
    entry = CacheEntry("teachers", "abc-key", tmp_path)
    entry.dir.parent.mkdir(parents=True)
    mine = entry.dir.parent / ".abc-key.x1y2z3w4"  # left by a killed builder of this entry
    other = entry.dir.parent / ".abc-key-2.x1y2z3w4"  # another entry's builder: never touched
    for d in (mine, other):
        d.mkdir()
        (d / "half.bin").write_bytes(b"\0" * 10)
    meta, built = entry.get_or_build(lambda tmp: ((tmp / "w.bin").write_bytes(b"ok"), {"n": 1})[1])
    assert built and meta["info"] == {"n": 1} and (entry.dir / "w.bin").read_bytes() == b"ok"
    assert not mine.exists() and other.exists()


# ----------------------------------------------------------------------------------- checkpoints
class Payload:
    """Pickles to a call of `func(*args)`: what a hostile checkpoint does on load."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile_files(folder: Path, marker: Path) -> list[Path]:
    good = {"w": torch.zeros(2)}
    files = []
    for name, payload in (("system.pt", Payload(os.system, f"touch {marker}")),
                          ("open.pth", Payload(open, str(marker), "w"))):
        p = folder / name
        torch.save({"state_dict": good, "extra": payload}, p)  # zip format with code inside
        files.append(p)
    raw = folder / "raw-pickle.pt"
    raw.write_bytes(pickle.dumps({"state_dict": Payload(os.system, f"touch {marker}")}, protocol=2))
    fake = folder / "pickle.safetensors"
    fake.write_bytes(raw.read_bytes())
    return files + [raw, fake]


def test_hostile_checkpoint_is_refused(tmp_path: Path, quiet_cache: Path, capsys) -> None:
    marker = tmp_path / "PWNED"
    files = _hostile_files(tmp_path, marker)
    proof = tmp_path / "proof"  # the payload is live: a plain pickle.load would run it
    pickle.loads(pickle.dumps(Payload(open, str(proof), "w"))).close()
    assert proof.exists()
    for f in files:
        rc = main(["teacher", "import", "--dataset", "digits", "--arch", "plain2", str(f)])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("kdbench: error: cannot read weights"), err
        assert not marker.exists(), f"{f.name} ran code on load"
        assert "Traceback" not in err
    out = tmp_path / "out"
    rc = main(["run", "--method", "kd", "--dataset", "digits", "--teacher", f"file:plain2={files[0]}", "--epochs", "1",
               "--no-latency", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "pickled" in err and not out.exists() and not marker.exists(), err
    assert not _entries(quiet_cache, "teachers")


@pytest.mark.slow
def test_hostile_checkpoint_refused_by_the_process(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    evil = _hostile_files(tmp_path, marker)[0]
    log = tmp_path / "log.txt"
    p = subprocess.run([sys.executable, "-m", "kdbench", "teacher", "import", "--dataset", "digits", "--arch", "plain2",
                        str(evil)], env=_env(tmp_path / "cache"), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    log.write_text(p.stdout + p.stderr)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdbench: error: ") and "pickled" in lines[0], p.stderr
    assert "Traceback" not in p.stderr and not marker.exists()


def test_checkpoint_with_wrong_keys_or_shapes_names_the_mismatch(tmp_path: Path, quiet_cache: Path, capsys) -> None:
    from kdbench.data.base import DataSpec
    from kdbench.models import create_model

    digits = DataSpec(input_shape=(1, 8, 8), num_classes=10)
    other_arch = tmp_path / "plain4.pt"
    torch.save(create_model("plain4", digits).state_dict(), other_arch)
    other_input = tmp_path / "plain2-rgb.pt"
    torch.save(create_model("plain2", DataSpec(input_shape=(3, 8, 8), num_classes=10)).state_dict(), other_input)
    other_classes = tmp_path / "plain2-k5.safetensors"
    from safetensors.torch import save_file
    save_file(create_model("plain2", DataSpec(input_shape=(1, 8, 8), num_classes=5)).state_dict(), str(other_classes))

    def error(path: Path) -> str:
        assert main(["teacher", "import", "--dataset", "digits", "--arch", "plain2", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("kdbench: error: ") and "Traceback" not in err
        return err

    msg = error(other_arch)
    assert "do not fit" in msg and ("missing keys" in msg or "unexpected keys" in msg), msg
    msg = error(other_input)
    assert "(16, 3, 3, 3)" in msg and "(16, 1, 3, 3)" in msg and "weight" in msg, msg
    msg = error(other_classes)
    assert "checkpoint (5," in msg and "model (10," in msg, msg
    assert not _entries(quiet_cache, "teachers")
    good = tmp_path / "good.pt"  # the same route accepts a fitting checkpoint
    torch.save({"state_dict": {f"module.{k}": v for k, v in create_model("plain2", digits).state_dict().items()}}, good)
    assert main(["teacher", "import", "--dataset", "digits", "--arch", "plain2", str(good)]) == 0
    assert len(_entries(quiet_cache, "teachers")) == 1


# ----------------------------------------------------------------------------------- divergence
def test_diverging_run_is_recorded_and_the_sweep_goes_on(tmp_path: Path, quiet_cache: Path, capsys) -> None:
    config = tmp_path / "diverge.yaml"
    config.write_text("method: student\ndataset: digits\nmax_train: 200\nepochs: 3\nseeds: 1\n"
                      "groups:\n  - {lr: 1.0e+30}\n  - {lr: 0.001}\n  - {lr: 0.003}\n")
    out = tmp_path / "out"
    argv = ["sweep", "--config", str(config), "--no-latency", "--out", str(out)]
    assert main(argv) == 1  # the exit code says a run failed
    text = capsys.readouterr().out
    recs = records(out)
    assert len(recs) == 3
    failed = [r for r in recs.values() if r["status"] == "failed"]
    ok = [r for r in recs.values() if r["status"] == "ok"]
    assert len(failed) == 1 and len(ok) == 2
    err = failed[0]["error"]
    assert failed[0]["spec"]["lr"] == 1e30
    assert err["type"] == "DivergenceError" and err["epoch"] == 1
    assert "became nan" in err["message"] or "became inf" in err["message"], err["message"]
    assert "DivergenceError" in text and "1 failed" in text
    assert all(len(r["history"]) == 3 for r in ok)
    assert len(store.load_results(out)) == 2 and len(store.load_results(out, include_failed=True)) == 3
    # a failed run never counts as done: the resumed sweep runs it again (and it fails again)
    assert main(argv) == 1
    assert "1 run now, 2 already done" in capsys.readouterr().out


# ----------------------------------------------------------------------------------- reproducibility
def test_same_runspec_bit_identical_and_record_reruns_itself(tmp_path: Path, quiet_cache: Path, capsys) -> None:
    spec = RunSpec(method="kd", dataset="digits", teacher="plain2", teacher_recipe=TeacherRecipe(epochs=2, batch_size=64),
                   epochs=2, max_train=300, device="cpu", seed=3, params={"temperature": 2.0})
    a = run(spec, latency=False, progress=False)
    b = run(spec, latency=False, progress=False)
    assert comparable(a) == comparable(b) and a["metrics"]["test_acc"] == b["metrics"]["test_acc"]
    assert [h["ce"] for h in a["history"]] == [h["ce"] for h in b["history"]]  # bit-identical floats

    out1, out2 = tmp_path / "first", tmp_path / "again"
    assert main(["run", "--method", "kd", "--dataset", "digits", "--teacher", "plain2", "--teacher-epochs", "2",
                 "--epochs", "2", "--max-train", "300", "--seed", "3", "--param", "alpha=0.5", "--no-latency",
                 "--out", str(out1)]) == 0
    (path,) = _record_files(out1)
    first = json.loads(path.read_text())
    assert main(["run", "--from-record", str(path), "--no-latency", "--out", str(out2)]) == 0
    capsys.readouterr()
    (path2,) = _record_files(out2)
    again = json.loads(path2.read_text())
    assert again["run_key"] == first["run_key"] == path.stem
    assert comparable(again) == comparable(first)
    assert again["spec"] == first["spec"]
    # the record holds everything needed: its spec resolves to the same key on its own
    assert resolve(spec_from_record(first)).key == first["run_key"]


def test_record_spec_round_trip_keeps_the_key() -> None:
    """lr given as an int or a float, params in any order: the same spec, the same key."""
    a = resolve(RunSpec(method="kd", dataset="digits", lr=1, params={"alpha": 0.5, "temperature": 2}))
    b = resolve(RunSpec(method="kd", dataset="digits", lr=1.0, params={"temperature": 2.0, "alpha": 0.5}))
    assert a.key == b.key
    canonical = json.loads(json.dumps(a.canonical))
    assert resolve(RunSpec.from_dict(canonical)).key == a.key
    with pytest.raises(KdbenchError, match="run field 'seed'"):
        RunSpec.from_dict({**canonical, "seed": "0"})


def test_records_and_cache_entries_get_ordinary_permissions(tmp_path: Path) -> None:
    """Atomic writes go through private temporaries (0600); the published files must not stay private."""
    umask = os.umask(0o022)
    os.umask(umask)
    path = store.write_record(tmp_path / "out", {"run_key": "k", "status": "ok", "spec": {}})
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    entry = CacheEntry("targets", "k", tmp_path / "cache")
    entry.get_or_build(lambda tmp: ((tmp / "a.bin").write_bytes(b"x"), {})[1])
    assert entry.dir.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (entry.dir / "meta.json").stat().st_mode & 0o777 == 0o666 & ~umask
