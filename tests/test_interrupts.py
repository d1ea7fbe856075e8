"""Interrupts (docs/design.md §7): SIGINT, SIGTERM and SIGHUP stop a `--workers 2` sweep and its whole
process tree (forkserver, workers, resource tracker) within seconds, exit 128 + the signal's number
with one line on stderr, and keep the finished records; a sweep SIGKILLed at random moments takes
its workers with it and resumes to the records of an uninterrupted run.

The soak launches its sweeps through the fork server of test_reliability (a real `kdbench.cli.main`
process without the interpreter start-up). Every process of one sweep, its pool included, carries
the sweep's KDBENCH_CACHE in its environment: that is how the tests find what is left of it.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_sweep import comparable, records
from test_reliability import ForkServer, _env, _tail

from kdbench import store
from kdbench.executors import Interrupted, interrupt_signal, stop_on_signals

# 8 short independent runs on two workers: a signal after the first record finds runs in flight
INTERRUPT_SWEEP = ["sweep", "--method", "student", "--dataset", "digits", "--max-train", "300", "--epochs", "8",
                   "--seeds", "8", "--no-latency", "--threads", "1", "--workers", "2"]
# teacher, targets and two methods: a random kill lands in preparation, the pool or a run
SOAK_SWEEP = ["sweep", "--method", "student,kd", "--dataset", "digits", "--max-train", "300", "--epochs", "1",
              "--seeds", "2", "--teacher", "plain2", "--teacher-epochs", "2", "--no-latency", "--threads", "1",
              "--workers", "2"]
N_SOAK_KILLS = 5
pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds a sweep's processes in /proc")


def live_processes(cache: Path, command: bytes = b"") -> list[int]:
    """Pids of the running (not zombie) processes whose environment holds KDBENCH_CACHE=cache (and
    whose command line holds `command`)."""
    marker = f"KDBENCH_CACHE={cache}\0".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            environ = (proc / "environ").read_bytes() + b"\0"
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if state != "Z" and marker in environ and command in cmdline:
            pids.append(int(proc.name))
    return pids


def describe(pids: list[int]) -> list[str]:
    """Pid, state and command line of each process (for a failure message)."""
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
        except OSError:
            state, cmd = "gone", ""
        out.append(f"{pid} [{state}] {cmd}")
    return out


def wait_until_gone(cache: Path, within_s: float = 30.0) -> list[int]:
    """The processes of the sweep on `cache` still running after `within_s` seconds (none, we hope;
    generous, as workers just forked on an oversubscribed machine take seconds to be scheduled)."""
    deadline = time.monotonic() + within_s
    while (left := live_processes(cache)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def wait_for_records(out: Path, n: int, proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while len(list(out.glob("*.json"))) < n:
        assert proc.poll() is None, f"the sweep ended first:\n{_tail(log)}"
        assert time.monotonic() < deadline, f"no record within {timeout_s} s:\n{_tail(log)}"
        time.sleep(0.02)


def default_sigint() -> None:
    """A shell that started the tests in the background ignores SIGINT, and a child inherits that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path: Path):
    """Whatever a test fails on, no process of its sweeps (each on a cache under tmp_path) outlives it."""
    yield
    for cache in tmp_path.glob("**/cache"):
        for pid in live_processes(cache):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    fork_server = ForkServer(tmp_path_factory.mktemp("interrupts"))
    yield fork_server
    fork_server.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_the_whole_sweep_at_once_and_keeps_its_records(sig: signal.Signals, tmp_path: Path) -> None:
    """`python -m kdbench sweep --workers 2` gets the signal alone (as from `kill PID` or a job
    scheduler; Ctrl-C also reaches the workers, which ignore it): it exits with 128 + the signal's
    number and one line on stderr, no process of its tree is left within seconds (the workers do not
    finish their runs), and every record it left is complete and ok."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(stdout, "wb") as o, open(stderr, "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "kdbench", *INTERRUPT_SWEEP, "--out", str(out)], env=_env(cache),
                                cwd=tmp_path, stdout=o, stderr=e, preexec_fn=default_sigint)
    wait_for_records(out, 1, proc, stderr)
    assert len(live_processes(cache)) >= 3, "expected the sweep, its forkserver and workers"
    proc.send_signal(sig)
    code = proc.wait(timeout=30)
    kept = records(out)  # every record parses completely
    err = stderr.read_text()
    assert code == 128 + sig, err
    assert not wait_until_gone(cache), f"processes left after {sig.name}: {live_processes(cache)}"
    assert records(out) == kept, "a worker wrote a record after the sweep had stopped"
    assert 1 <= len(kept) < 8 and all(r["status"] == "ok" for r in kept.values())
    assert len(store.load_results(out)) == len(kept)
    assert err.splitlines() == [f"kdbench: interrupted by {sig.name}; the finished runs' records are kept, "
                                "the same command resumes"], err


def test_sigterm_and_sighup_interrupt_like_ctrl_c_only_while_stopping_on_signals() -> None:
    """The CLI's sweep turns SIGTERM / SIGHUP into `Interrupted` (a KeyboardInterrupt, exit 143 / 129)
    and gives the previous handlers back afterwards."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with pytest.raises(Interrupted) as caught:
            with stop_on_signals():
                os.kill(os.getpid(), sig)
                time.sleep(5)  # the handler raises long before
        assert isinstance(caught.value, KeyboardInterrupt) and interrupt_signal(caught.value) == sig
    assert {s: signal.getsignal(s) for s in before} == before
    assert interrupt_signal(KeyboardInterrupt()) == signal.SIGINT


