"""kdbench's own tables, mirroring the papers' layouts (TCN Tables 1, 2, 3, 5, 6, 8; TAKD Table 1).

Each builder is registered by name with an order; it returns a Table, or a Skipped saying which
records were missing. Cells hold mean ± spread (n=...) over seeds; the CSV holds the numbers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from .. import stats
from ..registry import Registry
from .context import Context, count_cell, label, pivot, sort_cells
from .data import BASE_KEYS, dataset_rank, has_values, list_metric, numeric, varying_extras
from .table import Skipped, Table

Builder = Callable[[Context], "Table | Skipped"]


@dataclass(frozen=True)
class TableSpec:
    order: int
    name: str
    title: str
    build: Builder


TABLES: Registry[TableSpec] = Registry("table")


def table(order: int, name: str, title: str) -> Callable[[Builder], Builder]:
    """Register a builder under `name`; `order` fixes its place in the report."""
    def deco(fn: Builder) -> Builder:
        TABLES.add(name, TableSpec(order, name, title, fn))
        return fn
    return deco


def ordered_specs() -> list[TableSpec]:
    return sorted((spec for _, spec in TABLES.items()), key=lambda s: (s.order, s.name))


def _keys(df: pd.DataFrame) -> tuple[list[str], tuple[str, ...]]:
    extras = varying_extras(df)
    return [*BASE_KEYS, *extras], extras


def _data(summ: pd.DataFrame, extras: tuple[str, ...], **columns: object) -> pd.DataFrame:
    """CSV frame: the summary plus a `label` column (and any constant columns given)."""
    out = summ.copy()
    out.insert(0, "label", [label(r, extras) for _, r in out.iterrows()])
    for k, v in columns.items():
        out[k] = v
    return out


def _datasets(df: pd.DataFrame) -> list[str]:
    return sorted(set(df["dataset"]), key=dataset_rank)


def teacher_summary(ctx: Context, datasets: list[str]) -> pd.DataFrame:
    """Teacher accuracy per (dataset, teacher): one observation per distinct teacher, not per run."""
    df = ctx.df[ctx.df["dataset"].isin(datasets)]
    if not has_values(df, "teacher_test_acc"):
        return pd.DataFrame()
    df = df.assign(teacher_test_acc=numeric(df, "teacher_test_acc")).dropna(subset=["teacher_test_acc"])
    df = df.drop_duplicates(subset=["dataset", "teacher", "teacher_id"], keep="first")
    summ = stats.summary_table(df, "teacher_test_acc", ["dataset", "teacher"], baseline_method=None,
                               bootstrap=ctx.bootstrap)
    summ.insert(1, "method", "teacher")
    summ.insert(2, "mode", "")
    summ.insert(3, "n_students", "")
    summ.insert(4, "variant", "default")
    return summ


def teacher_label(name: object) -> str:
    """`Teacher`, naming the architecture when it is not the dataset's default one."""
    return "Teacher" if name in ("", "auto", None) else f"Teacher [{name}]"


# ---------------------------------------------------------------------------------- accuracy

@table(10, "summary_accuracy", "Accuracy of every configuration, with Welch tests against the baseline")
def summary_accuracy(ctx: Context) -> Table | Skipped:
    col = ctx.accuracy.column
    df = ctx.df[numeric(ctx.df, col).notna()]
    if df.empty:
        return Skipped("summary_accuracy", "Accuracy summary", f"no run records with `{col}`")
    keys, extras = _keys(df)
    summ = sort_cells(ctx.summary(df, col, keys, baseline=ctx.baseline), extras)
    display = pd.DataFrame({
        "Dataset": summ["dataset"],
        "Configuration": [label(r, extras) for _, r in summ.iterrows()],
        "Accuracy (%)": [ctx.cell(r, 2) for _, r in summ.iterrows()],
        f"Δ vs {ctx.baseline}": [f"{d:+.2f}" if np.isfinite(d) else "" for d in summ["diff"]],
        "Welch p": [stats.format_p(p) if np.isfinite(p) else "" for p in summ["p_value"]],
        "Holm p": [stats.format_p(p) if np.isfinite(p) else "" for p in summ["p_holm"]],
    })
    notes = [ctx.accuracy_note(), ctx.spread_note(),
             f"Δ and p: against the `{ctx.baseline}` cell of the same dataset (the one agreeing on most other "
             f"settings); Welch's t-test, Holm step-down adjustment across all rows of this table; empty where "
             f"there is no baseline or fewer than 2 seeds on a side.", *ctx.protocol_notes(df)]
    return Table("summary_accuracy", f"Accuracy summary: test accuracy (%) — {_acc_short(ctx)}", display,
                 _data(summ, extras, accuracy_column=col), notes)


