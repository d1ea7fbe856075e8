"""`kd`: Hinton et al. 2015 soft-target distillation from the teacher's logits (cached; on each batch when augmented)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from torch.nn import functional as F

from kdbench.config import RunSpec
from kdbench.losses import kd_loss
from kdbench.method import Context, FitResult, Method, Range, Schedule, register_method

from .student import default_schedule, fit_with_loss


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
            z = model(b.x)
            return {"ce": (1 - p.alpha) * F.cross_entropy(z, b.y),
                    "kd": p.alpha * kd_loss(z, ctx.teacher_outputs(b).logits, p.temperature, p.reduction)}

        return fit_with_loss(ctx, model, loss, self.name)
