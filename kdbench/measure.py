"""Measurements of DESIGN.md §4: parameters, MACs/FLOPs (fvcore), latency, peak memory, environment."""
from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import __version__
from .models.placement import memory_format_name


def time_forward(fn: Callable[[], Any], device: torch.device, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time in ms of `fn()` over `repeats` timed calls after `warmup` calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


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
