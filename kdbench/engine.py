"""The one training loop every method shares.

A method describes *what* to optimise as a list of `Step`s (one optimiser and one loss function
each; GAN-style methods use several per batch); the loop owns *how*: batching by indexing in-memory
tensors, epochs, schedulers, validation each epoch with a val-best snapshot, a NaN/Inf guard,
progress bars and per-epoch history.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import DivergenceError, KdbenchError

LossDict = dict[str, torch.Tensor]
log = logging.getLogger("kdbench.train")


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor  # indices into the split: look up cached teacher targets with it
    memo: dict[Any, Any] = field(default_factory=dict)  # values computed once per batch (a teacher's outputs on it)


@dataclass
class Step:
    """One optimiser update per batch: minimise the sum of the named losses `loss_fn(batch)` returns."""

    name: str
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[Batch], LossDict]
    repeat: int = 1  # e.g. KDGAN's k_D = 2 discriminator updates per batch


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_score: float
    best_state: dict[str, dict[str, torch.Tensor]]  # module name -> state_dict at the val-best epoch
    train_time_s: float

    def restore_best(self, modules: dict[str, nn.Module]) -> None:
        for name, module in modules.items():
            module.load_state_dict(self.best_state[name])


def progress_enabled() -> bool:
    env = os.environ.get("KDBENCH_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no")
    return sys.stderr.isatty()


def iterate_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None, drop_last: bool = False
) -> Iterator[Batch]:
    """Batches by indexing tensors already in memory (no per-sample DataLoader); shuffled if a generator is given."""
    n = int(y.shape[0])
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        idx_dev = idx.to(x.device)
        yield Batch(x.index_select(0, idx_dev), y.index_select(0, idx_dev), idx_dev)


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """float32, or autocast to bf16 / fp16 for the forward passes and losses; fp16 gradients are scaled
    (`torch.amp.GradScaler`, one per step: each optimiser has its own scale and inf checks)."""

    def __init__(self, amp: str | None, device_type: str, n_steps: int):
        if amp is not None and amp not in AMP_DTYPES:
            raise KdbenchError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
        self.dtype = AMP_DTYPES.get(amp) if amp else None
        self.device_type = device_type
        scale = amp == "fp16"
        self.scalers = [torch.amp.GradScaler(device_type, enabled=scale) for _ in range(n_steps)] if scale else []

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def step(self, index: int, total: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if not self.scalers:
            total.backward()
            optimizer.step()
            return
        scaler = self.scalers[index]
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def train(
    steps: Sequence[Step],
    modules: dict[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    evaluate: Callable[[], dict[str, float]] | None = None,
    score_key: str = "val_acc",
    higher_is_better: bool = True,
    schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler] = (),
    seed: int = 0,
    transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
    desc: str = "train",
    drop_last: bool = False,
    progress: bool | None = None,
    amp: str | None = None,
) -> TrainResult:
    """Train `modules` with `steps` for `epochs` over (x, y); validate after each epoch with `evaluate`.

    `modules` are the trainable modules: put in train mode for the steps, eval mode for validation,
    and snapshotted at the best validation score (ties keep the earlier epoch). `transform(x, gen)`
    (the run's augmentation, see kdbench.augment) replaces each training batch's x before its steps,
    drawing from the same seeded generator as the batch order. `on_epoch_end(row)` gets a copy of
    each epoch's history row as soon as it is complete (experiment tracking, kdbench.tracking).
    `amp` ("bf16" / "fp16") runs the losses under autocast; fp16 scales the gradients (one scaler per step).
    """
    gen = torch.Generator().manual_seed(seed)
    precision = Precision(amp, x.device.type, len(steps))
    history: list[dict[str, float]] = []
    best_score, best_epoch = -math.inf if higher_is_better else math.inf, 0
    best_state = {name: snapshot(m) for name, m in modules.items()}
    show = progress_enabled() if progress is None else progress
    n_batches = math.ceil(len(y) / batch_size)
    t_start = time.perf_counter()
    bar = tqdm(total=epochs * n_batches, desc=desc, disable=not show, leave=False, dynamic_ncols=True)
    try:
        for epoch in range(1, epochs + 1):
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            for m in modules.values():
                m.train()
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            count = 0
            for batch in iterate_batches(x, y, batch_size, gen, drop_last):
                if transform is not None:
                    batch.x = transform(batch.x, gen)
                for i, step in enumerate(steps):
                    for _ in range(step.repeat):
                        with precision.autocast():
                            losses = step.loss_fn(batch)
                            total = sum(losses.values())
                        value = float(total.detach())
                        if not math.isfinite(value):
                            bad = next((k for k, v in losses.items() if not torch.isfinite(v).all()), "total")
                            raise DivergenceError(epoch, step.name, bad, value)
                        step.optimizer.zero_grad(set_to_none=True)
                        precision.step(i, total, step.optimizer)
                    for k, v in losses.items():
                        key = f"{step.name}/{k}" if len(steps) > 1 else k
                        sums[key] = sums.get(key, 0.0) + float(v.detach())
                count += 1
                bar.update(1)
            for s in schedulers:
                s.step()
            row: dict[str, float] = {"epoch": epoch, **{k: v / max(count, 1) for k, v in sums.items()}}
            row["time_s"] = time.perf_counter() - t0
            if evaluate is not None:
                for m in modules.values():
                    m.eval()
                with torch.inference_mode():
                    row.update(evaluate())
                score = row[score_key]
                better = score > best_score if higher_is_better else score < best_score
                if better or epoch == 1:
                    best_score, best_epoch = score, epoch
                    best_state = {name: snapshot(m) for name, m in modules.items()}
            else:  # no validation: the last epoch is the selected one
                best_epoch, best_state = epoch, {name: snapshot(m) for name, m in modules.items()}
            history.append(row)
            if on_epoch_end is not None:
                on_epoch_end(dict(row))
            log.info("%s epoch %d/%d: %s", desc, epoch, epochs, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k not in ("epoch", "time_s")}, refresh=False)
    finally:
        bar.close()
    for m in modules.values():
        m.eval()
    return TrainResult(history, best_epoch, best_score, best_state, time.perf_counter() - t_start)


def seed_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, gens: Sequence[torch.Generator], drop_last: bool,
                 transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None) -> Iterator[Batch]:
    """One epoch of the seeds' batches side by side: x (s, B, ...), y and idx (s, B); seed i's batches
    come in its own generator's order and get its own augmentation draws, in the same sequence of
    draws as its run alone (its order, then one transform per batch)."""
    for parts in zip(*[iterate_batches(x, y, batch_size, g, drop_last) for g in gens]):
        if transform is not None:
            for b, g in zip(parts, gens):
                b.x = transform(b.x, g)
        yield Batch(torch.stack([b.x for b in parts]), torch.stack([b.y for b in parts]), torch.stack([b.idx for b in parts]))


def train_seeds(
    steps: Sequence[Step],
    modules: dict[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seeds: Sequence[int],
    epochs: int,
    batch_size: int,
    member_state: Callable[[int], dict[str, Any]],
    evaluate: Callable[[], list[dict[str, float]]] | None = None,
    score_key: str = "val_acc",
    higher_is_better: bool = True,
    schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler] = (),
    transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    on_epoch_end: Sequence[Callable[[dict[str, float]], None] | None] | None = None,
    desc: str = "train",
    drop_last: bool = False,
    progress: bool | None = None,
    amp: str | None = None,
) -> list[TrainResult]:
    """`train` for the runs of several seeds at once (seed fusion, kdbench.seed_fuse): `modules` hold
    every seed's copies side by side, each step's `loss_fn(batch)` gets the seeds' batches stacked
    (x (s, B, ...)) and returns per-seed losses of shape (s,), whose sum is minimised; `evaluate()`
    returns one row per seed and `member_state(i)` seed i's state to keep at its val-best epoch.

    Each seed keeps its own batch order and augmentation draws (its own generator, seeded as its
    run alone), its own history, val-best epoch and state; the gradient of the summed loss with
    respect to seed i's copy is the gradient of its own loss, and the optimisers kdbench builds (Adam,
    AdamW, SGD with momentum / weight decay; no gradient clipping) update every element on its own,
    so one optimiser over the stacked tensors is one optimiser per seed. Results equal the runs alone
    up to float reassociation. A non-finite loss of any seed stops the whole group (DivergenceError).
    `train_time_s` of every result is the group's time. fp16 gradient scaling is not supported (one
    scaler would skip every seed's step when one overflows)."""
    if amp == "fp16":
        raise KdbenchError("seed fusion does not support --amp fp16 (one gradient scaler for all seeds)")
    s = len(seeds)
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    precision = Precision(amp, x.device.type, 0)
    hooks = list(on_epoch_end) if on_epoch_end is not None else [None] * s
    history: list[list[dict[str, float]]] = [[] for _ in range(s)]
    best_score = [-math.inf if higher_is_better else math.inf] * s
    best_epoch = [0] * s
    best_state = [member_state(i) for i in range(s)]
    show = progress_enabled() if progress is None else progress
    n_batches = math.ceil(len(y) / batch_size)
    t_start = time.perf_counter()
    bar = tqdm(total=epochs * n_batches, desc=desc, disable=not show, leave=False, dynamic_ncols=True)
    try:
        for epoch in range(1, epochs + 1):
            for m in modules.values():
                m.train()
            t0 = time.perf_counter()
            sums: dict[str, torch.Tensor] = {}
            count = 0
            for batch in seed_batches(x, y, batch_size, gens, drop_last, transform):
                for step in steps:
                    for _ in range(step.repeat):
                        with precision.autocast():
                            losses = step.loss_fn(batch)
                            total = sum(v.sum() for v in losses.values())
                        per_seed = torch.stack([v.detach().float() for v in losses.values()]).sum(0)
                        if not bool(torch.isfinite(per_seed).all()):
                            bad = next((k for k, v in losses.items() if not torch.isfinite(v).all()), "total")
                            i = int((~torch.isfinite(per_seed)).nonzero()[0, 0])
                            raise DivergenceError(epoch, f"{step.name} (seed {seeds[i]})", bad, float(per_seed[i]))
                        step.optimizer.zero_grad(set_to_none=True)
                        total.backward()
                        step.optimizer.step()
                    for k, v in losses.items():
                        key = f"{step.name}/{k}" if len(steps) > 1 else k
                        sums[key] = sums.get(key, 0.0) + v.detach().double().cpu()
                count += 1
                bar.update(1)
            for sch in schedulers:
                sch.step()
            epoch_s = time.perf_counter() - t0
            rows = [{"epoch": epoch, **{k: float(v[i]) / max(count, 1) for k, v in sums.items()}, "time_s": epoch_s} for i in range(s)]
            if evaluate is not None:
                for m in modules.values():
                    m.eval()
                with torch.inference_mode():
                    for row, extra in zip(rows, evaluate()):
                        row.update(extra)
            for i, row in enumerate(rows):
                if evaluate is not None:
                    score = row[score_key]
                    better = score > best_score[i] if higher_is_better else score < best_score[i]
                    if better or epoch == 1:
                        best_score[i], best_epoch[i], best_state[i] = score, epoch, member_state(i)
                else:
                    best_epoch[i], best_state[i] = epoch, member_state(i)
                history[i].append(row)
                if hooks[i] is not None:
                    hooks[i](dict(row))
            log.info("%s epoch %d/%d (%d seeds fused): %.3g s", desc, epoch, epochs, s, epoch_s)
    finally:
        bar.close()
    for m in modules.values():
        m.eval()
    took = time.perf_counter() - t_start
    return [TrainResult(history[i], best_epoch[i], best_score[i], best_state[i], took) for i in range(s)]


