"""`kd`: Hinton et al. 2015 soft-target distillation from the teacher's logits (cached; on each batch when augmented)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch.nn import functional as F

from kdbench import seed_fuse
from kdbench.config import RunSpec
from kdbench.losses import kd_loss
from kdbench.method import Context, FitResult, Method, Range, Schedule, register_method
from kdbench.recipes import cross_entropy_per_copy, default_schedule, fit_seeds_with_loss, fit_with_loss


def kd_loss_per_copy(z: torch.Tensor, t: torch.Tensor, temperature: float, reduction: str) -> torch.Tensor:
    """`kd_loss` of each copy: (s, B, K) student and teacher logits -> (s,); the one KD formula."""
    return torch.stack([kd_loss(zi, ti, temperature, reduction) for zi, ti in zip(z, t)])


def hinton_loss(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor, alpha: float, temperature: float,
                reduction: str = "batchmean") -> dict[str, torch.Tensor]:
    """KD's named losses on student logits `z`, labels `y` and teacher logits `t`:
    (1 - alpha) CE and alpha T^2 KL(teacher || student)."""
    return {"ce": (1 - alpha) * F.cross_entropy(z, y), "kd": alpha * kd_loss(z, t, temperature, reduction)}


@register_method
class KD(Method):
    name = "kd"
    description = "Hinton KD: (1-alpha) CE + alpha T^2 KL(teacher || student), teacher in eval mode"

    @dataclass
    class Params:
        temperature: Annotated[float, Range(gt=0)] = 4.0
        alpha: Annotated[float, Range(ge=0, le=1)] = 0.9
        reduction: Literal["batchmean", "mean"] = "batchmean"

    @classmethod
    def schedule(cls, spec: RunSpec, params) -> Schedule:
        return default_schedule(spec)

    def fit(self, ctx: Context) -> FitResult:
        p = self.params
        model = ctx.make_student()

        def loss(b):
            return hinton_loss(model(b.x), b.y, ctx.teacher_outputs(b).logits, p.alpha, p.temperature, p.reduction)

        return fit_with_loss(ctx, model, loss, self.name)

    def fit_seeds(self, ctxs: list[Context]) -> list[FitResult]:
        """The runs of several seeds at once (kdbench.seed_fuse), each equal to its `fit`."""
        p = self.params
        models = seed_fuse.seeded(ctxs, lambda c: c.make_student())

        def loss(z, b):
            t = seed_fuse.teacher_outputs(ctxs[0], b).logits
            return {"ce": (1 - p.alpha) * cross_entropy_per_copy(z, b.y),
                    "kd": p.alpha * kd_loss_per_copy(z, t, p.temperature, p.reduction)}

        return fit_seeds_with_loss(ctxs, models, loss, self.name)

    def seed_fusion_unit(self, ctx: Context):
        return ctx.make_student()
