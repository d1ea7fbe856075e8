"""`timm/<arch>`: any timm architecture wrapped into the zoo protocol.

`pretrained=true` loads weights through timm's own loader: from the hub where a network exists, or
from a local file (`pretrained_file=`); timm adapts the input channels and drops a classifier of
another class count. `pretrained_path=` loads a local file with kdbench's strict loader instead."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..data.base import DataSpec
from ..errors import KdbenchError
from .dense import timm_feature_dim
from .protocol import ZooModel, make_normalize, replace_submodule, require_image


class TimmModel(ZooModel):
    """features = forward_head(forward_features(x), pre_logits=True); classifier = get_classifier()."""

    def __init__(self, net: nn.Module, arch: str, normalize: nn.Module):
        super().__init__()
        self.arch = arch
        self.normalize = normalize
        self.net = net
        self.feature_dim = timm_feature_dim(net)

    @property
    def classifier(self) -> nn.Module:  # type: ignore[override]
        return self.net.get_classifier()

    def __setattr__(self, name: str, value: Any) -> None:
        # assigning `classifier` swaps timm's own head layer, so `net(x)` uses it too
        if name == "classifier" and "net" in self._modules:
            replace_submodule(self.net, self.net.get_classifier(), value)
        else:
            super().__setattr__(name, value)

    def feature_map(self, x: Tensor) -> Tensor:
        """timm's `forward_features`: (N, C, H, W) for CNNs, tokens (N, T, D) for transformers."""
        return self.net.forward_features(self.normalize(x))

    def features(self, x: Tensor) -> Tensor:
        return self.net.forward_head(self.feature_map(x), pre_logits=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


def create_timm_model(
    arch: str,
    spec: DataSpec,
    normalize: str | None = None,
    pretrained_path: str | Path | None = None,
    pretrained: bool = False,
    pretrained_file: str | Path | None = None,
    out_features: int | None = None,
    **timm_kwargs: Any,
) -> TimmModel:
    """`timm.create_model(arch, pretrained=..., num_classes=K, in_chans=C, **timm_kwargs)`, wrapped;
    `out_features` (a TCN student's chunk of the teacher's features) replaces K as the zoo's models do.

    Pretrained weights expect their own input statistics: with `pretrained` and no `normalize`, the
    model normalises with the mean/std of timm's pretrained config."""
    import timm

    c, _, _ = require_image(spec, f"timm/{arch}")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr('timm/' + n) for n in close)}?" if close else ""
        raise KdbenchError(f"unknown timm architecture '{arch}'{hint}")
    if pretrained_file is not None:
        if not Path(pretrained_file).is_file():
            raise KdbenchError(f"timm/{arch}: pretrained_file '{pretrained_file}' does not exist")
        pretrained, timm_kwargs["pretrained_cfg_overlay"] = True, {"file": str(pretrained_file)}
    try:
        net = timm.create_model(arch, pretrained=pretrained, num_classes=out_features or spec.num_classes, in_chans=c,
                                **timm_kwargs)
    except TypeError as e:
        raise KdbenchError(f"timm/{arch}: bad options {sorted(timm_kwargs)} ({e})") from None
    except (OSError, RuntimeError) as e:  # no network, no hub weights for this name, or a file of another net
        raise KdbenchError(f"timm/{arch}: cannot load pretrained weights ({str(e).strip().splitlines()[0][:200]})") from None
    if pretrained and normalize is None:
        stats = [tuple(net.pretrained_cfg[k]) for k in ("mean", "std")]
        if len(stats[0]) != c:  # timm folded the RGB stem into `c` channels: one averaged statistic
            stats = [(sum(v) / len(v),) for v in stats]
        normalize = ",".join("/".join(map(str, v)) for v in stats)
    if pretrained_path is not None:
        from .weights import load_weights

        load_weights(net, pretrained_path, drop_mismatched_classifier=True)
    return TimmModel(net, arch, make_normalize(normalize, c))
