"""`dense_view`: the dense representation (features + final classifier) of ANY module.

Zoo models provide it natively, timm models through `forward_features` + `forward_head(pre_logits=True)`,
and any other module through a hook on the input of its last `nn.Linear`. `ExternalModel` gives a
module from outside the zoo (a user's teacher) the zoo's protocol, torchdistill style: the dense
vector is read with a forward hook on a named layer (or by a function), the module is never edited."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

import torch
from torch import Tensor, nn

from ..errors import KdbenchError
from .protocol import ZooModel


@dataclass
class DenseView:
    """`features(x)` -> (N, dim), `classifier(features) -> logits`; `source` says how it was obtained."""

    features: Callable[[Tensor], Tensor]
    classifier: nn.Module
    dim: int
    source: str  # "zoo" | "timm" | "hook" | "layer NAME" | "function NAME"


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass once the dense vector is known."""


def _first_linear_in(module: nn.Module) -> nn.Linear | None:
    return module if isinstance(module, nn.Linear) else next((m for m in module.modules() if isinstance(m, nn.Linear)), None)


def _last_linear(model: nn.Module) -> nn.Linear | None:
    return next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)


def _is_timm(model: nn.Module) -> bool:
    return all(callable(getattr(model, a, None)) for a in ("forward_features", "forward_head", "get_classifier"))


def timm_feature_dim(model: nn.Module) -> int:
    """Width of `forward_head(pre_logits=True)`: the classifier's input, else timm's recorded head width."""
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        return head.in_features
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def capture_input(run: Callable[[Tensor], Any], layer: nn.Module, x: Tensor) -> Tensor | None:
    """The input `layer` receives while `run(x)` executes (the pass stops there), None if never called."""
    captured: list[Tensor] = []

    def grab(_mod: nn.Module, args: tuple) -> None:
        captured.append(args[0])
        raise _Captured

    handle = layer.register_forward_pre_hook(grab)
    try:
        run(x)
    except _Captured:
        pass
    finally:
        handle.remove()
    return captured[0] if captured else None


def _hook_features(model: nn.Module, linear: nn.Linear) -> Callable[[Tensor], Tensor]:
    def features(x: Tensor) -> Tensor:
        found = capture_input(model, linear, x)
        if found is None:
            raise KdbenchError(f"model {type(model).__name__} never calls its last Linear layer; TCN needs it")
        return found

    return features


def dense_view(model: nn.Module) -> DenseView:
    """The dense representation of `model` (see module doc); raises KdbenchError without any Linear."""
    if isinstance(model, ExternalModel):
        return DenseView(model.features, model.classifier, model.dim(), model.dense_source)
    if isinstance(model, ZooModel):
        return DenseView(model.features, model.classifier, int(model.feature_dim), "zoo")
    if _is_timm(model):

        def features(x: Tensor) -> Tensor:
            return model.forward_head(model.forward_features(x), pre_logits=True)

        return DenseView(features, model.get_classifier(), timm_feature_dim(model), "timm")
    last = _last_linear(model)
    if last is None:
        raise KdbenchError(f"model {type(model).__name__} has no dense layer; TCN needs one")
    return DenseView(_hook_features(model, last), last, last.in_features, "hook")


# --------------------------------------------------------------------------------------------- external modules
DenseFn = Callable[[nn.Module, Tensor], Tensor]
Dense = Union[str, DenseFn, None]


def dense_label(dense: Dense) -> str | None:
    """How a dense choice is recorded: the layer name, `fn:<qualified name>` of a function, or None (default)."""
    if dense is None or isinstance(dense, str):
        return dense
    return f"fn:{getattr(dense, '__module__', '?')}.{getattr(dense, '__qualname__', type(dense).__name__)}"


def check_dense_choice(module: nn.Module, dense: Any) -> None:
    """`dense=` must be None, a callable `dense(model, x)`, or the name of a submodule of `module`."""
    if dense is None:
        return
    if isinstance(dense, nn.Module) or not (isinstance(dense, str) or callable(dense)):
        raise KdbenchError(f"dense= must be a layer name of the teacher or a function dense(model, x), got {type(dense).__name__}")
    if isinstance(dense, str):
        names = [n for n, _ in module.named_modules() if n]
        if dense not in names:
            shown = ", ".join(names[:12]) + (f" (+{len(names) - 12} more)" if len(names) > 12 else "")
            raise KdbenchError(f"dense='{dense}' is not a layer of teacher {type(module).__name__} (layers: {shown or 'none'})")


