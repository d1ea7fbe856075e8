"""Teacher and assistant size studies: does the student gain from a larger teacher, and does a teacher
assistant of intermediate size help (TAKD's two questions)?

The teacher section appears only when the runs of one cell family (everything but the teacher equal)
differ in their `teacher`; its parameter count is the record's `teacher_params` metric (else the
`params` of the record's teacher block), never a model built here. The assistant section appears only
when runs of a method with an `assistants` parameter differ in that chain; the chain that ran and its
counts come from the method's `<method>_stages` metric (one dict per stage: `arch`, `params`; the last
stage is the student), else from the parameter itself. Runs without a teacher (`teacher` none) are the
no-KD reference; the report's baseline method (`kd`) from the same teacher is what an assistant must beat."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure as MplFigure

from .. import stats, store
from .context import Context, human_count, label, pivot
from .data import BASE_KEYS, EXTRA_KEYS, dataset_rank, method_rank, numeric
from .plots import MARKERS, save, series_color, whiskers
from .table import Figure, Section, Table
from .tables import acc_short

ASSISTANTS = "assistants"  # the method parameter that names the assistants between teacher and student
NO_TEACHER = ("none", "")
ACC, TPARAMS, CHAIN, APARAMS, REST = "_acc", "_tparams", "_chain", "_aparams", "_rest"
LABEL, CHAIN_LABEL = "_label", "_chain_label"  # a run's configuration, with and without its chain
OTHER = tuple(k for k in EXTRA_KEYS if k not in ("teacher", "student"))  # budget, scale, epochs, max_train
TEACHER_FAMILY = (*BASE_KEYS, "student", *OTHER)  # a teacher-size series: all but the teacher equal
CHAIN_FAMILY = ("dataset", "method", "mode", "n_students", REST, "student", "teacher", *OTHER)
SUMMARY = ("mean", "std", "n", "ci_low", "ci_high")


def _number(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def _chain(ctx: Context, row: pd.Series) -> tuple[str | None, tuple[float, ...], str]:
    """(chain label or None when the run's method has no `assistants` parameter, the assistants' params,
    the variant label without the chain)."""
    spec = ctx.results.specs.get(row["run_key"], {})
    params = spec.get("params") or {}
    changed = {k: v for k, v in (spec.get("params_changed") or {}).items() if k != ASSISTANTS}
    rest = store.variant_label({"params_changed": changed})
    if not isinstance(params, dict) or ASSISTANTS not in params:
        return None, (), rest
    m = row["method"]  # the stages are the method's own metric (`takd.takd_stages`; flat in older records)
    stages = next((s for s in (row.get(f"{m}.{m}_stages"), row.get(f"{m}_stages")) if isinstance(s, (list, tuple))),
                  None)
    if isinstance(stages, (list, tuple)) and stages and all(isinstance(s, dict) for s in stages):
        archs = [str(s.get("arch", "?")) for s in stages[:-1]]
        counts = tuple(_number(s.get("params")) for s in stages[:-1])
    else:
        archs = [str(a) for a in (params.get(ASSISTANTS) or [])]
        counts = tuple(math.nan for _ in archs)
    return (" → ".join(archs) or "none"), counts, rest


def _significance(p_holm: float, alpha: float) -> str:
    """The verdicts compare means; this says whether the difference behind one is significant."""
    if not math.isfinite(p_holm):
        return ": untested (n<2)"
    return ": significant" if p_holm < alpha else ": not significant"


def study_frame(ctx: Context) -> pd.DataFrame:
    """Ok runs with the shown accuracy, their teacher's params, and their assistant chain (if any)."""
    df = ctx.df
    acc = numeric(df, ctx.accuracy.column)
    block = pd.Series([_number(ctx.results.teachers.get(k, {}).get("params")) for k in df["run_key"]], index=df.index)
    tparams = numeric(df, "teacher_params").fillna(block)
    out = df[acc.notna()].assign(**{ACC: acc, TPARAMS: tparams})
    chains = [_chain(ctx, r) for _, r in out.iterrows()]
    out = out.assign(**{CHAIN: [c[0] for c in chains], APARAMS: [c[1] for c in chains], REST: [c[2] for c in chains]})
    shown = tuple(k for k in OTHER if out[k].nunique() > 1)  # budget, epochs, ...: named only when they vary
    return out.assign(**{LABEL: [label(r, shown) for _, r in out.iterrows()],
                         CHAIN_LABEL: [label(pd.Series({**r.to_dict(), "variant": r[REST]}), shown)
                                       for _, r in out.iterrows()]})


