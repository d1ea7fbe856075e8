"""Sweeps: a grid (methods x students x modes x seeds, plus fixed run fields) expanded into
validated RunSpecs with run keys.

A sweep is described by layers of fields: a preset shipped with the package or a YAML file, then
keyword arguments / command-line options on top, field by field. A layer may split into `groups`
(e.g. TAKD's plain-CNN and ResNet families need different teachers and students); each group
inherits its layer's fields. The grid follows each method's declaration: a method without modes
gets mode None, a method that trains one student gets n = 1, so
`method=[student, kd, tcn], students=[1, 2, 4, 8], mode=[ff, gan]` gives student x seeds,
kd x seeds and tcn x 4 x 2 x seeds.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from . import store
from .config import RunSpec, parse_value
from .errors import KdbenchError
from .registry import Registry

PRESET_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_DATASET = "mnist"
DEFAULT_SEEDS = 3
DEFAULT_OUT = "results/runs"

# ---------------------------------------------------------------------------------------------
# Fields: one parser each, shared by the CLI, the Python API and YAML files. A parser takes the
# raw value (a CLI string or a YAML/Python value) and returns the canonical value, or raises
# ValueError with what is wrong (the caller prefixes where the value came from).
# ---------------------------------------------------------------------------------------------
FieldParser = Callable[[Any], Any]
FIELDS: Registry[FieldParser] = Registry("sweep field")
ALIASES = {"methods": "method", "modes": "mode", "n_students": "students"}
GRID_FIELDS = ("method", "students", "mode", "seeds")
# fields copied onto every RunSpec as they are
RUN_FIELDS = ("dataset", "teacher", "student", "budget", "epochs", "batch_size", "lr", "val_fraction", "split_seed",
              "max_train", "device", "augment", "teacher_normalize", "amp", "compile", "data_options")
# describe the sweep, not its runs
META_FIELDS = ("name", "description", "requires", "out", "meta")


def _items(value: Any) -> list[Any]:
    """A comma-separated string or a YAML / Python list as a list of items (strings stripped)."""
    if isinstance(value, str):
        items: list[Any] = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [v.strip() if isinstance(v, str) else v for v in value]
    else:
        items = [value]
    if not items or any(v == "" or v is None for v in items):
        raise ValueError(f"{value!r} has an empty item; expected a comma-separated list")
    return items


def _int(value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"'{value}' is not an integer") from None
    if not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    if minimum is not None and value < minimum:
        raise ValueError(f"{value} must be >= {minimum}")
    return value


def _int_list(value: Any, minimum: int) -> tuple[int, ...]:
    out: list[int] = []
    for item in _items(value):
        try:
            v = _int(item, minimum)
        except ValueError as e:
            raise ValueError(f"item {e}") from None
        if v in out:
            raise ValueError(f"lists {v} twice")
        out.append(v)
    return tuple(out)


def _name_list(value: Any) -> tuple[str, ...]:
    out: list[str] = []
    for item in _items(value):
        if not isinstance(item, str):
            raise ValueError(f"item {item!r} is not a name")
        if item in out:
            raise ValueError(f"lists '{item}' twice")
        out.append(item)
    return tuple(out)


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} is not a non-empty string")
    return value.strip()


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{value!r} is not true or false")


def _number(value: Any, positive: bool = False) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{str(value)[:40]!r} is not a number") from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise ValueError(f"{value!r} must be a positive number" if positive else f"{value!r} is not finite")
    return v


MAX_SEEDS = 1000


def _seeds(value: Any) -> tuple[int, ...]:
    """`3` means seeds 0, 1, 2; a list (`0,5,7`, or [5] in YAML) is explicit."""
    if isinstance(value, (list, tuple)) or (isinstance(value, str) and "," in value):
        return _int_list(value, minimum=0)
    n = _int(value, minimum=1)
    if n > MAX_SEEDS:
        raise ValueError(f"{n} seeds is more than the {MAX_SEEDS} a sweep allows; list them explicitly if you mean it")
    return tuple(range(n))


def _param_key(key: Any) -> str:
    """`name` (every method that declares it) or `method.name` (that method only)."""
    parts = key.split(".") if isinstance(key, str) else []
    if not parts or len(parts) > 2 or not parts[-1].isidentifier() or not parts[0]:
        raise ValueError(f"key {key!r} is not a parameter name (NAME or METHOD.NAME)")
    return key


def _params(value: Any) -> dict[str, Any]:
    """A mapping (`{temperature: 2}`, `{takd: {assistants: [plain4]}}`) or `key=value[,key=value]` text
    (`takd.assistants=plain4` targets one method)."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(v, Mapping):  # per-method block
                for sub, sv in v.items():
                    out[_param_key(f"{k}.{sub}")] = sv
            else:
                out[_param_key(k)] = v
        return out
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise ValueError(f"{value!r} is neither a mapping nor key=value text")
    for item in items:
        parts: list[str] = []
        for chunk in item.split(","):  # a chunk without '=' continues the previous value (lists)
            if parts and "=" not in chunk:
                parts[-1] += "," + chunk
            else:
                parts.append(chunk)
        for part in parts:
            if not part.strip():
                continue
            if "=" not in part:
                raise ValueError(f"'{part}' is not of the form key=value")
            key, text = part.split("=", 1)
            out[_param_key(key.strip())] = parse_value(text)
    return out


