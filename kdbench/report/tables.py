"""The report's generic tables (accuracy summary, sweep cost, runs, teachers, environment, deviations)
and the registry and helpers every table builder uses, the papers' own tables included.

A paper's tables (e.g. TCN Tables 1-8, TAKD Table 1) live with that paper in `kdbench/papers/`
and register here with `@table(order, name, title)`. Each builder returns a Table, or a Skipped
saying which records were missing. Cells hold mean ± spread (n=...) over seeds; the CSV holds the numbers."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .. import stats
from ..registry import Registry
from .context import Context, label, sort_cells
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


def cell_keys(df: pd.DataFrame) -> tuple[list[str], tuple[str, ...]]:
    extras = varying_extras(df)
    return [*BASE_KEYS, *extras], extras


def csv_frame(summ: pd.DataFrame, extras: tuple[str, ...], **columns: object) -> pd.DataFrame:
    """CSV frame: the summary plus a `label` column (and any constant columns given)."""
    out = summ.copy()
    out.insert(0, "label", [label(r, extras) for _, r in out.iterrows()])
    for k, v in columns.items():
        out[k] = v
    return out


def datasets_of(df: pd.DataFrame) -> list[str]:
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
    keys, extras = cell_keys(df)
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
    return Table("summary_accuracy", f"Accuracy summary: test accuracy (%) — {acc_short(ctx)}", display,
                 csv_frame(summ, extras, accuracy_column=col), notes)


def acc_short(ctx: Context) -> str:
    return "val-best epoch" if ctx.accuracy_name == "valbest" else "last epoch"


# ---------------------------------------------------------------------------------- cost

OVERSUBSCRIBED = "‡"
_PHASES = {"train": "training", "latency": "latency"}


def busy_cells(ctx: Context, df: pd.DataFrame, keys: list[str], phase: str) -> dict[tuple, int]:
    """Cells (key tuples) with runs whose `phase` was timed on an oversubscribed machine (the
    record's `env.load.<phase>.oversubscribed`, `measure.LoadProbe`), and how many."""
    def busy(key: str) -> bool:
        load = (ctx.results.env.get(key) or {}).get("load")
        return isinstance(load, dict) and isinstance(load.get(phase), dict) and load[phase].get("oversubscribed") is True

    flags = df["run_key"].map(busy)
    counts = flags.groupby([df[k] for k in keys], sort=False, dropna=False).sum()
    return {(k if isinstance(k, tuple) else (k,)): int(n) for k, n in counts.items() if n}


def flag_busy(text: str, r: pd.Series, keys: list[str], busy: dict[tuple, int]) -> str:
    return f"{text} {OVERSUBSCRIBED}" if tuple(r[k] for k in keys) in busy else text


def busy_note(busy: dict[tuple, int], phase: str) -> list[str]:
    if not busy:
        return []
    return [f"{OVERSUBSCRIBED} {sum(busy.values())} run(s) of {len(busy)} cell(s) had their {_PHASES[phase]} timed while "
            f"the machine was oversubscribed (`env.load.{phase}`: threads waited for a core over 20% of the "
            "phase by CPU pressure, or, where a record has none, the 1-min load average exceeded the CPU count): "
            f"those times include waiting for a core and are inflated."]


def _flags(df: pd.DataFrame, column: str) -> pd.Series:
    """A boolean column (True only where the record says true; missing -> False)."""
    if column not in df.columns:
        return pd.Series(False, index=df.index)
    return df[column].map(lambda v: isinstance(v, (bool, np.bool_)) and bool(v)).astype(bool)


def latency_note(df: pd.DataFrame) -> str:
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


def per_student(df: pd.DataFrame, list_col: str, col: str) -> list[float]:
    """Per-student value of a run: mean of the per-student list, or the deployed value for one model."""
    out = []
    for v, whole in zip(list_metric(df, list_col), numeric(df, col)):
        out.append(float(np.mean(v)) if v else float(whole))
    return out


@table(75, "sweep_cost", "Where the sweep's time went")
def sweep_cost(ctx: Context) -> Table | Skipped:
    """Each run's wall time split into fitting, teacher targets, teacher loading and the rest
    (measurement, evaluation, record writing), summed per configuration; the teachers' one-off
    training time is counted once per distinct teacher."""
    df = ctx.df[numeric(ctx.df, "wall_s").notna()]
    if df.empty:
        return Skipped("sweep_cost", "Where the sweep's time went", "no run records with start and finish times")
    keys, extras = cell_keys(df)
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
    busy = busy_cells(ctx, df, keys, "train")
    display = pd.DataFrame({"Dataset": both["dataset"], "Configuration": both["label"], "Runs": both["runs"].astype(int).astype(str),
                            **{h: both[c].map(fmt) for c, h in heads.items()}})
    display["Fit (s)"] = [flag_busy(t, r, keys, busy) if i < len(summ) else t
                          for i, (t, (_, r)) in enumerate(zip(display["Fit (s)"], both.iterrows()))]
    once = ", ".join(f"{d} {v:,.0f} s" for d, v in sorted(teacher_train.items()) if v > 0) or "none recorded"
    notes = ["Sums over the runs behind each row. Wall: the record's finish minus start time (1 s resolution); "
             "Fit: `method.fit`; Targets: computing the teacher targets (0 when they come from the cache, which is read memory-mapped inside Fit); Teacher load: "
             "finding and loading the cached teacher; Measurement and rest: evaluation, FLOPs, latency, memory "
             "and writing the record.",
             f"Teacher training, once per distinct teacher and not in the rows: {once}.",
             "Wall times include any time the runs spent waiting for a CPU on a shared machine; see the load "
             "in the environment appendix.", *busy_note(busy, "train"), *ctx.protocol_notes(df)]
    return Table("sweep_cost", "Where the sweep's time went", display, csv_frame(summ, extras), notes)


# ---------------------------------------------------------------------------------- overview / appendix

def runs_table(ctx: Context) -> Table:
    """How many runs and which seeds back each configuration."""
    df = ctx.df
    keys, extras = cell_keys(df)
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
    return Table("runs", "Runs per configuration", display, csv_frame(summ, extras), notes)


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
                                    "source": _teacher_source(info), "how": _teacher_how(info),
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


def _teacher_source(info: dict[str, Any]) -> str:
    """How the teacher was made; an imported one by its file's name (the folder is one machine's: the
    weights' checksum beside it identifies them anywhere)."""
    source = str(info.get("source", ""))
    prefix = "imported from "
    return f"{prefix}{Path(source[len(prefix):]).name}" if source.startswith(prefix) else source


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