def _keyed(frame: pd.DataFrame, keys: tuple[str, ...]) -> list[tuple[dict, pd.DataFrame]]:
    return [(dict(zip(keys, k if isinstance(k, tuple) else (k,))), g)
            for k, g in frame.groupby(list(keys), sort=False, dropna=False)]


def _p_columns(data: pd.DataFrame) -> dict[str, list[str]]:
    """A verdict table's Welch and Holm p columns as shown (empty where no test ran)."""
    def text(ps: pd.Series) -> list[str]:
        return [stats.format_p(p) if math.isfinite(p) else "" for p in ps]
    return {"Welch p": text(data["p_value"]), "Holm p": text(data["p_holm"])}


def _cell(ctx: Context, runs: pd.DataFrame, **extra: Any) -> dict:
    vals = runs[ACC].to_numpy(float)
    return {**extra, **ctx.summarize(vals), "values": vals}




def _reference(ctx: Context, df: pd.DataFrame, where: dict) -> list[dict]:
    """The no-teacher cells (no-KD student) of one dataset and student, one per configuration."""
    sub = df[(df["dataset"] == where["dataset"]) & (df["student"] == where["student"])
             & df["teacher"].isin(NO_TEACHER)]
    return [_cell(ctx, g, config=g[LABEL].iloc[0], method=k["method"]) for k, g in _keyed(sub, TEACHER_FAMILY)]


def _slug(*parts: Any) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9]+", "-", str(p)).strip("-") or "x" for p in parts)


def _text(ctx: Context, cell: dict) -> str:
    return ctx.cell({k: cell[k] for k in SUMMARY}, 2)


def _data(rows: list[dict], where: dict) -> pd.DataFrame:
    return pd.DataFrame([{**where, **{k: v for k, v in r.items() if k != "values"}} for r in rows])


def _notes(ctx: Context, df: pd.DataFrame, what: str) -> list[str]:
    return [ctx.accuracy_note(), ctx.spread_note(), what, *ctx.protocol_notes(df)]


def _order(cells: list[dict]) -> list[dict]:
    return sorted(cells, key=lambda c: (method_rank(c["method"]), c["config"]))


# --------------------------------------------------------------------------------- teacher size

def teacher_series(ctx: Context, df: pd.DataFrame) -> list[tuple[dict, list[dict]]]:
    """Every cell family with more than one teacher: its key and its cells, smallest teacher first."""
    taught = df[~df["teacher"].isin(NO_TEACHER)]
    out = []
    for key, runs in _keyed(taught, TEACHER_FAMILY):
        if runs["teacher"].nunique() < 2:
            continue
        cells = [_cell(ctx, g, teacher=t, teacher_params=float(g[TPARAMS].mean()), config=g[LABEL].iloc[0],
                       method=key["method"]) for t, g in runs.groupby("teacher", sort=False)]
        cells.sort(key=lambda c: (not math.isfinite(c["teacher_params"]), c["teacher_params"], str(c["teacher"])))
        out.append((key, cells))
    out.sort(key=lambda s: (dataset_rank(s[0]["dataset"]), str(s[0]["student"]), method_rank(s[0]["method"]),
                            s[1][0]["config"]))
    return out


def _best(cells: list[dict]) -> dict:
    """Highest mean; a tie goes to the later cell (the larger teacher / assistant)."""
    return max(reversed(cells), key=lambda c: c["mean"] if math.isfinite(c["mean"]) else -math.inf)


