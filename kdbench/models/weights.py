"""Local weights: safetensors or plain torch files, loaded without running pickled code.

Accepts DataParallel (`module.`) / torch.compile (`_orig_mod.`) prefixes and `{'state_dict': ...}`
wrappers; any mismatch is one readable line naming the keys or the first shape that differs."""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import KdbenchError
from .protocol import module_name

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 5


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensor dict of a weights file on CPU, unwrapped and with wrapper prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise KdbenchError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise KdbenchError(f"weights file {path} is empty")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise next to our own one line
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, or pickled code refused by weights_only
        raise KdbenchError(f"cannot read weights {path}: {_reason(e, path)}") from None
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise KdbenchError(f"weights {path} hold a {type(obj).__name__}, not a state dict")
    state = {_strip(str(k)): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise KdbenchError(f"weights {path} contain no tensors (top-level keys: {', '.join(map(str, list(obj)[:_SHOWN]))})")
    return state


def _reason(e: Exception, path: Path) -> str:
    """Why a weights file could not be read, in one line (torch's refusal of pickled code is long)."""
    text = str(e).strip()
    m = re.search(r"GLOBAL ([\w.]+)", text)  # only a pickle that names a Python object is "pickled objects"
    if m:
        return (f"it holds pickled Python objects (it references {m.group(1)}), refused: kdbench loads checkpoints with "
                f"weights_only=True and never runs pickled code; save a state_dict or safetensors instead")
    kind = "safetensors" if path.suffix == ".safetensors" else "torch (weights_only)"
    if "WeightsUnpickler error" in text:  # e.g. "Unsupported operand 76": random or corrupt bytes, not objects
        detail = text.partition("WeightsUnpickler error:")[2].strip().splitlines()
        return f"not a {kind} checkpoint (corrupt or another format: {detail[0] if detail else 'unreadable pickle'})"
    first = text.splitlines()[0] if text else ""
    if not first or first.isdigit() or len(first) < 8:  # e.g. a KeyError(101) from the unpickler on a text file
        return f"not a {kind} checkpoint ({type(e).__name__}{': ' + first if first else ''})"
    return f"{first} (not a readable {kind} checkpoint)"


def _listing(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def check_keys(target: dict[str, Any], state: dict[str, torch.Tensor], where: str, ignore: Sequence[str] = ()) -> None:
    """Raise when `state` lacks keys of the model's `target` state dict or has keys it does not know
    (BatchNorm's `num_batches_tracked` may be absent from old checkpoints)."""
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked") and k not in ignore]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        parts = ([f"missing keys {_listing(missing)}"] if missing else []) + (
            [f"unexpected keys {_listing(unexpected)}"] if unexpected else []
        )
        raise KdbenchError(f"{where}: {'; '.join(parts)}")


def load_state_checked(
    model: nn.Module, state: dict[str, torch.Tensor], *, source: str = "checkpoint", drop_prefix: str | None = None
) -> list[str]:
    """Load `state` strictly; keys under `drop_prefix` whose shapes differ are dropped (kept at init).

    Buffers counting BN batches (`num_batches_tracked`) may be absent from old checkpoints."""
    target = model.state_dict()
    dropped: list[str] = []
    if drop_prefix is not None:
        for k in [k for k in state if k.startswith(drop_prefix)]:
            if k not in target or tuple(state[k].shape) != tuple(target[k].shape):
                dropped.append(k)
                del state[k]
    where = f"weights {source} do not fit {type(model).__name__}"
    check_keys(target, state, where, ignore=dropped)
    for k, v in target.items():
        if k in state and tuple(state[k].shape) != tuple(v.shape):
            raise KdbenchError(f"{where}: {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}")
    model.load_state_dict(state, strict=False)
    return dropped


def load_weights(model: nn.Module, path: str | Path, *, drop_mismatched_classifier: bool = False) -> dict[str, Any]:
    """Load a local weights file into `model` (strict), returning what was done.

    `drop_mismatched_classifier`: a final classifier whose shape differs (another class count) keeps its
    fresh initialisation instead of failing; the dropped keys are reported."""
    state = read_state_dict(path)
    prefix = None
    if drop_mismatched_classifier:
        from .dense import dense_view

        name = module_name(model, dense_view(model).classifier)
        prefix = f"{name}." if name else None
    dropped = load_state_checked(model, state, source=str(path), drop_prefix=prefix)
    return {
        "path": str(path),
        "format": "safetensors" if Path(path).suffix == ".safetensors" else "torch",
        "tensors": len(state),
        "dropped": dropped,
    }
