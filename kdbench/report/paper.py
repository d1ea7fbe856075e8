""""Paper vs kdbench": each published number beside kdbench's mean, CI, difference and verdict.

The generic machinery only: the row and comparison types, the selectors and values a paper module
builds its rows from, the registry and the table builder. Each paper's comparisons live with that
paper in `kdbench/papers/<paper>.py`. The published numbers ship with the package (`kdbench/reference/*.csv`). A reference row is matched
to kdbench runs of the same (or substitute) dataset and configuration; each matching kdbench cell
gives one comparison row. Rows whose dataset kdbench never ran are left out; rows of a dataset it
ran but whose configuration it did not are shown as "not run"."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable

import numpy as np
import pandas as pd

from .. import stats
from ..errors import KdbenchError
from ..registry import Registry
from .context import Context, human_count, label
from .data import BASE_KEYS, dataset_rank, list_metric, numeric, paper_dataset, varying_extras
from .table import Skipped, Table


def reference(name: str) -> pd.DataFrame:
    """A published table from `kdbench/reference/<name>.csv` (empty cells are "")."""
    try:
        text = (resources.files("kdbench") / "reference" / f"{name}.csv").read_text()
    except FileNotFoundError:
        raise KdbenchError(f"reference table '{name}' is missing from kdbench/reference") from None
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)


Select = Callable[[pd.DataFrame], pd.DataFrame]  # runs of the paper's dataset -> runs of this row
Value = Callable[[pd.DataFrame], pd.Series]  # runs -> one float per run (NaN: not measured)


@dataclass
class RefRow:
    """One published number and how to find kdbench's counterpart."""

    ident: dict[str, str]  # identity columns shown in the table (paper's naming)
    dataset: str  # the paper's dataset
    published: float
    select: Select
    value: Value
    note: str = ""


@dataclass
class Comparison:
    """How a paper table is compared: its rows, number format and verdict rule."""

    name: str
    title: str
    rows: list[RefRow]
    fmt: Callable[[float], str]
    notes: list[str] = field(default_factory=list)
    tolerance: float | None = None  # relative; deterministic quantities (counts) are judged by it, not a CI
    family: dict[str, tuple[str, ...]] = field(default_factory=dict)  # paper dataset -> datasets sharing its rows


def num(text: str) -> float:
    """A reference CSV cell as a float (NaN when empty or not a number)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def integer(text: str) -> int | None:
    """A reference CSV cell as an int (None when empty or not a number)."""
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return None


def _of_paper(df: pd.DataFrame, ds: str, family: tuple[str, ...] = ()) -> pd.DataFrame:
    """Runs whose dataset is (a substitute of) the paper's dataset (or one of a family sharing its rows)."""
    wanted = {ds, *family}
    return df[[paper_dataset(d)[0] in wanted for d in df["dataset"]]]


def method_runs(method: str, mode: str = "", n: int | None = None) -> Select:
    """Runs of one method (and mode, and number of students, when given)."""
    def select(df: pd.DataFrame) -> pd.DataFrame:
        keep = df["method"] == method
        if mode:
            keep &= df["mode"] == mode
        if n is not None:
            keep &= df["n_students"] == n
        return df[keep]
    return select


def where_ran(subject: str, select: Select) -> Select:
    """`select` among the runs of the datasets and students on which the paper's method `subject` ran:
    a row of its table is that method's setting, which other runs in the folder (another paper's
    students) do not fill."""
    def pick(df: pd.DataFrame) -> pd.DataFrame:
        ran = set(zip(*(df.loc[df["method"] == subject, c] for c in ("dataset", "student"))))
        keep = pd.Series([pair in ran for pair in zip(df["dataset"], df["student"])], index=df.index, dtype=bool)
        return select(df[keep])
    return pick


def from_teacher_of(subject: str, method: str) -> Select:
    """Runs of `method` distilled from a teacher that `subject` ran from: a paper that sets its method
    beside KD does so on one teacher, so KD from another one (a teacher-size study in the same folder)
    is no cell of its."""
    def select(df: pd.DataFrame) -> pd.DataFrame:
        if "teacher" not in df.columns:
            return df[df["method"] == method]
        return df[(df["method"] == method) & df["teacher"].isin(set(df.loc[df["method"] == subject, "teacher"]))]
    return select


