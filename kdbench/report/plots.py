"""Figures of a report (matplotlib, Agg canvas, PNG and PDF): accuracy vs parameters with the Pareto
front and learning curves, plus the registry and helpers the papers' own figures (kdbench/papers/,
e.g. TCN's accuracy vs number of students) use.

Figures are drawn on their own `Figure` objects (no pyplot state), and saved without timestamps."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from .. import stats
from ..registry import Registry
from .context import Context, label, sort_cells
from .data import BASE_KEYS, dataset_rank, numeric, varying_extras
from .table import Figure

PNG_DPI = 150
Plotter = Callable[[Context, Path], Figure]
PLOTS: Registry[Plotter] = Registry("plot")
_ORDER: dict[str, int] = {}  # plot -> its place in the report
UNORDERED = 10_000  # a plot registered without an order comes after the others, by name


def plot(order: int, name: str) -> Callable[[Plotter], Plotter]:
    """Register a plot under `name`; `order` fixes its place among the figures."""
    def deco(fn: Plotter) -> Plotter:
        PLOTS.add(name, fn)
        _ORDER[name] = order
        return fn
    return deco


def save(fig: MplFigure, out_dir: Path, name: str) -> list[str]:
    """Write name.png and name.pdf under out_dir/figures; paths returned relative to out_dir."""
    FigureCanvasAgg(fig)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    rel = [f"figures/{name}.png", f"figures/{name}.pdf"]
    fig.savefig(out_dir / rel[0], dpi=PNG_DPI, metadata={"Software": None})
    fig.savefig(out_dir / rel[1], metadata={"Creator": None, "Producer": None, "CreationDate": None})
    return rel


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (fewer or equal params and higher accuracy), by x."""
    order = sorted(range(len(x)), key=lambda i: (x[i], -y[i]))
    front, best = [], -math.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return np.asarray(front, dtype=int)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def series_color(i: int) -> tuple:
    """tab20 colours: distinct for up to 20 series (the default cycle repeats after 10)."""
    return colormaps["tab20"](i % 20)


def axes_grid(n: int, ncols: int, size: tuple[float, float]) -> tuple[MplFigure, list]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = MplFigure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def half_width(s: pd.Series | dict) -> float:
    hi = s["ci_high"]
    return float(hi - s["mean"]) if np.isfinite(hi) else 0.0


def log_summary(ctx: Context, df: pd.DataFrame, column: str, keys: list[str]) -> pd.DataFrame:
    """Cells of a positive, skewed quantity (times): geometric mean and the 95% interval of log(value),
    back-transformed, so it never reaches below zero (the CI of an arithmetic mean of 2 or 3 seeds did)."""
    values = numeric(df, column)
    summ = ctx.summary(df.assign(_log=np.log(values.where(values > 0))), "_log", keys)
    summ[["mean", "ci_low", "ci_high"]] = np.exp(summ[["mean", "ci_low", "ci_high"]].astype(float))
    return summ


def whiskers(s: pd.Series | dict) -> tuple[float, float]:
    """(below, above) the mean: asymmetric for intervals that are, 0 where there is none (one seed)."""
    lo, hi, mean = float(s["ci_low"]), float(s["ci_high"]), float(s["mean"])
    return (mean - lo if np.isfinite(lo) else 0.0, hi - mean if np.isfinite(hi) else 0.0)


