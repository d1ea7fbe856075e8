"""`dense_view`: the dense representation (features + final classifier) of ANY module.

Zoo models provide it natively, timm models through `forward_features` + `forward_head(pre_logits=True)`,
and any other module through a hook on the input of its last `nn.Linear`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor, nn

from ..errors import KdbenchError
from .protocol import ZooModel


@dataclass
class DenseView:
    """`features(x)` -> (N, dim), `classifier(features) -> logits`; `source` says how it was obtained."""

    features: Callable[[Tensor], Tensor]
    classifier: nn.Module
    dim: int
    source: str  # "zoo" | "timm" | "hook"


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass once the dense vector is known."""


def _first_linear_in(module: nn.Module) -> nn.Linear | None:
    return module if isinstance(module, nn.Linear) else next((m for m in module.modules() if isinstance(m, nn.Linear)), None)


def _is_timm(model: nn.Module) -> bool:
    return all(callable(getattr(model, a, None)) for a in ("forward_features", "forward_head", "get_classifier"))


def timm_feature_dim(model: nn.Module) -> int:
    """Width of `forward_head(pre_logits=True)`: the classifier's input, else timm's recorded head width."""
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        return head.in_features
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def _hook_features(model: nn.Module, linear: nn.Linear) -> Callable[[Tensor], Tensor]:
    def features(x: Tensor) -> Tensor:
        captured: list[Tensor] = []

        def grab(_mod: nn.Module, args: tuple) -> None:
            captured.append(args[0])
            raise _Captured

        handle = linear.register_forward_pre_hook(grab)
        try:
            model(x)
        except _Captured:
            pass
        finally:
            handle.remove()
        if not captured:
            raise KdbenchError(f"model {type(model).__name__} never calls its last Linear layer; TCN needs it")
        return captured[0]

    return features


def dense_view(model: nn.Module) -> DenseView:
    """The dense representation of `model` (see module doc); raises KdbenchError without any Linear."""
    if isinstance(model, ZooModel):
        return DenseView(model.features, model.classifier, int(model.feature_dim), "zoo")
    if _is_timm(model):

        def features(x: Tensor) -> Tensor:
            return model.forward_head(model.forward_features(x), pre_logits=True)

        return DenseView(features, model.get_classifier(), timm_feature_dim(model), "timm")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise KdbenchError(f"model {type(model).__name__} has no dense layer; TCN needs one")
    last = linears[-1]
    return DenseView(_hook_features(model, last), last, last.in_features, "hook")
