"""RunSpec: the frozen, validated description of one run, and its run key.

The canonical form (sorted keys, defaults filled in, the method's version once bumped) is hashed
together with the code version, so the same spec always gives the same key and any change of a
field gives another.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import KdbenchError
from .fields import AMP_DTYPES as AMP_DTYPES  # noqa: F401 - re-exported
from .fields import FIELDS, Field, Int, axis_values
from .fields import parse_params as parse_params  # noqa: F401 - re-exported: the one `--param` parser
from .fields import parse_value as parse_value  # noqa: F401 - re-exported

# Bump when a change to shared code changes numbers for unchanged specs: every old record then stops
# matching. A change to one method bumps that method's `version` instead (see `method_identity`).
CODE_VERSION = f"{__version__}+proto1"

# The version of the code that trains and defines kdbench's own teachers (the teacher training loop,
# the zoo teachers); it keys the teacher cache instead of CODE_VERSION, so that a fix
# that re-runs students (a CODE_VERSION or method bump) never retrains teachers. Bump it when a change
# would change a teacher's weights. Its value is the CODE_VERSION the cached teachers were keyed by.
TEACHER_VERSION = "0.1.0+proto1"

# A method's version (`Method.version`) enters its runs' canonical spec under this name, and only when
# bumped past the default: the keys made before methods had versions stay valid (as LATE_FIELDS do).
DEFAULT_METHOD_VERSION = 1
METHOD_VERSION = "method_version"


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
    teacher: str = "auto"  # zoo name, "auto" (the dataset's paper teacher), "file:[ARCH=]PATH" or "file:pkg.module:Class=PATH"
    # (imported checkpoint), or "module:CLASS@CHECKSUMS" (an nn.Module passed to kdbench.run / sweep in Python)
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
    augment: str = "none"  # training-batch augmentation (see kdbench.augment); with it the teacher runs in the loop
    teacher_normalize: str | None = None  # input normalisation of the teacher model (imported weights need theirs)
    amp: str | None = None  # mixed precision of student training: None (float32), "bf16" or "fp16" (with grad scaling)
    compile: bool = False  # torch.compile the trained models (forward compiled in place, state dict names unchanged)
    data_options: dict[str, Any] = field(default_factory=dict)  # the dataset's options that differ from its defaults (maxlen, ...)
    student_scale: float = 1.0  # multiplies the auto students' parameter and FLOP budget (kdbench.models.budget)

    def __post_init__(self) -> None:
        if isinstance(self.student_scale, int) and not isinstance(self.student_scale, bool):
            object.__setattr__(self, "student_scale", float(self.student_scale))  # 2 and 2.0: one spec, one key

    def to_dict(self) -> dict[str, Any]:
        """All fields, except the late ones at their default (so run keys made before they existed stay valid)."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if not (k in LATE_FIELDS and v == LATE_FIELDS[k])}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        """A spec from its dict form (a record's `spec`, API keyword arguments); fields are type-checked."""
        if not isinstance(d, dict):
            raise KdbenchError(f"a run spec must be a mapping of fields, not a {type(d).__name__}")
        d = dict(d)
        if "method" not in d:
            raise KdbenchError("the run spec has no 'method'")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(map(str, d)) - known - {"params_changed", "code_version", "optimizer", METHOD_VERSION})
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


# Fields added after the first committed records (`late` in the field table), with their defaults:
# they enter a run's canonical spec (and so its run key) only when set to something else.
LATE_FIELDS: dict[str, Any] = {
    f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)  # type: ignore[misc]
    for f in dataclasses.fields(RunSpec) if any(t.late and t.target == f.name for t in FIELDS)}


