"""Paper claims and kdbench's verdict on each.

A claim is an ordering of methods that a paper states ("TAKD > KD > no KD"), written as steps (one
side above another). kdbench tests every step on the runs of each group of cells the claim applies
to (cells that agree on the claim's `within` columns, e.g. dataset, student and train subset, on
the paper's datasets or their substitutes): the difference of the means, Welch's two-sided t-test,
Holm-adjusted across the steps of that claim on that group (its family: what else lies in the folder
does not change it), and a verdict per step and per claim. A side that selects several cells (TCN
at n = 1, 2, 4, 8) is compared cell by cell. The generic machinery only; each paper registers its
claims in `kdbench/papers/<paper>.py`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import stats
from ..registry import Registry
from .context import Context, label
from .data import BASE_KEYS, numeric, paper_dataset, varying_extras
from .paper import Select
from .table import Skipped, Table

# step verdicts
HOLDS = "holds"
SAME_DIRECTION = "same direction, not significant"
UNTESTED = "untested (n<2)"
NO_DIFFERENCE = "no difference"
REVERSED = "reversed, not significant"
REVERSED_UNTESTED = "reversed, untested (n<2)"
CONTRADICTED = "contradicted"
NOT_RUN = "not run"
_AGAINST = (NO_DIFFERENCE, REVERSED, REVERSED_UNTESTED)  # not the claimed direction, not significantly


@dataclass(frozen=True)
class Side:
    """One side of a step: its label and how to find its runs."""

    label: str
    select: Select


@dataclass(frozen=True)
class Step:
    """`higher > lower` (strict), or `higher >= lower`: holds unless `higher` is significantly below."""

    higher: Side
    lower: Side
    strict: bool = True

    @property
    def text(self) -> str:
        return f"{self.higher.label} {'>' if self.strict else '≥'} {self.lower.label}"


@dataclass(frozen=True)
class Claim:
    """A paper's claim: its source, its words, its steps, the columns its cells must share and the
    paper datasets it was made on (empty: any dataset, for a claim about the method itself)."""

    paper: str  # e.g. "TAKD Table 1"
    text: str  # e.g. "TAKD > KD > no KD"
    steps: tuple[Step, ...]
    within: tuple[str, ...] = ("dataset",)
    datasets: tuple[str, ...] = ()


CLAIMS: Registry[Claim] = Registry("paper claim")
_ORDER: dict[str, int] = {}


def claim(order: int, name: str, what: Claim) -> Claim:
    """Register a paper's claim under `name`; `order` fixes its place in the claims table."""
    CLAIMS.add(name, what)
    _ORDER[name] = order
    return what


def step_verdict(diff: float, p_holm: float, strict: bool, alpha: float) -> str:
    """The verdict of one step from the difference of means (higher minus lower) and its adjusted p."""
    if not np.isfinite(diff):
        return NOT_RUN
    if np.isfinite(p_holm) and p_holm < alpha:
        return HOLDS if diff > 0 else CONTRADICTED
    if not strict:  # >=: holds unless significantly below; untested, nothing can be said
        return HOLDS if np.isfinite(p_holm) else UNTESTED
    if not np.isfinite(p_holm):
        return UNTESTED if diff > 0 else REVERSED_UNTESTED
    return SAME_DIRECTION if diff > 0 else NO_DIFFERENCE if diff == 0 else REVERSED


def claim_verdict(verdicts: list[str]) -> str:
    """One claim on one group of cells: the verdict its weakest step allows (a significant reversal
    first: it contradicts the claim whatever else ran), and the count of each step verdict behind it."""
    if CONTRADICTED in verdicts:
        head = "contradicted (a step is significantly reversed)"
    elif NOT_RUN in verdicts:
        head = "incomplete (a step was not run)"
    elif all(v == HOLDS for v in verdicts):
        head = "supported (every step holds, significant where strict)"
    elif any(v in _AGAINST for v in verdicts):
        head = "not supported (a step is not in the claimed direction, not significantly)"
    else:
        head = "not contradicted, not shown (no step reversed; not every step significant or tested)"
    counts = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
    return head if len(verdicts) == 1 else f"{head}; steps: " + ", ".join(f"{v} {n}" for v, n in counts.items())


def two_sided_p(a: np.ndarray, b: np.ndarray) -> float:
    """Welch's two-sided p from the one-sided pair (`stats.welch_one_sided`), which also decides two
    sides that do not vary (a deterministic difference); NaN with fewer than 2 values on a side."""
    if a.size < 2 or b.size < 2:
        return math.nan
    return min(1.0, 2.0 * min(stats.welch_one_sided(a, b)))


def _group_text(within: tuple[str, ...], key: tuple) -> str:
    shown = [(col, v) for col, v in zip(within, key) if not (v is None or v == "" or (isinstance(v, float) and math.isnan(v)))]
    return "; ".join(str(v) if col == "dataset" else f"{col}={v}" for col, v in shown)