@plot(10, "acc_vs_params")
def acc_vs_params(ctx: Context, out: Path) -> Figure:
    title = "Accuracy vs parameters (Pareto front)"
    col = ctx.accuracy.column
    df = ctx.df[numeric(ctx.df, col).notna() & numeric(ctx.df, "params").notna()]
    if df.empty:
        return Figure("acc_vs_params", title, reason=f"no run records with `{col}` and `params`")
    extras = varying_extras(df)
    keys = [*BASE_KEYS, *extras]
    summ = sort_cells(ctx.summary(df, col, keys), extras)
    params = df.assign(_p=numeric(df, "params")).groupby(keys, sort=False)["_p"].mean()
    summ["params"] = [params[tuple(r[k] for k in keys)] for _, r in summ.iterrows()]
    datasets = sorted(set(summ["dataset"]), key=dataset_rank)
    fig, axes = axes_grid(len(datasets), 2, (6.0, 4.2))
    for ax, ds in zip(axes, datasets):
        sub = summ[summ["dataset"] == ds].reset_index(drop=True)
        pts = [(float(r["params"]), float(r["mean"]), half_width(r), label(r, extras)) for _, r in sub.iterrows()]
        t = df[df["dataset"] == ds].drop_duplicates(subset=["teacher", "teacher_id"])
        t = t[numeric(t, "teacher_params").notna() & numeric(t, "teacher_test_acc").notna()]
        if len(t):
            s = stats.summarize(numeric(t, "teacher_test_acc"))
            pts.append((float(numeric(t, "teacher_params").mean()), s["mean"], half_width(s), "Teacher"))
        x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        for i, (px, py, err, name) in enumerate(pts):
            ax.errorbar(px, py, yerr=err, fmt="*" if name == "Teacher" else MARKERS[i % len(MARKERS)],
                        color=series_color(i), capsize=3, markersize=9 if name == "Teacher" else 6, label=name)
        front = pareto_front(x, y)
        ax.step(x[front], y[front], where="post", color="0.3", linestyle="--", linewidth=1, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("parameters of the deployed predictor")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(ds)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    fig.suptitle(f"Accuracy ({'val-best' if ctx.accuracy_name == 'valbest' else 'last'} epoch) vs parameters; "
                 "error bars: 95% CI")
    return Figure("acc_vs_params", title, save(fig, out, "acc_vs_params"))


CURVES = (("val_acc", "val accuracy (%)"), ("val_acc_swapped", "swapped-in val accuracy (%)"),
          ("val_mse", "val feature MSE"))


def curve_frame(ctx: Context, keys: list[str]) -> pd.DataFrame:
    """One row per (run, epoch) of the runs' histories: the key columns, `step` (1-based position in the
    history, across a method's stages) and the curve metrics present."""
    rows = []
    for _, run in ctx.df.iterrows():
        for step, h in enumerate(ctx.results.histories.get(run["run_key"], []), start=1):
            vals = {m: h[m] for m, _ in CURVES if isinstance(h.get(m), (int, float)) and not isinstance(h.get(m), bool)}
            if vals:
                rows.append({**{k: run[k] for k in keys}, "seed": run["seed"], "step": step, **vals})
    return pd.DataFrame(rows)


@plot(40, "learning_curves")
def learning_curves(ctx: Context, out: Path) -> Figure:
    """One row of panels per dataset and method (and mode), so that a folder of many cells stays
    readable; one colour per cell across the figure."""
    title = "Learning curves (val accuracy and feature MSE per epoch)"
    extras = varying_extras(ctx.df)
    keys = [*BASE_KEYS, *extras]
    frame = curve_frame(ctx, keys)
    metrics = [(m, name) for m, name in CURVES if m in frame.columns and frame[m].notna().any()]
    if frame.empty or not metrics:
        return Figure("learning_curves", title, reason="no run history with `val_acc` or `val_mse` per epoch")
    colour = {cell: i for i, (cell, _) in enumerate(frame.groupby(keys, sort=False, dropna=False))}
    rows = sorted(frame.groupby(["dataset", "method", "mode"], sort=False, dropna=False), key=lambda g: dataset_rank(g[0][0]))
    fig = MplFigure(figsize=(5.5 * len(metrics), 3.4 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(metrics), squeeze=False)
    for row, ((ds, method, mode), sub) in zip(axes, rows):
        for ax, (metric, name) in zip(row, metrics):
            have = sub[sub[metric].notna()]
            if have.empty:
                ax.set_axis_off()
                continue
            for cell, line in have.groupby(keys, sort=False, dropna=False):
                i = colour[cell]
                mean = line.groupby("step")[metric].mean()
                ax.plot(mean.index, mean.to_numpy(), marker=MARKERS[i % len(MARKERS)], markersize=3, color=series_color(i),
                        label=label(pd.Series(dict(zip(keys, cell))), extras))
            ax.set_xlabel("epoch (across a method's stages)")
            ax.set_ylabel(name)
            ax.set_title(f"{ds}, {method}{f' {mode}' if isinstance(mode, str) and mode else ''}: {name}", fontsize=9)
            ax.grid(True, alpha=0.3)
            if metric == "val_mse":
                ax.set_yscale("log")
            ax.legend(fontsize=6)
    fig.suptitle("Learning curves: mean over seeds per epoch")
    return Figure("learning_curves", title, save(fig, out, "learning_curves"))


def draw_all(ctx: Context, out: Path) -> list[Figure]:
    """Every registered plot, the papers' own (kdbench/papers/) included, in order (a plot with no data
    is returned with its reason, not drawn)."""
    names = sorted(PLOTS.names(), key=lambda n: (_ORDER.get(n, UNORDERED), n))
    return [PLOTS.get(n)(ctx, out) for n in names]
