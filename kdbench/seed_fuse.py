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
(`tcn_fuse.Grouped`; the `vmap` form is slower there) and costs at most `fuse_plan.FUSE_MAX_MACS_CPU`
multiply-adds per sample: a tiny model leaves a core idle between its small kernels, so k copies
side by side run faster than k runs; a bigger one already keeps the core busy, and k copies side
by side only make every step's activations k times larger, which ran slower per element than k
runs one after another (kdbench/bench_fuse.py measures both). Never fused: models with dropout
(their random masks would be drawn in another order, so the runs would not be reproduced),
`--amp fp16` (one gradient scaler for all seeds) and `--compile`. That judgement (`decide`) is
kdbench.fuse_plan's, above the runner; this module holds what a method's `fit_seeds` uses.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from .config import canonical_json
from .engine import Batch, Step, TrainResult, seed_everything, train_seeds
from .errors import KdbenchError

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