@table(20, "tcn_table3_accuracy", "TCN Table 3: accuracy")
def tcn_table3(ctx: Context) -> Table | Skipped:
    col = ctx.accuracy.column
    df = ctx.df[ctx.df["method"].isin(["student", "kd", "kdgan", "tcn"]) & numeric(ctx.df, col).notna()]
    if not (df["method"] == "tcn").any():
        return Skipped("tcn_table3_accuracy", "TCN Table 3 (accuracy)", f"no TCN run records with `{col}`")
    keys, extras = _keys(df)
    summ = ctx.summary(df, col, keys, baseline=ctx.baseline)
    datasets = _datasets(df)
    teach = teacher_summary(ctx, datasets)
    both = sort_cells(pd.concat([teach, summ], ignore_index=True) if len(teach) else summ, extras)

    def row_of(r: pd.Series) -> tuple:
        return (teacher_label(r["teacher"]) if r["method"] == "teacher" else label(r, extras),)

    display = pivot(both, row_of, lambda r: r["dataset"], lambda r: ctx.cell(r, 2, mark=True),
                    ["Method"], datasets)
    notes = [ctx.accuracy_note(), ctx.spread_note(), ctx.significance_note(),
             "Teacher: the recorded `teacher_test_acc`, one observation per distinct teacher (a cached teacher "
             "shared by runs counts once).", *ctx.protocol_notes(df)]
    data = _data(both, extras, accuracy_column=col)
    return Table("tcn_table3_accuracy", f"TCN Table 3: test accuracy (%) — {_acc_short(ctx)}", display, data, notes)


def _acc_short(ctx: Context) -> str:
    return "val-best epoch" if ctx.accuracy_name == "valbest" else "last epoch"


@table(30, "tcn_table1_feature_mse", "TCN Table 1: per-student feature MSE")
def tcn_table1(ctx: Context) -> Table | Skipped:
    df = ctx.df[ctx.df["method"] == "tcn"]
    lists = list_metric(df, "feature_mse_per_student")
    if not any(lists):
        return Skipped("tcn_table1_feature_mse", "TCN Table 1 (per-student feature MSE)",
                       "no TCN run records with `feature_mse_per_student`")
    keys, extras = _keys(df)
    long_rows = []
    for (_, r), values, combined in zip(df.iterrows(), lists, numeric(df, "feature_mse")):
        cell = {k: r[k] for k in keys}
        long_rows += [{**cell, "student_index": j, "feature_mse": v} for j, v in enumerate(values, start=1)]
        if np.isfinite(combined):
            long_rows.append({**cell, "student_index": 0, "feature_mse": float(combined)})
    long = pd.DataFrame(long_rows)
    summ = sort_cells(ctx.summary(long, "feature_mse", [*keys, "student_index"]), extras)
    width = int(summ["student_index"].max())
    dec = stats.auto_decimals(float(np.nanmedian(summ["mean"])), 3, minimum=3)
    cols = [f"S{j}" for j in range(1, width + 1)] + ["All"]
    display = pivot(summ, lambda r: (r["dataset"], label(r, extras)),
                    lambda r: "All" if r["student_index"] == 0 else f"S{int(r['student_index'])}",
                    lambda r: ctx.cell(r, dec), ["Dataset", "Configuration"], cols)
    notes = ["Feature MSE on val between each student's output and its chunk of the teacher's dense "
             "representation (`feature_mse_per_student`, chunk order); All: `feature_mse`, all students combined.",
             ctx.spread_note(), *ctx.protocol_notes(df)]
    data = _data(summ.rename(columns={"student_index": "student"}), extras)
    return Table("tcn_table1_feature_mse", "TCN Table 1: per-student feature MSE (val)", display, data, notes)


