"""`ft`: factor transfer (Kim, Park, Kwak, NeurIPS 2018).

Step 1: a paraphraser P (conv autoencoder, no BN) learns to reconstruct the frozen teacher's last
feature map (L1); its encoder output is the teacher factor. Step 2: the student and a translator Tr
on the student's last feature map train with `CE + beta * L1(n(Tr(F_s)), n(P_enc(F_t)))`, where n
flattens each sample and L2-normalises it, and L1 is the elementwise mean (as RepDistiller).

Channel reading of "3 x [Conv3x3 -> LReLU] to kC_t channels": the translator goes C_s -> C_s ->
kC_t -> kC_t (mirroring the paraphraser encoder C -> C -> kC -> kC), so both factors have kC_t
channels; all convs are 3x3, stride 1, padding 1 (spatial size kept), LeakyReLU slope 0.1, no BN.
When the two feature maps differ in spatial size the larger factor is adaptive-average-pooled to the
smaller one (recorded in the run's deviations).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable

import torch
from torch import nn
from torch.nn import functional as F

from kdbench.config import RunSpec
from kdbench.engine import Batch, Step
from kdbench.errors import KdbenchError
from kdbench.method import Context, FitResult, Method, Range, Schedule, register_method
from kdbench.models import place
from kdbench.recipes import default_schedule, lr_steps

SLOPE = 0.1


def conv_stack(channels: list[int], transpose: bool = False) -> nn.Sequential:
    """[Conv3x3 (or ConvTranspose3x3) -> LeakyReLU(0.1)] for each consecutive channel pair."""
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [conv(c_in, c_out, 3, stride=1, padding=1), nn.LeakyReLU(SLOPE)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Autoencoder on the teacher feature map: encoder C -> C -> kC -> kC, decoder back to C."""

    def __init__(self, channels: int, k: float = 0.5):
        super().__init__()
        kc = factor_channels(channels, k)
        self.encoder = conv_stack([channels, channels, kc, kc])
        self.decoder = conv_stack([kc, kc, channels, channels], transpose=True)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(f))


def translator(student_channels: int, teacher_channels: int, k: float = 0.5) -> nn.Sequential:
    kc = factor_channels(teacher_channels, k)
    return conv_stack([student_channels, student_channels, kc, kc])


def factor_channels(channels: int, k: float) -> int:
    return max(1, int(round(channels * k)))


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool the spatially larger map to the smaller one's size."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    if a.shape[-2] * a.shape[-1] > b.shape[-2] * b.shape[-1]:
        return F.adaptive_avg_pool2d(a, b.shape[-2:]), b
    return a, F.adaptive_avg_pool2d(b, a.shape[-2:])


def factor_loss(factor_s: torch.Tensor, factor_t: torch.Tensor) -> torch.Tensor:
    """L1 (elementwise mean) between per-sample L2-normalised flattened factors."""
    s = F.normalize(factor_s.flatten(1), dim=1)
    t = F.normalize(factor_t.flatten(1), dim=1)
    return F.l1_loss(s, t)


def ft_loss(student: nn.Module, student_fm: Callable[[torch.Tensor], torch.Tensor], trans: nn.Module,
            encoder: nn.Module, teacher_fmap: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
            beta: float) -> dict[str, torch.Tensor]:
    """Step 2's losses on one batch: the student's CE and beta x the factor L1 between the translator's
    factor of the student's feature map and the (frozen) paraphraser encoder's of the teacher's."""
    with torch.no_grad():
        factor_t = encoder(teacher_fmap)
    fmap = student_fm(x)
    logits = student_logits(student, fmap, x)
    factor_s, factor_t = match_spatial(trans(fmap), factor_t)
    return {"ce": F.cross_entropy(logits, y), "ft": beta * factor_loss(factor_s, factor_t)}


def recon_loss(para: nn.Module, fmap: torch.Tensor) -> dict[str, torch.Tensor]:
    """Step 1's loss: the paraphraser's L1 reconstruction of a teacher feature map."""
    return {"recon_l1": F.l1_loss(para(fmap), fmap)}


def feature_map_of(model: nn.Module, who: str) -> Callable[[torch.Tensor], torch.Tensor]:
    fm = getattr(model, "feature_map", None)
    if fm is None:
        raise KdbenchError(f"ft needs a conv {who} with feature_map(x); {type(model).__name__} has none")
    return fm


