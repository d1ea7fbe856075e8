"""Run records -> the one frame every table and plot reads, plus what the records say about protocol.

Besides `store.load_results`' tidy frame this keeps, per run, the raw deviations list, the env and a
teacher identity (a teacher shared by several runs is one observation of teacher accuracy, not n).
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import store
from ..config import RunSpec
from ..data.catalogue import PAPER_DATASETS, family_default, paper_of
from ..errors import KdbenchError
from ..registry import Registry
from ..stats import CELL_KEYS

# spec columns that identify a cell besides the seed (the base ones, `stats.CELL_KEYS`, always; the
# extra ones only when they vary inside a base cell, so that runs of different students never share a mean)
BASE_KEYS = CELL_KEYS
EXTRA_KEYS = ("teacher", "student", "budget", "student_scale", "epochs", "max_train")  # cells differ by these when they vary


@dataclass(frozen=True)
class MethodDisplay:
    """How the report shows a method's cells: its label, its place among the rows (lower first; methods
    without one come last, by name) and whether its label always carries the number of students."""

    label: str
    rank: int
    show_n: bool = False


# method -> display; "teacher" is the report's own teacher row, the methods' entries come from the
# paper modules (kdbench/papers/) that compare them
METHOD_DISPLAY: Registry[MethodDisplay] = Registry("method display")
METHOD_DISPLAY.add("teacher", MethodDisplay("Teacher", 0))


@dataclass(frozen=True)
class AccuracyChoice:
    """Which recorded accuracy a table shows (never selected on test: val-best or last epoch)."""

    column: str
    label: str


ACCURACY: Registry[AccuracyChoice] = Registry("accuracy selection")
ACCURACY.add("valbest", AccuracyChoice("test_acc_valbest", "test top-1 (%) at the val-best epoch (`test_acc_valbest`)"))
ACCURACY.add("last", AccuracyChoice("test_acc", "test top-1 (%) at the last epoch (`test_acc`)"))


@dataclass
class Results:
    """Everything a report is built from, read once."""

    frame: pd.DataFrame  # one row per ok run, key columns normalised (strings / ints, "" when missing)
    deviations: dict[str, list[str]]  # run_key -> deviations
    env: dict[str, dict[str, Any]]  # run_key -> env
    n_failed: int
    source: str
    extras: dict[str, list[str]] = field(default_factory=dict)
    teachers: dict[str, dict[str, Any]] = field(default_factory=dict)  # run_key -> the record's `teacher` block
    invalid: list[store.Invalid] = field(default_factory=list)  # record files that failed validation, excluded
    histories: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # run_key -> per-epoch history
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)  # run_key -> every spec field (see full_spec)


def paper_dataset(name: str) -> tuple[str | None, str | None]:
    """The paper dataset a kdbench dataset stands for, and why it is a substitute (None when exact),
    as its catalogue entry declares (None, None for a dataset this kdbench does not know)."""
    return family_default(str(name), "stands_for"), family_default(str(name), "substitute")


def _norm_key(value: Any) -> Any:
    """Key values as plain str / int, "" when missing, so grouping and sorting are stable."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() else float(value)
    return str(value)


def full_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Every field of a record's spec, the ones it leaves out at their default filled in, so that records
    written before a field existed compare equal to newer ones on it (`params_changed`, derived, dropped)."""
    spec = store.canonical_spec(spec)
    try:
        full = dataclasses.asdict(RunSpec.from_dict(spec))
    except (KdbenchError, TypeError, ValueError):  # not a spec this kdbench reads: as recorded
        full = {}
    return {**spec, **full}


def _teacher_id(rec: dict[str, Any]) -> str:
    """Identity of the teacher a run used: its cache key and weights checksum when recorded (one key
    trained on two machines can give two teachers), else the spec fields that make it."""
    teacher = rec.get("teacher")
    if isinstance(teacher, dict) and teacher.get("key"):  # the runner records the teacher cache key
        sha = str(teacher.get("weights_sha256") or "")[:12]
        return f"{teacher['key']}@{sha}" if sha else str(teacher["key"])
    metrics = rec.get("metrics") or {}
    for k in ("teacher_key", "teacher_id"):
        if metrics.get(k):
            return str(metrics[k])
    spec = rec.get("spec") or {}
    ident = {k: spec.get(k) for k in ("dataset", "teacher", "teacher_recipe", "split_seed", "val_fraction",
                                      "max_train")}
    if spec.get("teacher_recipe") is None:  # default recipe: its seed is fixed, not the run's
        ident["teacher_recipe"] = "default"
    return json.dumps(ident, sort_keys=True, default=str)


def load(results_dir: str | Path) -> Results:
    """Read a results directory; a missing directory or one with no valid ok record is a user error.
    Invalid record files are kept in `Results.invalid` for the report's warning block."""
    path = store.results_dir(results_dir)
    records, invalid = store.read_records(path)
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        raise KdbenchError(f"no successful run records (*.json with status ok) in '{results_dir}'"
                           f"{_not_counted(len(records) - len(ok), invalid)}")
    frame = store.records_frame(ok)
    by_key = {r["run_key"]: r for r in ok}
    frame["teacher_id"] = [_teacher_id(by_key[k]) for k in frame["run_key"]]
    specs = {k: full_spec(r.get("spec") or {}) for k, r in by_key.items()}
    for col in (*BASE_KEYS, *EXTRA_KEYS, "seed"):
        if col not in frame.columns:  # a key the tidy frame does not carry: from the spec, "" when it has none
            frame[col] = [specs[k].get(col) for k in frame["run_key"]] if col in EXTRA_KEYS else ""
        frame[col] = frame[col].map(_norm_key).astype(object)
    frame = frame.sort_values(["dataset", "method", "mode", "n_students", "variant", "seed", "run_key"],
                              key=lambda s: s.map(lambda v: (isinstance(v, str), v)), kind="stable")
    frame = frame.reset_index(drop=True)
    return Results(frame=frame,
                   deviations={k: [str(d) for d in (r.get("deviations") or [])] for k, r in by_key.items()},
                   env={k: dict(r.get("env") or {}) for k, r in by_key.items()},
                   teachers={k: dict(r["teacher"]) for k, r in by_key.items() if isinstance(r.get("teacher"), dict)},
                   n_failed=len(records) - len(ok), source=path.resolve().name or "results", invalid=invalid,
                   histories={k: [h for h in (r.get("history") or []) if isinstance(h, dict)] for k, r in by_key.items()},
                   specs=specs)


