"""Fused training and inference of identical modules (docs/design.md §6, issue 8).

`Stacked` holds k copies of one architecture with every parameter and buffer stacked on a leading
axis and evaluates them as ONE batched computation (`torch.func.functional_call` under `vmap`).
`Grouped` holds the same stacked tensors but, for plain conv/dense chains (the TCN students),
evaluates them as grouped layers: the k copies' channels side by side in one convolution
(`groups=k`), dense layers as one batched matmul. vmap turns a batched convolution into a grouped
one too, but keeps the copy axis outside the channels, so every elementwise op, pooling and bias
add around it runs on strided tensors and the fused n = 4 students trained slower than one after
another; `stack()` picks `Grouped` whenever the architecture allows it.
`Single` wraps one plain module with the same calling convention (outputs carry a leading axis of
size 1), so a method writes its losses once and runs them either fused or one module at a time.
Adam keeps its state per parameter element, so training the stack equals training the copies one
after another up to float reassociation, provided the loss is the SUM of the per-copy losses.

Inputs: every copy sees the same x (B, ...), or (`batched_input`) copy i sees x[i // share] of
x (k / share, B, ...): `share` consecutive copies read one input (seed fusion of TCN: the n students
of one seed read that seed's batch; `kdbench.seed_fuse`).
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.func import functional_call, vmap

from .models.protocol import StagedNet


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

    `batched_input=False`: every copy sees the same input x; True: copy i sees x[i // share]
    (x has k / share entries on its leading axis)."""

    def __init__(self, modules: Sequence[nn.Module], batched_input: bool = False, share: int = 1):
        super().__init__()
        modules = list(modules)
        if not modules:
            raise ValueError("Stacked needs at least one module")
        if len({structure_key(m) for m in modules}) != 1:
            raise ValueError("Stacked needs modules of one architecture")
        if share < 1 or len(modules) % share or (share > 1 and not batched_input):
            raise ValueError(f"share={share} needs batched inputs and must divide the {len(modules)} copies")
        self.k = len(modules)
        self.batched_input = batched_input
        self.share = share
        self.inputs = self.k // share if batched_input else 1  # distinct inputs per call
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
        if self.share > 1:  # copy i reads input i // share
            x = x.repeat_interleave(self.share, dim=0)
        return vmap(one, in_dims=(0, 0, in_x), randomness="different")(params, buffers, x)

    def member_tensors(self, i: int) -> dict[str, Tensor]:
        """Parameters and buffers of copy i, detached clones, by the original module's names."""
        return {n: getattr(self, _flat(n))[i].detach().clone() for n in self._pnames + self._bnames}

    def unstack_into(self, modules: Sequence[nn.Module]) -> None:
        for i, m in enumerate(modules):
            load_tensors(m, self.member_tensors(i))


_ELEMENTWISE = (nn.Identity, nn.ReLU, nn.LeakyReLU, nn.Dropout)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
_CONVS = (nn.Conv1d, nn.Conv2d)
# layouts of the activation between layers: "shared" (B, g*C, ...) g inputs side by side, input j
# read by the copies [j*k/g, (j+1)*k/g) (g = 1: one tensor every copy sees; per-copy inputs arrive
# in this layout too); "grouped" (B, k*C, *spatial) copy i owns channels [i*C, (i+1)*C); "stacked" (k, B, F)


def _chain(module: nn.Module) -> list[nn.Module] | None:
    """The leaf layers `module` runs in order, when its forward is a plain chain of them."""
    if isinstance(module, nn.Sequential):
        parts: list[nn.Module] = list(module)
    elif isinstance(module, StagedNet):
        parts = [module.stem, module.body, module.neck, module.classifier]
    else:
        return [module] if not list(module.children()) else None
    out: list[nn.Module] = []
    for part in parts:
        sub = _chain(part)
        if sub is None:
            return None
        out += sub
    return out


def _next_layout(layer: nn.Module, layout: str, own_inputs: bool = False) -> str | None:
    """The layout after `layer`, or None when the grouped form cannot run it (`own_inputs`: every
    copy has an input of its own, so a "shared" activation is not shared between copies)."""
    if isinstance(layer, nn.Dropout) and layout == "shared" and not own_inputs:
        return None  # one mask for every copy; each copy alone would draw its own
    if isinstance(layer, _ELEMENTWISE):
        return layout
    if isinstance(layer, _POOLS):
        return layout if layout != "stacked" else None
    if isinstance(layer, _CONVS):
        ok = layer.groups == 1 and layer.padding_mode == "zeros" and layout != "stacked"
        return "grouped" if ok else None
    if isinstance(layer, nn.Flatten):
        ok = layer.start_dim == 1 and layer.end_dim == -1 and layout != "stacked"
        return {"grouped": "stacked", "shared": "shared"}[layout] if ok else None
    if isinstance(layer, nn.Linear):
        return "stacked" if layout != "grouped" else None
    return None


def grouped_plan(module: nn.Module, batched_input: bool = False, share: int = 1) -> list[tuple[nn.Module, str]] | None:
    """The layers `Grouped` would run for copies of `module`, each with the layout of its input
    (the last layer's output layout follows from it), or None if it cannot. Batched inputs enter
    in the "shared" layout, side by side along the channels."""
    chain = _chain(module)
    if chain is None or any(list(m.buffers()) for m in chain):
        return None
    own = batched_input and share == 1
    plan, layout = [], "shared"
    for layer in chain:
        plan.append((layer, layout))
        out = _next_layout(layer, layout, own)
        if out is None:
            return None
        layout = out
    return plan if layout != "shared" else None