@register_method
class FT(Method):
    name = "ft"
    description = "factor transfer: paraphraser on teacher feature maps, translator on the student's, L1 on normalised factors"
    version = 2  # 2: the student trains under the shared lr steps (TAKD-family ResNet students)

    @dataclass
    class Params:
        beta: Annotated[float, Range(ge=0)] = 500.0
        k: Annotated[float, Range(gt=0, le=1)] = 0.5
        paraphraser_epochs: Annotated[int, Range(ge=1)] = 3

    @classmethod
    def schedule(cls, spec: RunSpec, params) -> Schedule:
        return default_schedule(spec)

    @classmethod
    def validate(cls, spec: RunSpec, params) -> None:
        super().validate(spec, params)
        from kdbench.data import DATASETS

        if spec.dataset in DATASETS and DATASETS.get(spec.dataset).modality != "image":
            raise KdbenchError(f"ft needs conv feature maps of images; dataset '{spec.dataset}' is text")

    def fit(self, ctx: Context) -> FitResult:
        p = self.params
        teacher = ctx.teacher.eval()
        teacher_fm = feature_map_of(teacher, "teacher")
        student = ctx.make_student()
        student_fm = feature_map_of(student, "student")
        x_train, _ = ctx.split("train")
        x_val, _ = ctx.split("val")
        student.eval()  # probe the shapes without touching BatchNorm statistics
        with torch.no_grad():
            f_t, f_s = teacher_fm(x_train[:2]), student_fm(x_train[:2])
        if f_t.ndim != 4 or f_s.ndim != 4:
            raise KdbenchError(f"ft needs 2-d feature maps (N, C, H, W); got teacher {tuple(f_t.shape)}, student {tuple(f_s.shape)}")

        para = place(Paraphraser(f_t.shape[1], p.k), ctx.device)
        para_res = train_paraphraser(ctx, para, teacher_fm, x_val, p.paraphraser_epochs)
        para.requires_grad_(False).eval()

        trans = place(translator(f_s.shape[1], f_t.shape[1], p.k), ctx.device)
        if f_t.shape[-2:] != f_s.shape[-2:]:
            ctx.deviations.append(f"ft: factor maps pooled to the smaller size (teacher {tuple(f_t.shape[-2:])}, "
                                  f"student {tuple(f_s.shape[-2:])}, adaptive average pooling)")

        def loss(b: Batch) -> dict[str, torch.Tensor]:
            return ft_loss(student, student_fm, trans, para.encoder, ctx.teacher_outputs(b).feature_map, b.x, b.y, p.beta)

        opt = ctx.optimizer(list(student.parameters()) + list(trans.parameters()))
        res = ctx.train([Step("ft", opt, loss)], {"student": student, "translator": trans},
                        evaluate=lambda: ctx.val_accuracy(student), schedulers=lr_steps([ctx], opt))
        metrics = {"best_epoch": res.best_epoch, "paraphraser_val_l1": para_res.best_score,
                   "paraphraser_epochs": p.paraphraser_epochs, "paraphraser_time_s": para_res.train_time_s,
                   "teacher_feature_map": list(f_t.shape[1:]), "student_feature_map": list(f_s.shape[1:]),
                   "factor_channels": factor_channels(f_t.shape[1], p.k)}
        return FitResult.from_train(student, res, key="student", metrics=metrics)


def student_logits(student: nn.Module, fmap: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Logits from the student's feature map without a second trunk pass when the model is a StagedNet."""
    from kdbench.models.protocol import StagedNet

    if isinstance(student, StagedNet):
        return student.classifier(student.neck(fmap))
    return student(x)


def train_paraphraser(ctx: Context, para: Paraphraser, teacher_fm, x_val: torch.Tensor, epochs: int):
    """Step 1: L1 reconstruction of frozen teacher feature maps; keep the epoch with the lowest val L1."""

    def loss(b: Batch) -> dict[str, torch.Tensor]:
        return recon_loss(para, ctx.teacher_outputs(b).feature_map)  # the teacher on this (possibly augmented) batch

    def evaluate() -> dict[str, float]:
        total, n = 0.0, 0
        for i in range(0, len(x_val), 512):
            f = teacher_fm(x_val[i : i + 512])
            total += float(F.l1_loss(para(f), f, reduction="sum"))
            n += f.numel()
        return {"val_recon_l1": total / max(n, 1)}

    opt = ctx.optimizer(para.parameters())
    res = ctx.train([Step("paraphraser", opt, loss)], {"paraphraser": para}, epochs=epochs, evaluate=evaluate,
                    score_key="val_recon_l1", higher_is_better=False, desc="ft paraphraser")
    res.restore_best({"paraphraser": para})
    return res
