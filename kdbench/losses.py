"""Loss functions shared by several methods (each written once, golden-tested)."""
from __future__ import annotations

import torch
from torch.nn import functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, reduction: str = "batchmean") -> torch.Tensor:
    """Hinton's soft-target term T^2 * KL(softmax(z_t/T) || softmax(z_s/T)).

    `batchmean` averages the KL per sample (the paper's definition); `mean` divides by batch x
    classes (the TAKD official code's quirk, 1/K of the former).
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction=reduction) * temperature**2