@table(40, "tcn_table2_finetune", "TCN Table 2: with and without fine-tuning")
def tcn_table2(ctx: Context) -> Table | Skipped:
    col, col_nf = ctx.accuracy.column, ctx.accuracy.no_finetune_column
    df = ctx.df[ctx.df["method"] == "tcn"].copy()
    if df.empty or not (has_values(df, col) or has_values(df, col_nf)):
        return Skipped("tcn_table2_finetune", "TCN Table 2 (fine-tuning)", f"no TCN run records with `{col}`")
    flags = df["finetuned"] if "finetuned" in df.columns else pd.Series(False, index=df.index)
    tuned = flags.map(lambda v: bool(v) if isinstance(v, (bool, np.bool_)) else False).to_numpy(dtype=bool)
    acc, acc_nf = numeric(df, col), numeric(df, col_nf)
    df["without"] = np.where(tuned, acc_nf, acc)
    df["with"] = np.where(tuned, acc, np.nan)
    df["gain"] = df["with"] - df["without"]
    keys, extras = _keys(df)
    parts = []
    for what in ("without", "with", "gain"):
        s = ctx.summary(df, what, keys)
        s.insert(len(keys), "quantity", what)
        parts.append(s)
    summ = sort_cells(pd.concat(parts, ignore_index=True), extras)
    heads = {"without": "Without fine-tuning", "with": "With fine-tuning", "gain": "Gain (with − without)"}
    display = pivot(summ, lambda r: (r["dataset"], label(r, extras)), lambda r: heads[r["quantity"]],
                    lambda r: ctx.cell(r, 2), ["Dataset", "Configuration"], list(heads.values()))
    notes = [ctx.accuracy_note() + f" Without fine-tuning: `{col_nf}` (or `{col}` of runs that did not "
             "fine-tune); with: the fine-tuned output layer (students frozen). Gain: per-run paired difference.",
             ctx.spread_note(), *ctx.protocol_notes(df)]
    return Table("tcn_table2_finetune", f"TCN Table 2: accuracy (%) with and without fine-tuning — {_acc_short(ctx)}",
                 display, _data(summ, extras, accuracy_column=col), notes)


# ---------------------------------------------------------------------------------- cost

_LATENCY = (("Teacher", "latency.{b}.teacher"), ("Deployed", "latency_ms_{b}"),
            ("Sequential", "latency.{b}.sequential"), ("Fused", "latency.{b}.fused"),
            ("Parallel", "latency.{b}.parallel"))
OVERSUBSCRIBED = "‡"
_PHASES = {"train": "training", "latency": "latency"}


def _busy_cells(ctx: Context, df: pd.DataFrame, keys: list[str], phase: str) -> dict[tuple, int]:
    """Cells (key tuples) with runs whose `phase` was timed on an oversubscribed machine (the
    record's `env.load.<phase>.oversubscribed`: load average above the CPU count), and how many."""
    def busy(key: str) -> bool:
        load = (ctx.results.env.get(key) or {}).get("load")
        return isinstance(load, dict) and isinstance(load.get(phase), dict) and load[phase].get("oversubscribed") is True

    flags = df["run_key"].map(busy)
    counts = flags.groupby([df[k] for k in keys], sort=False, dropna=False).sum()
    return {(k if isinstance(k, tuple) else (k,)): int(n) for k, n in counts.items() if n}


def _flag(text: str, r: pd.Series, keys: list[str], busy: dict[tuple, int]) -> str:
    return f"{text} {OVERSUBSCRIBED}" if tuple(r[k] for k in keys) in busy else text


def _busy_note(busy: dict[tuple, int], phase: str) -> list[str]:
    if not busy:
        return []
    return [f"{OVERSUBSCRIBED} {sum(busy.values())} run(s) of {len(busy)} cell(s) had their {_PHASES[phase]} timed while "
            f"the machine was oversubscribed (1-min load average above its CPU count, `env.load.{phase}`): "
            f"those times include waiting for a core and are inflated."]


