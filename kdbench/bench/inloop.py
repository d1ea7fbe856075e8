"""The teacher-in-the-loop baseline: Targets whose rows run the teacher when indexed, so a method's
code runs unchanged while every training batch pays a teacher forward pass."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..data.base import Splits
from ..method import Targets


class TeacherRows:
    """Teacher outputs on the rows of `x`, computed when indexed: `rows[idx]` runs `fn(x[idx])` under
    `torch.inference_mode()` (the teacher-in-the-loop baseline, with the method code unchanged).

    `rows[:, cols]` (no row selection) is kept lazy: it returns rows whose outputs are then
    column-indexed with `cols`, so `feats[:, cols][idx]` == `fn(x[idx])[:, cols]`."""

    def __init__(self, fn: Callable[[Tensor], Tensor], x: Tensor, width: int, cols: tuple = ()):
        self._fn, self._x, self._width, self._cols = fn, x, width, cols

    @property
    def device(self) -> torch.device:
        return self._x.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def shape(self) -> torch.Size:
        probe = torch.zeros(1, self._width, device=self._x.device)
        if self._cols:
            probe = probe[(slice(None), *self._cols)]
        return torch.Size((len(self), *probe.shape[1:]))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return int(self._x.shape[0])

    def __getitem__(self, key: Any) -> Any:
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(rows, slice) and rows == slice(None) and rest:
            if self._cols:
                raise NotImplementedError("TeacherRows supports one column selection")
            return TeacherRows(self._fn, self._x, self._width, tuple(rest))
        with torch.inference_mode():
            out = self._fn(self._x[rows])
        for cols in (self._cols, rest):
            if cols:
                out = out[(slice(None), *cols)]
        return out.clone() if out.is_inference() else out  # a plain tensor, like a cached target


def teacher_in_loop_targets(teacher: nn.Module, data: Splits) -> Callable[[str], Targets]:
    """A Context `targets` that runs the teacher per batch on the train split; other splits (val,
    used whole once per run) are computed once, eagerly, on first use."""
    from ..engine import predict
    from ..models import dense_view

    view = dense_view(teacher)
    logits_fn = lambda v: view.classifier(view.features(v))  # noqa: E731
    eager: dict[str, Targets] = {}

    def targets(split: str) -> Targets:
        x = getattr(data, split).x
        if split == "train":
            with torch.inference_mode():
                k = logits_fn(x[:1]).shape[1]
            return Targets(logits=TeacherRows(logits_fn, x, k), features=TeacherRows(view.features, x, view.dim))  # type: ignore[arg-type]
        if split not in eager:
            feats = predict(view.features, x)
            eager[split] = Targets(logits=predict(view.classifier, feats), features=feats)
        return eager[split]

    return targets
