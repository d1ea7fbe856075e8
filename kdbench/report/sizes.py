"""Size study: accuracy against the deployed predictor's parameters and MACs across student sizes, per
method, with the Pareto front, and which method wins at which budget.

Built only when the runs of some report cell family (`BASE_KEYS`: dataset, method, mode, n, variant)
span more than one size (distinct `params`), so a report of one size has no size section at all."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure as MplFigure

from .. import stats
from .context import Context, count_cell, human_count, label, sort_cells
from .data import BASE_KEYS, dataset_rank, numeric, varying_extras
from .plots import MARKERS, pareto_front, save, series_color, whiskers
from .table import Figure, Table
from .tables import acc_short

SIZE = "_params"  # the deployed predictor's parameter count: what "a size" is
MACS = "_macs"
SIZE_KEYS = ("student", "budget", "student_scale")  # extra keys that set a size; the others set a series
CONTENDER_KEYS = tuple(k for k in BASE_KEYS if k != "dataset")  # what competes at one budget


def size_frame(ctx: Context) -> pd.DataFrame:
    """Ok runs with the shown accuracy and a parameter count; MACs from `macs` (else `flops` / 2)."""
    df = ctx.df
    acc, params = numeric(df, ctx.accuracy.column), numeric(df, "params")
    macs = numeric(df, "macs").fillna(numeric(df, "flops") / 2)
    keep = acc.notna() & params.notna()
    return df[keep].assign(**{SIZE: params[keep], MACS: macs[keep]})


def spans_sizes(df: pd.DataFrame) -> bool:
    """Some method's runs (one report cell family) come in more than one size."""
    return bool(len(df)) and bool((df.groupby(list(BASE_KEYS), sort=False)[SIZE].nunique() > 1).any())


def cell_summary(ctx: Context, df: pd.DataFrame) -> tuple[pd.DataFrame, list[str], tuple[str, ...]]:
    """One row per (cell, size): accuracy summary, params and MACs; sorted by dataset, then params."""
    extras = varying_extras(df)
    keys = [*BASE_KEYS, *extras, SIZE]
    summ = ctx.summary(df, ctx.accuracy.column, keys)
    macs = df.groupby(keys, sort=False)[MACS].mean()
    summ["params"] = summ[SIZE].astype(float)
    summ["macs"] = [float(macs[tuple(r[k] for k in keys)]) for _, r in summ.iterrows()]
    summ = sort_cells(summ, extras)
    order = sorted(range(len(summ)), key=lambda i: (dataset_rank(summ["dataset"].iloc[i]), summ["params"].iloc[i]))
    return summ.iloc[order].reset_index(drop=True), keys, extras