def teacher_verdicts(ctx: Context, series: list[tuple[dict, list[dict]]], df: pd.DataFrame) -> Table:
    """Per series: is the largest teacher the best? Welch's test of the largest against the best, Holm
    step-down across the series of this table."""
    rows = []
    for key, cells in series:
        big, best = cells[-1], _best(cells)
        w = stats.welch_test(big["values"], best["values"]) if best is not big else {"p": math.nan}
        rows.append({"dataset": key["dataset"], "student": key["student"], "config": cells[0]["config"],
                     "largest": big["teacher"], "largest_params": big["teacher_params"], "largest_mean": big["mean"],
                     "best": best["teacher"], "best_params": best["teacher_params"], "best_mean": best["mean"],
                     "best_is_largest": best is big, "diff": big["mean"] - best["mean"], "p_value": w["p"]})
    data = pd.DataFrame(rows)
    data["p_holm"] = stats.holm(data["p_value"].to_numpy(float))
    verdicts = []
    for _, r in data.iterrows():
        big = f"{r['largest']} ({human_count(r['largest_params'])} params)"
        if r["best_is_largest"]:
            verdicts.append(f"yes: the largest teacher, {big}, gives the best student")
        else:
            verdicts.append(f"no: {r['best']} ({human_count(r['best_params'])} params) gives the best student; the "
                            f"largest, {big}, is {-r['diff']:.2f} points lower (Welch p = "
                            f"{stats.format_p(r['p_value'])}, Holm p = {stats.format_p(r['p_holm'])})"
                            f"{_significance(r['p_holm'], ctx.alpha)}")
    data["verdict"] = verdicts
    display = pd.DataFrame({"Dataset": data["dataset"], "Student": data["student"], "Configuration": data["config"],
                            "Largest teacher": data["largest"], "Best teacher": data["best"],
                            "Largest − best": [f"{d:+.2f}" for d in data["diff"]],
                            **_p_columns(data),
                            "Verdict": data["verdict"]})
    what = ("Claim: the student's accuracy rises with the teacher's size, so the largest teacher (most params) "
            "is the best. Best: the teacher with the highest mean (picked on test among the teachers, which "
            "flatters it; a tie goes to the larger). Welch's t-test of the largest against the best, Holm "
            "step-down across the rows; empty when the largest is the best.")
    return Table("teacher_size_verdicts", f"Teacher size: is the largest teacher the best? — {acc_short(ctx)}",
                 display, data, _notes(ctx, df, what))


def teacher_tables(ctx: Context, series: list[tuple[dict, list[dict]]], df: pd.DataFrame) -> list[Table]:
    """Per dataset and student: teachers (with params) by configurations, plus the no-teacher row."""
    tables = []
    groups: dict[tuple, list] = {}
    for key, cells in series:
        groups.setdefault((key["dataset"], key["student"]), []).extend(cells)
    for (ds, student), cells in groups.items():
        where = {"dataset": ds, "student": student}
        ref = _order(_reference(ctx, df, where))
        cells = sorted(cells, key=lambda c: (not math.isfinite(c["teacher_params"]), c["teacher_params"],
                                             str(c["teacher"])))
        rows = [{**c, "row": c["teacher"], "row_params": human_count(c["teacher_params"])} for c in cells]
        rows += [{**c, "row": "none (no teacher)", "row_params": ""} for c in ref]
        columns = list(dict.fromkeys(c["config"] for c in _order(cells) + ref))
        display = pivot(pd.DataFrame(rows), lambda r: (r["row"], r["row_params"]), lambda r: r["config"],
                        lambda r: _text(ctx, r), ["Teacher", "Teacher params"], columns)
        sub = df[(df["dataset"] == ds) & (df["student"] == student)]
        what = ("Rows: the teacher each run distilled from, with its parameter count (`teacher_params` of the "
                "records), smallest first; the no-teacher row is the student trained without KD. Columns: the "
                "configurations whose runs differ in their teacher.")
        tables.append(Table(f"teacher_size_{_slug(ds, student)}",
                            f"Teacher size: {ds}, student {student} — {acc_short(ctx)}", display,
                            _data(rows, {}).drop(columns=["row_params"]), _notes(ctx, sub, what)))
    return tables


