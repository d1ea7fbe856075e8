"""RunSpec: the frozen, validated description of one run, and its run key.

The canonical form (sorted keys, defaults filled in) is hashed together with the code version, so
the same spec always gives the same key and any change of a field gives another.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
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
    val_fraction: float | None = None  # None: 0.1 for every method (one split, one teacher per sweep); the TCN presets set the paper's 0.2
    split_seed: int = 0
    max_train: int | None = None  # deterministic subset of train (quick protocols)
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        """A spec from its dict form (a record's `spec`, API keyword arguments); fields are type-checked."""
        if not isinstance(d, dict):
            raise KdbenchError(f"a run spec must be a mapping of fields, not a {type(d).__name__}")
        d = dict(d)
        if "method" not in d:
            raise KdbenchError("the run spec has no 'method'")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(map(str, d)) - known - {"params_changed", "code_version", "optimizer"})
        if unknown:
            raise KdbenchError(f"unknown run field(s): {', '.join(unknown)}")
        d = {k: v for k, v in d.items() if k in known}
        if d.get("params") is None:
            d.pop("params", None)
        if isinstance(d.get("teacher_recipe"), dict):
            d["teacher_recipe"] = recipe_from_dict(d["teacher_recipe"])
        spec = cls(**d)
        check_fields(spec)
        return spec

    def replace(self, **changes: Any) -> "RunSpec":
        return dataclasses.replace(self, **changes)


def recipe_from_dict(d: Any) -> TeacherRecipe:
    if not isinstance(d, dict):
        raise KdbenchError(f"field 'teacher_recipe' must be a mapping, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(TeacherRecipe)}
    unknown = sorted(set(map(str, d)) - known)
    if unknown:
        raise KdbenchError(f"unknown teacher_recipe field(s): {', '.join(unknown)} (fields: {', '.join(sorted(known))})")
    return TeacherRecipe(**d)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_fields(spec: "RunSpec") -> None:
    """Reject fields of the wrong type or range with one clear line (a hand-edited record or an API
    call can carry anything; the CLI and YAML parsers already type their values)."""
    def need(ok: bool, name: str, what: str, value: Any) -> None:
        if not ok:
            raise KdbenchError(f"run field '{name}' must be {what}, got {value!r}")

    for name in ("method", "dataset", "teacher", "student", "budget", "device"):
        value = getattr(spec, name)
        need(isinstance(value, str) and bool(value.strip()), name, "a non-empty string", value)
    need(spec.mode is None or (isinstance(spec.mode, str) and bool(spec.mode)), "mode", "a name or null", spec.mode)
    need(isinstance(spec.params, dict) and all(isinstance(k, str) for k in spec.params), "params",
         "a mapping of parameter names to values", spec.params)
    need(_is_int(spec.n_students) and spec.n_students >= 1, "n_students", "an integer >= 1", spec.n_students)
    for name in ("seed", "split_seed"):
        value = getattr(spec, name)
        need(_is_int(value) and value >= 0, name, "an integer >= 0", value)
    for name in ("epochs", "batch_size", "max_train"):
        value = getattr(spec, name)
        need(value is None or (_is_int(value) and value >= 1), name, "an integer >= 1 (or null)", value)
    need(spec.lr is None or (_is_number(spec.lr) and spec.lr > 0), "lr", "a finite number > 0 (or null)", spec.lr)
    need(spec.val_fraction is None or (_is_number(spec.val_fraction) and 0 < spec.val_fraction < 1), "val_fraction",
         "a number in (0, 1) (or null)", spec.val_fraction)
    r = spec.teacher_recipe
    need(r is None or isinstance(r, TeacherRecipe), "teacher_recipe", "a teacher recipe (or null)", r)
    if r is not None:
        for name, ok, what in (("epochs", _is_int(r.epochs) and r.epochs >= 1, "an integer >= 1"),
                               ("batch_size", _is_int(r.batch_size) and r.batch_size >= 1, "an integer >= 1"),
                               ("optimizer", isinstance(r.optimizer, str) and bool(r.optimizer), "a name"),
                               ("lr", _is_number(r.lr) and r.lr > 0, "a finite number > 0"),
                               ("weight_decay", _is_number(r.weight_decay) and r.weight_decay >= 0, "a finite number >= 0"),
                               ("seed", _is_int(r.seed) and r.seed >= 0, "an integer >= 0")):
            need(ok, f"teacher_recipe.{name}", what, getattr(r, name))


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
    except (ValueError, RecursionError):  # RecursionError: absurdly nested brackets
        return low


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """Parse `key=value` pairs (each item may hold several, comma-separated)."""
    out: dict[str, Any] = {}
    for item in items or []:
        for part in _split_top_level(item):
            if not part.strip():
                continue
            if "=" not in part:
                raise KdbenchError(f"--param {part!r} is not of the form key=value")
            key, value = part.split("=", 1)
            key = key.strip()
            if not key.isidentifier():
                raise KdbenchError(f"--param key {key!r} is not a valid name")
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
            raise KdbenchError(f"--{name} {text!r} has an empty item; expected e.g. 1,2,4,8")
        try:
            v = int(item)
        except ValueError:
            raise KdbenchError(f"--{name} item {item!r} is not an integer") from None
        if v < minimum:
            raise KdbenchError(f"--{name} item {v} must be >= {minimum}")
        if v in values:
            raise KdbenchError(f"--{name} lists {v} twice")
        values.append(v)
    return values
