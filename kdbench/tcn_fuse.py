"""Fused training and inference of identical modules (DESIGN.md §6, issue 8).

`Stacked` holds k copies of one architecture with every parameter and buffer stacked on a leading
axis and evaluates them as ONE batched computation (`torch.func.functional_call` under `vmap`).
`Single` wraps one plain module with the same calling convention (outputs carry a leading axis of
size 1), so a method writes its losses once and runs them either fused or one module at a time.
Adam keeps its state per parameter element, so training the stack equals training the copies one
after another up to float reassociation, provided the loss is the SUM of the per-copy losses.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap


def structure_key(module: nn.Module) -> tuple:
    """Modules with equal keys have the same architecture and can be stacked."""
    shapes = tuple((n, tuple(t.shape), t.dtype) for n, t in _named_tensors(module))
    return (repr(module), shapes)


def _named_tensors(module: nn.Module) -> list[tuple[str, Tensor]]:
    return list(module.named_parameters()) + list(module.named_buffers())


def tensors_of(module: nn.Module) -> dict[str, Tensor]:
    """Detached copies of all parameters and buffers (non-persistent ones included), by name."""
    return {n: t.detach().clone() for n, t in _named_tensors(module)}


@torch.no_grad()
def load_tensors(module: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Copy `tensors` (from `tensors_of` or `Stacked.member_tensors`) into `module` in place."""
    for n, t in _named_tensors(module):
        t.copy_(tensors[n])


def _flat(name: str) -> str:
    return name.replace(".", "__")


class Single(nn.Module):
    """One module behind the `Stacked` interface: leading axis of size 1 on inputs (when
    `batched_input`) and outputs. `frozen` runs it with detached parameters (no gradient reaches
    them); `bn_train` overrides train/eval mode for this call only."""

    def __init__(self, module: nn.Module, batched_input: bool = False):
        super().__init__()
        self.module = module
        self.batched_input = batched_input
        self.k = 1

    def forward(self, x: Tensor, *, frozen: bool = False, bn_train: bool | None = None) -> Any:
        m = self.module
        if self.batched_input:
            x = x[0]
        was = m.training
        m.train(self.training if bn_train is None else bn_train)
        try:
            if frozen:
                out = functional_call(m, {n: p.detach() for n, p in m.named_parameters()}, (x,), strict=False)
            else:
                out = m(x)
        finally:
            m.train(was)
        return tuple(t.unsqueeze(0) for t in out) if isinstance(out, tuple) else out.unsqueeze(0)

    def member_tensors(self, i: int) -> dict[str, Tensor]:
        assert i == 0
        return tensors_of(self.module)

    def unstack_into(self, modules: Sequence[nn.Module]) -> None:
        load_tensors(modules[0], tensors_of(self.module))


class Stacked(nn.Module):
    """k modules of one architecture as one batched computation (see module doc).

    `batched_input=False`: every copy sees the same input x; True: copy i sees x[i]."""

    def __init__(self, modules: Sequence[nn.Module], batched_input: bool = False):
        super().__init__()
        modules = list(modules)
        if not modules:
            raise ValueError("Stacked needs at least one module")
        if len({structure_key(m) for m in modules}) != 1:
            raise ValueError("Stacked needs modules of one architecture")
        self.k = len(modules)
        self.batched_input = batched_input
        first = modules[0]
        self._pnames = [n for n, _ in first.named_parameters()]
        self._bnames = [n for n, _ in first.named_buffers()]
        for n in self._pnames:
            stacked = torch.stack([dict(m.named_parameters())[n].detach() for m in modules]).clone()
            self.register_parameter(_flat(n), nn.Parameter(stacked))
        for n in self._bnames:
            self.register_buffer(_flat(n), torch.stack([dict(m.named_buffers())[n].detach() for m in modules]).clone())
        # the skeleton functional_call runs; kept out of the module tree (no state, on the meta device)
        object.__setattr__(self, "_base", copy.deepcopy(first).to("meta"))

    def forward(self, x: Tensor, *, frozen: bool = False, bn_train: bool | None = None) -> Any:
        base: nn.Module = self._base  # type: ignore[assignment]
        base.train(self.training if bn_train is None else bn_train)
        params = {n: getattr(self, _flat(n)) for n in self._pnames}
        if frozen:
            params = {n: p.detach() for n, p in params.items()}
        buffers = {n: getattr(self, _flat(n)) for n in self._bnames}

        def one(p: dict[str, Tensor], b: dict[str, Tensor], xi: Tensor) -> Any:
            return functional_call(base, (p, b), (xi,))

        in_x = 0 if self.batched_input else None
        return vmap(one, in_dims=(0, 0, in_x), randomness="different")(params, buffers, x)

    def member_tensors(self, i: int) -> dict[str, Tensor]:
        """Parameters and buffers of copy i, detached clones, by the original module's names."""
        return {n: getattr(self, _flat(n))[i].detach().clone() for n in self._pnames + self._bnames}

    def unstack_into(self, modules: Sequence[nn.Module]) -> None:
        for i, m in enumerate(modules):
            load_tensors(m, self.member_tensors(i))


class FusedConcat(nn.Module):
    """Concatenation of the outputs of `modules` (in the given order) along dim 1, with identical
    modules evaluated as one `Stacked` computation each: TCN's "fused" inference."""

    def __init__(self, modules: Sequence[nn.Module]):
        super().__init__()
        groups: dict[tuple, list[int]] = {}
        for j, m in enumerate(modules):
            groups.setdefault(structure_key(m), []).append(j)
        self.members = [idx for idx in groups.values()]
        self.groups = nn.ModuleList(
            Stacked([modules[j] for j in idx]) if len(idx) > 1 else Single(copy.deepcopy(modules[idx[0]])) for idx in self.members
        )
        self.n = len(modules)

    def forward(self, x: Tensor) -> Tensor:
        outs: list[Tensor | None] = [None] * self.n
        for idx, g in zip(self.members, self.groups):
            y = g(x)
            for i, j in enumerate(idx):
                outs[j] = y[i]
        return torch.cat(outs, dim=1)  # type: ignore[arg-type]