class ExternalModel(ZooModel):
    """A module from outside the zoo with the zoo's protocol (`features`, `classifier`, `feature_map`).

    `dense`: the name of the layer whose INPUT is the dense representation (its output being the
    logits: that layer is the classifier), a function `dense(net, x) -> features` (the classifier is
    then `net`'s last Linear), or None (the zoo / timm protocol of `net`, else its last Linear).
    `norm` (e.g. `protocol.Normalize`, non-persistent buffers) runs before `net`. The state dict is
    `net`'s own, key for key, so checkpoints of `net` load strictly into the wrapper and back."""

    def __init__(self, net: nn.Module, dense: Dense = None, norm: nn.Module | None = None):
        super().__init__()
        check_dense_choice(net, dense)
        self.net = net
        self.norm = norm if norm is not None else nn.Identity()
        self.dense = dense
        self.feature_dim = self._known_dim()

    # -- the protocol ----------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.norm(x))

    def features(self, x: Tensor) -> Tensor:
        z = self.norm(x)
        if self.dense is None:
            return dense_view(self.net).features(z)
        if not isinstance(self.dense, str):
            return self.dense(self.net, z)
        found = capture_input(self.net, self.classifier, z)
        if found is None:
            raise KdbenchError(f"teacher {type(self.net).__name__} never calls its layer '{self.dense}' (dense=)")
        return found

    @property
    def classifier(self) -> nn.Module:  # a property, not a submodule: the state dict stays `net`'s
        if isinstance(self.dense, str):
            return self.net.get_submodule(self.dense)
        if self.dense is None:
            return dense_view(self.net).classifier
        head = _last_linear(self.net)
        if head is None:
            raise KdbenchError(f"teacher {type(self.net).__name__} has no Linear layer to serve as the head of dense={dense_label(self.dense)}")
        return head

    def feature_map(self, x: Tensor) -> Tensor:
        inner = getattr(self.net, "feature_map", None)
        if not callable(inner):
            raise KdbenchError(f"teacher {type(self.net).__name__} has no feature_map(x) (a conv feature map is needed here)")
        return inner(self.norm(x))

    @property
    def dense_source(self) -> str:
        if self.dense is None:
            return dense_view(self.net).source
        return f"layer {self.dense}" if isinstance(self.dense, str) else f"function {dense_label(self.dense)}"

    def dim(self) -> int:
        if not self.feature_dim:
            raise KdbenchError("the dense width of this teacher is not known yet (check_dense has not run)")
        return int(self.feature_dim)

    def _known_dim(self) -> int:
        """The dense width when the layout tells it (a named Linear, the zoo / timm protocol), else 0."""
        if self.dense is None:
            try:
                return dense_view(self.net).dim
            except KdbenchError:
                return 0
        layer = self.classifier if isinstance(self.dense, str) else None
        return int(layer.in_features) if isinstance(layer, nn.Linear) else 0

    # -- the state dict is `net`'s ---------------------------------------------------------------
    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        out = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        inner = f"{prefix}net."
        for key in [k for k in out if k.startswith(inner)]:
            out[prefix + key[len(inner):]] = out.pop(key)
        return out

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            state_dict[f"{prefix}net.{key[len(prefix):]}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args)


def unwrapped(model: nn.Module) -> nn.Module:
    """The user's module inside an `ExternalModel`, else `model` itself."""
    return model.net if isinstance(model, ExternalModel) else model


def check_dense(model: nn.Module, x: Tensor) -> int:
    """Run one small batch (eval mode) through an external model and return its dense width, after
    checking what TCN and KD rely on: the features are vectors (N, D) and the classifier applied to
    them gives the model's own output. Anything else is one clear KdbenchError, before any training."""
    if not isinstance(model, ExternalModel):
        return dense_view(model).dim
    what = f"teacher {type(model.net).__name__} (dense={dense_label(model.dense) or 'default'})"
    with torch.inference_mode():
        out = model(x)
        feats = model.features(x)
        if not isinstance(feats, Tensor) or feats.ndim != 2 or feats.shape[0] != x.shape[0]:
            shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
            raise KdbenchError(f"{what}: the dense representation must be a (N, D) batch of vectors, got {shape}; "
                               "name the layer whose input is the flat vector")
        try:
            logits = model.classifier(feats)
        except RuntimeError as e:
            raise KdbenchError(f"{what}: its classifier does not take the dense vectors ({str(e).splitlines()[0]})") from None
    if not isinstance(out, Tensor) or logits.shape != out.shape or not torch.allclose(logits.float(), out.float(), rtol=1e-3, atol=1e-4):
        raise KdbenchError(f"{what}: the classifier applied to the dense representation does not give the model's "
                           "output; dense= must name the last layer (the one that outputs the logits)")
    model.feature_dim = int(feats.shape[1])
    return model.feature_dim