# ------------------------------------------------------------------------------- assistant size

def chain_series(ctx: Context, df: pd.DataFrame) -> list[tuple[dict, list[dict]]]:
    """Every cell family with more than one assistant chain, smallest first assistant first."""
    chained = df[df[CHAIN].notna()]
    out = []
    for key, runs in _keyed(chained, CHAIN_FAMILY):
        if runs[CHAIN].nunique() < 2:
            continue
        cells = []
        for chain, g in runs.groupby(CHAIN, sort=False):
            counts = np.array([list(p) for p in g[APARAMS]], float) if len(g[APARAMS].iloc[0]) else np.zeros((1, 0))
            cells.append(_cell(ctx, g, chain=chain, chain_params=tuple(counts.mean(axis=0)) if counts.size
                               else (), config=g[CHAIN_LABEL].iloc[0], method=key["method"]))
        cells.sort(key=lambda c: (tuple(-1.0 if math.isnan(x) else x for x in c["chain_params"][:1]), c["chain"]))
        out.append((key, cells))
    out.sort(key=lambda s: (dataset_rank(s[0]["dataset"]), str(s[0]["student"]), str(s[0]["teacher"]),
                            method_rank(s[0]["method"]), s[1][0]["config"]))
    return out


def _baseline(ctx: Context, df: pd.DataFrame, key: dict) -> dict | None:
    """The report's baseline method from the same teacher, dataset, student and budget (its default
    configuration when it ran in several)."""
    sub = df[(df["method"] == ctx.baseline) & (df["dataset"] == key["dataset"]) & (df["student"] == key["student"])
             & (df["teacher"] == key["teacher"])]
    for k in OTHER:
        sub = sub[sub[k] == key[k]]
    if sub.empty:
        return None
    cells = [(k, g) for k, g in _keyed(sub, TEACHER_FAMILY)]
    k, g = min(cells, key=lambda kg: (kg[0]["variant"] != "default", method_rank(kg[0]["method"], kg[0]["mode"],
                                                                               kg[0]["n_students"]), kg[0]["variant"]))
    return _cell(ctx, g, config=g[LABEL].iloc[0], method=k["method"])


def _chain_params_text(params: tuple[float, ...]) -> str:
    return " → ".join(human_count(p) for p in params) or ""


def chain_verdicts(ctx: Context, series: list[tuple[dict, list[dict]]], df: pd.DataFrame) -> Table:
    """Per series: does the best assistant chain beat the baseline from the same teacher? Welch's test,
    Holm step-down across the series of this table."""
    rows = []
    for key, cells in series:
        best, base = _best(cells), _baseline(ctx, df, key)
        w = stats.welch_test(best["values"], base["values"]) if base else {"p": math.nan}
        rows.append({"dataset": key["dataset"], "student": key["student"], "teacher": key["teacher"],
                     "config": cells[0]["config"], "best": best["chain"], "best_mean": best["mean"],
                     "baseline": base["config"] if base else "", "baseline_mean": base["mean"] if base else math.nan,
                     "diff": best["mean"] - base["mean"] if base else math.nan, "p_value": w["p"]})
    data = pd.DataFrame(rows)
    data["beats_baseline"] = data["diff"] > 0
    data["p_holm"] = stats.holm(data["p_value"].to_numpy(float))
    verdicts = []
    for _, r in data.iterrows():
        if not r["baseline"]:
            verdicts.append(f"n/a: no `{ctx.baseline}` runs from {r['teacher']} to compare")
            continue
        ps = (f"(Welch p = {stats.format_p(r['p_value'])}, Holm p = {stats.format_p(r['p_holm'])})"
              f"{_significance(r['p_holm'], ctx.alpha)}")
        if r["beats_baseline"]:
            verdicts.append(f"yes: assistant {r['best']} beats {r['baseline']} from {r['teacher']} by "
                            f"{r['diff']:+.2f} points {ps}")
        else:
            verdicts.append(f"no: the best assistant, {r['best']}, is {-r['diff']:.2f} points below "
                            f"{r['baseline']} from {r['teacher']} {ps}")
    data["verdict"] = verdicts
    display = pd.DataFrame({"Dataset": data["dataset"], "Student": data["student"], "Teacher": data["teacher"],
                            "Configuration": data["config"], "Best assistant": data["best"],
                            "Best − baseline": [f"{d:+.2f}" if math.isfinite(d) else "" for d in data["diff"]],
                            **_p_columns(data),
                            "Verdict": data["verdict"]})
    what = (f"Claim: an assistant of intermediate size helps, so the best assistant chain beats `{ctx.baseline}` "
            "straight from the same teacher (same dataset, student and budget). Best: the chain with the highest "
            "mean (picked on test among the chains, which flatters it). Welch's t-test of the two, Holm step-down "
            "across the rows.")
    return Table("assistant_size_verdicts", f"Assistant size: does the best assistant beat `{ctx.baseline}`? — "
                 f"{acc_short(ctx)}", display, data, _notes(ctx, df, what))


