"""Measurements of docs/design.md §4: parameters, MACs/FLOPs (fvcore), latency, peak memory, environment,
and the machine's load during a timed phase. Latency is a fixed number of repeats by default, or,
inside `adaptive_timing` (the quiet pass, kdbench.latency), as many as a StopRule asks."""
from __future__ import annotations

import bisect
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from . import __version__
from .models.placement import memory_format_name


# ------------------------------------------------------------------------------------------- latency

@dataclass(frozen=True)
class StopRule:
    """When a quiet latency measurement stops: after `warmup` untimed calls, timed calls are added
    until the `confidence` CI of their median is within `rel_halfwidth` of the median (at least
    `min_repeats` calls and `min_seconds` of timed calls, or `max_repeats` calls if those come first),
    or until `max_repeats` calls or `max_seconds` of timing (then `capped`). `min_seconds` is there
    because a CI over a few milliseconds of calls is narrow but not repeatable: the same sub-ms
    model timed for 5 ms read 0.46 to 0.80 ms in three back-to-back passes."""

    rel_halfwidth: float = 0.10
    confidence: float = 0.95
    warmup: int = 5
    min_repeats: int = 10
    min_seconds: float = 0.5
    max_repeats: int = 2000
    max_seconds: float = 10.0


@dataclass(frozen=True)
class Timing:
    """One adaptive measurement: the median (ms), its CI, how many timed calls and whether a cap stopped it."""

    median_ms: float
    ci_ms: tuple[float, float]
    repeats: int
    capped: bool
    seconds: float
    samples: tuple[float, ...] = field(default=(), repr=False, compare=False)  # sorted calls (rounds: medians); not recorded

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["samples"]
        return {**d, "ci_ms": list(self.ci_ms)}

    @classmethod
    def across_rounds(cls, parts: Sequence["Timing"], rule: "StopRule") -> "Timing":
        """One Timing of a quantity timed once per round of a quiet pass: the median of the rounds'
        medians and its distribution-free CI across rounds. The rounds are the observations: calls of
        one round share the machine's state of that moment (a CI over pooled calls is too narrow: three
        runs of one TCN architecture read 1.1, 1.2 and 1.8 ms at batch 1, each with a CI within 5%,
        when each pooled the calls of three rounds), so `capped`
        (the CI is wider than `rule` asks) holds whenever the rounds disagree, and with fewer than
        `min_rounds(rule.confidence)` rounds."""
        medians = sorted(p.median_ms for p in parts)
        if not medians:
            raise ValueError("no rounds to combine")
        median, ci = statistics.median(medians), median_ci(medians, rule.confidence)
        return cls(median, ci, sum(p.repeats for p in parts), not ci_within(median, ci, rule.rel_halfwidth),
                   sum(p.seconds for p in parts), tuple(medians))


def min_rounds(confidence: float = 0.95) -> int:
    """The fewest values whose median has a finite distribution-free `confidence` CI (6 at 95%)."""
    n = 1
    while _median_ci_rank(n, confidence) < 0:
        n += 1
    return n


