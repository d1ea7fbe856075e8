"""Cached teacher outputs, the one type the teacher cache (kdbench.teachers) hands to the method seam
(kdbench.method): it lives below both, so the teachers never import the method layer."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Targets:
    """Cached teacher outputs on one split (eval mode): logits (N, K) and dense features (N, D)."""

    logits: torch.Tensor
    features: torch.Tensor
