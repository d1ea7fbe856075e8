"""RunSpec: the frozen, validated description of one run, and its run key.

The canonical form (sorted keys, defaults filled in) is hashed together with the code version, so
the same spec always gives the same key and any change of a field gives another.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .errors import KdbenchError

# Bump when a change to the code changes numbers for unchanged specs: old records then stop matching.
CODE_VERSION = f"{__version__}+proto1"


@dataclass(frozen=True)
class TeacherRecipe:
    """How a teacher is trained (part of the teacher cache key)."""

    epochs: int = 6
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class RunSpec:
    """One run: method and hyperparameters, data, teacher, student, schedule, seed, device."""

    method: str
    dataset: str = "mnist"
    params: dict[str, Any] = field(default_factory=dict)  # method hyperparameters (validated by the method)
    teacher: str = "auto"  # zoo name, "auto" (the dataset's paper teacher), or "file:PATH" (imported checkpoint)
    teacher_recipe: TeacherRecipe | None = None  # None: the dataset's default recipe
    student: str = "auto"  # zoo name, or "auto" = the budget student for n_students
    budget: str = "paper"  # budget family for "auto" students
    n_students: int = 1
    mode: str | None = None  # tcn: "ff" | "gan"
    epochs: int | None = None  # None: the method's default for this dataset / n
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    val_fraction: float | None = None  # None: the method's protocol default (TCN 0.2, others 0.1)
    split_seed: int = 0
    max_train: int | None = None  # deterministic subset of train (quick protocols)
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - {"params_changed", "code_version", "optimizer"})
        if unknown:
            raise KdbenchError(f"unknown run field(s): {', '.join(unknown)}")
        d = {k: v for k, v in d.items() if k in known}
        if isinstance(d.get("teacher_recipe"), dict):
            d["teacher_recipe"] = TeacherRecipe(**d["teacher_recipe"])
        return cls(**d)

    def replace(self, **changes: Any) -> "RunSpec":
        return dataclasses.replace(self, **changes)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def run_key(canonical: dict[str, Any]) -> str:
    """Stable key of a canonical spec: readable prefix + hash of the spec and code version."""
    payload = canonical_json({**canonical, "code_version": CODE_VERSION})
    digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    mode = f"-{canonical['mode']}" if canonical.get("mode") else ""
    n = f"-n{canonical['n_students']}" if canonical.get("method") == "tcn" else ""
    return f"{canonical['method']}{mode}{n}-{canonical['dataset']}-s{canonical['seed']}-{digest}"


def parse_value(text: str) -> Any:
    """`--param` values: JSON-ish scalars (1, 0.5, true, null, "x") else the raw string."""
    low = text.strip()
    if low.lower() in ("true", "false"):
        return low.lower() == "true"
    if low.lower() in ("none", "null"):
        return None
    try:
        return json.loads(low)
    except ValueError:
        return low


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """Parse `key=value` pairs (each item may hold several, comma-separated)."""
    out: dict[str, Any] = {}
    for item in items or []:
        for part in _split_top_level(item):
            if not part.strip():
                continue
            if "=" not in part:
                raise KdbenchError(f"--param '{part}' is not of the form key=value")
            key, value = part.split("=", 1)
            key = key.strip()
            if not key.isidentifier():
                raise KdbenchError(f"--param key '{key}' is not a valid name")
            out[key] = parse_value(value)
    return out


def _split_top_level(text: str) -> list[str]:
    """Split on commas that start a new `key=` (so `assistants=plain6,plain4` stays one value)."""
    parts: list[str] = []
    for chunk in text.split(","):
        if parts and "=" not in chunk:
            parts[-1] += "," + chunk
        else:
            parts.append(chunk)
    return parts


def parse_int_list(text: str, name: str, minimum: int = 1) -> list[int]:
    """Parse `1,2,4,8` strictly: no empty items, integers >= minimum, no duplicates."""
    if text is None or not str(text).strip():
        raise KdbenchError(f"--{name} is empty; expected a comma-separated list of integers such as 1,2,4,8")
    values: list[int] = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            raise KdbenchError(f"--{name} '{text}' has an empty item; expected e.g. 1,2,4,8")
        try:
            v = int(item)
        except ValueError:
            raise KdbenchError(f"--{name} item '{item}' is not an integer") from None
        if v < minimum:
            raise KdbenchError(f"--{name} item {v} must be >= {minimum}")
        if v in values:
            raise KdbenchError(f"--{name} lists {v} twice")
        values.append(v)
    return values