def _data_options(value: Any) -> dict[str, Any]:
    """A mapping (`{maxlen: 200}`) or `key=value[,key=value]` text: the dataset validates the names."""
    from .config import parse_params

    if isinstance(value, Mapping):
        if not all(isinstance(k, str) and k.isidentifier() for k in value):
            raise ValueError(f"{dict(value)!r} has a key that is not an option name")
        return dict(value)
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise ValueError(f"{value!r} is neither a mapping nor key=value text")
    try:
        return parse_params(list(items), "--data-option")
    except KdbenchError as e:
        raise ValueError(str(e)) from None


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{value!r} is not a mapping")
    return dict(value)


def _register_fields() -> None:
    text = _text
    for name, parser in {
        "method": _name_list,
        "students": lambda v: _int_list(v, minimum=1),
        "mode": _name_list,
        "seeds": _seeds,
        "dataset": text,
        "teacher": text,
        "teacher_epochs": lambda v: _int(v, minimum=1),
        "student": text,
        "budget": text,  # the model zoo validates the family (runner.resolve)
        "epochs": lambda v: _int(v, minimum=1),
        "batch_size": lambda v: _int(v, minimum=1),
        "lr": lambda v: _number(v, positive=True),
        "val_fraction": _number,
        "split_seed": lambda v: _int(v, minimum=0),
        "max_train": lambda v: _int(v, minimum=1),
        "device": text,
        "augment": text,  # validated by runner.resolve (kdbench.augment)
        "teacher_normalize": text,  # validated by runner.resolve (models.protocol.parse_normalize)
        "amp": text,  # validated by config.check_fields and runner.check_speed_options
        "compile": _flag,
        "params": _params,
        "data_options": _data_options,  # validated by runner.resolve (the dataset's options)
        "name": text,
        "description": text,
        "requires": text,
        "out": text,
        "meta": _mapping,
    }.items():
        FIELDS.add(name, parser)


_register_fields()


def parse_field(name: str, value: Any, where: str = "") -> tuple[str, Any]:
    """(canonical name, parsed value); one clear KdbenchError naming the field otherwise."""
    canonical = ALIASES.get(name, name)
    if canonical not in FIELDS:
        raise KdbenchError(f"{where}{FIELDS.unknown_message(str(name))}")
    try:
        return canonical, FIELDS.get(canonical)(value)
    except ValueError as e:
        raise KdbenchError(f"{where}field '{canonical}': {e}") from None


def parse_layer(raw: Mapping[str, Any], where: str = "", level: str = "top") -> dict[str, Any]:
    """Parse one mapping of fields; None values are unset. `level`: "top" (a YAML document: may
    hold groups), "group" (one entry of groups: run fields only) or "overrides" (CLI / keyword arguments)."""
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "groups" and level == "top":
            if not isinstance(value, list) or not value or not all(isinstance(g, Mapping) for g in value):
                raise KdbenchError(f"{where}field 'groups' must be a non-empty list of mappings")
            out["groups"] = [parse_layer(g, f"{where}group {i + 1}: ", "group") for i, g in enumerate(value)]
            continue
        if value is None:
            continue
        key, parsed = parse_field(str(name), value, where)
        if key in out:
            raise KdbenchError(f"{where}field '{key}' is given twice (as '{key}' and an alias)")
        if key in META_FIELDS and level == "group":
            raise KdbenchError(f"{where}field '{key}' describes the whole sweep; put it at the top level")
        out[key] = parsed
    _check_contradictions(out, where)
    return out