def _flags(df: pd.DataFrame, column: str) -> pd.Series:
    """A boolean column (True only where the record says true; missing -> False)."""
    if column not in df.columns:
        return pd.Series(False, index=df.index)
    return df[column].map(lambda v: isinstance(v, (bool, np.bool_)) and bool(v)).astype(bool)


def _latency_note(df: pd.DataFrame) -> str:
    """How the latencies behind a table were measured: the quiet pass, inside the runs, or both."""
    quiet = _flags(df, "latency_quiet")
    parts = []
    if quiet.any():
        threads = sorted({int(t) for t in numeric(df[quiet], "latency_pass.threads").dropna()})
        rel = sorted({float(v) for v in numeric(df[quiet], "latency_pass.rule.rel_halfwidth").dropna()})
        capped = int(_flags(df[quiet], "latency_pass.capped").sum())
        parts.append(f"{int(quiet.sum())} run(s) timed in the quiet pass (`kdbench latency`: after training, one model "
                     f"at a time, {'/'.join(map(str, threads)) or '?'} torch thread(s), warm-up, repeated until the 95% "
                     f"CI of the median was within {'/'.join(f'{v:.0%}' for v in rel) or '?'} of it"
                     + (f"; in {capped} run(s) a timing stopped at the cap first, see `latency_pass.timings`" if capped else "")
                     + ")")
    if (~quiet).any():
        parts.append(f"{int((~quiet).sum())} run(s) timed inside the run (20 timed passes, possibly sharing the cores "
                     f"with other runs)")
    return "Milliseconds per batch, median of timed forward passes, eval mode: " + "; ".join(parts) + "."


@table(50, "tcn_table5_inference_time", "TCN Table 5: inference time")
def tcn_table5(ctx: Context) -> Table | Skipped:
    cols = {b: [(head, pat.format(b=b)) for head, pat in _LATENCY] for b in ("b1", "b256")}
    present = [c for b in cols for _, c in cols[b] if has_values(ctx.df, c)]
    if not present:
        return Skipped("tcn_table5_inference_time", "TCN Table 5 (inference time)", "no run records with latency")
    df = ctx.df[ctx.df[present].apply(pd.to_numeric, errors="coerce").notna().any(axis=1)]
    keys, extras = _keys(df)
    parts = []
    for b, pairs in cols.items():
        for head, c in pairs:
            if c not in present:
                continue
            s = ctx.summary(df.assign(_v=numeric(df, c)), "_v", keys)
            s.insert(len(keys), "batch", int(b[1:]))
            s.insert(len(keys) + 1, "quantity", head)
            s.insert(len(keys) + 2, "metric", c)
            parts.append(s)
    summ = sort_cells(pd.concat(parts, ignore_index=True), (*extras, "batch"))
    heads = [h for h, _ in _LATENCY if any(summ["quantity"] == h)]
    busy = _busy_cells(ctx, df, keys, "latency")
    display = pivot(summ, lambda r: (r["dataset"], label(r, extras), str(r["batch"])), lambda r: r["quantity"],
                    lambda r: _flag(ctx.cell(r, stats.auto_decimals(r["mean"], 3, maximum=4)), r, keys, busy),
                    ["Dataset", "Configuration", "Batch"], heads)
    notes = [_latency_note(df) + " Deployed: "
             "the method's predictor; TCN sequential: students one after another; fused: one batched computation; "
             "parallel: max over students (one student per worker, as the paper's one student per VM).",
             "Timings depend on the machine; see the environment in the appendix.", *_busy_note(busy, "latency"),
             ctx.spread_note(), *ctx.protocol_notes(df)]
    return Table("tcn_table5_inference_time", "TCN Table 5: inference time (ms per batch)", display,
                 _data(summ, extras), notes)


