"""`student`: the student architecture trained with cross-entropy only (the no-KD baseline)."""
from __future__ import annotations

from dataclasses import dataclass

from torch.nn import functional as F

from kdbench.config import RunSpec
from kdbench.engine import Step, snapshot
from kdbench.method import Context, FitResult, Method, Schedule, register_method


def default_schedule(spec: RunSpec) -> Schedule:
    """The shared student schedule, so `student`, `kd`, `takd`, ... compare like for like."""
    return Schedule(epochs=20 if spec.dataset in ("mnist", "fashion-mnist") else 10, batch_size=128, lr=1e-3)


def fit_with_loss(ctx: Context, model, loss_fn, name: str) -> FitResult:
    """Train one classifier with `loss_fn(batch) -> named losses` and val-accuracy selection."""
    opt = ctx.optimizer(model.parameters())
    res = ctx.train([Step(name, opt, loss_fn)], {"model": model}, evaluate=lambda: ctx.val_accuracy(model))
    last = snapshot(model)
    res.restore_best({"model": model})
    return FitResult(model, last, snapshot(model), res.history, metrics={"best_epoch": res.best_epoch})


@register_method
class Student(Method):
    name = "student"
    description = "student trained with cross-entropy only (no distillation)"
    needs_teacher = False

    @dataclass
    class Params:
        pass

    @classmethod
    def schedule(cls, spec: RunSpec, params) -> Schedule:
        return default_schedule(spec)

    def fit(self, ctx: Context) -> FitResult:
        model = ctx.make_student()
        return fit_with_loss(ctx, model, lambda b: {"ce": F.cross_entropy(model(b.x), b.y)}, self.name)