def _not_counted(failed: int, invalid: list[store.Invalid]) -> str:
    """` (2 failed; 1 invalid: a.json: reason)` for the no-ok-record error, '' when there is neither."""
    parts = [f"{failed} failed"] if failed else []
    if invalid:
        parts.append(f"{len(invalid)} invalid: " + "; ".join(store.invalid_lines(invalid)))
    return f" ({'; '.join(parts)})" if parts else ""


# --------------------------------------------------------------------------- ordering and labels

def dataset_rank(name: str) -> tuple[int, str]:
    """Reports list the papers' datasets first, in their catalogue order (then the rest by name)."""
    paper = paper_of(str(name))  # a paper table's own dataset names stand for themselves
    return (PAPER_DATASETS.index(paper) if paper in PAPER_DATASETS else len(PAPER_DATASETS), str(name))


def _display(method: Any) -> MethodDisplay | None:
    return METHOD_DISPLAY.get(method) if isinstance(method, str) and method in METHOD_DISPLAY else None


def method_rank(method: str, mode: Any = "", n: Any = "") -> tuple:
    shown = _display(method)
    pos = shown.rank if shown is not None else math.inf
    return (pos, str(method), str(mode), n if isinstance(n, int) else -1)


def cell_label(row: dict[str, Any] | pd.Series, extra: tuple[str, ...] = (), with_n: bool | None = None) -> str:
    """Human label of a cell: `TCN GAN (n=4)`, `KD`, plus non-default variant and varying extras."""
    method = _norm_key(row.get("method", ""))
    shown = _display(method)
    label = shown.label if shown is not None else str(method)
    mode = _norm_key(row.get("mode", ""))
    if mode:
        label += f" {str(mode).upper()}"
    n = _norm_key(row.get("n_students", ""))
    if with_n is None:
        with_n = (shown is not None and shown.show_n) or (isinstance(n, int) and n != 1)
    if with_n and n != "":
        label += f" (n={n})"
    tags = [f"{k}={_norm_key(row.get(k))}" for k in extra if _norm_key(row.get(k, "")) != ""]
    variant = _norm_key(row.get("variant", ""))
    if variant and variant != "default":
        tags.insert(0, str(variant))
    if tags:
        label += " [" + "; ".join(tags) + "]"
    return label


def varying_extras(df: pd.DataFrame, base: tuple[str, ...] = BASE_KEYS) -> tuple[str, ...]:
    """The extra key columns that take more than one value inside some base cell."""
    out = []
    for col in EXTRA_KEYS:
        if col in df.columns and len(df) and (df.groupby(list(base), sort=False)[col].nunique(dropna=False) > 1).any():
            out.append(col)
    return tuple(out)


def list_metric(df: pd.DataFrame, column: str) -> list[list[float]]:
    """A list-valued metric per row ([] where missing)."""
    if column not in df.columns:
        return [[] for _ in range(len(df))]
    out = []
    for v in df[column]:
        out.append([float("nan") if x is None else float(x) for x in v] if isinstance(v, (list, tuple)) else [])
    return out


def has_values(df: pd.DataFrame, column: str) -> bool:
    return column in df.columns and pd.to_numeric(df[column], errors="coerce").notna().any()


def numeric(df: pd.DataFrame, column: str) -> pd.Series:
    if column not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[column], errors="coerce").astype(float)


def deviations_of(results: Results, run_keys: Any) -> list[str]:
    """Distinct deviations of the given runs with how many of them carry each, stably ordered."""
    counts: Counter[str] = Counter()
    keys = list(run_keys)
    for k in keys:
        for d in dict.fromkeys(results.deviations.get(k, [])):
            counts[d] += 1
    return [f"{d} ({c}/{len(keys)} runs)" for d, c in sorted(counts.items())]


def substitutes_of(datasets: Any) -> list[str]:
    out = []
    for name in sorted(set(datasets), key=dataset_rank):
        paper, why = paper_dataset(name)
        if why:
            out.append(f"`{name}` stands in for the paper's `{paper}`: {why}")
    return out
