"""`student`: the student architecture trained with cross-entropy only (the no-KD baseline)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from kdbench import seed_fuse
from kdbench.config import RunSpec
from kdbench.method import Context, FitResult, Method, Schedule, register_method
from kdbench.recipes import cross_entropy_per_copy, default_schedule, fit_seeds_with_loss, fit_with_loss


def ce_loss(z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The student's one loss: cross-entropy of its logits `z` on labels `y`."""
    return {"ce": F.cross_entropy(z, y)}


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
        return fit_with_loss(ctx, model, lambda b: ce_loss(model(b.x), b.y), self.name)

    def fit_seeds(self, ctxs: list[Context]) -> list[FitResult]:
        """The runs of several seeds at once (kdbench.seed_fuse), each equal to its `fit`."""
        models = seed_fuse.seeded(ctxs, lambda c: c.make_student())
        return fit_seeds_with_loss(ctxs, models, lambda z, b: {"ce": cross_entropy_per_copy(z, b.y)}, self.name)

    def seed_fusion_unit(self, ctx: Context):
        return ctx.make_student()
