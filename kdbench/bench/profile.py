"""`profile`: where the time of a TCN ff epoch and of a kd epoch goes (torch.profiler, top ops)."""
from __future__ import annotations

from typing import Any

import torch

from ..method import Context
from .base import BENCHES, BenchRow
from .session import Session, Setup, fit_once, loop_seconds

OP_CATEGORIES = {  # substring of an aten op name -> category (first match wins)
    "convolution_backward": "conv backward", "convolution": "conv forward", "conv": "conv forward",
    "mm": "matmul", "linear": "matmul", "max_pool": "pooling", "_foreach": "optimizer", "Optimizer": "optimizer",
    "adam": "optimizer", "index": "indexing / gather", "gather": "indexing / gather", "copy_": "copies", "cat": "copies",
    "stack": "copies", "clone": "copies",
}


def _category(op: str) -> str:
    return next((c for key, c in OP_CATEGORIES.items() if key in op), "elementwise / other")


def profile_fit(setup: Setup, ctx: Context, device: torch.device) -> dict[str, Any]:
    """One fit under torch.profiler: top ops by self time, time by category, time outside ops."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        timed = fit_once(setup, ctx)
    fit, wall = timed.fit, timed.wall_s
    loop = loop_seconds(fit, stage="students")
    events = [e for e in prof.key_averages() if e.key.startswith("aten::") or "Optimizer" in e.key]
    self_s = {e.key: e.self_cpu_time_total / 1e6 for e in events}
    calls = {e.key: e.count for e in events}
    in_ops = sum(self_s.values())
    top = sorted(self_s.items(), key=lambda kv: -kv[1])[:12]
    cats: dict[str, float] = {}
    for op, t in self_s.items():
        cats[_category(op)] = cats.get(_category(op), 0.0) + t
    return {"wall_s": wall, "loop_s": loop, "ops_s": in_ops,
            "top_ops": [{"op": op, "self_s": t, "pct_of_wall": 100 * t / wall, "calls": calls[op]} for op, t in top],
            "categories": {k: {"self_s": v, "pct_of_wall": 100 * v / wall} for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
            "table": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)}


@BENCHES.register("profile")
def bench_profile(s: Session) -> list[BenchRow]:
    """Where the time goes: one TCN ff epoch (n = 4, fused, the default) and one kd epoch (n = 1
    paper student), on the first `profile_train` samples."""
    rows = []
    for name, method, fields in (("tcn ff n=4", "tcn", dict(n_students=4, mode="ff", params={"finetune": False})),
                                 ("kd", "kd", {})):
        setup = s.setup(method, epochs=1, **fields)
        res = profile_fit(setup, s.context(setup, s.sizes.profile_train, n_eval=s.sizes.profile_eval), s.device)
        slug = "profile_" + name.replace(" ", "_").replace("=", "")
        s.artifacts[f"{slug}.txt"] = res.pop("table")
        top = ", ".join(f"{o['op'].removeprefix('aten::')} {o['pct_of_wall']:.0f}%" for o in res["top_ops"][:4])
        rows.append(BenchRow(
            f"profile: {name} epoch, wall / time in ops", "wall", res["wall_s"], "in aten ops", res["ops_s"], "s",
            notes=f"whole fit: 1 epoch on {s.sizes.profile_train} samples (loop {res['loop_s']:.3g} s), val/test cut to "
                  f"{s.sizes.profile_eval}; top: {top}", details=res,
        ))
    return rows