@torch.inference_mode()
def predict(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Outputs of `model` on all of x, in eval mode, batched."""
    if isinstance(model, nn.Module):
        was_training = model.training
        model.eval()
    outs = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    if isinstance(model, nn.Module) and was_training:
        model.train()
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(logits: torch.Tensor, y: torch.Tensor, k: int = 1) -> float:
    """Top-k accuracy in percent. A single-logit output is read as a binary sigmoid classifier."""
    if logits.ndim == 2 and logits.shape[1] == 1:
        pred = (logits[:, 0] > 0).long()
        return 100.0 * float((pred == y).float().mean())
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return 100.0 * float((top == y[:, None]).any(dim=1).float().mean())


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9) -> torch.optim.Optimizer:
    """Optimisers by name (the recipes of docs/methods.md#shared-protocol use Adam and SGD with momentum)."""
    factories = {
        "adam": lambda: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
        "adamw": lambda: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
        "sgd": lambda: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay),
    }
    if name not in factories:
        from .errors import KdbenchError

        raise KdbenchError(f"unknown optimizer '{name}' (known: {', '.join(sorted(factories))})")
    return factories[name]()


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """`auto` uses CUDA when present, else the CPU. An unknown device, or one this machine does not
    have, is a user error (one line) rather than a failure deep inside the first run."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise KdbenchError(f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise KdbenchError(f"device '{name}' asked for, but CUDA is not available here (use --device auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise KdbenchError(f"device '{name}' asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise KdbenchError(f"device '{name}' asked for, but MPS is not available here (use --device auto or cpu)")
    return device


_ALLOCATOR_TUNED = False


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning big blocks to the kernel.

    By default every allocation above the mmap threshold (at most 32 MiB) is a fresh mapping, so each
    large batch (evaluation at batch 1024, the teacher's activations) pays its page faults again:
    profiled, a small TCN run spent as much time in the kernel as in user code, and `predict` at
    batch 1024 ran 2x slower than with this setting. Results are unchanged (only where memory comes
    from changes). Idempotent; a no-op off glibc or with KDBENCH_KEEP_FREED_MEMORY=0 (for before /
    after measurements). Returns whether the setting is active."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or not sys.platform.startswith("linux") or os.environ.get("KDBENCH_KEEP_FREED_MEMORY") == "0":
        return _ALLOCATOR_TUNED
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        _ALLOCATOR_TUNED = bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        _ALLOCATOR_TUNED = False
    return _ALLOCATOR_TUNED


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` while the body runs, the caller's again after
    (teachers and the latency pass run at a fixed, recorded count whatever the executor)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> None:
    """Seed torch's global RNG (weight init, dropout); batch order uses its own generator."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def deepcopy_module(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module)