def chain_tables(ctx: Context, series: list[tuple[dict, list[dict]]], df: pd.DataFrame) -> list[Table]:
    """Per dataset, student and teacher: assistant chains (with params) by configurations, plus the
    baseline from the same teacher and the no-teacher row."""
    tables = []
    groups: dict[tuple, list] = {}
    for key, cells in series:
        groups.setdefault((key["dataset"], key["student"], key["teacher"]), []).append((key, cells))
    for (ds, student, teacher), members in groups.items():
        cells = [c for _, cs in members for c in cs]
        rows = [{**c, "row": c["chain"], "row_params": _chain_params_text(c["chain_params"])} for c in cells]
        bases = {b["config"]: b for b in (_baseline(ctx, df, k) for k, _ in members) if b}
        rows += [{**b, "row": "none (no assistant)", "row_params": ""} for b in bases.values()]
        ref = _order(_reference(ctx, df, {"dataset": ds, "student": student}))
        rows += [{**c, "row": "none (no teacher)", "row_params": ""} for c in ref]
        columns = list(dict.fromkeys(c["config"] for c in _order(cells) + list(bases.values()) + ref))
        display = pivot(pd.DataFrame(rows), lambda r: (r["row"], r["row_params"]), lambda r: r["config"],
                        lambda r: _text(ctx, r), ["Assistants", "Assistant params"], columns)
        sub = df[(df["dataset"] == ds) & (df["student"] == student)]
        what = (f"Teacher {teacher}. Rows: the assistant chain between teacher and student (teacher side first) "
                "with its parameter counts (from the method's stage metrics), smallest first; `none (no assistant)`: "
                f"`{ctx.baseline}` straight from the teacher; `none (no teacher)`: the student trained without KD.")
        data = _data(rows, {"teacher_of_table": teacher}).drop(columns=["row_params"])
        data["chain_params"] = [json_list(p) for p in data.get("chain_params", pd.Series([()] * len(data)))]
        tables.append(Table(f"assistant_size_{_slug(ds, student, teacher)}",
                            f"Assistant size: {ds}, student {student}, teacher {teacher} — {acc_short(ctx)}",
                            display, data, _notes(ctx, sub, what)))
    return tables


def json_list(value: Any) -> str:
    """A chain's counts as one CSV cell: `[1000, 4000]`, '' when the row has none."""
    if not isinstance(value, (list, tuple)):
        return ""
    return "[" + ", ".join("nan" if math.isnan(x) else f"{x:.0f}" for x in value) + "]"


# ------------------------------------------------------------------------------------- figures

def _bands(ax: Any, cells: list[dict], start: int) -> None:
    """Reference cells as horizontal bands: the mean as a line, the 95% CI shaded (none with one seed)."""
    for j, c in enumerate(cells):
        colour = series_color(2 * (start + j))
        ax.axhline(c["mean"], color=colour, linestyle="--", linewidth=1, label=f"{c['config']}: mean ± 95% CI")
        if math.isfinite(c["ci_low"]) and math.isfinite(c["ci_high"]):
            ax.axhspan(c["ci_low"], c["ci_high"], color=colour, alpha=0.2, linewidth=0)


