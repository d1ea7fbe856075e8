"""The model registry: name -> factory `fn(spec, **kw) -> nn.Module`, plus creation and listing."""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from torch import nn

from ..data.base import DataSpec
from ..errors import KdbenchError
from ..registry import Registry

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model", plugins="kdbench.models")  # + installed model plugins
TIMM_PREFIX = "timm/"

# The spec a factory is shown with in `list_models` when it registers none of its own.
DEFAULT_SPECS: dict[str, DataSpec] = {
    "image": DataSpec((1, 28, 28), 10, "image"),
    "text": DataSpec((500,), 2, "text", vocab_size=5000),
}
CIFAR_SPEC = DataSpec((3, 32, 32), 10, "image")


def register_model(
    name: str, *, modality: str = "image", default_spec: DataSpec | None = None
) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register `fn(spec: DataSpec, **options) -> nn.Module` as model `name` (a student or a
    teacher: `--student NAME`, `--teacher NAME`); `modality` lets `create_model` refuse a mismatched
    dataset early. Any module works: its dense representation is read at its last `nn.Linear`
    (`kdbench.models.dense_view`) unless it has the zoo's `features` / `classifier` protocol."""

    def deco(fn: ModelFactory) -> ModelFactory:
        fn.modality = modality  # type: ignore[attr-defined]
        fn.default_spec = default_spec or DEFAULT_SPECS[modality]  # type: ignore[attr-defined]
        MODELS.register(name)(fn)
        return fn

    return deco


def create_model(name: str, spec: DataSpec, **kw: Any) -> nn.Module:
    """Build a zoo model, or any timm architecture as `timm/<arch>`, for the inputs/outputs of `spec`."""
    if name.startswith(TIMM_PREFIX):
        from .timm_adapter import create_timm_model

        return create_timm_model(name[len(TIMM_PREFIX):], spec, **kw)
    factory = MODELS.get(name)
    modality = getattr(factory, "modality", None)
    if modality is not None and spec.modality != modality:
        raise KdbenchError(f"model '{name}' needs {modality} input, but the dataset is {spec.modality}")
    try:
        inspect.signature(factory).bind(spec, **kw)
    except TypeError as e:
        raise KdbenchError(f"model '{name}': bad options {sorted(kw)} ({e})") from None
    return factory(spec, **kw)


@functools.lru_cache(maxsize=None)
def _default_params(name: str) -> int | None:
    """Parameter count on the factory's default spec (every zoo model builds on CPU in well under a second;
    the meta device would be slower: its first `normal_` costs seconds)."""
    from .complexity import count_params

    factory = MODELS.get(name)
    try:
        return count_params(factory(factory.default_spec))  # type: ignore[attr-defined]
    except Exception:  # a listing must not fail because one factory cannot build its default
        return None


def list_models() -> list[dict[str, Any]]:
    """One row per registered model: name, description, params on its default spec."""
    rows = []
    for name, factory in MODELS.items():
        doc = (inspect.getdoc(factory) or "").strip().splitlines()
        spec = factory.default_spec  # type: ignore[attr-defined]
        rows.append(
            {
                "name": name,
                "description": doc[0] if doc else "",
                "default_spec": f"{spec.modality} {tuple(spec.input_shape)} K={spec.num_classes}",
                "params": _default_params(name),
            }
        )
    rows.append(
        {
            "name": f"{TIMM_PREFIX}<arch>",
            "description": "any timm architecture by name (random init; pretrained=true: timm's own loader, from the hub or pretrained_file=)",
            "default_spec": "image",
            "params": None,
        }
    )
    return rows