def _each(df: pd.DataFrame, list_col: str, col: str) -> list[float]:
    """Per-student value of a run: mean of the per-student list, or the deployed value for one model."""
    out = []
    for v, whole in zip(list_metric(df, list_col), numeric(df, col)):
        out.append(float(np.mean(v)) if v else float(whole))
    return out


@table(60, "tcn_table6_params_flops", "TCN Table 6: parameters and FLOPs")
def tcn_table6(ctx: Context) -> Table | Skipped:
    df = ctx.df[numeric(ctx.df, "params").notna()]
    if df.empty:
        return Skipped("tcn_table6_params_flops", "TCN Table 6 (parameters and FLOPs)",
                       "no run records with `params`")
    keys, extras = _keys(df)
    df = df.assign(params_each=_each(df, "params_per_student", "params"),
                   flops_each=_each(df, "flops_per_student", "flops"),
                   params_all=numeric(df, "params"), flops_all=numeric(df, "flops"))
    quantities = ("params_each", "flops_each", "params_all", "flops_all")
    rows = []
    teach = df.assign(method="teacher", mode="", n_students="", variant="default")
    teach = teach[numeric(teach, "teacher_params").notna()]
    for frame, is_teacher in ((teach, True), (df, False)):
        group_keys = ["dataset", "teacher"] if is_teacher else keys
        for key, sub in frame.groupby(group_keys, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            row = dict(zip(group_keys, key))
            if is_teacher:
                row.update(method="teacher", mode="", n_students="", variant="default")
            row["runs"] = len(sub)
            for q in quantities:
                src = "teacher_" + q.split("_")[0] if is_teacher else q
                v = numeric(sub, src)
                row[q], row[q + "_min"], row[q + "_max"] = v.mean(), v.min(), v.max()
                row[q + "_text"] = count_cell(v)
            rows.append(row)
    summ = sort_cells(pd.DataFrame(rows), extras)
    heads = {"params_each": "Params each", "flops_each": "FLOPs each", "params_all": "Params all",
             "flops_all": "FLOPs all"}
    display = pd.DataFrame({"Dataset": summ["dataset"],
                            "Configuration": [(teacher_label(r["teacher"]) if r["method"] == "teacher" else label(r, extras))
                                              for _, r in summ.iterrows()],
                            **{h: summ[q + "_text"] for q, h in heads.items()}})
    notes = ["Per sample, counted with fvcore: FLOPs = 2 x MACs. Each: per student (mean over students when "
             "they differ); all: the deployed predictor (all students + output layer). A range a–b means runs of "
             "the cell disagree.", *ctx.protocol_notes(df)]
    data = summ.drop(columns=[c for c in summ.columns if c.endswith("_text")])
    return Table("tcn_table6_params_flops", "TCN Table 6: parameters and FLOPs", display,
                 _data(data, extras), notes)


@table(70, "tcn_table8_training_time", "TCN Table 8: training time")
def tcn_table8(ctx: Context) -> Table | Skipped:
    df = ctx.df[numeric(ctx.df, "train_time_s").notna()]
    if df.empty:
        return Skipped("tcn_table8_training_time", "TCN Table 8 (training time)", "no run records with `train_time_s`")
    keys, extras = _keys(df)
    df = df.assign(time_per_student=_each(df, "train_time_per_student_s", "train_time_s"),
                   flops_each=_each(df, "flops_per_student", "flops"))
    quantities = {"epochs_run": "Epochs", "epoch_time_s": "Seconds / epoch",
                  "time_per_student": "Seconds / student", "train_time_s": "Total fit (s)"}
    parts = []
    for q in quantities:
        if not has_values(df, q):
            continue
        s = ctx.summary(df.assign(_v=numeric(df, q)), "_v", keys)
        s.insert(len(keys), "quantity", q)
        parts.append(s)
    summ = sort_cells(pd.concat(parts, ignore_index=True), extras)
    flops = {}
    for key, sub in df.groupby(keys, sort=False):
        flops[(key[0], label(pd.Series(dict(zip(keys, key))), extras))] = count_cell(sub["flops_each"])

    busy = _busy_cells(ctx, df, keys, "train")

    def text(r: pd.Series) -> str:
        if r["quantity"] == "epochs_run":
            return ctx.cell(r, 1)
        return _flag(ctx.cell(r, stats.auto_decimals(r["mean"], 3, maximum=3)), r, keys, busy)

    heads = [quantities[q] for q in quantities if (summ["quantity"] == q).any()]
    display = pivot(summ, lambda r: (r["dataset"], label(r, extras)), lambda r: quantities[r["quantity"]], text,
                    ["Dataset", "Configuration"], heads)
    display["FLOPs each"] = [flops.get((d, c), "n/a") for d, c in zip(display["Dataset"], display["Configuration"])]
    notes = ["Wall time of `method.fit` (teacher training and target caching excluded). Seconds / epoch: mean "
             "epoch time (TCN: per student-epoch). Seconds / student: mean over students of each student's time "
             "(the deployed model's time for single-model methods).",
             "Timings depend on the machine; see the environment in the appendix.", *_busy_note(busy, "train"),
             ctx.spread_note(), *ctx.protocol_notes(df)]
    return Table("tcn_table8_training_time", "TCN Table 8: training time", display, _data(summ, extras), notes)


@table(75, "sweep_cost", "Where the sweep's time went")
def sweep_cost(ctx: Context) -> Table | Skipped:
    """Each run's wall time split into fitting, teacher targets, teacher loading and the rest
    (measurement, evaluation, record writing), summed per configuration; the teachers' one-off
    training time is counted once per distinct teacher."""
    df = ctx.df[numeric(ctx.df, "wall_s").notna()]
    if df.empty:
        return Skipped("sweep_cost", "Where the sweep's time went", "no run records with start and finish times")
    keys, extras = _keys(df)
    parts = {"train_time_s": "Fit (s)", "targets_time_s": "Targets (s)", "teacher_load_s": "Teacher load (s)"}
    df = df.assign(**{c: numeric(df, c).fillna(0.0) for c in parts}, wall=numeric(df, "wall_s"))
    df = df.assign(rest=(df["wall"] - sum(df[c] for c in parts)).clip(lower=0.0))
    sums = ["wall", *parts, "rest"]
    summ = sort_cells(df.assign(runs=1).groupby(keys, sort=False)[["runs", *sums]].sum().reset_index(), extras)
    teachers = df.drop_duplicates("teacher_id")
    teacher_train = {d: float(numeric(g, "teacher_time_s").fillna(0.0).sum()) for d, g in teachers.groupby("dataset")}
    fmt = lambda v: f"{v:,.1f}" if v < 10 else f"{v:,.0f}"  # noqa: E731
    totals = summ.groupby("dataset", sort=False)[["runs", *sums]].sum().reset_index().assign(label="all runs")
    totals = totals.iloc[sorted(range(len(totals)), key=lambda i: dataset_rank(totals["dataset"].iloc[i]))]
    both = pd.concat([summ.assign(label=[label(r, extras) for _, r in summ.iterrows()]), totals], ignore_index=True)
    heads = {"wall": "Wall (s)", **parts, "rest": "Measurement and rest (s)"}
    busy = _busy_cells(ctx, df, keys, "train")
    display = pd.DataFrame({"Dataset": both["dataset"], "Configuration": both["label"], "Runs": both["runs"].astype(int).astype(str),
                            **{h: both[c].map(fmt) for c, h in heads.items()}})
    display["Fit (s)"] = [_flag(t, r, keys, busy) if i < len(summ) else t
                          for i, (t, (_, r)) in enumerate(zip(display["Fit (s)"], both.iterrows()))]
    once = ", ".join(f"{d} {v:,.0f} s" for d, v in sorted(teacher_train.items()) if v > 0) or "none recorded"
    notes = ["Sums over the runs behind each row. Wall: the record's finish minus start time (1 s resolution); "
             "Fit: `method.fit`; Targets: computing the teacher targets (0 when they come from the cache, which is read memory-mapped inside Fit); Teacher load: "
             "finding and loading the cached teacher; Measurement and rest: evaluation, FLOPs, latency, memory "
             "and writing the record.",
             f"Teacher training, once per distinct teacher and not in the rows: {once}.",
             "Wall times include any time the runs spent waiting for a CPU on a shared machine; see the load "
             "in the environment appendix.", *_busy_note(busy, "train"), *ctx.protocol_notes(df)]
    return Table("sweep_cost", "Where the sweep's time went", display, _data(summ, extras), notes)


# ---------------------------------------------------------------------------------- TAKD

@table(80, "takd_table1", "TAKD Table 1: no KD / KD / TAKD")
def takd_table1(ctx: Context) -> Table | Skipped:
    col = ctx.accuracy.column
    df = ctx.df[numeric(ctx.df, col).notna()]
    takd = df[df["method"] == "takd"]
    if takd.empty:
        return Skipped("takd_table1", "TAKD Table 1", f"no TAKD run records with `{col}`")
    pairs = set(zip(takd["dataset"], takd["student"]))
    df = df[df["method"].isin(["student", "kd", "takd"])]
    df = df[[(d, s) in pairs for d, s in zip(df["dataset"], df["student"])]]
    keys, extras = _keys(df)
    keys = [*keys, *(["student"] if "student" not in keys else [])]
    extras = tuple(e for e in extras if e != "student")
    summ = sort_cells(ctx.summary(df, col, keys, baseline=ctx.baseline, match=("dataset", "student")), extras)
    cols = list(dict.fromkeys(label(r, extras) for _, r in summ.iterrows()))
    display = pivot(summ, lambda r: (r["dataset"], r["student"]), lambda r: label(r, extras),
                    lambda r: ctx.cell(r, 2, mark=True), ["Dataset", "Student"], cols)
    notes = [ctx.accuracy_note(), ctx.spread_note(), ctx.significance_note("same dataset and student"),
             "Student (no KD): cross-entropy only, same schedule; KD: Hinton from the teacher; TAKD: through the "
             "assistant chain of the run (`variant` names non-default assistants).", *ctx.protocol_notes(df)]
    return Table("takd_table1", f"TAKD Table 1: test accuracy (%) — {_acc_short(ctx)}", display,
                 _data(summ, extras, accuracy_column=col), notes)


# ---------------------------------------------------------------------------------- overview / appendix

def runs_table(ctx: Context) -> Table:
    """How many runs and which seeds back each configuration."""
    df = ctx.df
    keys, extras = _keys(df)
    rows = []
    for key, sub in df.groupby(keys, sort=False):
        r = dict(zip(keys, key))
        r["runs"] = len(sub)
        r["seeds"] = ",".join(str(s) for s in sorted(sub["seed"], key=lambda v: (isinstance(v, str), v)))
        rows.append(r)
    summ = sort_cells(pd.DataFrame(rows), extras)
    display = pd.DataFrame({"Dataset": summ["dataset"],
                            "Configuration": [label(r, extras) for _, r in summ.iterrows()],
                            "Runs": summ["runs"].astype(str), "Seeds": summ["seeds"]})
    notes = [f"{len(df)} ok runs" + (f"; {ctx.results.n_failed} failed runs are not counted."
                                     if ctx.results.n_failed else ".")]
    return Table("runs", "Runs per configuration", display, _data(summ, extras), notes)


ENV_KEYS_FIRST = ("kdbench_version", "git_commit", "torch", "cuda", "device", "cpu", "threads", "platform")


def environment_table(ctx: Context) -> Table:
    """Distinct values of each env field with how many runs had them."""
    counts: dict[tuple[str, str], int] = {}
    for key in ctx.df["run_key"]:
        for k, v in sorted(_flat_env(ctx.results.env.get(key, {})).items()):
            if k.startswith("load.") and not k.endswith(".oversubscribed"):  # per-run numbers: in the records
                continue
            counts[(k, v)] = counts.get((k, v), 0) + 1
    names = sorted({k for k, _ in counts}, key=lambda k: (ENV_KEYS_FIRST.index(k) if k in ENV_KEYS_FIRST
                                                          else len(ENV_KEYS_FIRST), k))
    rows = [(k, v, c) for k in names for (kk, v), c in sorted(counts.items()) if kk == k]
    data = pd.DataFrame(rows, columns=["field", "value", "runs"])
    display = pd.DataFrame({"Field": data["field"], "Value": data["value"], "Runs": data["runs"].astype(str)})
    if data.empty:
        display = pd.DataFrame({"Field": ["(none)"], "Value": ["no env recorded"], "Runs": ["0"]})
    return Table("environment", "Environment of the runs", display, data,
                 [f"From the records' `env`; {len(ctx.df)} runs."])


def _flat_env(env: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in env.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_env(v, name + "."))
        else:
            out[name] = str(v)
    return out


def teachers_table(ctx: Context) -> Table:
    """One row per distinct teacher: how it was made (recipe or import) and its accuracy, so a reader
    sees whether it is the paper's teacher or kdbench's stand-in."""
    rows: dict[str, dict[str, Any]] = {}
    warned: dict[str, None] = {}  # the teachers' warnings (val above test beyond chance), once each
    for key, tid, val, test in zip(ctx.df["run_key"], ctx.df["teacher_id"], numeric(ctx.df, "teacher_val_acc"),
                                   numeric(ctx.df, "teacher_test_acc")):
        info = ctx.results.teachers.get(key)
        if not info:
            continue
        warned.update(dict.fromkeys(str(w) for w in info.get("warnings") or []))
        row = rows.setdefault(tid, {"teacher": str(info.get("arch", "")), "dataset": str(info.get("dataset", "")),
                                    "source": str(info.get("source", "")), "how": _teacher_how(info),
                                    "val_acc": val, "test_acc": test, "runs": 0})
        row["runs"] += 1
    data = pd.DataFrame(list(rows.values()), columns=["teacher", "dataset", "source", "how", "val_acc", "test_acc", "runs"])
    fmt = lambda v: "" if pd.isna(v) else f"{float(v):.2f}"  # noqa: E731
    display = pd.DataFrame({"Teacher": data["teacher"], "Dataset": data["dataset"], "Made by": data["source"],
                            "Recipe / weights": data["how"], "Val acc (%)": data["val_acc"].map(fmt),
                            "Test acc (%)": data["test_acc"].map(fmt), "Runs": data["runs"].astype(str)})
    if data.empty:
        display = pd.DataFrame({"Teacher": ["(none)"], "Dataset": [""], "Made by": [""], "Recipe / weights": [""],
                                "Val acc (%)": [""], "Test acc (%)": [""], "Runs": ["0"]})
    return Table("teachers", "Teachers", display, data,
                 ["From the records' `teacher` block. A trained teacher uses kdbench's recipe (shown), not a "
                  "paper's unless the recipe says so; its test accuracy is reported only, never used for selection.",
                  *(f"Warning: {w}" for w in warned)])


def _teacher_how(info: dict[str, Any]) -> str:
    r = info.get("recipe")
    if isinstance(r, dict):
        wd = f", wd {r['weight_decay']:g}" if r.get("weight_decay") else ""
        return f"{r.get('optimizer')} lr {r.get('lr'):g}{wd}, {r.get('epochs')} epochs, batch {r.get('batch_size')}"
    sha = str(info.get("weights_sha256", ""))[:12]
    return f"imported weights {sha}" if sha else str(info.get("source", ""))


def deviations_table(ctx: Context) -> Table:
    counts: dict[str, int] = {}
    for key in ctx.df["run_key"]:
        for d in dict.fromkeys(ctx.results.deviations.get(key, [])):
            counts[d] = counts.get(d, 0) + 1
    data = pd.DataFrame(sorted(counts.items()), columns=["deviation", "runs"])
    display = pd.DataFrame({"Deviation": data["deviation"], "Runs": data["runs"].astype(str)})
    if data.empty:
        display = pd.DataFrame({"Deviation": ["none recorded"], "Runs": ["0"]})
    return Table("deviations", "Deviations from the papers recorded by the runs", display, data,
                 ["Each run records where it departs from the paper (architecture guesses, data substitutes, "
                  "variants); the count is the number of runs carrying it."])
