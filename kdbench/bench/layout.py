"""`layout`: contiguous vs channels-last conv weights (kdbench's CPU default)."""
from __future__ import annotations

import copy
import os
from unittest import mock

import torch

from .base import BENCHES, BenchRow
from .compare import max_rel_diff
from .session import Session, Timed, fit_once, loop_seconds
from .timing import forward_ms, interleave, median


@BENCHES.register("layout")
def bench_layout(s: Session) -> list[BenchRow]:
    """Conv weights in the default (contiguous) vs channels-last memory format, which kdbench uses on
    CPU (`models.place`; KDBENCH_CHANNELS_LAST=0 turns it off): the teacher's forward over a batch
    of 1000 (how targets are computed) and one TCN ff n = 4 epoch (students built by the runner)."""
    rows: list[BenchRow] = []
    setup = s.setup("tcn", n_students=4, mode="ff", epochs=1, params={"finetune": False})
    teacher = setup.teacher.model
    x = setup.data.train.x[:1000]
    arms = {"contiguous": copy.deepcopy(teacher).to(memory_format=torch.contiguous_format),
            "channels_last": copy.deepcopy(teacher).to(memory_format=torch.channels_last)}
    with torch.inference_mode():
        same = torch.allclose(arms["contiguous"](x), arms["channels_last"](x), rtol=1e-4, atol=1e-4)
    reps = max(2, s.sizes.latency_repeats // 4)
    res = interleave({k: (lambda m=m: forward_ms(m, x, s.device, reps)) for k, m in arms.items()}, s.cfg.n_rounds)
    rows.append(BenchRow(
        "layout: teacher forward contiguous / channels_last", "contiguous", median(res["contiguous"]), "channels_last",
        median(res["channels_last"]), "ms",
        notes=f"{setup.resolved.spec.teacher} teacher, batch {len(x)}, median of {reps} forwards x {s.cfg.n_rounds} rounds",
        checks={"outputs equal (1e-4)": same}, details={k + "_ms": v for k, v in res.items()},
    ))
    fits: dict[str, list[Timed]] = {"contiguous": [], "channels_last": []}

    def arm(kind: str) -> float:
        with mock.patch.dict(os.environ, {"KDBENCH_CHANNELS_LAST": "1" if kind == "channels_last" else "0"}):
            fits[kind].append(fit_once(setup, s.context(setup, s.sizes.fused_train)))
        return loop_seconds(fits[kind][-1].fit)

    times = interleave({k: (lambda k=k: arm(k)) for k in fits}, s.cfg.n_rounds)
    a, b = fits["contiguous"][0].fit, fits["channels_last"][0].fit
    mse_diff = max_rel_diff(a.metrics["feature_mse_per_student"], b.metrics["feature_mse_per_student"])
    rows.append(BenchRow(
        "layout: TCN ff n=4 epoch contiguous / channels_last", "contiguous", median(times["contiguous"]), "channels_last",
        median(times["channels_last"]), "s",
        notes=f"1 epoch on {min(s.sizes.fused_train, len(setup.data.train))} samples, students {'/'.join(b.metrics['fusion'])}; "
              f"max rel feature-MSE diff {mse_diff:.2g} (summation order only)",
        checks={"per-student feature MSE agree (rel 1e-3)": mse_diff <= 1e-3},
        details={k + "_s": v for k, v in times.items()},
    ))
    return rows