def _lines(ax: Any, series: list[list[dict]], x_of: Any) -> None:
    for i, cells in enumerate(series):
        pts = [c for c in cells if math.isfinite(x_of(c))]
        if not pts:
            continue
        err = np.array([whiskers(c) for c in pts]).T
        ax.errorbar([x_of(c) for c in pts], [c["mean"] for c in pts], yerr=err, marker=MARKERS[i % len(MARKERS)],
                    color=series_color(2 * i), capsize=3, label=pts[0]["config"])


def _figure(ctx: Context, panels: list[tuple[str, list[list[dict]], list[dict]]], x_of: Any, xname: str,
            name: str, title: str, out: Path) -> Figure:
    fig = MplFigure(figsize=(8.0, 4.2 * len(panels)), layout="constrained")
    for ax, (heading, series, refs) in zip(fig.subplots(len(panels), 1, squeeze=False)[:, 0], panels):
        _lines(ax, series, x_of)
        _bands(ax, refs, len(series))
        ax.set_xscale("log")
        ax.set_xlabel(xname)
        ax.set_ylabel("student test accuracy (%)")
        ax.set_title(heading)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    fig.suptitle(f"{title} ({acc_short(ctx)})\nerror bars and bands: 95% CI of the mean over seeds")
    return Figure(name, title, save(fig, out, name))


def build(ctx: Context, out: Path, figures: bool = True) -> list[Section]:
    """The teacher-size and assistant-size sections, each only when some cell family varies in it."""
    df = study_frame(ctx)
    sections = []
    series = teacher_series(ctx, df)
    if series:
        panels = {}
        for key, cells in series:
            p = panels.setdefault((key["dataset"], key["student"]), [f"{key['dataset']}: student {key['student']}", []])
            p[1].append(cells)
        panels = [(h, s, _order(_reference(ctx, df, {"dataset": d, "student": st})))
                  for (d, st), (h, s) in panels.items()]
        title = "Teacher size: student accuracy vs teacher params"
        figs = [_figure(ctx, panels, lambda c: c["teacher_params"], "parameters of the teacher", "teacher_size",
                        title, out)] if figures else []
        sections.append(Section("Teacher size", TEACHER_NOTE,
                                [*teacher_tables(ctx, series, df), teacher_verdicts(ctx, series, df)], figs))
    series = chain_series(ctx, df)
    if series:
        panels = {}
        for key, cells in series:
            k = (key["dataset"], key["student"], key["teacher"])
            panels.setdefault(k, [f"{k[0]}: teacher {k[2]} → student {k[1]}", [], []])
            panels[k][1].append(cells)
            base = _baseline(ctx, df, key)
            if base and all(b["config"] != base["config"] for b in panels[k][2]):
                panels[k][2].append(base)
        panels = [(h, s, [*b, *_order(_reference(ctx, df, {"dataset": d, "student": st}))])
                  for (d, st, _), (h, s, b) in panels.items()]
        title = "Assistant size: student accuracy vs assistant params"
        figs = [_figure(ctx, panels, lambda c: c["chain_params"][0] if c["chain_params"] else math.nan,
                        "parameters of the (first) assistant", "assistant_size", title, out)] if figures else []
        sections.append(Section("Assistant size", ASSISTANT_NOTE,
                                [*chain_tables(ctx, series, df), chain_verdicts(ctx, series, df)], figs))
    return sections


TEACHER_NOTE = ("Runs of one configuration distil from teachers of different sizes: the student's accuracy against "
                "the teacher's parameter count, next to the student trained without a teacher, and whether the "
                "largest teacher gives the best student.")
ASSISTANT_NOTE = ("Runs of one configuration put different teacher assistants between teacher and student: the "
                  "student's accuracy against the assistant's parameter count, next to the baseline straight from "
                  "the teacher and the student trained without a teacher, and whether the best assistant beats the "
                  "baseline.")
