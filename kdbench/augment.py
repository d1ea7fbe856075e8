"""Training-batch augmentations (the RunSpec field `augment`), batched on tensors.

An augmentation is `fn(x, generator) -> x'` on a whole batch (N, C, H, W), on whatever device x is:
its random numbers come from the training loop's CPU `torch.Generator` (so a run is deterministic
on CPU, and the same seed gives the same batches on any device) and only the resulting indices move
to x's device. No per-sample Python or PIL loop. With an augmentation the teacher cannot be read
from cached targets: it runs in the loop on the augmented batch (`Context.teacher_outputs`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F

from .errors import KdbenchError
from .registry import Registry

NONE = "none"
CROP_PAD = 4  # CIFAR recipes: random crop of the 4-pixel zero-padded image

BatchFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Augmentation:
    name: str
    description: str
    fn: BatchFn | None  # None: batches are left as they are (no randomness drawn)
    modalities: tuple[str, ...] = ("image",)


AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")


def register_augmentation(name: str, description: str, modalities: tuple[str, ...] = ("image",)) -> Callable[[BatchFn], BatchFn]:
    """Decorator: register `fn(x, generator) -> x'` as the augmentation `name`."""

    def deco(fn: BatchFn) -> BatchFn:
        AUGMENTATIONS.add(name, Augmentation(name, description, fn, modalities))
        return fn

    return deco


AUGMENTATIONS.add(NONE, Augmentation(NONE, "no augmentation (cached teacher targets are read)", None, ("image", "text")))


def batch_transform(name: str) -> BatchFn | None:
    """The training loop's `transform` for augmentation `name` (None for `none`)."""
    return AUGMENTATIONS.get(name).fn


def check_augmentation(name: object, dataset: str, modality: str) -> None:
    """Plan-time validation (one clear line): the name is known and fits the dataset's modality."""
    if not isinstance(name, str):
        raise KdbenchError(f"run field 'augment' must be a name ({', '.join(AUGMENTATIONS.names())}), got {name!r}")
    entry = AUGMENTATIONS.get(name)  # unknown -> did-you-mean and the known names
    if modality not in entry.modalities:
        raise KdbenchError(f"augmentation '{name}' is for {' or '.join(entry.modalities)} data; "
                           f"dataset '{dataset}' is {modality} (use --augment none)")


@register_augmentation("crop-flip", f"random crop of the {CROP_PAD}-pixel zero-padded image + random horizontal flip "
                                    "(CIFAR recipes); the teacher runs on each augmented batch")
def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = CROP_PAD) -> torch.Tensor:
    """Per sample: an (H, W) window at a uniform offset in [0, 2*pad] of the zero-padded image,
    mirrored left-right with probability 1/2. Randoms drawn in order: row offsets, column offsets, flips."""
    if x.ndim != 4:
        raise KdbenchError(f"crop-flip needs image batches (N, C, H, W), got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = dy[:, None] + torch.arange(h)  # (N, H) rows of the padded image
    cols = dx[:, None] + torch.arange(w)  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flipped crop reads its columns backwards
    return window(F.pad(x, (pad, pad, pad, pad)), rows.to(x.device), cols.to(x.device))


def window(padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """out[i, c, r, s] = padded[i, c, rows[i, r], cols[i, s]], in one gather per axis."""
    n, c, hp, wp = padded.shape
    h, w = rows.shape[1], cols.shape[1]
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, wp))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))
