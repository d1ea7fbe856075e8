"""The shared student recipes every method trains under, so methods compare like for like: the
default schedule (TAKD's paper recipe for its CNN families, else Adam), its lr steps and deviation
line, and the one-classifier fit with a loss function (alone or several seeds fused).

Core code: methods import these from here (docs/design.md §1); this module imports no method."""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from . import seed_fuse
from .config import RunSpec
from .data.catalogue import family_default
from .engine import Step, accuracy, snapshot
from .method import Context, FitResult, Schedule
from .tcn_fuse import load_tensors, stack

PAPER_EPOCHS = 160  # TAKD's recipe for its plain CNN and ResNet students


def paper_family(student: str) -> str | None:
    """'plain' / 'resnet' when the student is one of the TAKD paper's CNN families (its recipe applies)."""
    for family, variants in (("plain", ("",)), ("resnet", ("", "b"))):  # resnet<d>b: option-B shortcuts
        depth = student[len(family):]
        if student.startswith(family) and any(depth.endswith(v) and depth[: len(depth) - len(v)].isdigit() for v in variants):
            return family
    return None


def default_schedule(spec: RunSpec, code_faithful: bool = False) -> Schedule:
    """The one student schedule that `student`, `kd`, `takd`, ... share, so they compare like for
    like: TAKD's paper recipe (SGD m0.9, wd 1e-4, 160 epochs; lr 0.01 plain, 0.1 ResNet, or the
    official code's 0.01) for its CNN families, else Adam 1e-3, batch 128, for the epochs the dataset
    declares (`student_epochs`; 10 when it declares none)."""
    family = paper_family(spec.student)
    if family == "plain":
        return Schedule(PAPER_EPOCHS, 128, 0.01, optimizer="sgd", weight_decay=1e-4)
    if family == "resnet":
        return Schedule(PAPER_EPOCHS, 128, 0.01 if code_faithful else 0.1, optimizer="sgd", weight_decay=1e-4)
    return Schedule(epochs=family_default(spec.dataset, "student_epochs") or 10, batch_size=128, lr=1e-3)


def lr_factor(family: str | None, code_faithful: bool, epochs: int) -> Callable[[int], float]:
    """Multiplier of the base lr after `e` finished epochs: ResNets 1 / 0.1 / 0.01 from 0 / 50 / 75% of
    the epochs (paper), or base 0.01 dropped x0.1 at 75% (official code); otherwise fixed."""
    if family != "resnet":
        return lambda e: 1.0
    milestones = [0.75] if code_faithful else [0.5, 0.75]
    steps = [int(m * epochs) for m in milestones]
    return lambda e: 0.1 ** sum(e >= s for s in steps)


def schedule_note(family: str | None, code_faithful: bool = False) -> str:
    """The deviation line naming the schedule a run used."""
    if family == "plain":
        return "schedule: TAKD paper recipe, SGD m0.9 wd1e-4, lr fixed"
    if family == "resnet":
        return "schedule: TAKD paper recipe, SGD m0.9 wd1e-4, " + (
            "lr 0.01 then x0.1 at 75% (official code)" if code_faithful else "lr x1/x0.1/x0.01 at 0/50/75%")
    return "schedule: shared student schedule (Adam)"


def lr_steps(ctxs: list[Context], opt: torch.optim.Optimizer) -> list[torch.optim.lr_scheduler.LRScheduler]:
    """The shared schedule's lr steps for `opt` (TAKD's ResNet recipe; none otherwise), and the
    schedule's deviation line in each run's record: every method on a paper CNN student uses this."""
    family = paper_family(ctxs[0].spec.student)
    if family:
        for c in ctxs:
            c.deviations.append(schedule_note(family))
    return [torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(family, False, ctxs[0].schedule.epochs))] \
        if family == "resnet" else []


def fit_with_loss(ctx: Context, model, loss_fn, name: str) -> FitResult:
    """Train one classifier with `loss_fn(batch) -> named losses` and val-accuracy selection, under
    the shared schedule (with its lr steps for the TAKD ResNet recipe)."""
    opt = ctx.optimizer(model.parameters())
    schedulers = lr_steps([ctx], opt)
    res = ctx.train([Step(name, opt, loss_fn)], {"model": model}, evaluate=lambda: ctx.val_accuracy(model),
                    schedulers=schedulers)
    return FitResult.from_train(model, res, metrics={"best_epoch": res.best_epoch})


def fit_seeds_with_loss(ctxs: list[Context], models: list, loss_fn, name: str) -> list[FitResult]:
    """`fit_with_loss` for the runs of several seeds at once (kdbench.seed_fuse): `models` (one per
    seed, built seeded) train side by side; `loss_fn(z, batch)` gets the stacked logits (s, B, K) and
    the seeds' stacked batch and returns per-seed losses (s,). Each seed ends in its own FitResult."""
    ctx = ctxs[0]
    fused = stack(models, batched_input=True)
    opt = ctx.optimizer(fused.parameters())
    schedulers = lr_steps(ctxs, opt)
    x_val, y_val = ctx.split("val")

    def evaluate() -> list[dict[str, float]]:
        logits = seed_fuse.predict_copies(fused, x_val, len(ctxs))
        return [{"val_acc": accuracy(z, y_val)} for z in logits]

    results = seed_fuse.train(ctxs, [Step(name, opt, lambda b: loss_fn(fused(b.x), b))], {"model": fused}, evaluate=evaluate,
                              schedulers=schedulers, member_state=lambda i: {"model": fused.member_tensors(i)})
    out = []
    for model, res in zip(models, results):
        load_tensors(model, res.last_state["model"])  # member tensors -> the model's own state_dict
        last = snapshot(model)
        load_tensors(model, res.best_state["model"])
        model.eval()
        out.append(FitResult(model, last, snapshot(model), res.history, metrics={"best_epoch": res.best_epoch}))
    return out


def cross_entropy_per_copy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(s, B, K) logits and (s, B) labels -> (s,): each copy's mean cross-entropy."""
    return F.cross_entropy(z.flatten(0, 1), y.flatten(), reduction="none").view(z.shape[0], -1).mean(1)
