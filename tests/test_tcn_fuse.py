"""Fused students: `Grouped` (grouped layers) and `Stacked` (vmap) against the copies run one by one."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kdbench.data.base import DataSpec
from kdbench.models import create_model
from kdbench.tcn_fuse import Grouped, Stacked, grouped_plan, stack, tensors_of


def _copies(make, k: int = 3, seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [make() for _ in range(k)]


def _image_student() -> nn.Module:
    return create_model("image-student", DataSpec((2, 12, 12), 10), width=3, hidden=7, out_features=5, pool=2)


def _mnist_like_student() -> nn.Module:  # one input channel: Grouped reads it as channels-last
    return create_model("image-student", DataSpec((1, 12, 12), 10), width=2, hidden=5, out_features=4, pool=2)


def _text_like() -> nn.Module:
    return nn.Sequential(nn.Conv1d(4, 3, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(3 * 5, 6),
                         nn.LeakyReLU(0.2), nn.Dropout(0.3), nn.Linear(6, 2))


CASES = [
    ("image-student", _image_student, (8, 2, 12, 12), False),
    ("image-student channels_last", lambda: _image_student().to(memory_format=torch.channels_last), (8, 2, 12, 12), False),
    ("1-channel image-student channels_last", lambda: _mnist_like_student().to(memory_format=torch.channels_last),
     (8, 1, 12, 12), False),
    ("conv1d chain", _text_like, (8, 4, 10), False),
    ("dense chain, per-copy inputs", lambda: nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), (8, 6), True),
    ("conv chain ending in a feature map", lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), (4, 1, 6, 6), False),
]


@pytest.mark.parametrize("name,make,shape,batched", CASES, ids=[c[0] for c in CASES])
def test_grouped_equals_copies_forward_and_gradients(name, make, shape, batched):
    mods = _copies(make)
    ref = copy.deepcopy(mods)
    fused = stack(mods, batched_input=batched)
    assert isinstance(fused, Grouped), name
    fused.eval()
    torch.manual_seed(1)
    x = torch.randn(len(mods), *shape) if batched else torch.randn(*shape)
    out = fused(x)
    expected = torch.stack([m.eval()(x[i] if batched else x) for i, m in enumerate(ref)])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # the sum of per-copy losses gives every copy its own gradient
    out.pow(2).sum().backward()
    expected.pow(2).sum().backward()
    for i, m in enumerate(ref):
        for n, p in m.named_parameters():
            torch.testing.assert_close(getattr(fused, n.replace(".", "__")).grad[i], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_grouped_frozen_passes_gradient_to_input_only():
    fused = stack(_copies(_image_student))
    x = torch.randn(4, 2, 12, 12, requires_grad=True)
    fused(x, frozen=True).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in fused.parameters())


def test_grouped_keeps_stacked_names_and_member_tensors():
    mods = _copies(_image_student)
    fused = stack(mods)
    vm = Stacked(mods)
    assert dict(fused.named_parameters()).keys() == dict(vm.named_parameters()).keys()
    for i, m in enumerate(mods):
        got, want = fused.member_tensors(i), tensors_of(m)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_grouped_dropout_follows_train_mode():
    fused = stack(_copies(_text_like))
    x = torch.randn(8, 4, 10)
    fused.eval()
    torch.testing.assert_close(fused(x), fused(x))
    assert not torch.equal(fused(x, bn_train=True), fused(x, bn_train=True))


@pytest.mark.parametrize("make,why", [
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), "buffers (BatchNorm)"),
    (lambda: nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), "already grouped conv"),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.MaxPool1d(2)), "pooling after the copies split"),
    (lambda: nn.Sequential(nn.ReLU()), "no layer with parameters"),
    (lambda: nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 4)), "dropout on the input every copy shares"),
    (lambda: nn.TransformerEncoderLayer(4, 2), "not a plain chain"),
], ids=["batchnorm", "grouped-conv", "pool-on-stacked", "parameter-free", "shared-dropout", "not-a-chain"])
def test_stack_falls_back_to_vmap(make, why):
    assert grouped_plan(make()) is None, why
    assert type(stack(_copies(make, k=2))) is Stacked


def test_grouped_needs_a_plan():
    with pytest.raises(ValueError, match="plain conv/dense chain"):
        Grouped(_copies(lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), k=2))
