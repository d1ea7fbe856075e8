"""Parameter and multiply-add counts; kdbench reports `flops = 2 * macs` (fvcore counts one per MAC).

MACs are those of convolutions and matrix products (linear, matmul, bmm, einsum) only, the
convention of the papers' tables and of `torch.utils.flop_counter`: normalisation layers, pooling,
upsampling and activations count 0 (fvcore would add BatchNorm and average pooling otherwise)."""
from __future__ import annotations

import contextlib
import logging
from collections import Counter
import warnings
from typing import Iterator, Sequence

import torch
from torch import nn

from ..data.base import DataSpec

# fvcore's default handles that are not conv / matrix-product MACs: switched off
_NOT_MACS = ("aten::batch_norm", "aten::group_norm", "aten::layer_norm", "aten::instance_norm",
             "aten::upsample_nearest2d", "aten::upsample_bilinear2d", "aten::adaptive_avg_pool2d", "aten::grid_sampler")


def _zero(inputs: object, outputs: object) -> Counter[str]:
    return Counter()


def count_params(model: nn.Module) -> int:
    """All parameters (trainable or frozen), shared ones once, as the papers count them."""
    return int(sum(p.numel() for p in model.parameters()))


def _example_input(model: nn.Module, shape: DataSpec | Sequence[int] | torch.Tensor) -> torch.Tensor:
    if isinstance(shape, torch.Tensor):
        return shape
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    if isinstance(shape, DataSpec):
        dtype = torch.long if shape.modality == "text" else torch.float32
        return torch.zeros((1, *shape.input_shape), dtype=dtype, device=device)
    return torch.zeros((1, *shape), dtype=torch.float32, device=device)


@contextlib.contextmanager
def eager(model: nn.Module) -> Iterator[None]:
    """Modules compiled in place (`nn.Module.compile`, kdbench's --compile) run uncompiled inside: fvcore's
    jit tracer refuses dynamo-optimised functions. (`_compiled_call_impl` is where torch keeps them.)"""
    saved = {m: m._compiled_call_impl for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None}
    for m in saved:
        m._compiled_call_impl = None
    try:
        yield
    finally:
        for m, impl in saved.items():
            m._compiled_call_impl = impl


def count_macs(model: nn.Module, spec_or_input_shape: DataSpec | Sequence[int] | torch.Tensor) -> int:
    """Multiply-adds of one sample's forward pass in eval mode, counted by fvcore.

    `spec_or_input_shape`: a DataSpec (text specs give int64 ids), a per-sample shape (float input),
    or an explicit example batch. Only conv and matrix-product MACs count (see the module docstring)."""
    x = _example_input(model, spec_or_input_shape)
    was_training = model.training
    model.eval()
    fv_logger = logging.getLogger("fvcore")
    old_level = fv_logger.level
    fv_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad(), contextlib.ExitStack() as stack:
            warnings.simplefilter("ignore")  # fvcore's import and the jit tracer warn on every call
            from fvcore.nn import FlopCountAnalysis

            stack.enter_context(eager(model))
            analysis = FlopCountAnalysis(model, (x,))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            # a zero handle, not None: fvcore keeps counting a default handle that is set to None
            analysis.set_op_handle(**{op: _zero for op in _NOT_MACS})
            total = int(analysis.total())
    finally:
        fv_logger.setLevel(old_level)
        model.train(was_training)
    return total // max(1, int(x.shape[0]))  # an explicit batch is reported per sample
