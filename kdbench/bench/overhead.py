"""`overhead`: what kdbench's machinery costs. One KD epoch through kdbench (`method.fit`: the student
factory, the shared training loop, per-epoch validation, the val-best snapshot) vs a minimal
hand-written PyTorch loop over the same model, the same data tensors and the same cached teacher
logits, doing the same work (one shuffled epoch, then the val accuracy once)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from ..engine import seed_everything
from ..method import Context
from .base import BENCHES, BenchRow, Goal
from .compare import max_abs_diff
from .session import Session, Setup, Timed, fit_once, loop_seconds
from .timing import interleave, median, sync

METHOD = "kd"  # the workload: Hinton KD from cached logits, the simplest distillation epoch
HAND_OPTIMIZERS = {"adam": lambda params, s: torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay),
                   "sgd": lambda params, s: torch.optim.SGD(params, lr=s.lr, momentum=0.9, weight_decay=s.weight_decay)}


@dataclass
class HandTimed:
    """The hand-written epoch: wall time (model built to val accuracy), its batch loop, CPU time, and
    what it ended with (for the equality checks)."""

    wall_s: float
    loop_s: float
    cpu_s: float
    val_acc: float
    state: dict[str, Tensor]


def hand_kd_epoch(setup: Setup, ctx: Context) -> HandTimed:
    """One epoch of Hinton KD written as a user would with plain PyTorch: shuffled index batches,
    (1 - a) CE + a T^2 KL(softmax(t/T) || softmax(z/T)) against the cached logits, one optimiser
    step per batch; then the val accuracy. Seeded as the runner seeds a run, so that it trains the
    same model on the same batches as `method.fit` does."""
    p, spec, sched = setup.resolved.params, setup.resolved.spec, ctx.schedule
    temperature, alpha = p.temperature, p.alpha
    seed_everything(spec.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    model = ctx.make_student()
    opt = HAND_OPTIMIZERS[sched.optimizer](model.parameters(), sched)
    x, y = ctx.split("train")
    teacher_logits = ctx.targets("train").logits
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(spec.seed)).to(x.device)
    model.train()
    t1 = time.perf_counter()
    for start in range(0, len(y), sched.batch_size):
        idx = order[start:start + sched.batch_size]
        z = model(x[idx])
        soft = F.kl_div(F.log_softmax(z / temperature, dim=1), F.softmax(teacher_logits[idx] / temperature, dim=1),
                        reduction=p.reduction) * temperature**2
        loss = (1 - alpha) * F.cross_entropy(z, y[idx]) + alpha * soft
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(ctx.device)
    loop_s = time.perf_counter() - t1
    model.eval()
    xv, yv = ctx.split("val")
    with torch.inference_mode():
        correct = sum(int((model(xv[i:i + 1024]).argmax(1) == yv[i:i + 1024]).sum()) for i in range(0, len(yv), 1024))
    wall = time.perf_counter() - t0
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return HandTimed(wall, loop_s, time.process_time() - c0, 100.0 * correct / max(len(yv), 1), state)


@BENCHES.register("overhead")
def bench_overhead(s: Session) -> list[BenchRow]:
    """kdbench's KD epoch vs the hand-written one, interleaved; both must end with the same weights."""
    z = s.sizes
    setup = s.setup(METHOD, epochs=1)
    if setup.resolved.schedule.optimizer not in HAND_OPTIMIZERS:
        raise RuntimeError(f"the hand-written loop has no '{setup.resolved.schedule.optimizer}' optimiser")
    s.context(setup).targets("train")  # cached before either arm is timed
    # untimed warm-up, each arm once on two batches: one-time costs (kernel set-up, the first reads of
    # the memory-mapped targets) then fall on neither timed arm
    warm = 2 * setup.resolved.schedule.batch_size
    fit_once(setup, s.context(setup, warm, n_eval=64))
    hand_kd_epoch(setup, s.context(setup, warm, n_eval=64))
    fits: list[Timed] = []
    hands: list[HandTimed] = []

    def kdbench_arm() -> float:
        fits.append(fit_once(setup, s.context(setup, z.overhead_train, n_eval=z.overhead_eval)))
        return fits[-1].wall_s

    def hand_arm() -> float:
        hands.append(hand_kd_epoch(setup, s.context(setup, z.overhead_train, n_eval=z.overhead_eval)))
        return hands[-1].wall_s

    times = interleave({"kdbench": kdbench_arm, "hand": hand_arm}, s.cfg.n_rounds)
    fit, hand = fits[0].fit, hands[0]
    diff = max_abs_diff(fit.last_state, hand.state)
    kd_val = fit.history[-1].get("val_acc")
    loops = {"kdbench": [loop_seconds(t.fit) for t in fits], "hand": [h.loop_s for h in hands]}
    cpu = {"kdbench": [t.cpu_s for t in fits], "hand": [h.cpu_s for h in hands]}
    n_train, n_val = len(s.context(setup, z.overhead_train).data.train), len(s.context(setup, n_eval=z.overhead_eval).data.val)
    sched = setup.resolved.schedule
    return [BenchRow(
        "overhead: kdbench KD epoch / hand-written loop", "kdbench", median(times["kdbench"]), "hand-written PyTorch",
        median(times["hand"]), "s", Goal("<=", 1.1),
        notes=f"1 epoch of {METHOD} on {n_train} {setup.resolved.spec.dataset} samples (batch {sched.batch_size}, "
              f"{sched.optimizer}), then val accuracy on {n_val}; same student ({setup.resolved.spec.student}), "
              f"tensors and cached logits; batch loops alone {median(loops['kdbench']):.3g} / {median(loops['hand']):.3g} s "
              f"= {median(loops['kdbench']) / median(loops['hand']):.3f}; CPU-time ratio "
              f"{median(cpu['kdbench']) / median(cpu['hand']):.3f}; max |weight diff| {diff:.2g}",
        checks={"same final weights as the hand-written loop (atol 1e-6)": diff <= 1e-6,
                # the same count of correct val samples: kdbench's percentage is a float32 (97.10000157 for 97.1)
                "same val accuracy": kd_val is not None and abs(kd_val - hand.val_acc) < 50.0 / max(n_val, 1)},
        details={"kdbench_s": times["kdbench"], "hand_s": times["hand"], "loop_s": loops, "cpu_s": cpu,
                 "max_weight_diff": diff, "val_acc": {"kdbench": kd_val, "hand": hand.val_acc},
                 "n_train": n_train, "n_val": n_val,
                 "timed": "kdbench: method.fit (student built, loop, per-epoch validation, val-best snapshot and restore); "
                          "hand: model built, loop, one val pass"},
    )]