def median_ci(sorted_values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free CI of the median from order statistics: the number B of values below the
    median is Binomial(n, 1/2), so [x_(r), x_(n-1-r)] (0-based, sorted) misses it with probability
    2 P(B <= r); r is the largest index keeping that <= 1 - `confidence`. (-inf, inf) when n is too
    small for any (n < 6 at 95%)."""
    n = len(sorted_values)
    r = _median_ci_rank(n, confidence)
    if r < 0:
        return -math.inf, math.inf
    return float(sorted_values[r]), float(sorted_values[n - 1 - r])


@lru_cache(maxsize=4096)
def _median_ci_rank(n: int, confidence: float) -> int:
    """The 0-based rank r of `median_ci` for n values (-1: none covers); cached, as a measurement
    asks again after every timed call."""
    from scipy.stats import binom

    if n == 0:
        return -1
    tail = (1.0 - confidence) / 2.0
    k = int(binom.ppf(tail, n, 0.5))  # smallest k with P(B <= k) >= tail
    return k if binom.cdf(k, n, 0.5) <= tail else k - 1


def ci_within(median: float, ci: tuple[float, float], rel_halfwidth: float) -> bool:
    """Both ends of the CI lie within `rel_halfwidth` of the median."""
    return math.isfinite(ci[0]) and math.isfinite(ci[1]) and max(median - ci[0], ci[1] - median) <= rel_halfwidth * median


def sample_until(sample: Callable[[], float], rule: StopRule, clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Call `sample()` (one timed call, ms) until `rule` says stop; the warm-up is the caller's."""
    times: list[float] = []
    start = clock()
    while True:
        bisect.insort(times, sample())
        n = len(times)
        median = statistics.median(times)
        ci = median_ci(times, rule.confidence)
        elapsed = clock() - start
        settled = n >= rule.min_repeats and ci_within(median, ci, rule.rel_halfwidth)
        if settled and (elapsed >= rule.min_seconds or n >= rule.max_repeats):
            return Timing(median, ci, n, False, elapsed, tuple(times))
        if n >= rule.max_repeats or elapsed >= rule.max_seconds:
            return Timing(median, ci, n, True, elapsed, tuple(times))


# set by `adaptive_timing`: the rule every `time_forward` below follows, and where its Timings go
_ADAPTIVE: ContextVar[tuple[StopRule, list[Timing]] | None] = ContextVar("kdbench_adaptive_timing", default=None)


@contextmanager
def adaptive_timing(rule: StopRule) -> Iterator[list[Timing]]:
    """Inside, every latency measurement (`latency_ms`, `parallel_latency_ms`, and so a method's own
    `latency_fn`) follows `rule` instead of a fixed number of repeats; yields the list that collects
    their Timings in call order."""
    timings: list[Timing] = []
    token = _ADAPTIVE.set((rule, timings))
    try:
        yield timings
    finally:
        _ADAPTIVE.reset(token)


def time_forward(fn: Callable[[], Any], device: torch.device, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time in ms of `fn()` over `repeats` timed calls after `warmup` calls (inside
    `adaptive_timing`: as many as its rule asks, recorded there)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    adaptive = _ADAPTIVE.get()

    def once() -> float:
        t0 = time.perf_counter()
        fn()
        sync()
        return (time.perf_counter() - t0) * 1000.0

    with torch.inference_mode():
        for _ in range(adaptive[0].warmup if adaptive else warmup):
            fn()
        sync()
        if adaptive is None:
            return statistics.median([once() for _ in range(repeats)])
        timing = sample_until(once, adaptive[0])
    adaptive[1].append(timing)
    return timing.median_ms


def latency_ms(model: nn.Module | Callable, example: torch.Tensor, batch: int, device: torch.device, repeats: int = 20) -> float:
    """Median forward latency (ms) of `model` at batch size `batch`, eval mode."""
    if isinstance(model, nn.Module):
        model.eval()
    x = example[:1].expand(batch, *example.shape[1:]).contiguous().to(device)
    return time_forward(lambda: model(x), device, repeats=repeats)


def parallel_latency_ms(students: Sequence[nn.Module], example: torch.Tensor, batch: int, device: torch.device, repeats: int = 20) -> float:
    """Students run concurrently (one thread each, as one machine per student would): the latency
    is set by the slowest; measured as the wall time of running all of them in a thread pool."""
    x = example[:1].expand(batch, *example.shape[1:]).contiguous().to(device)
    for s in students:
        s.eval()
    with ThreadPoolExecutor(max_workers=len(students)) as pool:
        return time_forward(lambda: list(pool.map(lambda s: s(x), students)), device, repeats=repeats)


# ---------------------------------------------------------------------------------------------- load

WAIT_LIMIT = 0.2  # a phase in which runnable threads waited for a core over 20% of its time is oversubscribed


class LoadProbe:
    """The machine's load over one timed phase (training, a latency pass): the share of the phase in
    which some runnable thread waited for a CPU (Linux's CPU pressure, /proc/pressure/cpu), the 1-min
    load average at its start and end against the machine's CPUs, this process's CPU time and, with
    psutil, how busy all CPUs were. A phase is `oversubscribed` when that wait share exceeded
    `WAIT_LIMIT`: its wall times include waiting for a core. Without CPU pressure (other systems, old
    kernels) the rule is a load average above the CPU count, which trails by about a minute, so a
    short phase inherits the minute before it."""

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = _process_cpu_s()
        self._load = _loadavg_1min()
        self._system = _system_cpu_times()
        self._pressure = cpu_pressure_us()

    def finish(self) -> dict[str, Any]:
        """The load block of the phase started at construction."""
        wall = time.perf_counter() - self._wall
        cpu = _process_cpu_s() - self._cpu
        load = (self._load, _loadavg_1min())
        end = cpu_pressure_us()
        wait = (round(min(1.0, (end - self._pressure) / 1e6 / wall), 3)
                if self._pressure is not None and end is not None and wall > 0 else None)
        cpus = os.cpu_count() or 1
        block: dict[str, Any] = {
            "cpus": cpus, "threads": torch.get_num_threads(), "wall_s": round(wall, 3),
            "cpu_wait_share": wait, "loadavg_start": load[0], "loadavg_end": load[1], "process_cpu_s": round(cpu, 3),
            "process_cpu_share": round(cpu / wall, 3) if wall > 0 else None,
            "system_busy": _busy_fraction(self._system, _system_cpu_times()),
            "oversubscribed": oversubscribed(wait, load, cpus),
        }
        return block


def oversubscribed(wait_share: float | None, loadavg: tuple[float | None, float | None], cpus: int) -> bool | None:
    """The flag of a phase: by CPU pressure where the kernel gives it, else by load average (None: neither)."""
    if wait_share is not None:
        return wait_share > WAIT_LIMIT
    return None if None in loadavg else max(loadavg) > cpus


PRESSURE_FILES = ("/sys/fs/cgroup/cpu.pressure", "/proc/pressure/cpu")  # this cgroup's (v2) first: a container's limit


def cpu_pressure_us(path: str | None = None) -> int | None:
    """Microseconds so far in which at least one runnable task waited for a CPU (the `some total` of
    Linux's pressure stall information: this cgroup's where cgroup v2 gives it, else the machine's),
    or None where the kernel does not report it."""
    for candidate in (path,) if path else PRESSURE_FILES:
        try:
            with open(candidate) as f:
                for line in f:
                    if line.startswith("some "):
                        return int(line.rsplit("total=", 1)[1])
        except (OSError, ValueError, IndexError):
            continue
    return None


def _process_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _loadavg_1min() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # no load average on this platform
        return None


def _system_cpu_times() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far, or None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t)
    return total - idle, total


def _busy_fraction(start: tuple[float, float] | None, end: tuple[float, float] | None) -> float | None:
    if start is None or end is None or end[1] <= start[1]:
        return None
    return round((end[0] - start[0]) / (end[1] - start[1]), 3)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (and finished children), in MiB."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return self_kb / 1024.0 if sys.platform != "darwin" else self_kb / 2**20


def peak_cuda_mb() -> float | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def _git_commit() -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


# read once, when kdbench is imported: a record names the commit its code was loaded from, even
# when the checkout moves on while a long sweep runs
CODE_COMMIT = _git_commit()


@lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device | None = None) -> dict[str, Any]:
    """What produced a number: versions, device, CPU, threads, platform."""
    env = {
        "kdbench_version": __version__,
        "git_commit": CODE_COMMIT,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device) if device is not None else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "memory_format": memory_format_name(device) if device is not None else None,
        "platform": platform.platform(),
    }
    return env
