"""pytest-benchmark suite of kdbench (not collected by the default `pytest` run, whose testpaths is
tests/): `pytest benchmarks/ --benchmark-only` (add `-k quick` for the end-to-end `--quick` bench).

The ratios of issue 8 are produced by `kdbench bench` (one process, interleaved arms); these files
time the hot paths in isolation and run the whole quick bench, process pools and subprocesses
included, with its equality checks asserted."""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def fixed_threads():
    """One torch thread, as `kdbench bench` uses by default (the CI machine is small and shared)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("KDBENCH_BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def bench_cache(tmp_path_factory):
    """A private cache (digits teacher trained in seconds) unless KDBENCH_CACHE is set."""
    if os.environ.get("KDBENCH_CACHE"):
        yield os.environ["KDBENCH_CACHE"]
        return
    path = tmp_path_factory.mktemp("kdbench-cache")
    os.environ["KDBENCH_CACHE"] = str(path)
    yield str(path)
    os.environ.pop("KDBENCH_CACHE", None)


@pytest.fixture(scope="session")
def session(bench_cache):
    from kdbench.bench import BenchConfig, Session

    return Session(BenchConfig(quick=True))
