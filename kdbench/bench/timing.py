"""Timing helpers of the benchmarks: interleaved arms, medians, the load average, a matmul peak and
a forward-pass timer."""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(arms: dict[Any, Callable[[], Any]], rounds: int) -> dict[Any, list[Any]]:
    """Call the arms in turn (A, B, A, B, ...) `rounds` times; each returns its own measurement.
    Interleaving makes slow drifts of a shared machine's load hit both arms alike."""
    out: dict[Any, list[Any]] = {k: [] for k in arms}
    for _ in range(rounds):
        for name, fn in arms.items():
            out[name].append(fn())
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def matmul_peak_gflops(n: int, device: torch.device, repeats: int = 5) -> tuple[float, float]:
    """float32 GFLOP/s of one n x n x n torch.matmul (median of `repeats` after a warm-up), per
    wall second and per CPU second of this process (the latter ignores time spent descheduled)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.matmul(a, b)
    sync(device)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        torch.matmul(a, b)
        sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 2 * n**3 / median(wall) / 1e9, 2 * n**3 / max(median(cpu), 1e-9) / 1e9


def forward_ms(model: nn.Module | Callable[[Tensor], Any], x: Tensor, device: torch.device, repeats: int) -> float:
    """Median forward time (ms) in inference mode, after warm-up."""
    from ..measure import time_forward

    if isinstance(model, nn.Module):
        model.eval()
    return time_forward(lambda: model(x), device, repeats=repeats)
