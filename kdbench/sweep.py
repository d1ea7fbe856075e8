"""Sweeps: a grid (every run field or method parameter given as a list is an axis, and the axes
are crossed) expanded into validated RunSpecs with run keys.

A sweep is described by layers of fields: a preset shipped with the package or a YAML file, then
keyword arguments / command-line options on top, field by field. A layer may split into `groups`
(e.g. TAKD's plain-CNN and ResNet families need different teachers and students); each group
inherits its layer's fields. The fields and how a list of each is written come from the one field
table (kdbench.fields). The grid follows each method's declaration: a method without modes gets
mode None, a method that trains one student gets n = 1, a method without a teacher one teacher,
and a parameter list reaches only the methods that have the parameter, so
`method=[student, kd, tcn], students=[1, 2, 4, 8], mode=[ff, gan], params={temperature: [1, 4]}`
gives student x seeds, kd x 2 temperatures x seeds and tcn x 4 x 2 x seeds.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from . import fields as field_table
from . import store
from .config import RunSpec
from .errors import KdbenchError
from .fields import ALIASES, SHAPED, Options, Seeds, axis_values, param_values, scalar_value
from .registry import Registry
from .resume import run_folder

PRESET_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_DATASET = "mnist"
DEFAULT_SEEDS = 3
DEFAULT_OUT = "results/runs"
MAX_RUNS = 10_000  # a larger grid is refused unless asked for (--yes): a list typed wrong multiplies

# ---------------------------------------------------------------------------------------------
# Fields: the run fields of the field table (one parser each, shared by the CLI, the Python API and
# YAML files), plus the fields that describe the sweep itself. A parser takes the raw value (CLI
# text or a YAML / Python value) and returns the canonical one (a tuple of values for an axis), or
# raises ValueError with what is wrong (the caller prefixes where the value came from).
# ---------------------------------------------------------------------------------------------
FieldParser = Callable[[Any], Any]
FIELDS: Registry[FieldParser] = Registry("sweep field")
META_FIELDS = ("name", "description", "requires", "out", "meta")  # describe the sweep, not its runs


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} is not a non-empty string")
    return value.strip()


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{value!r} is not a mapping")
    return dict(value)


def field_parser(f: field_table.Field) -> FieldParser:
    """How a sweep reads field `f`: an axis as a tuple of values, any other field as one value."""
    if isinstance(f.kind, (Options, Seeds)):
        return f.kind.convert
    if f.axis:
        return lambda v: axis_values(f, v)
    return lambda v: scalar_value(f, v)


def _register_fields() -> None:
    for f in field_table.FIELDS:
        if "sweep" in f.commands:
            FIELDS.add(f.name, field_parser(f))
    for name in META_FIELDS:
        FIELDS.add(name, _mapping if name == "meta" else _text)


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


def _explicit(students: Sequence[str] | None) -> list[str]:
    """The named (not `auto`) students of a student axis."""
    return [s for s in students or () if s != "auto"]


def _check_contradictions(layer: Mapping[str, Any], where: str) -> None:
    explicit = _explicit(layer.get("student"))
    for sizing in ("budget", "student_scale"):
        if explicit and sizing in layer:
            raise KdbenchError(f"{where}student '{explicit[0]}' and {sizing} '{layer[sizing][0]}' contradict: "
                               f"an explicit student has no budget family to size (give one of them)")


def _overlay(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`, field by field; params merge key by key; naming a student drops the
    budget and its scale below, and setting either drops a named student."""
    out = dict(base)
    if _explicit(top.get("student")):
        out.pop("budget", None)
        out.pop("student_scale", None)
    if ("budget" in top or "student_scale" in top) and _explicit(out.get("student")):
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

    def size(self) -> int:
        """How many runs the grid expands to (before equal specs are merged), without building them."""
        return sum(_count(g) for g in self._grids())

    def expand(self, limit: int | None = MAX_RUNS) -> list[RunSpec]:
        """Every RunSpec of the grid, in order (group, method, field axes, mode, n, parameters, seed);
        unknown methods fail here, and so does a grid of more than `limit` runs (None: no limit)."""
        grids = self._grids()
        n = sum(_count(g) for g in grids)
        if limit is not None and n > limit:
            raise KdbenchError(f"the grid has {n:,} runs, more than the {limit:,} a sweep runs without --yes "
                               "(yes=True in Python); check its lists")
        return [spec for group, g in zip(self.groups, grids) for cls, axes in g for spec in build_specs(group, cls, axes)]

    def _grids(self) -> list[list[tuple[Any, list[Axis]]]]:
        return [method_grids(group, f"group {i + 1}: " if len(self.groups) > 1 else "")
                for i, group in enumerate(self.groups)]

    def grid_lines(self) -> list[str]:
        """The grid, one line per group: each axis with its values, and the number of runs."""
        lines = []
        for i, grids in enumerate(self._grids()):
            axes: dict[str, list[Any]] = {"method": [cls.name for cls, _ in grids]}
            for _, method_axes in grids:
                for label, values in method_axes:
                    seen = axes.setdefault(label, [])
                    seen += [v for v in values if v not in seen and v is not None]  # None: a method without modes
            axes["seeds"] = axes.pop("seeds")  # the innermost axis, last
            n = _count(grids)
            shown = [f"{label} [{', '.join(_show(v) for v in values)}]" for label, values in axes.items()
                     if len(values) > 1 or label == "method"]
            where = f"group {i + 1}: " if len(self.groups) > 1 else ""
            rule = " (each method crosses the axes it takes)" if len(grids) > 1 else ""
            lines.append(f"grid {where}{' x '.join(shown)} -> {n} runs{rule}")
        return lines


