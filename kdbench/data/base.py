"""In-memory dataset splits: the one shape every loader returns and every method consumes."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its inputs and outputs."""

    input_shape: tuple[int, ...]  # per sample: (C, H, W) for images, (L,) for token sequences
    num_classes: int
    modality: str = "image"  # "image" | "text"
    vocab_size: int | None = None  # text only: token ids are in [0, vocab_size)

    @property
    def in_channels(self) -> int:
        return self.input_shape[0]

    @property
    def input_size(self) -> int:
        return self.input_shape[-1]


@dataclass
class Split:
    """One split held in memory: images float32 in [0, 1] (N, C, H, W); text int64 ids (N, L)."""

    x: torch.Tensor
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class Splits:
    """train / val / test of one dataset. Val is carved from train with a recorded seed; test is
    only ever used for the final evaluation."""

    name: str
    train: Split
    val: Split
    test: Split
    spec: DataSpec
    info: dict[str, Any] = field(default_factory=dict)  # source, root, val_fraction, split_seed, sizes, deviations

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def to(self, device: Any) -> "Splits":
        """All three splits on `device` (the same object on CPU: no copy)."""
        if torch.device(device).type == "cpu":
            return self
        move = lambda s: Split(s.x.to(device), s.y.to(device))  # noqa: E731
        return dataclasses.replace(self, train=move(self.train), val=move(self.val), test=move(self.test))