def recipe_from_dict(d: Any) -> TeacherRecipe:
    if not isinstance(d, dict):
        raise KdbenchError(f"field 'teacher_recipe' must be a mapping, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(TeacherRecipe)}
    unknown = sorted(set(map(str, d)) - known)
    if unknown:
        raise KdbenchError(f"unknown teacher_recipe field(s): {', '.join(unknown)} (fields: {', '.join(sorted(known))})")
    return TeacherRecipe(**d)


def check_fields(spec: "RunSpec") -> None:
    """Reject fields of the wrong type or range with one clear line (a hand-edited record or an API
    call can carry anything; the CLI and YAML parsers already type their values). The kinds come
    from the field table (kdbench.fields)."""
    def need(ok: bool, name: str, what: str, value: Any) -> None:
        if not ok:
            raise KdbenchError(f"run field '{name}' must be {what}, got {value!r}")

    for f in FIELDS:
        if f.kind is not None and f.target and not f.setter:
            value = getattr(spec, f.target)
            need(f.kind.ok(value), f.target, f.kind.what, value)
    if spec.student_scale != 1 and spec.student != "auto":
        raise KdbenchError(f"student_scale {spec.student_scale:g} scales the auto (budget) students; student "
                           f"'{spec.student}' is explicit (give one of them)")
    r = spec.teacher_recipe
    need(r is None or isinstance(r, TeacherRecipe), "teacher_recipe", "a teacher recipe (or null)", r)
    if r is not None:
        for name, kind in (("epochs", Int(minimum=1)), ("batch_size", Int(minimum=1)), ("seed", Int(minimum=0))):
            need(kind.ok(getattr(r, name)), f"teacher_recipe.{name}", kind.what, getattr(r, name))
        for name, ok, what in (("optimizer", isinstance(r.optimizer, str) and bool(r.optimizer), "a name"),
                               ("lr", _is_number(r.lr) and r.lr > 0, "a finite number > 0"),
                               ("weight_decay", _is_number(r.weight_decay) and r.weight_decay >= 0, "a finite number >= 0")):
            need(ok, f"teacher_recipe.{name}", what, getattr(r, name))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def method_identity(version: int) -> dict[str, Any]:
    """The canonical-spec entry of a method's version: nothing at the default, so that only a bumped
    version changes the keys, and only those of that method's runs."""
    return {} if version == DEFAULT_METHOD_VERSION else {METHOD_VERSION: version}


def check_method_version(name: str, version: Any) -> None:
    """A method's declared `version` is an integer >= 1 (it is hashed into run keys: 2 and "2" must not both exist)."""
    if type(version) is not int or version < DEFAULT_METHOD_VERSION:
        raise KdbenchError(f"method '{name}' declares version {version!r}; a method version is an integer >= 1")


def run_key(canonical: dict[str, Any], code_version: str | None = None, label_students: bool = False) -> str:
    """Stable key of a canonical spec: readable prefix + hash of the spec and code version (this
    code's, or the one a record was made with, to check that record's key). `label_students`: the
    prefix names the student count too (methods that train several students, `Method.multi_student`)."""
    payload = canonical_json({**canonical, "code_version": code_version or CODE_VERSION})
    digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    mode = f"-{canonical['mode']}" if canonical.get("mode") else ""
    n = f"-n{canonical['n_students']}" if label_students else ""
    return f"{canonical['method']}{mode}{n}-{canonical['dataset']}-s{canonical['seed']}-{digest}"


def parse_int_list(text: str, name: str, minimum: int = 1) -> list[int]:
    """Parse `1,2,4,8` strictly (no empty items, integers >= minimum, no duplicates): the grid-axis
    parser of kdbench.fields, with errors named `--NAME`."""
    if text is None or not str(text).strip():
        raise KdbenchError(f"--{name} is empty; expected a comma-separated list of integers such as 1,2,4,8")
    try:
        return list(axis_values(Field(name, Int(minimum=minimum), ""), str(text)))
    except ValueError as e:
        raise KdbenchError(f"--{name} {e}") from None


REPORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_report_name(name: str) -> str:
    """A report folder name (reports/<name>/): checked before a sweep runs, not after it."""
    if not isinstance(name, str) or not REPORT_NAME.fullmatch(name):
        raise KdbenchError(f"report name '{name}' must be letters, digits, '.', '_' or '-' (no path)")
    return name


def read_yaml_file(path: str | Path, what: str = "config") -> Any:
    """The YAML document in `path`; an unreadable file, bytes that are not UTF-8, invalid YAML and
    a key given twice in one mapping (which would silently take the last value) are one line each."""
    import yaml

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise KdbenchError(f"cannot read {what} '{path}': {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise KdbenchError(f"{what} '{path}' is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    try:
        return yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise KdbenchError(f"{what} '{path}' is not valid YAML: {problem}{at}") from None


@functools.cache
def _unique_key_loader() -> type:
    """yaml.SafeLoader that refuses a mapping key given twice (merge keys `<<` may still be overridden)."""
    import yaml

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (first at line {first.line + 1})",
                                                        key_node.start_mark)
            seen[key] = key_node.start_mark
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    loader = type("UniqueKeyLoader", (yaml.SafeLoader,), {})
    loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return loader
