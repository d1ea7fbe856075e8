"""The one training loop every method shares.

A method describes *what* to optimise as a list of `Step`s (one optimiser and one loss function
each; GAN-style methods use several per batch); the loop owns *how*: batching by indexing in-memory
tensors, epochs, schedulers, validation each epoch with a val-best snapshot, a NaN/Inf guard,
progress bars and per-epoch history.
"""
from __future__ import annotations

import contextlib
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
from .resume import LoopCheckpoint, restore_training, training_state

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
class Members:
    """The k members of one trained module (students trained fused) that are selected each on its
    own: member i on `keys[i]` of each epoch's history row, keeping `state(i)` (in `train_seeds`
    `state(seed_index, i)`) at its own best epoch, next to the loop's selection on `score_key`."""

    keys: Sequence[str]
    state: Callable[..., dict[str, Any]]


@dataclass
class MemberBest:
    """One member's selection: its best score, the epoch of it and its state then."""

    score: float
    epoch: int
    state: dict[str, Any]


def _select_members(members: Members | None, best: list[MemberBest], row: dict[str, float], epoch: int,
                    higher_is_better: bool, *seed: int) -> None:
    """Update each member's best with this epoch's row (ties keep the earlier epoch, as the loop's)."""
    if members is None:
        return
    for i, key in enumerate(members.keys):
        score = row[key]
        if epoch == 1 or i >= len(best):
            best[i:i + 1] = [MemberBest(score, epoch, members.state(*seed, i))]
        elif score > best[i].score if higher_is_better else score < best[i].score:
            best[i] = MemberBest(score, epoch, members.state(*seed, i))


