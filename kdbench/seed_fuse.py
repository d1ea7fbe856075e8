"""Seed fusion: the runs of a sweep that differ only in their seed train as one computation.

The k seeds' copies of the model sit side by side (`tcn_fuse.stack` with per-copy inputs: grouped
layers for plain conv / dense chains, `vmap` otherwise), each with its own initialisation (built
after seeding with its run's seed, as the run alone would), its own batch order and augmentation
draws (`engine.train_seeds`: one generator per seed) and its own optimiser state: the loss is the
sum of the per-seed losses, so each copy gets its own gradient, and Adam, AdamW and SGD (momentum,
weight decay; kdbench clips no gradients) update every element on its own, so one optimiser over
the stacked tensors equals one per seed. Each seed keeps its own val-best snapshot and ends in its
own record, equal to its run alone within float tolerance; the run key does not change.

A method opts in with two methods: `fit_seeds(ctxs) -> [FitResult]` (one context per seed) and
`seed_fusion_unit(ctx) -> nn.Module | list[nn.Module] | str`: what one seed trains as one
computation (a model, or models it already trains side by side, as TCN's fused students), whose
size and form `auto` judges, or why this spec cannot fuse.

`auto` (the sweep's default) fuses on an accelerator, and on CPU only what runs as grouped layers
(`tcn_fuse.Grouped`; the `vmap` form is slower there) and costs at most FUSE_MAX_MACS_CPU
multiply-adds per sample: a tiny model leaves a core idle between its small kernels, so k copies
side by side run faster than k runs; a bigger one already keeps the core busy, and k copies side
by side only make every step's activations k times larger, which ran slower per element than k
runs one after another (kdbench/bench_fuse.py measures both). Never fused: models with dropout
(their random masks would be drawn in another order, so the runs would not be reproduced),
`--amp fp16` (one gradient scaler for all seeds) and `--compile`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from .config import canonical_json
from .engine import Batch, Step, TrainResult, seed_everything, train_seeds
from .errors import KdbenchError

# auto on CPU fuses what one seed trains up to this forward cost per sample. Measured on the 2-core
# dev machine (bench_fuse, 3 seeds, grouped layers, separate / fused, CPU time): a 59-kMAC TCN
# student alone 1.12x, an 82-kMAC image student 1.12x; the 8 fused TCN n = 8 students (469 kMAC
# together) 0.66x, a 1.6-MMAC TCN n = 4 student 0.88x, a 2.8-MMAC image student 0.65x.
FUSE_MAX_MACS_CPU = 100_000
MODES = ("auto", "on", "off")


def fuse_mode(value: Any) -> str:
    """`fuse_seeds` as given (True / False / "auto" / "on" / "off"; None: auto) as one of MODES; bad
    input is one line."""
    if value is True:
        return "on"
    if value is False:
        return "off"
    if value is None:
        return "auto"
    if isinstance(value, str) and value.strip().lower() in MODES + ("true", "false"):
        v = value.strip().lower()
        return {"true": "on", "false": "off"}.get(v, v)
    raise KdbenchError(f"fuse_seeds must be auto, true or false, got {value!r}")


def sibling_key(resolved: Any) -> str:
    """Runs with equal keys differ only in their seed (same method, models, data and schedule)."""
    return canonical_json({k: v for k, v in resolved.canonical.items() if k != "seed"})


def supports(method: type) -> bool:
    """Whether a method class has a fused form (`fit_seeds` and `seed_fusion_unit`)."""
    return callable(getattr(method, "fit_seeds", None)) and callable(getattr(method, "seed_fusion_unit", None))


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
        from .runner import load_data

        s = r.spec
        data_id = canonical_json([s.dataset, s.val_fraction, s.split_seed, s.max_train, s.data_options])
        if data_id not in self._specs:
            self._specs[data_id] = load_data(s, self.data_root).spec
        return self._specs[data_id]

    def unit(self, r: Any) -> nn.Module | list[nn.Module] | str:
        """The method's `seed_fusion_unit` for run `r`, built on the CPU (no teacher, no data)."""
        from .data.base import Split, Splits
        from .runner import build_context

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


# ---------------------------------------------------------------------------------------------
# What a method's fit_seeds uses
# ---------------------------------------------------------------------------------------------
def seeded(ctxs: Sequence[Any], build: Callable[[Any], nn.Module]) -> list[nn.Module]:
    """One model per seed, each built right after seeding torch with its run's seed (the state a
    run alone builds its model in)."""
    out = []
    for ctx in ctxs:
        seed_everything(ctx.seed)
        out.append(build(ctx))
    return out


class _SeedTargets:
    """A teacher's outputs on stacked seed batches, (s, B, ...) each: the run's own per-batch teacher
    targets (cached rows, or the teacher run on augmented batches) on the flattened batch."""

    def __init__(self, inner: Any, s: int):
        self._inner, self._s = inner, s

    def __getattr__(self, name: str) -> Tensor:
        t = getattr(self._inner, name)
        return t.view(self._s, -1, *t.shape[1:])


def teacher_outputs(ctx: Any, batch: Batch) -> Any:
    """`ctx.teacher_outputs` for a fused batch (x (s, B, ...)): .logits, .features, ... of shape (s, B, ...)."""
    key = ("seed_teacher_outputs", id(ctx))
    if key not in batch.memo:
        s = batch.x.shape[0]
        flat = Batch(batch.x.flatten(0, 1), batch.y.flatten(), batch.idx.flatten())
        batch.memo[key] = _SeedTargets(ctx.teacher_outputs(flat), s)
    return batch.memo[key]


@torch.inference_mode()
def predict_copies(model: nn.Module, x: Tensor, inputs: int, batch_size: int = 1024) -> Tensor:
    """Outputs (k, N, ...) of a stacked model with per-copy inputs on all of x, every copy on the same
    x (its `inputs` input slots filled with x), in eval mode. Batches of `batch_size / inputs` samples
    keep the activations as large as one run's `engine.predict` (on CPU a working set k times as
    large runs slower per element than k calls)."""
    was = model.training
    model.eval()
    step = max(1, batch_size // inputs)
    outs = [model(x[i : i + step].unsqueeze(0).expand(inputs, *x[i : i + step].shape)) for i in range(0, len(x), step)]
    model.train(was)
    return torch.cat(outs, dim=1)


def train(ctxs: Sequence[Any], steps: list[Step], modules: dict[str, nn.Module], **kw: Any) -> list[TrainResult]:
    """`Context.train` for the seeds' contexts at once: `engine.train_seeds` on the train split with
    the runs' shared schedule, each seed with its own seed, epoch hook and augmentation draws."""
    from .augment import batch_transform

    ctx = ctxs[0]
    x, y = ctx.split("train")
    kw.setdefault("transform", batch_transform(ctx.spec.augment))
    kw.setdefault("epochs", ctx.schedule.epochs)
    kw.setdefault("batch_size", ctx.schedule.batch_size)
    kw.setdefault("progress", ctx.progress)
    kw.setdefault("amp", ctx.spec.amp)
    kw.setdefault("desc", f"{ctx.spec.method} x{len(ctxs)} seeds")
    stage = kw.pop("stage", ctx.spec.method)
    kw.setdefault("on_epoch_end", [c.epoch_hook(stage) for c in ctxs])
    return train_seeds(steps, modules, x, y, seeds=[c.seed for c in ctxs], **kw)
