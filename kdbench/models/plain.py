"""TAKD's plain CNNs (Mirzadeh et al. 2020): Conv3x3(pad 1)+BN+ReLU, MaxPool 2x2, dense layers.

Widths are the paper's CIFAR-10 ones; input channels, size and class count come from the spec.
Dense layers other than the last are followed by ReLU (as in the official ConvNetMaker)."""
from __future__ import annotations

from torch import nn

from ..data.base import DataSpec
from .paper import vgg_body
from .protocol import StagedNet, check_positive, make_normalize, pool_out, require_image
from .zoo import CIFAR_SPEC, register_model

M = "M"
# name -> (conv/pool layout, hidden dense widths); the final Linear(.., K) is implied
PLAIN_CNNS: dict[str, tuple[tuple[int | str, ...], tuple[int, ...]]] = {
    "plain2": ((16, M, 16, M), ()),
    "plain4": ((16, 16, M, 32, 32, M), ()),
    "plain6": ((16, 16, M, 32, 32, M, 64, 64, M), ()),
    "plain8": ((16, 16, M, 32, 32, M, 64, 64, M, 128, 128, M), (64,)),
    "plain10": ((32, 32, M, 64, 64, M, 128, 128, M, 256, 256, 256, 256, M), (128,)),
}


def build_plain(name: str, spec: DataSpec, normalize: str | None = None) -> StagedNet:
    """A plain CNN from its layout; `feature_map` is the last conv activation, before the last pool."""
    layout, hidden = PLAIN_CNNS[name]
    c, h, w = require_image(spec, name)
    for item in layout:
        if item == M:
            h, w = pool_out(h, 2), pool_out(w, 2)
    check_positive(name, spec, h, w)
    trailing_pool = layout[-1] == M
    body, ch = vgg_body(c, layout[:-1] if trailing_pool else layout, ceil_pool=False)  # TAKD: int(h / 2)
    neck_layers: list[nn.Module] = ([nn.MaxPool2d(2)] if trailing_pool else []) + [nn.Flatten()]
    width = ch * h * w
    for units in hidden:
        neck_layers += [nn.Linear(width, units), nn.ReLU()]
        width = units
    return StagedNet(make_normalize(normalize, c), body, nn.Sequential(*neck_layers), nn.Linear(width, spec.num_classes), width)


def _register(name: str) -> None:
    def factory(spec: DataSpec, normalize: str | None = None) -> StagedNet:
        return build_plain(name, spec, normalize)

    layout, hidden = PLAIN_CNNS[name]
    convs = [str(i) for i in layout]
    factory.__doc__ = f"TAKD plain CNN: {' '.join(convs)} -> FC {' '.join(map(str, hidden + ('K',)))}"
    factory.__name__ = name.replace("-", "_")
    register_model(name, default_spec=CIFAR_SPEC)(factory)


for _name in PLAIN_CNNS:
    _register(_name)
