"""CIFAR ResNets (He et al. 2016, 6n+2 layers, BasicBlock, 16/32/64 channels).

Two shortcut types where a stage changes shape: `resnet<d>` uses option A (subsample and zero-pad,
no parameters), which the widely shared CIFAR-10 checkpoints need; `resnet<d>b` uses option B
(1x1 conv + BatchNorm, 2,752 more parameters at every depth), the nets of TAKD and RepDistiller.
Parameter names follow those checkpoints (conv1, bn1, layer1..3, linear), so they load with
`load_weights`; `classifier` is an alias of `linear`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from ..data.base import DataSpec
from .protocol import ZooModel, make_normalize, require_image
from .zoo import CIFAR_SPEC, register_model

DEPTHS = (8, 14, 20, 26, 32, 44, 56, 110)
WIDTHS = (16, 32, 64)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the new channels equally on both sides (no params)."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.pad = extra_channels // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


def projection_shortcut(in_planes: int, planes: int, stride: int) -> nn.Sequential:
    """Option-B shortcut: 1x1 strided conv + BatchNorm."""
    return nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))


Shortcut = Literal["A", "B"]


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: Shortcut = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        changes = stride != 1 or in_planes != planes
        self.shortcut: nn.Module = nn.Identity()
        if changes:
            self.shortcut = ZeroPadShortcut(planes - in_planes) if shortcut == "A" else projection_shortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(ZooModel):
    """ResNet-(6n+2) for small images; `feature_map` = layer3 output, `features` = its global average."""

    def __init__(self, depth: int, in_channels: int, num_classes: int, normalize: str | None = None, shortcut: Shortcut = "A"):
        super().__init__()
        n = (depth - 2) // 6
        self.shortcut_type = shortcut
        self.normalize = make_normalize(normalize, in_channels)
        self.conv1 = nn.Conv2d(in_channels, WIDTHS[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        in_planes = WIDTHS[0]
        stages = []
        for i, planes in enumerate(WIDTHS):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(in_planes, num_classes)
        self.feature_dim = in_planes
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @property
    def classifier(self) -> nn.Module:  # type: ignore[override]
        return self.linear

    def __setattr__(self, name: str, value: Any) -> None:
        # assigning `classifier` replaces `linear`, keeping checkpoint names stable
        super().__setattr__("linear" if name == "classifier" else name, value)

    def feature_map(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        return self.layer3(self.layer2(self.layer1(out)))

    def features(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.feature_map(x), 1).flatten(1)


def cifar_resnet(depth: int, spec: DataSpec, normalize: str | None = None, pretrained: str | Path | None = None,
                 shortcut: Shortcut = "A") -> CifarResNet:
    """Build resnet<depth>; `pretrained` loads a local checkpoint strictly (see `load_weights`)."""
    c, _, _ = require_image(spec, f"resnet{depth}")
    model = CifarResNet(depth, c, spec.num_classes, normalize, shortcut)
    if pretrained is not None:
        from .weights import load_weights

        load_weights(model, pretrained)
    return model


SHORTCUT_NAMES: dict[Shortcut, tuple[str, str]] = {"A": ("", "option-A (zero-padding) shortcuts"),
                                                   "B": ("b", "option-B (1x1 conv + BN) shortcuts")}


def _register(depth: int, shortcut: Shortcut) -> None:
    suffix, what = SHORTCUT_NAMES[shortcut]

    def factory(spec: DataSpec, normalize: str | None = None, pretrained: str | Path | None = None) -> CifarResNet:
        return cifar_resnet(depth, spec, normalize, pretrained, shortcut)

    factory.__doc__ = f"CIFAR ResNet-{depth} ({(depth - 2) // 6} BasicBlocks per stage, 16/32/64, {what})"
    factory.__name__ = f"resnet{depth}{suffix}"
    register_model(factory.__name__, default_spec=CIFAR_SPEC)(factory)


for _depth in DEPTHS:
    for _shortcut in SHORTCUT_NAMES:
        _register(_depth, _shortcut)