def _count(grids: Sequence[tuple[Any, Sequence[Axis]]]) -> int:
    """The runs of one group: per method, the product of its axes' lengths."""
    return sum(math.prod(len(values) for _, values in axes) for _, axes in grids)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(map(_show, value)) + "]"
    return str(value)


Axis = tuple[str, tuple[Any, ...]]  # (a field name or `param NAME`, its values)


def method_grids(group: Mapping[str, Any], where: str = "") -> list[tuple[Any, list[Axis]]]:
    """Per method of a group, the axes it crosses, in order: the field axes of the table, its modes,
    its numbers of students, its parameters, the seeds."""
    from .method import get_method

    methods = group.get("method")
    if not methods:
        raise KdbenchError(f"{where}no method given (--method NAME[,NAME...] or 'method:' in the config)")
    params = dict(group.get("params", {}))
    check_params(params, methods, where)
    out = []
    for name in methods:
        cls = get_method(name)
        axes: list[Axis] = [("dataset", group.get("dataset", (DEFAULT_DATASET,)))]
        for f in field_table.FIELDS:
            if f.axis and f.name in group and f.name not in (*SHAPED, "dataset", "params"):
                values = group[f.name]
                axes.append((f.name, values if cls.needs_teacher or not f.teacher else values[:1]))
        axes.append(("mode", modes_for(cls, group.get("mode"), where)))
        axes.append(("students", group.get("students", (1,)) if cls.multi_student else (1,)))
        for key, raw in params_for(cls, params, methods).items():
            try:
                values = param_values(raw, _listy(cls, key), key)
            except KdbenchError as e:
                raise KdbenchError(f"{where}{e}") from None
            axes.append((f"param {key}", tuple(values)))
        axes.append(("seeds", group.get("seeds", tuple(range(DEFAULT_SEEDS)))))
        out.append((cls, axes))
    return out


def build_specs(group: Mapping[str, Any], cls: Any, axes: Sequence[Axis]) -> Iterable[RunSpec]:
    """The RunSpecs of one method's axes crossed (the last axis varies fastest)."""
    from .teachers import default_recipe

    fixed = {f.target: group[f.name] for f in field_table.FIELDS if not f.axis and f.name in group and f.target}
    labels = [label for label, _ in axes]
    for combo in itertools.product(*(values for _, values in axes)):
        kw: dict[str, Any] = dict(fixed)
        params: dict[str, Any] = {}
        teacher_epochs = None
        for label, value in zip(labels, combo):
            if label.startswith("param "):
                params[label[6:]] = copy.deepcopy(value)  # a list value: each run its own
            elif label == "teacher_epochs":
                teacher_epochs = value
            else:
                kw[field_table.BY_NAME[label].target] = value
        if teacher_epochs is not None:
            kw["teacher_recipe"] = dataclasses.replace(default_recipe(kw["dataset"]), epochs=teacher_epochs)
        yield RunSpec(method=cls.name, params=params, **kw)


