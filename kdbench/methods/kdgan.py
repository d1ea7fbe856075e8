"""`kdgan`: KDGAN (Wang et al., NeurIPS 2018), three players: student S, teacher T, discriminator
D(x, y) = sigmoid(<g(x), y>) with g a classifier-shaped net built like the teacher.

Per batch (losses exactly as docs/methods.md#kdgan; y_s, y_t straight-through Gumbel-softmax samples):
  D (k_D times): BCE(D(x, y), 1) + a BCE(D(x, y_s), 0) + (1 - a) BCE(D(x, y_t), 0)
  T (k_T times): (1 - a) mean log(1 - D(x, y_t)) + g ||z_t - z_s||^2 / 2      (three-player only)
  S (k_S times): a mean log(1 - D(x, y_s)) + b ||z_s - z_t||^2 / 2
`||.||^2 / 2` is the per-sample squared L2 norm of the logit difference, averaged over the batch.
The Gumbel temperature decays exponentially per batch from `tau_start` to `tau_end`.
Phase 0 trains S, D (and T in the three-player variant) with CE for `pretrain_epochs`, counted within
the run's epochs so every method gets the same number of passes over the data.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Annotated, Callable, Literal

import torch
from torch import nn
from torch.nn import functional as F

from kdbench.config import RunSpec
from kdbench.engine import Batch, Step, snapshot
from kdbench.errors import KdbenchError
from kdbench.method import Context, FitResult, Method, Range, Schedule, register_method
from kdbench.recipes import default_schedule


def disc_score(g_out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pre-sigmoid D(x, y) = <g(x), y> per sample."""
    return (g_out * y).sum(dim=1)


def bce_real(score: torch.Tensor) -> torch.Tensor:
    """BCE(sigmoid(score), 1), stable."""
    return F.softplus(-score).mean()


def bce_fake(score: torch.Tensor) -> torch.Tensor:
    """BCE(sigmoid(score), 0), stable."""
    return F.softplus(score).mean()


def log_one_minus_d(score: torch.Tensor) -> torch.Tensor:
    """mean log(1 - sigmoid(score)), stable."""
    return (-F.softplus(score)).mean()


def half_sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a - b||^2 / 2 per sample, averaged over the batch."""
    return 0.5 * (a - b).pow(2).sum(dim=1).mean()


def gumbel_tau(step: int, total: int, start: float, end: float) -> float:
    """Exponential decay start -> end over `total` updates (step 0 gives start, step total-1 gives end)."""
    return start * (end / start) ** (min(step, total - 1) / max(total - 1, 1))


class Players:
    """The three players and their per-batch losses, so tests can drive each step on fixed tensors."""

    def __init__(self, student: nn.Module, disc: nn.Module, teacher: nn.Module | None,
                 teacher_logits: torch.Tensor | Callable[[Batch], torch.Tensor] | None, a: float, b: float, g: float, tau: float = 1.0):
        if (teacher is None) == (teacher_logits is None):
            raise ValueError("give either a trainable teacher or the frozen teacher's logits")
        self.student, self.disc, self.teacher, self.teacher_logits = student, disc, teacher, teacher_logits
        self.a, self.b, self.g, self.tau = a, b, g, tau

    def teacher_out(self, batch: Batch, grad: bool = False) -> torch.Tensor:
        if self.teacher is None:  # frozen: cached rows, or a function of the batch (Context.teacher_outputs)
            if callable(self.teacher_logits):
                return self.teacher_logits(batch)
            return self.teacher_logits[batch.idx]
        if grad:
            return self.teacher(batch.x)
        with torch.no_grad():
            return self.teacher(batch.x)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """Straight-through Gumbel-softmax: one-hot forward, relaxed gradient backward."""
        return F.gumbel_softmax(logits, tau=self.tau, hard=True)

    def d_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        k = self.disc(batch.x)
        y_true = F.one_hot(batch.y, k.shape[1]).to(k.dtype)
        with torch.no_grad():
            y_s = self.sample(self.student(batch.x))
            y_t = self.sample(self.teacher_out(batch))
        return {"real": bce_real(disc_score(k, y_true)),
                "fake_s": self.a * bce_fake(disc_score(k, y_s)),
                "fake_t": (1 - self.a) * bce_fake(disc_score(k, y_t))}

    def t_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        z_t = self.teacher_out(batch, grad=True)
        with torch.no_grad():
            k = self.disc(batch.x)  # D's parameters are not updated here; only its value matters
            z_s = self.student(batch.x)
        return {"adv": (1 - self.a) * log_one_minus_d(disc_score(k, self.sample(z_t))),
                "dist": self.g * half_sq_dist(z_t, z_s)}

    def s_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        z_s = self.student(batch.x)
        with torch.no_grad():
            k = self.disc(batch.x)
            z_t = self.teacher_out(batch)
        return {"adv": self.a * log_one_minus_d(disc_score(k, self.sample(z_s))),
                "dist": self.b * half_sq_dist(z_s, z_t)}


def disc_arch(spec: RunSpec) -> str:
    """The zoo name of the teacher's architecture (g is built like it)."""
    teacher = spec.teacher
    if teacher.startswith("file:"):
        body = teacher[5:]
        if "=" in body:
            return body.partition("=")[0]
        from kdbench.teachers import default_teacher

        return default_teacher(spec.dataset)
    return teacher