class Grouped(Stacked):
    """`Stacked` evaluated as grouped layers (see module doc); same parameters, names and results
    up to float reassociation. Build it with `stack()`, which falls back to vmap when it cannot."""

    def __init__(self, modules: Sequence[nn.Module], batched_input: bool = False, share: int = 1):
        super().__init__(modules, batched_input, share)
        base: nn.Module = self._base  # type: ignore[assignment]  # the stateless skeleton, on meta
        plan = grouped_plan(base, batched_input, share)
        if plan is None:
            raise ValueError(f"{type(base).__name__} is not a plain conv/dense chain; use Stacked")
        names = {id(m): n for n, m in base.named_modules()}
        # (layer: its hyper-parameters, its name: where its stacked tensors are, its input layout)
        self._layers = [(layer, names[id(layer)], layout) for layer, layout in plan]
        self._out_layout = _next_layout(*plan[-1], batched_input and share == 1)
        # follow the copies' memory format: channels-last convolutions are much faster on CPU
        self.channels_last = any(p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
                                 for p in list(modules)[0].parameters())

    def forward(self, x: Tensor, *, frozen: bool = False, bn_train: bool | None = None) -> Tensor:
        training = self.training if bn_train is None else bn_train
        k, g = self.k, self.inputs
        if self.batched_input:
            x = self._side_by_side(x)
        elif self.channels_last and x.dim() == 4 and x.shape[1] == 1 and x.is_contiguous():
            # one channel: the same memory read as channels-last, so the first convolution's output
            # is channels-last too instead of switching layouts between the first and second conv
            x = x.as_strided(x.shape, (x.shape[2] * x.shape[3], 1, x.shape[3], 1))
        h = x
        for layer, name, layout in self._layers:
            if isinstance(layer, _CONVS + (nn.Linear,)):
                w = getattr(self, _flat(f"{name}.weight" if name else "weight"))
                b = getattr(self, _flat(f"{name}.bias" if name else "bias"), None) if layer.bias is not None else None
                if frozen:
                    w, b = w.detach(), (b.detach() if b is not None else None)
            if isinstance(layer, _CONVS):
                weight = w.reshape(k * w.shape[1], *w.shape[2:])
                if self.channels_last and weight.dim() == 4:
                    weight = weight.contiguous(memory_format=torch.channels_last)
                conv = F.conv2d if isinstance(layer, nn.Conv2d) else F.conv1d
                h = conv(h, weight, b.reshape(-1) if b is not None else None, layer.stride, layer.padding, layer.dilation,
                         g if layout == "shared" else k)
            elif isinstance(layer, nn.Linear):
                if layout == "shared" and g == 1:  # one matmul against all copies' weights, then split
                    h = F.linear(h, w.reshape(-1, w.shape[-1]), b.reshape(-1) if b is not None else None)
                    h = h.view(h.shape[0], k, -1).transpose(0, 1)
                elif layout == "shared":  # input j against the weights of the copies that read it
                    hj = h.reshape(h.shape[0], g, -1).transpose(0, 1)  # (g, B, F)
                    wj = w.reshape(g, -1, w.shape[-1])  # (g, share * out, F)
                    h = torch.bmm(hj, wj.transpose(1, 2)) if b is None else torch.baddbmm(b.reshape(g, 1, -1), hj, wj.transpose(1, 2))
                    h = h.view(g, h.shape[1], self.share, -1).transpose(1, 2).reshape(k, h.shape[1], -1)
                elif b is not None:
                    h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
                else:
                    h = torch.bmm(h, w.transpose(1, 2))
            elif isinstance(layer, nn.Flatten) and layout == "grouped":
                h = h.reshape(h.shape[0], k, -1).transpose(0, 1)
            elif isinstance(layer, nn.Dropout):
                h = F.dropout(h, layer.p, training, layer.inplace)
            else:
                h = layer(h)
        if self._out_layout == "grouped":  # (B, k*C, ...) -> (k, B, C, ...)
            h = h.reshape(h.shape[0], k, -1, *h.shape[2:]).transpose(0, 1)
        return h

    def _side_by_side(self, x: Tensor) -> Tensor:
        """Per-copy inputs (g, B, C, ...) as one (B, g*C, ...) tensor, input j in channels
        [j*C, (j+1)*C) (channels-last where the copies' convolutions are)."""
        g, b = x.shape[0], x.shape[1]
        if x.dim() == 5 and self.channels_last:  # (g, B, C, H, W) -> memory (B, H, W, g, C)
            h = x.permute(1, 3, 4, 0, 2).reshape(b, x.shape[3], x.shape[4], g * x.shape[2])
            return h.permute(0, 3, 1, 2)
        return x.transpose(0, 1).reshape(b, g * x.shape[2], *x.shape[3:]) if x.dim() > 2 else x.transpose(0, 1).reshape(b, -1)


def stack(modules: Sequence[nn.Module], batched_input: bool = False, share: int = 1) -> Stacked:
    """k identical modules as one computation: `Grouped` when their architecture allows, else vmap
    (`share`: consecutive copies that read one input of a batched x, see `Stacked`)."""
    modules = list(modules)
    if modules and grouped_plan(modules[0], batched_input, share) is not None:
        return Grouped(modules, batched_input, share)
    return Stacked(modules, batched_input, share)


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
            stack([modules[j] for j in idx]) if len(idx) > 1 else Single(copy.deepcopy(modules[idx[0]])) for idx in self.members
        )
        self.n = len(modules)

    def forward(self, x: Tensor) -> Tensor:
        outs: list[Tensor | None] = [None] * self.n
        for idx, g in zip(self.members, self.groups):
            y = g(x)
            for i, j in enumerate(idx):
                outs[j] = y[i]
        return torch.cat(outs, dim=1)  # type: ignore[arg-type]
