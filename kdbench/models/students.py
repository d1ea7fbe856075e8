"""Parametric student families (the TCN paper gives budgets, not layers): a conv trunk + dense head.

image-student: Conv3x3(valid) w -> ReLU -> Conv3x3(valid) 2w -> ReLU [feature_map] -> MaxPool(pool)
               -> Flatten -> Linear(hidden) -> ReLU [features] -> Linear(out_features)
text-student:  Embedding(V, embed_dim) -> Conv1d(k3, same) w -> ReLU [feature_map] -> MaxPool(pool)
               -> Flatten -> Linear(hidden) -> ReLU [features] -> Linear(out_features)
The shapes mirror the paper's teachers, shrunk. `*_cost` give params and MACs in closed form so the
budget search needs no model builds (tests check them against the real counts)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..data.base import DataSpec
from .protocol import (
    StagedNet,
    TokenEmbedding,
    check_positive,
    conv_out,
    make_normalize,
    pool_out,
    require_image,
    require_text,
)
from .zoo import register_model


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int


def _image_shapes(spec: DataSpec, width: int, pool: int) -> tuple[int, int, int, int, int, int, int]:
    c, h, w = require_image(spec, "image-student")
    h1, w1 = conv_out(h, 3), conv_out(w, 3)
    h2, w2 = conv_out(h1, 3), conv_out(w1, 3)
    fh, fw = pool_out(h2, pool), pool_out(w2, pool)
    check_positive("image-student", spec, fh, fw, width)
    return c, h1, w1, h2, w2, fh, fw


def image_student_cost(spec: DataSpec, width: int, hidden: int, out_features: int, pool: int = 4) -> Cost:
    c, h1, w1, h2, w2, fh, fw = _image_shapes(spec, width, pool)
    flat = 2 * width * fh * fw
    params = (9 * c * width + width) + (18 * width * width + 2 * width) + (flat * hidden + hidden) + (hidden * out_features + out_features)
    macs = h1 * w1 * 9 * c * width + h2 * w2 * 18 * width * width + flat * hidden + hidden * out_features
    return Cost(params, macs)


@register_model("image-student")
def image_student(
    spec: DataSpec,
    width: int = 16,
    hidden: int = 64,
    out_features: int | None = None,
    pool: int = 4,
    normalize: str | None = None,
) -> StagedNet:
    """Parametric image student: convs w, 2w -> MaxPool -> dense hidden -> out_features (default K)."""
    c, _, _, _, _, fh, fw = _image_shapes(spec, width, pool)
    out = out_features or spec.num_classes
    body = nn.Sequential(nn.Conv2d(c, width, 3), nn.ReLU(), nn.Conv2d(width, 2 * width, 3), nn.ReLU())
    neck = nn.Sequential(nn.MaxPool2d(pool), nn.Flatten(), nn.Linear(2 * width * fh * fw, hidden), nn.ReLU())
    return StagedNet(make_normalize(normalize, c), body, neck, nn.Linear(hidden, out), hidden)


def text_student_cost(
    spec: DataSpec, width: int, hidden: int, out_features: int, embed_dim: int = 32, pool: int = 2, vocab_size: int | None = None
) -> Cost:
    length, vocab = require_text(spec, "text-student", vocab_size)
    flat = width * pool_out(length, pool)
    params = vocab * embed_dim + (3 * embed_dim * width + width) + (flat * hidden + hidden) + (hidden * out_features + out_features)
    macs = length * 3 * embed_dim * width + flat * hidden + hidden * out_features
    return Cost(params, macs)


@register_model("text-student", modality="text")
def text_student(
    spec: DataSpec,
    width: int = 16,
    hidden: int = 64,
    out_features: int | None = None,
    embed_dim: int = 32,
    pool: int = 2,
    vocab_size: int | None = None,
) -> StagedNet:
    """Parametric text student: Embedding -> Conv1d w -> MaxPool -> dense hidden -> out_features (default K)."""
    length, vocab = require_text(spec, "text-student", vocab_size)
    pooled = pool_out(length, pool)
    check_positive("text-student", spec, pooled, width)
    out = out_features or spec.num_classes
    body = nn.Sequential(nn.Conv1d(embed_dim, width, 3, padding=1), nn.ReLU())
    neck = nn.Sequential(nn.MaxPool1d(pool), nn.Flatten(), nn.Linear(width * pooled, hidden), nn.ReLU())
    return StagedNet(TokenEmbedding(vocab, embed_dim), body, neck, nn.Linear(hidden, out), hidden)