@register_method
class KDGAN(Method):
    name = "kdgan"
    description = "KDGAN: student, teacher and discriminator D(x,y)=sigmoid(<g(x),y>) with Gumbel-softmax samples"

    @dataclass
    class Params:
        variant: Literal["frozen-teacher", "three-player"] = "frozen-teacher"
        a: Annotated[float, Range(ge=0, le=1)] = 0.5
        b: Annotated[float, Range(ge=0)] = 1.0
        g: Annotated[float, Range(ge=0)] = 0.01
        k_d: Annotated[int, Range(ge=1)] = 2
        k_t: Annotated[int, Range(ge=1)] = 1
        k_s: Annotated[int, Range(ge=1)] = 1
        tau_start: Annotated[float, Range(gt=0)] = 1.0
        tau_end: Annotated[float, Range(gt=0)] = 0.1
        pretrain_epochs: Annotated[int, Range(ge=0)] = 1

    @classmethod
    def schedule(cls, spec: RunSpec, params) -> Schedule:
        return default_schedule(spec)  # Adam 1e-3, the paper's optimiser, for all three players

    @classmethod
    def validate(cls, spec: RunSpec, params) -> None:
        super().validate(spec, params)  # each parameter's own range: declared in Params, checked by build_params
        if params.tau_end > params.tau_start:
            raise KdbenchError(f"kdgan: need tau_end <= tau_start, got {params.tau_start} -> {params.tau_end}")
        if spec.epochs is not None and spec.epochs <= params.pretrain_epochs:
            raise KdbenchError(f"kdgan: --epochs {spec.epochs} leaves no adversarial epoch after {params.pretrain_epochs} pretraining epoch(s)")

    def fit(self, ctx: Context) -> FitResult:
        p = self.params
        frozen = p.variant == "frozen-teacher"
        student = ctx.make_student()
        disc = ctx.make_model(disc_arch(ctx.spec))
        teacher = None
        if not frozen:  # a trainable copy of the cached teacher
            teacher = copy.deepcopy(ctx.teacher).requires_grad_(True)
        g = 0.0 if frozen else p.g
        frozen_logits = (lambda b: ctx.teacher_outputs(b).logits) if frozen else None
        players = Players(student, disc, teacher, frozen_logits, p.a, p.b, g, p.tau_start)
        modules = {"student": student, "disc": disc} | ({} if frozen else {"teacher": teacher})
        opts = {name: ctx.optimizer(m.parameters()) for name, m in modules.items()}
        evaluate = lambda: ctx.val_accuracy(student)  # noqa: E731

        history, best, best_state, pre_best_epoch = [], -math.inf, snapshot(student), 0
        pre_epochs = p.pretrain_epochs
        if pre_epochs:
            ce = [Step(f"pre_{name}", opts[name], lambda bt, m=m: {"ce": F.cross_entropy(m(bt.x), bt.y)})
                  for name, m in modules.items()]
            res = ctx.train(ce, modules, epochs=pre_epochs, evaluate=evaluate, desc="kdgan phase 0")
            history += [{"phase": "pretrain", **row} for row in res.history]
            best, best_state, pre_best_epoch = res.best_score, res.best_state["student"], res.best_epoch

        adv_epochs = ctx.schedule.epochs - pre_epochs
        if adv_epochs < 1:
            raise KdbenchError(f"kdgan: {ctx.schedule.epochs} epochs leave no adversarial epoch after {pre_epochs} pretraining")
        x_train, _ = ctx.split("train")
        per_epoch = math.ceil(len(x_train) / ctx.schedule.batch_size)
        total = adv_epochs * per_epoch
        counter = {"batch": 0}

        def epoch_start(epoch: int) -> None:  # the count from the loop's epoch: right on a resumed run too
            counter["batch"] = (epoch - 1) * per_epoch

        def d_loss(batch: Batch) -> dict[str, torch.Tensor]:
            if counter.get("seen") is not batch:  # first D update of a new batch: set this batch's temperature
                counter["seen"] = batch
                players.tau = gumbel_tau(counter["batch"], total, p.tau_start, p.tau_end)
                counter["batch"] += 1
            return players.d_loss(batch)

        steps = [Step("D", opts["disc"], d_loss, repeat=p.k_d)]
        if not frozen:
            steps.append(Step("T", opts["teacher"], players.t_loss, repeat=p.k_t))
        steps.append(Step("S", opts["student"], players.s_loss, repeat=p.k_s))
        res = ctx.train(steps, modules, epochs=adv_epochs, evaluate=evaluate, desc="kdgan", on_epoch_start=epoch_start)
        history += [{"phase": "adversarial", **row, "epoch": row["epoch"] + pre_epochs} for row in res.history]
        best_epoch = res.best_epoch + pre_epochs
        if res.best_score > best:  # ties keep the earlier (pretraining) epoch, like the loop does
            best_state = res.best_state["student"]
        else:
            best_epoch = pre_best_epoch
        student.load_state_dict(best_state)
        source = "teacher logits on each augmented batch" if ctx.augmented else "cached teacher logits"
        ctx.deviations.append(f"kdgan variant: {p.variant}" + (f" (g = 0, no T steps, {source})" if frozen else
                              f" (T starts from the cached teacher, then {pre_epochs} CE pretraining epoch(s) like S and D)"))
        ctx.deviations.append(f"kdgan: the {p.k_d} D updates of a batch reuse it with fresh Gumbel samples; players not "
                              "being updated run in train mode (dropout / BN statistics), the paper does not say")
        metrics = {"kdgan_variant": p.variant, "best_epoch": best_epoch, "pretrain_epochs": pre_epochs,
                   "adversarial_epochs": adv_epochs, "gumbel_tau_final": players.tau, "k_d": p.k_d,
                   "k_t": 0 if frozen else p.k_t, "k_s": p.k_s}
        return FitResult(student, res.last_state["student"], best_state, history, metrics=metrics)