@dataclass
class TrainResult:
    """What the loop hands back: per module name its state at the val-best and at the last epoch
    (a method's `FitResult.from_train` reads both), the history and the selection."""

    history: list[dict[str, float]]
    best_epoch: int
    best_score: float
    best_state: dict[str, dict[str, torch.Tensor]]  # module name -> state_dict at the val-best epoch
    train_time_s: float
    last_state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # module name -> state_dict at the end
    members: list[MemberBest] = field(default_factory=list)  # per member, when `train(members=...)`

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
    members: Members | None = None,
    checkpoint: LoopCheckpoint | None = None,
) -> TrainResult:
    """Train `modules` with `steps` for `epochs` over (x, y); validate after each epoch with `evaluate`.

    `modules` are the trainable modules: put in train mode for the steps, eval mode for validation,
    and snapshotted at the best validation score (ties keep the earlier epoch). `transform(x, gen)`
    (the run's augmentation, see kdbench.augment) replaces each training batch's x before its steps,
    drawing from the same seeded generator as the batch order. `on_epoch_end(row)` gets a copy of
    each epoch's history row as soon as it is complete (experiment tracking, kdbench.tracking).
    `amp` ("bf16" / "fp16") runs the losses under autocast; fp16 scales the gradients (one scaler per step).
    `members` selects the members of a fused module each on its own score (`TrainResult.members`).
    `checkpoint` saves the loop's state after epochs and resumes from it (kdbench.resume).
    """
    gen = torch.Generator().manual_seed(seed)

    def batches() -> Iterator[Batch]:
        for batch in iterate_batches(x, y, batch_size, gen, drop_last):
            if transform is not None:
                batch.x = transform(batch.x, gen)
            yield batch

    state = lambda i: {name: snapshot(m) for name, m in modules.items()}  # noqa: E731
    evaluate_rows = (lambda: [evaluate()]) if evaluate is not None else None
    return _loop(steps, modules, batches, math.ceil(len(y) / batch_size), None, Precision(amp, x.device.type, len(steps)),
                 epochs=epochs, state=state, evaluate=evaluate_rows, score_key=score_key, higher_is_better=higher_is_better,
                 schedulers=schedulers, on_epoch_start=on_epoch_start, on_epoch_end=[on_epoch_end], desc=desc,
                 progress=progress, members=members, gens=[gen], checkpoint=checkpoint)[0]


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
    members: Members | None = None,
) -> list[TrainResult]:
    """`train` for the runs of several seeds at once (seed fusion, kdbench.seed_fuse): `modules` hold
    every seed's copies side by side, each step's `loss_fn(batch)` gets the seeds' batches stacked
    (x (s, B, ...)) and returns per-seed losses of shape (s,), whose sum is minimised; `evaluate()`
    returns one row per seed and `member_state(i)` seed i's state to keep at its val-best epoch
    (and at the end: `last_state`); `members` selects each seed's fused members on their own scores.

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
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    hooks = list(on_epoch_end) if on_epoch_end is not None else [None] * len(seeds)
    return _loop(steps, modules, lambda: seed_batches(x, y, batch_size, gens, drop_last, transform),
                 math.ceil(len(y) / batch_size), list(seeds), Precision(amp, x.device.type, 0), epochs=epochs,
                 state=member_state, evaluate=evaluate, score_key=score_key, higher_is_better=higher_is_better,
                 schedulers=schedulers, on_epoch_start=None, on_epoch_end=hooks, desc=desc, progress=progress,
                 members=members, gens=gens, checkpoint=None)


def _loop(steps: Sequence[Step], modules: dict[str, nn.Module], batches: Callable[[], Iterator[Batch]], n_batches: int,
          seeds: list[int] | None, precision: Precision, *, epochs: int, state: Callable[[int], dict[str, Any]],
          evaluate: Callable[[], list[dict[str, float]]] | None, score_key: str, higher_is_better: bool,
          schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler], on_epoch_start: Callable[[int], None] | None,
          on_epoch_end: Sequence[Callable[[dict[str, float]], None] | None], desc: str, progress: bool | None,
          members: Members | None, gens: Sequence[torch.Generator], checkpoint: LoopCheckpoint | None) -> list[TrainResult]:
    """The one loop behind `train` (one run: `seeds` None, losses are scalars) and `train_seeds` (the
    copies of several seeds side by side: losses of shape (s,), one history, selection and state per
    seed). `state(i)` is copy i's state to keep; `evaluate()` returns one row per copy; `gens` are the
    batch-order generators (saved with the rest by `checkpoint`)."""
    fused = seeds is not None
    s = len(seeds) if fused else 1
    history: list[list[dict[str, float]]] = [[] for _ in range(s)]
    best_score = [-math.inf if higher_is_better else math.inf] * s
    best_epoch = [0] * s
    best_state = [state(i) for i in range(s)]
    member_best: list[list[MemberBest]] = [[] for _ in range(s)]
    scalers = precision.scalers
    fingerprint = {"desc": desc, "epochs": epochs, "batches": n_batches, "seeds": seeds, "steps": [st.name for st in steps],
                   "modules": {n: [[k, list(v.shape)] for k, v in m.state_dict().items()] for n, m in modules.items()}}
    saved = checkpoint.load(fingerprint) if checkpoint is not None else None
    done, prior_s = 0, 0.0
    if saved is not None:
        restore_training(saved, modules, [st.optimizer for st in steps], schedulers, scalers, gens)
        done, prior_s, history = saved["epoch"], saved["elapsed_s"], saved["history"]
        best_score, best_epoch, best_state = saved["best_score"], saved["best_epoch"], saved["best_state"]
        member_best = [[MemberBest(*b) for b in mb] for mb in saved["member_best"]]
        for i, hook in enumerate(on_epoch_end):  # the resumed epochs reach the trackers as in one run
            for row in history[i] if hook is not None else ():
                hook(dict(row))
    show = progress_enabled() if progress is None else progress
    t_start = time.perf_counter()
    bar = tqdm(total=epochs * n_batches, initial=done * n_batches, desc=desc, disable=not show, leave=False, dynamic_ncols=True)
    try:
        for epoch in range(done + 1, epochs + 1):
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            for m in modules.values():
                m.train()
            t0 = time.perf_counter()
            sums: dict[str, Any] = {}  # a float per loss (one run) or a (s,) double tensor (seeds)
            count = 0
            for batch in batches():
                for i, step in enumerate(steps):
                    for _ in range(step.repeat):
                        with precision.autocast():
                            losses = step.loss_fn(batch)
                            total = sum(v.sum() for v in losses.values()) if fused else sum(losses.values())
                        _check_finite(losses, total, epoch, step.name, seeds)
                        step.optimizer.zero_grad(set_to_none=True)
                        precision.step(i, total, step.optimizer)
                    for k, v in losses.items():
                        key = f"{step.name}/{k}" if len(steps) > 1 else k
                        sums[key] = sums.get(key, 0.0) + (v.detach().double().cpu() if fused else float(v.detach()))
                count += 1
                bar.update(1)
            for sch in schedulers:
                sch.step()
            epoch_s = time.perf_counter() - t0
            rows = [{"epoch": epoch, **{k: (float(v[i]) if fused else v) / max(count, 1) for k, v in sums.items()},
                     "time_s": epoch_s} for i in range(s)]
            if evaluate is not None:
                for m in modules.values():
                    m.eval()
                with torch.inference_mode():
                    for i, (row, extra) in enumerate(zip(rows, evaluate())):
                        row.update(extra)
                        _select_members(members, member_best[i], row, epoch, higher_is_better, *([i] if fused else []))
            for i, row in enumerate(rows):
                if evaluate is not None:
                    score = row[score_key]
                    better = score > best_score[i] if higher_is_better else score < best_score[i]
                    if better or epoch == 1:
                        best_score[i], best_epoch[i], best_state[i] = score, epoch, state(i)
                else:  # no validation: the last epoch is the selected one
                    best_epoch[i], best_state[i] = epoch, state(i)
                history[i].append(row)
                if on_epoch_end[i] is not None:
                    on_epoch_end[i](dict(row))
            if fused:
                log.info("%s epoch %d/%d (%d seeds fused): %.3g s", desc, epoch, epochs, s, epoch_s)
            else:
                row = rows[0]
                log.info("%s epoch %d/%d: %s", desc, epoch, epochs, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
                bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k not in ("epoch", "time_s")}, refresh=False)
            if checkpoint is not None and (checkpoint.due() or (epoch == epochs and checkpoint.path.is_file())):
                checkpoint.save({
                    **training_state(modules, [st.optimizer for st in steps], schedulers, scalers, gens),
                    "fingerprint": fingerprint, "epoch": epoch, "elapsed_s": prior_s + time.perf_counter() - t_start,
                    "history": history, "best_score": best_score, "best_epoch": best_epoch, "best_state": best_state,
                    "member_best": [[[b.score, b.epoch, b.state] for b in mb] for mb in member_best]})
    finally:
        bar.close()
    for m in modules.values():
        m.eval()
    last = [state(i) for i in range(s)]
    took = prior_s + time.perf_counter() - t_start
    return [TrainResult(history[i], best_epoch[i], best_score[i], best_state[i], took, last[i], member_best[i]) for i in range(s)]


def _check_finite(losses: LossDict, total: torch.Tensor, epoch: int, step: str, seeds: list[int] | None) -> None:
    """Stop on a non-finite loss (DivergenceError naming the step, the loss and, fused, the seed)."""
    if seeds is None:
        value = float(total.detach())
        if not math.isfinite(value):
            bad = next((k for k, v in losses.items() if not torch.isfinite(v).all()), "total")
            raise DivergenceError(epoch, step, bad, value)
        return
    per_seed = torch.stack([v.detach().float() for v in losses.values()]).sum(0)
    if not bool(torch.isfinite(per_seed).all()):
        bad = next((k for k, v in losses.items() if not torch.isfinite(v).all()), "total")
        i = int((~torch.isfinite(per_seed)).nonzero()[0, 0])
        raise DivergenceError(epoch, f"{step} (seed {seeds[i]})", bad, float(per_seed[i]))


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