def _check_contradictions(layer: Mapping[str, Any], where: str) -> None:
    if layer.get("student") not in (None, "auto") and "budget" in layer:
        raise KdbenchError(f"{where}student '{layer['student']}' and budget '{layer['budget']}' contradict: "
                           "an explicit student has no budget family (give one of them)")


def _overlay(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`, field by field; params merge key by key; setting student or budget drops the other."""
    out = dict(base)
    if "student" in top and top["student"] != "auto":
        out.pop("budget", None)
    if "budget" in top:
        if out.get("student") not in (None, "auto"):
            out.pop("student", None)
    for k, v in top.items():
        if k == "groups":
            continue
        if k in ("params", "data_options"):  # merged key by key
            out[k] = {**out.get(k, {}), **v}
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# YAML files and presets
# ---------------------------------------------------------------------------------------------
def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file; unreadable, non-UTF-8 or invalid files (duplicate keys too) are one clear line."""
    from .config import read_yaml_file

    path = Path(path)
    content = read_yaml_file(path, "sweep config")
    if content is None:
        raise KdbenchError(f"sweep config '{path}' is empty")
    if not isinstance(content, dict):
        raise KdbenchError(f"sweep config '{path}' must be a mapping of fields (method, dataset, students, ...), "
                           f"not a {type(content).__name__}")
    return content


def _preset_registry() -> Registry[Path]:
    reg: Registry[Path] = Registry("preset")
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        reg.add(path.stem, path)
    return reg


def list_presets() -> list[dict[str, Any]]:
    """Name, description and requirements of every preset shipped with the package."""
    rows = []
    for name, path in _preset_registry().items():
        try:
            raw = read_yaml(path)
        except KdbenchError as e:
            rows.append({"name": name, "description": f"(unreadable: {e})", "requires": None})
            continue
        rows.append({"name": name, "description": raw.get("description", ""), "requires": raw.get("requires")})
    return rows


def preset_path(name: str) -> Path:
    return _preset_registry().get(name)


# ---------------------------------------------------------------------------------------------
# SweepSpec
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepSpec:
    """A parsed, merged sweep: metadata plus one field mapping per group (a plain sweep has one)."""

    groups: tuple[Mapping[str, Any], ...]
    name: str | None = None
    description: str | None = None
    requires: str | None = None
    out: str | None = None
    source: str | None = None  # "preset NAME", "config PATH" or None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, *, preset: str | None = None, config: str | Path | None = None,
              overrides: Mapping[str, Any] | None = None) -> "SweepSpec":
        """Merge a preset or a YAML config (not both) with field overrides (CLI options / keyword arguments)."""
        if preset is not None and config is not None:
            raise KdbenchError("--preset and --config contradict: give one sweep description")
        base: dict[str, Any] = {}
        source = None
        if preset is not None:
            path = preset_path(preset)
            base = parse_layer(read_yaml(path), f"preset '{preset}': ")
            base.setdefault("name", preset)
            source = f"preset {preset}"
        elif config is not None:
            base = parse_layer(read_yaml(config), f"sweep config '{config}': ")
            source = f"config {config}"
        top = parse_layer(dict(overrides or {}), level="overrides")
        meta = {k: v for k, v in {**base, **top}.items() if k in META_FIELDS}
        groups = []
        for g in base.pop("groups", None) or [{}]:
            merged = _overlay(_overlay(base, g), top)
            groups.append({k: v for k, v in merged.items() if k not in META_FIELDS})
        return cls(groups=tuple(groups), name=meta.get("name"), description=meta.get("description"),
                   requires=meta.get("requires"), out=meta.get("out"), source=source, meta=meta.get("meta", {}))

    def expand(self) -> list[RunSpec]:
        """Every RunSpec of the grid, in order (group, method, mode, n, seed); unknown methods fail here."""
        specs: list[RunSpec] = []
        for i, group in enumerate(self.groups):
            where = f"group {i + 1}: " if len(self.groups) > 1 else ""
            specs += expand_group(group, where)
        return specs


def expand_group(group: Mapping[str, Any], where: str = "") -> list[RunSpec]:
    from .method import get_method
    from .teachers import default_recipe

    methods = group.get("method")
    if not methods:
        raise KdbenchError(f"{where}no method given (--method NAME[,NAME...] or 'method:' in the config)")
    dataset = group.get("dataset", DEFAULT_DATASET)
    seeds = group.get("seeds", tuple(range(DEFAULT_SEEDS)))
    students = group.get("students", (1,))
    modes_asked = group.get("mode")
    fixed: dict[str, Any] = {k: group[k] for k in RUN_FIELDS if k in group}
    fixed["dataset"] = dataset
    params = dict(group.get("params", {}))
    check_params(params, methods, where)
    if "teacher_epochs" in group:
        fixed["teacher_recipe"] = dataclasses.replace(default_recipe(dataset), epochs=group["teacher_epochs"])
    specs = []
    for name in methods:
        cls = get_method(name)
        for mode in modes_for(cls, modes_asked, where):
            for n in (students if cls.multi_student else (1,)):
                for seed in seeds:
                    specs.append(RunSpec(method=name, n_students=n, mode=mode, seed=seed,
                                         params=params_for(cls, params, methods), **fixed))
    return specs


def modes_for(cls: Any, asked: Sequence[str] | None, where: str = "") -> tuple[str | None, ...]:
    """A method without modes gets (None,); otherwise the asked modes (each must exist) or its first (default) mode."""
    declared = tuple(cls.modes)
    real = tuple(m for m in declared if m is not None)
    if not real:
        return (None,)
    if not asked:
        return (declared[0],)
    bad = [m for m in asked if m not in declared]
    if bad:
        raise KdbenchError(f"{where}method '{cls.name}' has no mode '{bad[0]}' (modes: {', '.join(real)})")
    return tuple(asked)


def params_for(cls: Any, params: Mapping[str, Any], methods: Sequence[str]) -> dict[str, Any]:
    """The parameters of one method of a sweep: `method.name` keys for it, plus plain keys it declares
    (with a single method, every plain key: the method's own validation then names a bad one)."""
    from .method import param_fields

    declared = {f.name for f in param_fields(cls)}
    plain = {k: v for k, v in params.items() if "." not in k and (len(methods) == 1 or k in declared)}
    own = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(f"{cls.name}.")}
    return {**plain, **own}


def check_params(params: Mapping[str, Any], methods: Sequence[str], where: str = "") -> None:
    """Every parameter must reach a method of the sweep (a typo is not silently dropped)."""
    import difflib

    from .method import get_method, param_fields

    if len(methods) == 1 and not any("." in k for k in params):
        return
    names = {m: {f.name for f in param_fields(get_method(m))} for m in methods}
    for key in params:
        if "." in key:
            m, name = key.split(".", 1)
            if m not in names:
                raise KdbenchError(f"{where}parameter '{key}' is for method '{m}', which is not in this sweep "
                                   f"({', '.join(methods)})")
            if len(methods) > 1 and name not in names[m]:
                close = difflib.get_close_matches(name, sorted(names[m]), n=2)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise KdbenchError(f"{where}method '{m}' has no parameter '{name}'{hint} "
                                   f"(parameters: {', '.join(sorted(names[m])) or 'none'})")
        elif len(methods) > 1 and not any(key in n for n in names.values()):
            every = sorted(set().union(*names.values()))
            close = difflib.get_close_matches(key, every, n=2)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise KdbenchError(f"{where}no method of this sweep ({', '.join(methods)}) has parameter '{key}'{hint}")


# ---------------------------------------------------------------------------------------------
# Plan: resolved runs and what is already done
# ---------------------------------------------------------------------------------------------
PLAN_STATES = {"done": "done", "failed": "failed before, will rerun", "invalid": "invalid record, will rerun",
               "todo": "to run"}


@dataclass(frozen=True)
class PlannedRun:
    resolved: Any  # runner.Resolved
    status: str  # a key of PLAN_STATES

    @property
    def key(self) -> str:
        return self.resolved.key

    @property
    def spec(self) -> RunSpec:
        return self.resolved.spec


def run_label(spec: RunSpec) -> str:
    parts = [spec.method]
    if spec.mode:
        parts.append(spec.mode)
    if spec.n_students != 1:
        parts.append(f"n={spec.n_students}")
    parts += [spec.dataset, f"seed {spec.seed}"]
    return " ".join(parts)


def resolve_all(specs: Iterable[RunSpec]) -> list[Any]:
    """Validate every spec before anything runs (the first bad one is one clear line); duplicates dropped."""
    from .runner import resolve

    out, seen = [], set()
    for spec in specs:
        try:
            r = resolve(spec)
        except KdbenchError as e:
            raise KdbenchError(f"run '{run_label(spec)}': {e}") from None
        if r.key not in seen:
            seen.add(r.key)
            out.append(r)
    return out


def plan(spec: SweepSpec, out_dir: str | Path) -> list[PlannedRun]:
    """The sweep's runs, validated, each with its state in `out_dir` (nothing is written)."""
    runs = resolve_all(spec.expand())
    out = Path(out_dir)
    planned = []
    for r in runs:
        path = store.record_path(out, r.key)
        rec = store.load_record(path) if path.is_file() else None
        if isinstance(rec, store.Invalid):
            status = "invalid"
        else:
            status = "todo" if rec is None else ("done" if rec.get("status") == "ok" else "failed")
        planned.append(PlannedRun(r, status))
    return planned


def plan_table(planned: Sequence[PlannedRun]) -> pd.DataFrame:
    rows = [{"run_key": p.key, "method": p.spec.method, "mode": p.spec.mode or "", "n": p.spec.n_students,
             "student": p.spec.student, "dataset": p.spec.dataset, "seed": p.spec.seed, "epochs": p.spec.epochs,
             "state": PLAN_STATES[p.status]}
            for p in planned]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Summary of a finished sweep
# ---------------------------------------------------------------------------------------------
def summary_table(records: Sequence[Mapping[str, Any]], metric: str = "test_acc_valbest") -> pd.DataFrame:
    """One row per (method, mode, n, and whatever else varies): n_seeds, mean ± std of `metric` (the
    column says so; reports give 95% CIs), mean train time."""
    if not records:
        return pd.DataFrame()
    rows = []
    for rec in records:
        row = store.record_to_row(dict(rec))
        rows.append(row)
    df = pd.DataFrame(rows)
    by = ["method", "mode", "n_students"]
    for extra in ("dataset", "student", "teacher", "variant", "epochs"):
        # a column joins the key when it varies (a method without a teacher says "none": not a variation)
        if extra in df.columns and df[extra][~df[extra].isin(["none", None])].astype(str).nunique() > 1:
            by.append(extra)
    df["mode"] = df["mode"].fillna("")
    out = []
    for key, g in df.groupby(by, sort=False, dropna=False):
        ok = g[g["status"] == "ok"]
        vals = pd.to_numeric(ok.get(metric, pd.Series(dtype=float)), errors="coerce").dropna()
        times = pd.to_numeric(ok.get("train_time_s", pd.Series(dtype=float)), errors="coerce").dropna()
        row = dict(zip(["method", "mode", "n", *by[3:]], key))
        row["n_seeds"] = len(vals)
        if len(g) > len(ok):
            row["failed"] = len(g) - len(ok)
        if len(vals) == 0:
            row[metric] = "n/a"
        elif len(vals) == 1:
            row[metric] = f"{vals.iloc[0]:.2f} (n=1, no spread)"
        else:
            row[metric] = f"{vals.mean():.2f} ± {vals.std(ddof=1):.2f}"
        row["train_time_s"] = round(float(times.mean()), 2) if len(times) else float("nan")
        out.append(row)
    table = pd.DataFrame(out).rename(columns={metric: f"{metric} (mean ± std)"})
    if "failed" in table.columns:
        table["failed"] = table["failed"].fillna(0).astype(int)
    return table


# `kdbench.sweep(...)` (the Python API) and `kdbench.sweep.SweepSpec` (this module) share one name:
# the module itself is callable, so re-exporting either in kdbench/__init__.py keeps both working.
class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .api import sweep as run_sweep

        return run_sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
