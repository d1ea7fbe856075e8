"""Equality checks of the benchmarks: state differences, relative differences of per-student
numbers, and records with their timings removed."""
from __future__ import annotations

import math
from typing import Any, Sequence

from torch import Tensor


def max_abs_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    if a.keys() != b.keys():
        return math.inf
    return max((float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()), default=0.0)


def off_fraction(a: dict[str, Tensor], b: dict[str, Tensor], atol: float) -> float:
    """Fraction of all state entries whose values differ by more than `atol` (1 for other keys)."""
    if a.keys() != b.keys():
        return 1.0
    off = sum(int(((a[k].double() - b[k].double()).abs() > atol).sum()) for k in a)
    return off / max(sum(a[k].numel() for k in a), 1)


def max_rel_diff(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b):
        return math.inf
    return max((abs(x - y) / max(abs(x), abs(y), 1e-12) for x, y in zip(a, b)), default=0.0)


def is_timing(key: str) -> bool:
    """Metric names that hold wall times, latencies or memory peaks (they differ run to run)."""
    return "time" in key or "latency" in key or key.startswith("peak_") or key.endswith("_s") or "_s_" in key


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A record's metrics and history without timings or memory (what must match across executors)."""
    def untimed(d: dict[str, Any]) -> dict[str, Any]:  # the method's namespace too (kdbench.record)
        return {k: untimed(v) if isinstance(v, dict) else v for k, v in d.items() if not is_timing(k)}

    metrics = untimed(record.get("metrics") or {})
    history = [{k: v for k, v in row.items() if k != "time_s"} for row in record.get("history") or []]
    return {"status": record.get("status"), "metrics": metrics, "history": history}
