"""The run fields, each declared once: its kind (type and range), CLI flag, help, whether a list of
its values is a grid axis, and whether it is a results column. `kdbench run` / `kdbench sweep`
options, the YAML / keyword parsing of sweeps, `config.check_fields`, the record columns of
`store` and the sweep's dry-run table all read this table.

A value comes in two ways: as text (a command line, `key=value` items) or typed (YAML, Python,
a record). `Kind.convert` turns either into the canonical value (lenient: CLI text); `Kind.ok`
checks an already typed value (strict: a hand-edited record or an API call is not coerced).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .errors import KdbenchError


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------------------------------------- kinds
@dataclass(frozen=True)
class Int:
    """An integer, optionally with a lower bound."""

    minimum: int | None = None
    nullable: bool = False

    @property
    def bound(self) -> str:
        return f">= {self.minimum}" if self.minimum is not None else ""

    @property
    def what(self) -> str:
        return " ".join(filter(None, ["an integer", self.bound, "(or null)" if self.nullable else ""]))

    def convert(self, raw: Any) -> int:
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if isinstance(raw, str):
            try:
                raw = int(raw.strip())
            except ValueError:
                raise ValueError(f"{raw.strip()[:40]!r} is not an integer") from None
        if not _is_int(raw):
            raise ValueError(f"{raw!r} is not an integer")
        return raw

    def in_range(self, v: Any) -> bool:
        return self.minimum is None or v >= self.minimum

    def ok(self, v: Any) -> bool:
        return (v is None and self.nullable) or (_is_int(v) and self.in_range(v))


@dataclass(frozen=True)
class Number:
    """A finite number, optionally bounded (`gt`: exclusive lower bound, `lt`: exclusive upper)."""

    gt: float | None = None
    lt: float | None = None
    nullable: bool = False

    @property
    def bound(self) -> str:
        if self.gt is not None and self.lt is not None:
            return f"in ({self.gt:g}, {self.lt:g})"
        return f"> {self.gt:g}" if self.gt is not None else (f"< {self.lt:g}" if self.lt is not None else "")

    @property
    def what(self) -> str:
        head = "a number" if self.gt is not None and self.lt is not None else "a finite number"
        return " ".join(filter(None, [head, self.bound, "(or null)" if self.nullable else ""]))

    def convert(self, raw: Any) -> float:
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise ValueError(f"{raw!r} is not a number")
        try:
            v = float(raw)
        except (ValueError, OverflowError):
            raise ValueError(f"{str(raw).strip()[:40]!r} is not a number") from None
        if not math.isfinite(v):
            raise ValueError(f"{str(raw).strip()[:40]!r} is not a finite number")
        return v

    def in_range(self, v: Any) -> bool:
        return (self.gt is None or v > self.gt) and (self.lt is None or v < self.lt)

    def ok(self, v: Any) -> bool:
        return (v is None and self.nullable) or (_is_number(v) and self.in_range(v))


@dataclass(frozen=True)
class Name:
    """A non-empty string (a registered name, checked where it is resolved)."""

    nullable: bool = False
    label: str = "a name"
    bound = ""

    @property
    def what(self) -> str:
        return self.label + (" (or null)" if self.nullable else "")

    def convert(self, raw: Any) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(f"{raw!r} is not {self.label}")
        return raw.strip()

    def in_range(self, v: Any) -> bool:
        return True

    def ok(self, v: Any) -> bool:
        return (v is None and self.nullable) or (isinstance(v, str) and bool(v.strip()))


@dataclass(frozen=True)
class Choice:
    """One of a few fixed names."""

    values: tuple[str, ...]
    nullable: bool = False
    bound = ""

    @property
    def what(self) -> str:
        return f"one of {', '.join(self.values)}" + (" (or null)" if self.nullable else "")

    def convert(self, raw: Any) -> str:
        value = raw.strip() if isinstance(raw, str) else raw
        if value not in self.values:
            raise ValueError(f"{raw!r} is not {self.what}")
        return value

    def in_range(self, v: Any) -> bool:
        return True

    def ok(self, v: Any) -> bool:
        return (v is None and self.nullable) or v in self.values


@dataclass(frozen=True)
class Flag:
    """true or false."""

    bound = ""
    what = "true or false"

    def convert(self, raw: Any) -> bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
            return raw.strip().lower() == "true"
        raise ValueError(f"{raw!r} is not true or false")

    def in_range(self, v: Any) -> bool:
        return True

    def ok(self, v: Any) -> bool:
        return isinstance(v, bool)


@dataclass(frozen=True)
class Options:
    """A mapping of names to values: `{maxlen: 200}` or `key=value[,key=value]` text. `dotted`
    keys (`method.name`) address one method of a sweep; the values of text stay `Text`, typed by
    whatever receives them (a method's parameter types decide what a comma means)."""

    label: str
    flag: str
    dotted: bool = False
    keep_text: bool = False  # values of text stay Text (a method's parameter types read them), else parsed
    bound = ""

    @property
    def what(self) -> str:
        return f"a mapping of {self.label} names to values"

    def convert(self, raw: Any) -> dict[str, Any]:
        try:
            if isinstance(raw, Mapping):
                out: dict[str, Any] = {}
                for k, v in raw.items():
                    if self.dotted and isinstance(v, Mapping):  # a per-method block
                        for sub, sv in v.items():
                            out[check_key(f"{k}.{sub}", "", self.dotted)] = sv
                    else:
                        out[check_key(k, "", self.dotted)] = v
                return out
            items = [raw] if isinstance(raw, str) else raw
            if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
                raise ValueError(f"{raw!r} is neither a mapping nor key=value text")
            pairs = split_pairs(list(items), self.flag, self.dotted)
        except KdbenchError as e:
            raise ValueError(str(e)) from None
        return {k: Text(v) if self.keep_text else parse_value(v) for k, v in pairs.items()}

    def in_range(self, v: Any) -> bool:
        return True

    def ok(self, v: Any) -> bool:
        return isinstance(v, dict) and all(isinstance(k, str) for k in v)


@dataclass(frozen=True)
class Seeds:
    """`3` means seeds 0, 1, 2; a list (`0,5,7`, or [5] in YAML) names them."""

    bound = ""
    what = "a count of seeds or a list of seeds"

    def convert(self, raw: Any) -> tuple[int, ...]:
        if isinstance(raw, (list, tuple)) or (isinstance(raw, str) and "," in raw):
            return axis_values(SEED_ITEM, raw)
        n = Int().convert(raw)
        if n < 1:
            raise ValueError(f"{n} must be >= 1")
        if n > MAX_SEEDS:
            raise ValueError(f"{n} seeds is more than the {MAX_SEEDS} a sweep allows; list them explicitly if you mean it")
        return tuple(range(n))


MAX_SEEDS = 1000
Kind = Int | Number | Name | Choice | Flag | Options | Seeds


# ---------------------------------------------------------------------------------------------- text values
class Text(str):
    """A value as written on a command line (`temperature=1,4,8`): whoever receives it decides,
    by the type it expects, whether its commas separate the items of a list or of a grid axis."""


def parse_value(text: str) -> Any:
    """`--param` values: JSON-ish scalars (1, 0.5, true, null, "x", [4, 0]) else the raw string."""
    low = text.strip()
    if low.lower() in ("true", "false"):
        return low.lower() == "true"
    if low.lower() in ("none", "null"):
        return None
    try:
        return json.loads(low)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested brackets
        return low


def check_key(key: Any, flag: str, dotted: bool) -> str:
    """A parameter name, or (`dotted`) `method.name` for one method of a sweep."""
    parts = key.split(".") if isinstance(key, str) else []
    good = bool(parts) and len(parts) <= (2 if dotted else 1) and parts[-1].isidentifier() and bool(parts[0])
    if not good:
        raise KdbenchError(f"{flag + ' ' if flag else ''}key {key!r} is not a valid name"
                           + (" (NAME or METHOD.NAME)" if dotted else ""))
    return key


def split_pairs(items: Sequence[str] | None, flag: str = "--param", dotted: bool = False) -> dict[str, str]:
    """`key=value` items (each may hold several, comma-separated) -> key: value text. A comma that
    does not start a new `key=` continues the value (`chain=a,b` of a list parameter, `temperature=1,4`)."""
    out: dict[str, str] = {}
    for item in items or []:
        parts: list[str] = []
        for chunk in item.split(","):
            if parts and "=" not in chunk:
                parts[-1] += "," + chunk
            else:
                parts.append(chunk)
        for part in parts:
            if not part.strip():
                continue
            if "=" not in part:
                raise KdbenchError(f"{flag} {part!r} is not of the form key=value")
            key, value = part.split("=", 1)
            out[check_key(key.strip(), flag, dotted)] = value
    return out


def parse_params(items: Sequence[str] | None, flag: str = "--param", dotted: bool = False) -> dict[str, Any]:
    """`key=value` items of option `flag` with their values parsed (`parse_value`): one run's values."""
    return {k: parse_value(v) for k, v in split_pairs(items, flag, dotted).items()}


def split_top(text: str) -> list[str]:
    """Split on the commas outside brackets: `[a,b],[c]` -> `[a,b]`, `[c]`."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _bracketed(item: str) -> Any:
    """`[a,b]` -> ["a", "b"] (JSON first, so `[4,0]` and `["x"]` read as JSON does)."""
    value = parse_value(item)
    if isinstance(value, list):
        return value
    inner = item.strip()[1:-1]
    return [parse_value(v) for v in inner.split(",")] if inner.strip() else []


def param_values(raw: Any, listy: bool, name: str) -> list[Any]:
    """The values of one method parameter in a sweep: one, or several (a grid axis).

    For a parameter of list type (a chain of models, per-stage values) a plain list is ONE value; an
    axis is a list of lists (`[[a], [b]]`, on the command line `[a],[b]`). For any other
    parameter a list (`[1, 4, 8]`, `1,4,8`) is an axis."""
    if isinstance(raw, Text):
        items = split_top(str(raw))
        if len(items) == 1:
            return [parse_value(raw)]
        if listy:
            bracketed = [i.strip().startswith("[") and i.strip().endswith("]") for i in items]
            if not any(bracketed):
                return [parse_value(raw)]  # `chain=a,b`: one list, as always
            if not all(bracketed):
                raise KdbenchError(f"parameter '{name}' = {str(raw)!r}: write each value of the list "
                                   "parameter in brackets, e.g. [a,b],[c]")
            values = [_bracketed(i) for i in items]
        else:
            if any(not i.strip() for i in items):
                raise KdbenchError(f"parameter '{name}' = {str(raw)!r} has an empty item")
            values = [parse_value(i) for i in items]
    elif isinstance(raw, (list, tuple)) and (not listy or (raw and all(isinstance(v, (list, tuple)) for v in raw))):
        values = [list(v) if isinstance(v, tuple) else v for v in raw]
        if not values:
            raise KdbenchError(f"parameter '{name}' is an empty list")
    else:
        return [raw]
    for i, v in enumerate(values):
        if v in values[:i]:
            raise KdbenchError(f"parameter '{name}' lists {v!r} twice")
    return values


# ---------------------------------------------------------------------------------------------- lists
def _split_commas(text: str) -> list[str]:
    return text.split(",")


def _split_teachers(text: str) -> list[str]:
    """Teachers are comma-separated, except one `file:[ARCH=]PATH` whose whole text names an
    existing file (a path may hold a comma) and a `module:` teacher (an nn.Module given in Python)."""
    if text.startswith("module:"):
        return [text]
    if text.startswith("file:"):
        rest = text[5:]
        path = rest.partition("=")[2] if "=" in rest else rest
        if Path(path).is_file():
            return [text]
    return text.split(",")


def axis_values(field: "Field", raw: Any) -> tuple[Any, ...]:
    """The values of a grid axis: a comma-separated string or a YAML / Python list; no empty item,
    no value twice, each of the field's kind and range."""
    if isinstance(raw, (list, tuple)):
        items = list(raw)
    elif isinstance(raw, str) and field.split is not None:
        items = field.split(raw)
    else:
        items = [raw]
    if not items:
        raise ValueError("is an empty list")
    out: list[Any] = []
    listed = len(items) > 1 or field.name in SHAPED  # the grid's own axes have always been lists
    for item in items:
        if isinstance(item, str):
            item = item.strip()
        if item == "" or item is None:
            raise ValueError(f"{raw!r} has an empty item; expected a comma-separated list")
        try:
            v = field.kind.convert(item)
        except ValueError as e:
            raise ValueError(f"item {e}" if listed else str(e)) from None
        if not field.kind.in_range(v):
            raise ValueError(f"item {v} must be {field.kind.bound}" if listed else f"must be {field.kind.bound}, got {v}")
        if v in out:
            raise ValueError(f"lists {v if not isinstance(v, str) else repr(v)} twice")
        out.append(v)
    return tuple(out)


def scalar_value(field: "Field", raw: Any) -> Any:
    """The one value of a field that is not a grid axis; a list of values is refused."""
    if isinstance(raw, (list, tuple)) or (isinstance(raw, str) and field.split is not None and "," in raw):
        raise ValueError(f"cannot be a grid axis (one value per sweep), got {raw!r}")
    v = field.kind.convert(raw)
    if not field.kind.in_range(v):
        raise ValueError(f"must be {field.kind.bound}, got {v}")
    return v


# ---------------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Field:
    """One run field (or a sweep field that sets one: `seeds` sets `seed`)."""

    name: str  # YAML key, keyword argument, argparse dest
    kind: Kind | None  # type and range (None: checked by config, never given directly)
    help: str
    attr: str | None = ""  # the RunSpec attribute ("" = name; None: sweep-only)
    axis: bool = True  # a list of values is a grid axis (crossed with the others)
    column: bool = False  # a column of the results DataFrame (store.SPEC_COLUMNS)
    commands: tuple[str, ...] = ("run", "sweep")  # which subcommands take it
    flag: str = ""  # the CLI option ("" = --name)
    metavar: str | None = None  # of one value (a sweep's axis shows METAVAR[,METAVAR...])
    run_type: Callable[[str], Any] | None = str  # argparse type of `kdbench run` (None: the kind, errors named by the flag)
    choices: tuple[str, ...] | None = None  # argparse choices of `kdbench run`
    late: bool = False  # added after the first records: left out of the run key at its default
    split: Callable[[str], list[str]] | None = _split_commas  # how CLI text lists values (None: never)
    setter: bool = False  # sets `attr` another way than the attribute's own field
    teacher: bool = False  # a property of the teacher: one value for methods without a teacher

    @property
    def target(self) -> str | None:
        return self.name if self.attr == "" else self.attr

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


SEED_ITEM = Field("seed", Int(minimum=0), "", split=_split_commas)
AMP_DTYPES = ("bf16", "fp16")  # --amp: autocast dtypes of student training (kdbench.engine.train)

FIELDS: tuple[Field, ...] = (
    Field("method", Name(), "method name (see `kdbench list methods`)", metavar="NAME", column=True),
    Field("dataset", Name(), "dataset name (see `kdbench data`)", column=True, metavar="NAME"),
    Field("teacher", Name(), "teacher: zoo name, 'auto' (the dataset's paper teacher) or file:ARCH=PATH",
          column=True, split=_split_teachers, teacher=True, metavar="NAME"),
    Field("student", Name(), "student architecture (zoo name) or 'auto' (budget student)", column=True, metavar="NAME"),
    Field("budget", Name(), "budget family of auto students", column=True, choices=("paper", "repo"), metavar="NAME"),
    Field("students", Int(minimum=1), "number of students (methods training one student: 1)", attr="n_students",
          column=True, metavar="N", run_type=None),
    Field("mode", Name(nullable=True), "mode of the methods that have modes (see `kdbench list methods`; default: their first)",
          column=True, metavar="MODE"),
    Field("epochs", Int(minimum=1, nullable=True), "student epochs (default: the method's for this dataset)",
          column=True, run_type=int, metavar="N"),
    Field("max_train", Int(minimum=1, nullable=True), "deterministic subset of the training split (quick protocols)",
          column=True, run_type=int, metavar="N"),
    Field("seed", Int(minimum=0), "seed of the run", column=True, commands=("run",), run_type=int, metavar="N"),
    Field("seeds", Seeds(), "3 = seeds 0,1,2 (default); 0,5,7 = those seeds", attr="seed", commands=("sweep",),
          metavar="N|S,S,...", setter=True),
    Field("student_scale", Number(gt=0), "scale of the auto (budget) students' parameter and FLOP budget "
          "(0.5 = half the paper's budget; default 1)", column=True, late=True, run_type=None, metavar="X"),
    Field("lr", Number(gt=0, nullable=True), "student learning rate (default: the method's)", column=True,
          run_type=float, metavar="X"),
    Field("batch_size", Int(minimum=1, nullable=True), "student batch size (default: the method's)", column=True,
          run_type=int, metavar="N"),
    Field("teacher_epochs", Int(minimum=1), "epochs of the teacher recipe (default: the dataset's recipe)",
          attr="teacher_recipe", run_type=None, setter=True, teacher=True, metavar="N"),
    Field("teacher_recipe", None, "how the teacher is trained (set by teacher_epochs)", axis=False, commands=()),
    Field("teacher_normalize", Name(nullable=True, label="a normalisation name or MEAN,STD text"),
          "input normalisation of the teacher model: imagenet, cifar10, none or MEAN,STD (per channel joined by "
          "'/'); imported weights need theirs (the shared CIFAR ResNets: imagenet)",
          axis=False, metavar="NORM", late=True, split=None, teacher=True),
    Field("val_fraction", Number(gt=0, lt=1, nullable=True), "share of train carved as val (default 0.1)",
          run_type=float, metavar="X"),
    Field("split_seed", Int(minimum=0), "seed of the train / val split", run_type=int, metavar="N"),
    Field("augment", Name(), "training-batch augmentation: none (default) or crop-flip; with one the teacher runs on "
          "each augmented batch", metavar="NAME", late=True),
    Field("device", Name(), "auto (CUDA when present), cpu, cuda, cuda:1, ...", axis=False, metavar="NAME"),
    Field("amp", Choice(AMP_DTYPES, nullable=True), "mixed-precision student training (autocast; fp16 with "
          "gradient scaling, CUDA only); recorded and part of the run key: it changes the numbers", axis=False,
          late=True, choices=AMP_DTYPES, metavar="DTYPE"),
    Field("compile", Flag(), "torch.compile the trained models (recorded, part of the run key)", axis=False, late=True),
    Field("params", Options("parameter", "--param", dotted=True, keep_text=True), "method hyperparameter KEY=VALUE (repeatable, or "
          "k=v,k2=v2; in a sweep METHOD.KEY=VALUE targets one method)", flag="--param", metavar="KEY=VALUE",
          split=None),
    Field("data_options", Options("dataset option", "--data-option"), "dataset option of this run, e.g. maxlen=200 "
          "for a text dataset (repeatable; an unknown name is refused with the dataset's list of options)",
          axis=False, flag="--data-option", metavar="KEY=VALUE", late=True, split=None),
)
BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
ALIASES = {"methods": "method", "modes": "mode", "n_students": "students"}
# the fields whose product makes the grid in a fixed, method-aware way (see sweep.expand_group)
SHAPED = ("method", "mode", "students", "seeds")


def primary(attr: str) -> Field:
    """The field that declares RunSpec attribute `attr` (not one that only sets it)."""
    return next(f for f in FIELDS if f.target == attr and not f.setter)


def result_columns() -> tuple[str, ...]:
    """The spec fields promoted to DataFrame columns, in table order."""
    return tuple(f.target for f in FIELDS if f.column)


def field_help(f: Field, command: str) -> str:
    """A field's help, with how `kdbench sweep` takes a list of its values."""
    if command != "sweep" or f.kind is None or isinstance(f.kind, (Flag, Seeds)):
        return f.help
    if f.name == "params":
        return f.help + "; a list (temperature=1,4,8; of a list parameter: [a],[b]) is a grid axis"
    if not f.axis:
        return f.help + "; one value per sweep"
    return f.help + "; a comma-separated list is a grid axis"