def _listy(cls: Any, key: str) -> bool:
    """Whether method parameter `key` takes a list (a list of its values is then one value)."""
    from .method import param_fields

    if key not in {f.name for f in param_fields(cls)}:
        return False
    hint = typing.get_type_hints(cls.Params)[key]
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return any(typing.get_origin(o) in (list, tuple) or o in (list, tuple) for o in options)


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
               "todo": "to run", "partial": "stopped in training, resumes from its checkpoint"}


@dataclass(frozen=True)
class PlannedRun:
    resolved: Any  # runner.Resolved
    status: str  # a key of PLAN_STATES
    asked: RunSpec | None = None  # the spec as the grid gave it, before defaults were filled in

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
    return [r for r, _ in _resolve_pairs(specs)]


def _resolve_pairs(specs: Iterable[RunSpec]) -> list[tuple[Any, RunSpec]]:
    from .runner import resolve

    out, seen = [], set()
    for spec in specs:
        try:
            r = resolve(spec)
        except KdbenchError as e:
            raise KdbenchError(f"run '{run_label(spec)}': {e}") from None
        if r.key not in seen:
            seen.add(r.key)
            out.append((r, spec))
    return out


def plan(spec: SweepSpec, out_dir: str | Path, limit: int | None = MAX_RUNS) -> list[PlannedRun]:
    """The sweep's runs, validated, each with its state in `out_dir` (nothing is written); a grid of
    more than `limit` runs is refused (None: no limit)."""
    runs = _resolve_pairs(spec.expand(limit))
    out = Path(out_dir)
    planned = []
    for r, asked in runs:
        path = store.record_path(out, r.key)
        rec = store.load_record(path) if path.is_file() else None
        if isinstance(rec, store.Invalid):  # a newer kdbench's record (store.Newer) is never rerun over
            status = "done" if isinstance(rec, store.Newer) else "invalid"
        else:
            status = "todo" if rec is None else ("done" if rec.get("status") == "ok" else "failed")
        if status == "todo" and any(run_folder(out, r.key).glob("loop-*.pt")):  # kdbench.resume
            status = "partial"
        planned.append(PlannedRun(r, status, asked))
    return planned


PLAN_COLUMNS = ("method", "mode", "students", "student", "dataset", "seed", "epochs")  # always shown


def plan_table(planned: Sequence[PlannedRun]) -> pd.DataFrame:
    """One row per planned run: its key, the fields the dry run always shows, every other field axis
    and method parameter whose value varies in this plan, and its state."""
    rows = [{"run_key": p.key, "method": p.spec.method, "mode": p.spec.mode or "", "n": p.spec.n_students,
             "student": p.spec.student, "dataset": p.spec.dataset, "seed": p.spec.seed, "epochs": p.spec.epochs}
            for p in planned]
    asked = [p.asked or p.spec for p in planned]
    for f in field_table.FIELDS:
        if f.axis and f.target and f.name not in (*PLAN_COLUMNS, "seeds", "params"):
            # a method without a teacher has none to show
            values = [None if f.teacher and not p.resolved.method.needs_teacher else _asked_value(a, f.name)
                      for p, a in zip(planned, asked)]
            if len({repr(v) for v in values if v is not None or not f.teacher}) > 1:
                for row, v in zip(rows, values):
                    row[f.name] = _show(v) if v is not None else ""
    varying = [k for k in dict.fromkeys(k for a in asked for k in a.params)
               if len({repr(a.params[k]) for a in asked if k in a.params}) > 1]
    for row, a, p in zip(rows, asked, planned):
        if varying:
            row["params"] = ",".join(f"{k}={_show(a.params[k])}" for k in varying if k in a.params)
        row["state"] = PLAN_STATES[p.status]
    return pd.DataFrame(rows)


def _asked_value(spec: RunSpec, name: str) -> Any:
    if name == "teacher_epochs":
        return spec.teacher_recipe.epochs if spec.teacher_recipe is not None else None
    return getattr(spec, field_table.BY_NAME[name].target)


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
    for extra in (c for c in store.SPEC_COLUMNS if c not in (*by, "seed")):
        # the other columns join it when they vary inside one (method, mode, n) cell: a grid axis
        if df.groupby(["method", "mode", "n_students"], sort=False)[extra].nunique(dropna=False).max() > 1:
            by.append(extra)
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