def _cells(ctx: Context, runs: pd.DataFrame, keys: list[str], extras: tuple[str, ...]) -> list[tuple[str, np.ndarray, list]]:
    """(label, values, run keys) of each cell among `runs` with a value."""
    vals = numeric(runs, ctx.accuracy.column)
    runs = runs.assign(_v=vals)[vals.notna()]
    return [(label(sub.iloc[0], extras), sub["_v"].to_numpy(dtype=float), list(sub["run_key"]))
            for _, sub in runs.groupby(keys, sort=False, dropna=False)]


def _rows(ctx: Context, name: str, what: Claim, keys: list[str], extras: tuple[str, ...]) -> list[dict[str, Any]]:
    df = ctx.df
    if what.datasets:
        df = df[[paper_dataset(d)[0] in what.datasets for d in df["dataset"]]]
    within = tuple(c for c in what.within if c in df.columns)  # a column no record has is one group
    subject = what.steps[0].higher  # a claim speaks of the groups where its subject ran
    out = []
    for gkey, group in df.groupby(list(within), sort=True, dropna=False):
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        if subject.select(group).empty:
            continue
        shown = tuple(e for e in extras if e not in within)  # the group already says those
        rows = []
        for step in what.steps:
            highs = _cells(ctx, step.higher.select(group), keys, shown)
            lows = _cells(ctx, step.lower.select(group), keys, shown)
            base = {"claim": name, "paper": what.paper, "claim_text": what.text, "group": _group_text(within, gkey),
                    "step": step.text, "strict": step.strict}
            for hi_label, hi, hi_keys in highs or [(step.higher.label, np.array([]), [])]:
                for lo_label, lo, lo_keys in lows or [(step.lower.label, np.array([]), [])]:
                    h, l = ctx.summarize(hi), ctx.summarize(lo)
                    rows.append({**base, "higher": hi_label, "lower": lo_label,
                                 **{f"higher_{k}": v for k, v in h.items()}, **{f"lower_{k}": v for k, v in l.items()},
                                 "diff": h["mean"] - l["mean"] if hi.size and lo.size else math.nan,
                                 "p_value": two_sided_p(hi, lo), "_runs": hi_keys + lo_keys})
        adjusted = stats.holm([r["p_value"] for r in rows])  # one family: this claim on this group
        out += [{**r, "p_holm": p} for r, p in zip(rows, adjusted)]
    return out


def build_claims(ctx: Context) -> Table | Skipped:
    """Every registered claim whose subject ran here, step by step, with its verdicts."""
    title = "Paper claims: kdbench's verdicts"
    if ctx.df.empty:
        return Skipped("paper_claims", title, "no ok runs")
    extras = varying_extras(ctx.df)
    keys = [*BASE_KEYS, *extras]
    names = sorted(CLAIMS.names(), key=lambda n: (_ORDER.get(n, 10_000), n))
    rows = [r for n in names for r in _rows(ctx, n, CLAIMS.get(n), keys, extras)]
    if not rows:
        return Skipped("paper_claims", title, "no registered claim's subject ran here (on the claim's datasets)")
    behind = {k for r in rows for k in r.pop("_runs")}
    data = pd.DataFrame(rows)
    data["verdict"] = [step_verdict(d, p, s, ctx.alpha) for d, p, s in zip(data["diff"], data["p_holm"], data["strict"])]

    def side(prefix: str, r: pd.Series) -> str:
        return f"{r[prefix]}: {ctx.cell({k: r[f'{prefix}_{k}'] for k in ('mean', 'std', 'n', 'ci_low', 'ci_high')})}"

    display = pd.DataFrame({
        "Claim": [f"{p}: {t}" for p, t in zip(data["paper"], data["claim_text"])],
        "Cells": data["group"],
        "Step": data["step"],
        "Higher side": [side("higher", r) for _, r in data.iterrows()],
        "Lower side": [side("lower", r) for _, r in data.iterrows()],
        "Δ": [f"{d:+.2f}" if np.isfinite(d) else "" for d in data["diff"]],
        "Welch p": [stats.format_p(p) for p in data["p_value"]],
        "Holm p": [stats.format_p(p) for p in data["p_holm"]],
        "Step verdict": data["verdict"],
    })
    verdicts = [f"Verdict, {g['paper'].iat[0]}: {g['claim_text'].iat[0]} on {group}: {claim_verdict(list(g['verdict']))}."
                for (_, group), g in data.groupby(["claim", "group"], sort=False)]
    notes = [ctx.accuracy_note(),
             "Each step compares cells that agree on the claim's columns (`Cells`), on the paper's datasets or "
             "their substitutes; Δ = higher side's mean minus the lower side's. Welch's two-sided t-test, "
             f"Holm-adjusted across the steps of one claim on one group of cells, significant at p < {ctx.alpha:g}.",
             "A strict step (>) holds when Δ > 0 and significant; a ≥ step holds unless the higher side is "
             "significantly below. A significantly reversed step contradicts its claim; n<2 on a side: no test.",
             *verdicts, *ctx.protocol_notes(ctx.df[ctx.df["run_key"].isin(behind)])]
    return Table("paper_claims", title, display, data, notes)


__all__ = ["CLAIMS", "Claim", "Side", "Step", "build_claims", "claim", "claim_verdict", "step_verdict", "two_sided_p"]
