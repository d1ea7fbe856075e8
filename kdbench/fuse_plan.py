"""The seed-fusion planner: whether a sweep's seed siblings (kdbench.seed_fuse) train as one fused
computation, judged from one copy of what a seed trains, built on the CPU through the runner.

It sits above the runner (the executors call it to group their jobs), so the fused-training helpers
in kdbench.seed_fuse, which the methods use, never import the runner.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from .config import canonical_json
from .data.base import Split, Splits
from .runner import build_context, load_data
from .seed_fuse import supports

# auto on CPU fuses what one seed trains up to this forward cost per sample. Measured on the 2-core
# dev machine (bench_fuse, 3 seeds, grouped layers, separate / fused, CPU time): a 59-kMAC TCN
# student alone 1.12x, an 82-kMAC image student 1.12x; the 8 fused TCN n = 8 students (469 kMAC
# together) 0.66x, a 1.6-MMAC TCN n = 4 student 0.88x, a 2.8-MMAC image student 0.65x.
FUSE_MAX_MACS_CPU = 100_000


@dataclass(frozen=True)
class Decision:
    """Whether a group of seed siblings trains fused, and why (recorded in each run's env.seed_fusion)."""

    fused: bool
    copies: int  # seeds trained together (1: one after another)
    mode: str  # auto / on / off
    reason: str
    macs: int | None = None  # forward multiply-adds per sample of what one seed trains
    params: int | None = None  # its parameters

    def note(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def has_dropout(module: nn.Module) -> bool:
    """Whether `module` draws random masks in training (then fused copies cannot reproduce its runs)."""
    return any(isinstance(m, _DROPOUT) and m.p > 0 for m in module.modules())


@dataclass
class Sizer:
    """Builds one copy of a run's model on the CPU to size it, loading each dataset's spec once."""

    data_root: str | None = None
    _specs: dict[str, Any] = field(default_factory=dict)

    def data_spec(self, r: Any) -> Any:
        """The DataSpec of run `r`'s data (loaded once per dataset, split and options)."""
        s = r.spec
        data_id = canonical_json([s.dataset, s.val_fraction, s.split_seed, s.max_train, s.data_options])
        if data_id not in self._specs:
            self._specs[data_id] = load_data(s, self.data_root).spec
        return self._specs[data_id]

    def unit(self, r: Any) -> nn.Module | list[nn.Module] | str:
        """The method's `seed_fusion_unit` for run `r`, built on the CPU (no teacher, no data)."""
        s = r.spec
        spec = self.data_spec(r)
        empty = Split(torch.empty(0), torch.empty(0, dtype=torch.long))
        data = Splits(s.dataset, empty, empty, empty, spec)
        ctx = build_context(r, data, torch.device("cpu"), None, False, {})
        with torch.random.fork_rng(devices=[]):  # the caller's random state is not this sizing's business
            return r.method(r.params).seed_fusion_unit(ctx)


def decide(rs: Sequence[Any], mode: str, device: str, sizer: Sizer) -> Decision:
    """Whether the seed siblings `rs` (runner.Resolved, all but their seed equal) train fused, by
    `mode` (auto / on / off), the device type they run on, and the size of what one seed trains."""
    k = len(rs)
    first = rs[0]
    if k < 2:
        return Decision(False, 1, mode, "no seed sibling to train with")
    if mode == "off":
        return Decision(False, 1, mode, "turned off (--no-fuse-seeds / fuse_seeds=False)")
    if not supports(first.method):
        return Decision(False, 1, mode, f"method '{first.method.name}' has no fused form")
    if first.spec.amp == "fp16":
        return Decision(False, 1, mode, "--amp fp16: one gradient scaler would skip every seed's step when one overflows")
    if first.spec.compile:
        return Decision(False, 1, mode, "--compile: compiled copies are not stacked")
    try:
        unit = sizer.unit(first)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - the runs themselves will record what is wrong
        return Decision(False, 1, mode, f"could not build one copy to size it ({type(e).__name__}: {e})")
    if isinstance(unit, str):
        return Decision(False, 1, mode, unit)
    units = list(unit) if isinstance(unit, (list, tuple)) else [unit]
    if any(has_dropout(u) for u in units):
        return Decision(False, 1, mode, "the model has dropout: fused copies would draw other masks than the runs alone")
    from .models import count_macs, count_params
    from .tcn_fuse import grouped_plan

    macs = sum(count_macs(u, sizer.data_spec(first)) for u in units)
    params = sum(count_params(u) for u in units)
    if mode == "on":
        return Decision(True, k, mode, "asked for (fuse_seeds=True)", macs, params)
    if device != "cpu":
        return Decision(True, k, mode, f"auto: on {device} every model size is fused", macs, params)
    if not all(grouped_plan(u, batched_input=True) is not None for u in units):
        return Decision(False, 1, mode, "auto: cpu, the model is no plain conv/dense chain (its vmap form is slower on CPU)",
                        macs, params)
    if macs <= FUSE_MAX_MACS_CPU:
        return Decision(True, k, mode, f"auto: cpu, {macs:,} MAC per sample <= {FUSE_MAX_MACS_CPU:,}", macs, params)
    return Decision(False, 1, mode, f"auto: cpu, {macs:,} MAC per sample > {FUSE_MAX_MACS_CPU:,} (fusing would be slower)",
                    macs, params)