def _fronts(summ: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per row: on its dataset's Pareto front of accuracy against params, and against MACs."""
    on_p, on_m = np.zeros(len(summ), bool), np.zeros(len(summ), bool)
    for ds in set(summ["dataset"]):
        idx = np.flatnonzero((summ["dataset"] == ds).to_numpy())
        y = summ["mean"].to_numpy(float)[idx]
        on_p[idx[pareto_front(summ["params"].to_numpy(float)[idx], y)]] = True
        macs = summ["macs"].to_numpy(float)[idx]
        has = np.isfinite(macs)
        on_m[idx[has][pareto_front(macs[has], y[has])]] = True
    return on_p, on_m


def pareto_table(ctx: Context, df: pd.DataFrame, summ: pd.DataFrame, extras: tuple[str, ...]) -> Table:
    """Every (cell, size) with its params, MACs, accuracy and whether it is on either Pareto front."""
    on_p, on_m = _fronts(summ)
    display = pd.DataFrame({
        "Dataset": summ["dataset"],
        "Configuration": [label(r, extras) for _, r in summ.iterrows()],
        "Params": summ["params"].map(human_count), "MACs": summ["macs"].map(human_count),
        "Accuracy (%)": [ctx.cell(r, 2) for _, r in summ.iterrows()],
        "Pareto (params)": np.where(on_p, "yes", ""), "Pareto (MACs)": np.where(on_m, "yes", ""),
    })
    data = summ.drop(columns=[SIZE]).assign(pareto_params=on_p, pareto_macs=on_m)
    data.insert(0, "label", display["Configuration"])
    notes = [ctx.accuracy_note(), ctx.spread_note(),
             "Params / MACs: of the deployed predictor (all students and the output layer), per sample; rows "
             "sorted by params. Pareto: no other configuration of the dataset has as few or fewer params (MACs) "
             "and a higher mean accuracy (CIs are not considered; teachers are left out).", *ctx.protocol_notes(df)]
    return Table("size_pareto", f"Size study: accuracy (%) against params and MACs — {acc_short(ctx)}", display,
                 data, notes)


def _budget_label(key: dict, extras: tuple[str, ...]) -> str:
    return "; ".join(f"{k}={key[k]}" for k in extras if key.get(k, "") != "") or "all runs"


def winner_frame(ctx: Context, df: pd.DataFrame) -> tuple[pd.DataFrame, tuple[str, ...], int]:
    """Per budget (dataset and the extra keys that vary): the best and second-best configuration by mean
    accuracy, the margin, Welch's test of the two, Holm-adjusted across all budgets. Also returns how many
    budgets have a method in more than one configuration (their best is picked on test among them)."""
    extras = varying_extras(df)
    col = ctx.accuracy.column
    rows, multi = [], 0
    for bkey, sub in df.groupby(["dataset", *extras], sort=False):
        bkey = dict(zip(["dataset", *extras], bkey if isinstance(bkey, tuple) else (bkey,)))
        cont = []
        for ckey, runs in sub.groupby([*CONTENDER_KEYS, SIZE], sort=False):
            cell = {**bkey, **dict(zip([*CONTENDER_KEYS, SIZE], ckey))}
            vals = numeric(runs, col).to_numpy(float)
            cont.append((cell, vals[np.isfinite(vals)], ctx.summarize(vals)))
        ranked = sort_cells(pd.DataFrame([c[0] for c in cont]).assign(_i=range(len(cont))), extras)["_i"].tolist()
        ranked.sort(key=lambda i: -cont[i][2]["mean"])  # stable: a tie keeps the report's cell order
        best = cont[ranked[0]]
        second = cont[ranked[1]] if len(ranked) > 1 else None
        multi += len({tuple(c[0][k] for k in ("method", "mode", "n_students")) for c in cont}) < len(cont)
        w = stats.welch_test(best[1], second[1]) if second else {"t": math.nan, "df": math.nan, "p": math.nan}
        params = sub[SIZE]
        rows.append({**bkey, "budget_label": _budget_label(bkey, extras), "contenders": len(cont),
                     "params_min": float(params.min()), "params_max": float(params.max()),
                     "best": label(best[0]), **{f"best_{k}": v for k, v in best[2].items()},
                     "runner_up": label(second[0]) if second else "",
                     **({f"runner_up_{k}": v for k, v in second[2].items()} if second else
                        {f"runner_up_{k}": math.nan for k in best[2]}),
                     "margin": best[2]["mean"] - second[2]["mean"] if second else math.nan,
                     "t": w["t"], "df": w["df"], "p_value": w["p"]})
    out = pd.DataFrame(rows)
    out["p_holm"] = stats.holm(out["p_value"].to_numpy(float))
    order = sorted(range(len(out)), key=lambda i: (dataset_rank(out["dataset"].iloc[i]), out["params_min"].iloc[i],
                                                   out["budget_label"].iloc[i]))
    return out.iloc[order].reset_index(drop=True), extras, multi


def winner_table(ctx: Context, df: pd.DataFrame) -> Table:
    """Which configuration wins at which budget, by how much, and whether that margin is significant."""
    out, extras, multi = winner_frame(ctx, df)

    def cell(r: pd.Series, who: str) -> str:
        return ctx.cell({k: r[f"{who}_{k}"] for k in ("mean", "std", "n", "ci_low", "ci_high")}, 2)

    display = pd.DataFrame({
        "Dataset": out["dataset"], "Budget": out["budget_label"],
        "Params": [count_cell([a, b]) for a, b in zip(out["params_min"], out["params_max"])],
        "Best": out["best"], "Best acc (%)": [cell(r, "best") for _, r in out.iterrows()],
        "Runner-up": out["runner_up"],
        "Runner-up acc (%)": [cell(r, "runner_up") if r["runner_up"] else "" for _, r in out.iterrows()],
        "Margin": [f"{m:+.2f}" if math.isfinite(m) else "" for m in out["margin"]],
        "Welch p": [stats.format_p(p) if math.isfinite(p) else "" for p in out["p_value"]],
        "Holm p": [stats.format_p(p) if math.isfinite(p) else "" for p in out["p_holm"]],
    })
    by = ", ".join(f"`{k}`" for k in extras) or "nothing but the dataset (no size key varies)"
    notes = [ctx.accuracy_note(), ctx.spread_note(),
             f"A budget is a dataset and a value of the keys that vary: {by}. Best and runner-up: the two "
             "configurations with the highest mean accuracy there (a tie keeps the report's order); margin: best "
             "minus runner-up. Welch's t-test of the two, Holm step-down adjustment across all budgets of this "
             "table; empty with one contender or fewer than 2 seeds on a side. Params: range over the budget's runs."]
    if multi:
        notes.append(f"At {multi} budget(s) a method ran in more than one configuration (method parameters, epochs): "
                     "the best of them is the best on test, which flatters it; `--select val` keeps each method's "
                     "val-chosen configuration only.")
    return Table("size_winners", f"Size study: which method wins at which budget — {acc_short(ctx)}", display,
                 out, [*notes, *ctx.protocol_notes(df)])


def size_plot(ctx: Context, summ: pd.DataFrame, extras: tuple[str, ...], out: Path) -> Figure:
    """Per dataset, accuracy against params and against MACs (log x), one line per method, Pareto fronts."""
    name, title = "size_study", "Size study: accuracy vs params and MACs (Pareto front)"
    series_keys = [k for k in (*BASE_KEYS, *extras) if k not in ("dataset", *SIZE_KEYS)]
    series_extras = tuple(k for k in extras if k not in SIZE_KEYS)
    datasets = sorted(set(summ["dataset"]), key=dataset_rank)
    fig = MplFigure(figsize=(12.0, 5.4 * len(datasets)), layout="constrained")
    panes = fig.subfigures(len(datasets), 1, squeeze=False)[:, 0]  # one per dataset: its two panels and legend
    for pane, ds in zip(panes, datasets):
        row = pane.subplots(1, 2, squeeze=False)[0]
        sub = summ[summ["dataset"] == ds].reset_index(drop=True)
        colour = {k: i for i, (k, _) in enumerate(sub.groupby(series_keys, sort=False))}  # same in both panels
        for ax, xcol, xname in ((row[0], "params", "parameters"), (row[1], "macs", "MACs per sample")):
            have = sub[np.isfinite(sub[xcol].to_numpy(float))].reset_index(drop=True)
            for skey, line in have.groupby(series_keys, sort=False):
                i = colour[skey]
                line = line.sort_values(xcol)
                err = np.array([whiskers(r) for _, r in line.iterrows()]).T
                ax.errorbar(line[xcol].astype(float), line["mean"], yerr=err, marker=MARKERS[i % len(MARKERS)],
                            color=series_color(2 * i), capsize=3, label=label(line.iloc[0], series_extras))  # dark tab20 hues
            if len(have):
                x, y = have[xcol].to_numpy(float), have["mean"].to_numpy(float)
                front = pareto_front(x, y)
                ax.step(x[front], y[front], where="post", color="0.3", linestyle="--", linewidth=1,
                        label="Pareto front")
            ax.set_xscale("log")
            ax.set_xlabel(f"{xname} of the deployed predictor")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(f"{ds}: accuracy vs {xname}")
            ax.grid(True, alpha=0.3)
        # one legend per dataset, under its two panels (same colours in both): long cell labels drawn
        # inside the axes covered the points
        pane.legend(*row[0].get_legend_handles_labels(), fontsize=7, loc="outside lower center", frameon=False)
    fig.suptitle(f"Accuracy ({acc_short(ctx)}) across student sizes; error bars: 95% CI")
    return Figure(name, title, save(fig, out, name))


def build(ctx: Context, out: Path, figures: bool = True) -> tuple[list[Table], list[Figure]]:
    """The size study's tables and figure, or nothing when no method spans more than one size."""
    df = size_frame(ctx)
    if not spans_sizes(df):
        return [], []
    summ, _, extras = cell_summary(ctx, df)
    tables = [pareto_table(ctx, df, summ, extras), winner_table(ctx, df)]
    return tables, [size_plot(ctx, summ, extras, out)] if figures else []
