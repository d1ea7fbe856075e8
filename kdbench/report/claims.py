"""Paper claims and kdbench's verdict on each.

A claim is an ordering of methods that a paper states ("TAKD > KD > no KD"), written as steps (one
side above another). kdbench tests every step on the runs of each group of cells the claim applies
to (cells that agree on the claim's `within` columns, e.g. dataset and student): the difference of
the means, Welch's two-sided t-test, Holm-adjusted across the table, and a verdict per step and per
claim. A side that selects several cells (TCN at n = 1, 2, 4, 8) is compared cell by cell. The generic
machinery only; each paper registers its claims in `kdbench/papers/<paper>.py`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import stats
from ..registry import Registry
from .context import Context, label
from .data import BASE_KEYS, numeric, varying_extras
from .paper import Select
from .table import Skipped, Table

# step verdicts
HOLDS = "holds"
SAME_DIRECTION = "same direction, not significant"
UNTESTED = "same direction, untested (n<2)"
REVERSED = "reversed, not significant"
REVERSED_UNTESTED = "reversed, untested (n<2)"
CONTRADICTED = "contradicted"
NOT_RUN = "not run"


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
    """A paper's claim: its source, its words, its steps and the columns its cells must share."""

    paper: str  # e.g. "TAKD Table 1"
    text: str  # e.g. "TAKD > KD > no KD"
    steps: tuple[Step, ...]
    within: tuple[str, ...] = ("dataset",)


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
    along = diff > 0 or (not strict and diff == 0)
    if not np.isfinite(p_holm):
        return UNTESTED if along else REVERSED_UNTESTED
    if along:
        return HOLDS if (p_holm < alpha or not strict) else SAME_DIRECTION
    if p_holm < alpha:
        return CONTRADICTED
    return HOLDS if not strict else REVERSED


def claim_verdict(verdicts: list[str]) -> str:
    """One claim on one group of cells: the verdict its weakest step allows, and the count of each
    step verdict behind it."""
    if NOT_RUN in verdicts:
        head = "incomplete (a step was not run)"
    elif CONTRADICTED in verdicts:
        head = "contradicted (a step is significantly reversed)"
    elif all(v == HOLDS for v in verdicts):
        head = "supported (every step holds, significant where strict)"
    elif not any(v in (REVERSED, REVERSED_UNTESTED) for v in verdicts):
        head = "same direction at every step, not every step significant"
    else:
        head = "not supported (a step is reversed, not significantly)"
    counts = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
    return head if len(verdicts) == 1 else f"{head}; steps: " + ", ".join(f"{v} {n}" for v, n in counts.items())


def _group_text(within: tuple[str, ...], key: tuple) -> str:
    shown = [(col, v) for col, v in zip(within, key) if not (v is None or v == "" or (isinstance(v, float) and math.isnan(v)))]
    return "; ".join(str(v) if col == "dataset" else f"{col}={v}" for col, v in shown)


def _cells(ctx: Context, runs: pd.DataFrame, keys: list[str], extras: tuple[str, ...]) -> list[tuple[str, np.ndarray]]:
    vals = numeric(runs, ctx.accuracy.column)
    runs = runs.assign(_v=vals)[vals.notna()]
    out = []
    for _, sub in runs.groupby(keys, sort=False, dropna=False):
        out.append((label(sub.iloc[0], extras), sub["_v"].to_numpy(dtype=float)))
    return out


def _rows(ctx: Context, name: str, what: Claim, keys: list[str], extras: tuple[str, ...]) -> list[dict[str, Any]]:
    df = ctx.df
    within = tuple(c for c in what.within if c in df.columns)  # a column no record has is one group
    subject = what.steps[0].higher  # a claim speaks of the groups where its subject ran
    out = []
    for gkey, group in df.groupby(list(within), sort=True, dropna=False):
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        if subject.select(group).empty:
            continue
        shown = tuple(e for e in extras if e not in within)  # the group already says those
        for step in what.steps:
            highs = _cells(ctx, step.higher.select(group), keys, shown)
            lows = _cells(ctx, step.lower.select(group), keys, shown)
            base = {"claim": name, "paper": what.paper, "claim_text": what.text, "group": _group_text(within, gkey),
                    "step": step.text, "strict": step.strict}
            for hi_label, hi in highs or [(step.higher.label, np.array([]))]:
                for lo_label, lo in lows or [(step.lower.label, np.array([]))]:
                    h, l = ctx.summarize(hi), ctx.summarize(lo)
                    diff = h["mean"] - l["mean"] if hi.size and lo.size else math.nan
                    p = stats.welch_test(hi, lo)["p"] if hi.size and lo.size else math.nan
                    out.append({**base, "higher": hi_label, "lower": lo_label,
                                **{f"higher_{k}": v for k, v in h.items()}, **{f"lower_{k}": v for k, v in l.items()},
                                "diff": diff, "p_value": p})
    return out


def build_claims(ctx: Context) -> Table | Skipped:
    """Every registered claim that some run here bears on, step by step, with its verdicts."""
    title = "Paper claims: kdbench's verdicts"
    if ctx.df.empty:
        return Skipped("paper_claims", title, "no ok runs")
    extras = varying_extras(ctx.df)
    keys = [*BASE_KEYS, *extras]
    names = sorted(CLAIMS.names(), key=lambda n: (_ORDER.get(n, 10_000), n))
    rows = [r for n in names for r in _rows(ctx, n, CLAIMS.get(n), keys, extras)]
    behind = {k for n in names for step in CLAIMS.get(n).steps for side in (step.higher, step.lower)
              for k in side.select(ctx.df)["run_key"]}
    if not rows:
        return Skipped("paper_claims", title, "no run here is on a side of a registered paper claim")
    data = pd.DataFrame(rows)
    data["p_holm"] = stats.holm(data["p_value"].to_numpy(dtype=float))
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
             "Each step compares two cells that agree on the claim's columns (`Cells`); Δ = higher side's mean "
             "minus the lower side's. Welch's two-sided t-test, Holm-adjusted across all steps of this table, "
             f"significant at p < {ctx.alpha:g}.",
             "A strict step (>) holds when Δ > 0 and significant; a ≥ step holds unless the higher side is "
             "significantly below. A significantly reversed step contradicts its claim; n<2 on a side: no test.",
             *verdicts, *ctx.protocol_notes(ctx.df[ctx.df["run_key"].isin(behind)])]
    return Table("paper_claims", title, display, data, notes)


__all__ = ["CLAIMS", "Claim", "Side", "Step", "build_claims", "claim", "claim_verdict", "step_verdict"]