def teacher_runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct teacher (a shared cached teacher counts once), shaped as a teacher cell."""
    df = df.drop_duplicates(subset=["dataset", "teacher", "teacher_id"])
    return df.assign(method="teacher", mode="", n_students="", variant="default", student="", budget="",
                     epochs="")


def column(name: str) -> Value:
    """A recorded metric, per run."""
    return lambda df: numeric(df, name)


def list_item(name: str, index: int) -> Value:
    """Item `index` of a list-valued metric (NaN where the list is shorter)."""
    def value(df: pd.DataFrame) -> pd.Series:
        return pd.Series([v[index] if len(v) > index else math.nan for v in list_metric(df, name)],
                         index=df.index, dtype=float)
    return value


def each(list_name: str, name: str) -> Value:
    """Per model: the mean of a per-model list metric, or the whole value for a single model."""
    def value(df: pd.DataFrame) -> pd.Series:
        whole = numeric(df, name)
        return pd.Series([float(np.mean(v)) if v else w for v, w in zip(list_metric(df, list_name), whole)],
                         index=df.index, dtype=float)
    return value


def ratio(numerator: str, denominator: str) -> Value:
    """The ratio of two recorded metrics, per run."""
    return lambda df: numeric(df, numerator) / numeric(df, denominator)


# ------------------------------------------------------------------------------------- comparisons

COMPARISONS: Registry[Callable[[Context], Comparison]] = Registry("paper comparison")
_ORDER: dict[str, int] = {}  # comparison -> its place in the report (a paper module sets it)
UNORDERED = 10_000  # a comparison registered without an order comes after the others, by name


def comparison(order: int, name: str) -> Callable[[Callable[[Context], Comparison]], Callable[[Context], Comparison]]:
    """Register a paper comparison under `name`; `order` fixes its place among the comparisons."""
    def deco(fn: Callable[[Context], Comparison]) -> Callable[[Context], Comparison]:
        COMPARISONS.add(name, fn)
        _ORDER[name] = order
        return fn
    return deco


def acc_fmt(x: float) -> str:
    return f"{x:.2f}"


def sig_fmt(x: float) -> str:
    """Three significant digits (at most 5 decimals), `n/a` when undefined."""
    return f"{x:.{stats.auto_decimals(x, 3, maximum=5)}f}" if np.isfinite(x) else "n/a"


# ------------------------------------------------------------------------------------- building


def build(ctx: Context, comp: Comparison) -> Table | Skipped:
    """Match every reference row to kdbench cells and lay out published / kdbench / CI / Δ / verdict."""
    df = ctx.df
    extras = varying_extras(df)
    keys = ["dataset", *BASE_KEYS[1:], *extras]
    ran = {paper_dataset(d)[0] for d in df["dataset"]}
    ident_cols = list(dict.fromkeys(k for row in comp.rows for k in row.ident))
    out, run_keys, ref_notes = [], [], []
    for ref in comp.rows:
        family = comp.family.get(ref.dataset, ())
        if ref.dataset not in ran and not (set(family) & ran):
            continue
        runs = ref.select(_of_paper(df, ref.dataset, family))
        base = {**{c: ref.ident.get(c, "") for c in ident_cols}, "published": ref.published}
        if ref.note:
            ref_notes.append((ref.note, _ident_text({k: v for k, v in ref.ident.items() if k != "quantity"})))
        cells = []
        for key, sub in runs.groupby(keys, sort=False):
            vals = ref.value(sub).to_numpy(dtype=float)
            if np.isfinite(vals).any():
                cells.append((dict(zip(keys, key)), sub, vals))
        if not cells:
            out.append({**base, "kdbench_dataset": "", "kdbench_cell": "not run", "mean": math.nan, "std": math.nan,
                        "n": 0, "ci_low": math.nan, "ci_high": math.nan})
            continue
        for cell, sub, vals in sorted(cells, key=lambda c: (dataset_rank(c[0]["dataset"]), label(pd.Series(c[0]),
                                                                                                 extras))):
            s = ctx.summarize(vals)
            run_keys += list(sub["run_key"])
            out.append({**base, "kdbench_dataset": cell["dataset"], "kdbench_cell": label(pd.Series(cell), extras),
                        **s})
    if not any(r["n"] for r in out):
        wanted = sorted({r.dataset for r in comp.rows}, key=dataset_rank)
        ran_here = sorted(set(df["dataset"]), key=dataset_rank)
        return Skipped(comp.name, comp.title, f"no kdbench run matches a row of this paper table (its datasets: "
                                              f"{', '.join(wanted)}; runs on: {', '.join(ran_here)})")
    data = pd.DataFrame(out)
    data["diff"] = data["mean"] - data["published"]
    data["rel_diff"] = data["diff"] / data["published"].abs()
    data["verdict"] = [_verdict(r, comp.tolerance) for r in data.to_dict("records")]
    display = pd.DataFrame({
        **{c.capitalize(): data[c] for c in ident_cols},
        "kdbench cell": [f"{c} ({d})" if d else c for c, d in zip(data["kdbench_cell"], data["kdbench_dataset"])],
        "Published": [comp.fmt(v) for v in data["published"]],
        "kdbench": [comp.fmt(m) + f" (n={n})" if n else "" for m, n in zip(data["mean"], data["n"])],
        "95% CI": [f"[{comp.fmt(lo)}, {comp.fmt(hi)}]" if np.isfinite(lo) else ("no spread" if n == 1 else "")
                   for lo, hi, n in zip(data["ci_low"], data["ci_high"], data["n"])],
        "Δ (kdbench − paper)": [_diff_text(d, comp) for d in data["diff"]],
        ("Within 5%" if comp.tolerance is not None else "Paper in CI"): data["verdict"],
    })
    verdict = (f"Within 5%: |kdbench mean − published| <= {comp.tolerance:.0%} of published."
               if comp.tolerance is not None else
               "Paper in CI: whether the published value lies inside kdbench's 95% CI of the mean "
               "(`n<2`: one seed, no CI).")
    notes = [*comp.notes, ci_note(ctx), verdict, *_reference_notes(ref_notes),
             *ctx.protocol_notes(df[df["run_key"].isin(run_keys)])]
    return Table(comp.name, comp.title, display, data, notes)


def ci_note(ctx: Context) -> str:
    how = ("bootstrap (scipy BCa, 9999 resamples, seed 0)" if ctx.bootstrap else "Student t, df = n - 1")
    return f"kdbench: mean over seeds (n runs), 95% CI of the mean by {how}."


def _reference_notes(pairs: list[tuple[str, str]]) -> list[str]:
    """One line per distinct note of the reference CSV, naming (up to 4 of) the rows it belongs to."""
    rows: dict[str, list[str]] = {}
    for note, ident in pairs:
        rows.setdefault(note, [])
        if ident not in rows[note]:
            rows[note].append(ident)
    out = []
    for note, idents in rows.items():
        more = f", +{len(idents) - 4} more" if len(idents) > 4 else ""
        out.append(f"Reference note ({'; '.join(idents[:4])}{more}): {note}.")
    return out


def _ident_text(ident: dict[str, str]) -> str:
    return " ".join(v for v in ident.values() if v)


def _diff_text(d: float, comp: Comparison) -> str:
    if not np.isfinite(d):
        return ""
    if comp.fmt is human_count:
        return ("+" if d >= 0 else "-") + human_count(abs(d))
    return ("+" if d >= 0 else "-") + comp.fmt(abs(d))


def _verdict(r: dict, tolerance: float | None) -> str:
    if not r["n"]:
        return "not run"
    if tolerance is not None:
        return "yes" if np.isfinite(r["rel_diff"]) and abs(r["rel_diff"]) <= tolerance else "no"
    if r["n"] < 2 or not np.isfinite(r["ci_low"]):
        return "n<2"
    return "yes" if r["ci_low"] <= r["published"] <= r["ci_high"] else "no"


def build_all(ctx: Context) -> list[Table | Skipped]:
    """Every registered paper comparison, in the order its paper module gave it (kdbench/papers/)."""
    names = sorted(COMPARISONS.names(), key=lambda n: (_ORDER.get(n, UNORDERED), n))
    return [build(ctx, COMPARISONS.get(n)(ctx)) for n in names]


__all__ = ["COMPARISONS", "Comparison", "RefRow", "acc_fmt", "build", "build_all", "column", "comparison", "each",
           "integer", "list_item", "method_runs", "num", "ratio", "reference", "sig_fmt", "teacher_runs"]