def test_random_sigkills_of_a_parallel_sweep_then_resume(server: ForkServer, tmp_path: Path) -> None:
    """SIGKILL the `--workers 2` sweep process alone at random moments (fixed seed), resuming each
    time: its forkserver and workers never outlive it (they would write records behind a resume's
    back), every record left is complete, and the resumed sweep ends with exactly the records of an
    uninterrupted `--workers 1` run on a cache of its own (one key, one result)."""
    ref_out, ref_cache = tmp_path / "ref" / "out", tmp_path / "ref" / "cache"
    t0 = time.monotonic()
    server.start(ref_out, ref_cache, argv=[*SOAK_SWEEP[:-1], "1"])  # in one process: no pool, one teacher
    assert server.wait(timeout=600) == 0, _tail(server.log)
    work = time.monotonic() - t0
    ref = records(ref_out)
    assert len(ref) == 4

    rng = random.Random(19)
    chain, kills, launches = 0, [], 0
    out, cache = tmp_path / "c0" / "out", tmp_path / "c0" / "cache"
    while len(kills) < N_SOAK_KILLS:
        launches += 1
        assert launches <= 3 * N_SOAK_KILLS, f"only {len(kills)} kills in {launches} launches"
        in_pool = len(kills) % 2 == 1  # every other kill lands while pool workers run: they must die too
        pid = server.start(out, cache, argv=SOAK_SWEEP)
        code = wait_for_workers(server, cache) if in_pool else None
        at = rng.uniform(0.0, 1.0) if in_pool else rng.uniform(0.2, work)
        if code is None:
            code = server_wait(server, at)
        if code is None and kill(server, pid) == -signal.SIGKILL:
            kills.append(f"{at:.1f}s{' in the pool' if in_pool else ''}")
            left = wait_until_gone(cache)
            assert not left, f"processes outlived the killed sweep ({kills[-1]}): {describe(left)}"
            assert all(r["status"] == "ok" for r in records(out).values())  # complete JSON, never half a record
            continue
        _check_same(out, ref)  # this chain is complete: a fresh one
        chain += 1
        out, cache = tmp_path / f"c{chain}" / "out", tmp_path / f"c{chain}" / "cache"
    server.start(out, cache, argv=SOAK_SWEEP)
    assert server.wait(timeout=600) == 0, _tail(server.log)
    _check_same(out, ref)
    print(f"\nsoak: sweep {work:.1f}s; kills at {kills} in {launches} launches, {chain + 1} chains")


def wait_for_workers(server: ForkServer, cache: Path, timeout_s: float = 120) -> int | None:
    """Wait until a pool worker of the sweep on `cache` runs: None, or the sweep's exit code if it ended first."""
    deadline = time.monotonic() + timeout_s
    while len(live_processes(cache, b"multiprocessing.forkserver")) < 2:  # the forkserver and a worker forked from it
        assert time.monotonic() < deadline, f"no pool worker within {timeout_s} s"
        code = server_wait(server, 0.05)
        if code is not None:
            return code
    return None


def server_wait(server: ForkServer, timeout_s: float) -> int | None:
    """The sweep's exit code, or None while it is still running after `timeout_s`; a failure is fatal."""
    code = server.wait(timeout=timeout_s)
    assert code in (None, 0, -signal.SIGKILL), _tail(server.log)
    return code


def kill(server: ForkServer, pid: int) -> int:
    """SIGKILL the sweep (unless it just ended by itself); its exit code."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    code = server.wait(timeout=60)
    assert code in (0, -signal.SIGKILL), _tail(server.log)
    return code


def _check_same(out: Path, ref: dict[str, dict]) -> None:
    final = records(out)
    assert {k: comparable(r) for k, r in final.items()} == {k: comparable(r) for k, r in ref.items()}
    assert len(store.load_results(out)) == len(ref)
