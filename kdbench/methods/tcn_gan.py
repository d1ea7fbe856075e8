"""TCN's `gan` mode (kdbench/methods/tcn.py): the official code's discriminator D_j, its losses and
the three steps per batch (D on real, D on fake, G with D frozen), and D's metrics at the end."""
from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from kdbench.engine import Step, predict
from kdbench.method import Context
from kdbench.tcn_fuse import load_tensors

from .tcn_parts import TCNPredictor, Trained, mse_per_student


class Discriminator(nn.Module):
    """D_j of the official code: Dense64 -> LReLU(0.2) -> [Dense 128, 256, 512, 1024 -> BN -> LReLU]
    -> heads `valid` (a logit; sigmoid is applied in the loss) and `recon` (chunk width).
    BatchNorm in Keras' convention (`momentum` weights the old moving average) and Keras' glorot
    uniform / zero-bias initialisation of the Dense layers; the Dense layers before a BN carry no
    bias (the same function: BN subtracts it again)."""

    def __init__(self, width: int, bn_momentum: float = 0.99, bn_eps: float = 1e-3):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(width, 64), nn.LeakyReLU(0.2)]
        prev = 64
        for h in (128, 256, 512, 1024):
            # no bias before BN: BN cancels it, so its exact gradient is 0 (under Adam, float noise
            # in that zero gradient would move it by ~lr per step and make runs differ bitwise)
            layers += [nn.Linear(prev, h, bias=False), nn.BatchNorm1d(h, momentum=1.0 - bn_momentum, eps=bn_eps), nn.LeakyReLU(0.2)]
            prev = h
        self.trunk = nn.Sequential(*layers)
        self.valid = nn.Linear(prev, 1)
        self.recon = nn.Linear(prev, width)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(t)
        return self.valid(h), self.recon(h)


def bce_per_student(logits: Tensor, target: float) -> Tensor:
    """(k, B, 1) valid logits -> (k,): each student's mean BCE against a constant label."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction="none").flatten(1).mean(1)


def d_loss(valid_logit: Tensor, recon: Tensor, t: Tensor, real: bool) -> dict[str, Tensor]:
    """D step: BCE(valid, 1 if real else 0) + MSE(recon, t); summed over students (exact when fused)."""
    return {"bce": bce_per_student(valid_logit, 1.0 if real else 0.0).sum(), "mse": mse_per_student(recon, t).sum()}


def g_loss(valid_logit: Tensor, recon: Tensor, out: Tensor, t: Tensor, variant: str, lam: float) -> dict[str, Tensor]:
    """G step with D frozen. code-faithful: BCE(valid(S), 1) + MSE(recon(S), t) (S never regressed
    on t directly); paper-intent: BCE(valid(S), 1) + lam * MSE(S, t)."""
    adv = bce_per_student(valid_logit, 1.0).sum()
    if variant == "paper-intent":
        return {"bce": adv, "mse": lam * mse_per_student(out, t).sum()}
    return {"bce": adv, "mse": mse_per_student(recon, t).sum()}


def gan_steps(s: nn.Module, d: nn.Module, opt_s: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
              target: Callable[[Any], Tensor], variant: str, lam: float, g_step_bn: str) -> list[Step]:
    """Per batch, in order: D on real, D on fake, G with D frozen (its BN per `g_step_bn`).

    The fake batch comes from the student in inference mode without gradient (Keras' `predict`)."""

    def real(b):
        t = target(b)
        v, r = d(t)
        return d_loss(v, r, t, real=True)

    def fake(b):
        t = target(b)
        with torch.no_grad():
            f = s(b.x, bn_train=False)
        v, r = d(f)
        return d_loss(v, r, t, real=False)

    def gen(b):
        t = target(b)
        out = s(b.x)
        v, r = d(out, frozen=True, bn_train=(g_step_bn == "batch"))
        return g_loss(v, r, out, t, variant, lam)

    return [Step("d_real", opt_d, real), Step("d_fake", opt_d, fake), Step("g", opt_s, gen)]


def gan_metrics(ctx: Context, predictor: TCNPredictor, trained: dict[int, Trained], bounds, feats_val: Tensor, discs,
                metrics: dict[str, Any]) -> None:
    """Mean D valid probability on val real chunks and on student outputs (val-best states)."""
    real, fake = [], []
    x_val = ctx.split("val")[0]
    for j, ((a, b), s) in enumerate(zip(bounds, predictor.students)):
        d = copy.deepcopy(discs[j])
        load_tensors(d, trained[j].best_d)
        d.eval()
        with torch.inference_mode():
            real.append(float(torch.sigmoid(predict(lambda t: d(t)[0], feats_val[:, a:b])).mean()))
            fake.append(float(torch.sigmoid(predict(lambda t: d(t)[0], predict(s, x_val))).mean()))
    metrics.update({"d_valid_real": float(np.mean(real)), "d_valid_fake": float(np.mean(fake)),
                    "d_valid_real_per_student": real, "d_valid_fake_per_student": fake})
