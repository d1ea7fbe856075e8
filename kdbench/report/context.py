"""What every table builder shares: the records, the report options, and the protocol notes."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from .. import stats
from ..registry import Registry
from .data import (BASE_KEYS, AccuracyChoice, Results, cell_label, dataset_rank, deviations_of, method_rank,
                   substitutes_of)

SIGNIFICANT = "†"


@dataclass
class Context:
    """Report options plus the loaded results; builders read `df` and call the helpers below."""

    results: Results
    accuracy: AccuracyChoice
    accuracy_name: str = "valbest"
    baseline: str = "kd"
    bootstrap: bool = False
    spread: str = "ci"
    alpha: float = 0.05

    @property
    def df(self) -> pd.DataFrame:
        return self.results.frame

    # ------------------------------------------------------------------ statistics
    def summarize(self, values: Iterable[Any]) -> dict[str, float]:
        return stats.summarize(values, bootstrap=self.bootstrap)

    def summary(self, df: pd.DataFrame, value: str, keys: Sequence[str], baseline: str | None = None,
                match: Sequence[str] = ("dataset",)) -> pd.DataFrame:
        return stats.summary_table(df, value, keys, baseline_method=baseline, match=match,
                                   bootstrap=self.bootstrap)

    def cell(self, s: dict[str, Any] | pd.Series, decimals: int = 2, mark: bool = False) -> str:
        """Formatted mean and spread, with the significance mark when asked and p_holm < alpha."""
        text = stats.format_cell(dict(s), decimals=decimals, spread=self.spread)
        if mark and np.isfinite(s.get("p_holm", math.nan)) and s["p_holm"] < self.alpha:
            text += f" {SIGNIFICANT}"
        return text

    # ------------------------------------------------------------------ notes
    def spread_note(self) -> str:
        if self.spread == "std":
            what = "± is the sample standard deviation over seeds"
        elif self.bootstrap:
            what = "± / [low, high] is the 95% bootstrap CI of the mean (scipy BCa, 9999 resamples, seed 0)"
        else:
            what = "± is the half-width of the 95% Student-t CI of the mean (df = n - 1)"
        return f"Mean over seeds; {what}; n = number of seeds (runs) per cell; one seed shows no spread."

    def significance_note(self, match: str = "the same dataset") -> str:
        return (f"{SIGNIFICANT} Welch's t-test against `{self.baseline}` ({match}), Holm-adjusted across this "
                f"table, p < {self.alpha:g}.")

    def accuracy_note(self) -> str:
        return f"Accuracy: {self.accuracy.label}; nothing is selected on test."

    def protocol_notes(self, df: pd.DataFrame) -> list[str]:
        """n range, substitutes and deviations of the runs behind a table."""
        notes = []
        if len(df):
            seeds = df.groupby(list(BASE_KEYS), sort=False)["seed"].nunique()
            lo, hi = int(seeds.min()), int(seeds.max())
            notes.append(f"Seeds per cell: {lo}" + (f" to {hi}" if hi != lo else "") + f"; {len(df)} runs.")
        notes += [f"Dataset substitute: {s}." for s in substitutes_of(df.get("dataset", []))]
        for name in NOTES.names():
            notes += NOTES.get(name)(df)
        devs = deviations_of(self.results, df.get("run_key", []))
        notes += [f"Deviation: {d}." for d in devs]
        return notes


# ---------------------------------------------------------------------------------- helpers

Notes = Callable[[pd.DataFrame], list[str]]  # the runs behind a table -> protocol notes about them
NOTES: Registry[Notes] = Registry("protocol note")  # a paper module adds what its methods' runs need said


def sort_cells(frame: pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Rows in report order: dataset, method (teacher first, then by `data.METHOD_DISPLAY` rank), mode, n,
    variant, extras."""
    if frame.empty:
        return frame

    def key(row: pd.Series) -> tuple:
        return (dataset_rank(row.get("dataset", "")),
                method_rank(row.get("method", ""), row.get("mode", ""), row.get("n_students", "")),
                str(row.get("variant", "")), tuple(str(row.get(k, "")) for k in extra))

    order = sorted(range(len(frame)), key=lambda i: key(frame.iloc[i]))
    return frame.iloc[order].reset_index(drop=True)


def human_count(x: float) -> str:
    """Parameter / FLOP counts as the papers print them: 94.65k, 11.67M, 2.38G."""
    if x is None or not np.isfinite(x):
        return "n/a"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f}{suf}"
    return f"{x:.0f}"


def count_cell(values: Iterable[float]) -> str:
    """Counts are deterministic per configuration: one value, or the range when runs disagree."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return "n/a"
    lo, hi = v.min(), v.max()
    return human_count(lo) if lo == hi else f"{human_count(lo)}–{human_count(hi)}"


def pivot(summ: pd.DataFrame, row_of: Callable[[pd.Series], tuple], col_of: Callable[[pd.Series], str],
          text_of: Callable[[pd.Series], str], row_header: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """Wide display frame: row labels (tuples, in first-seen order) x given columns, '' where missing."""
    rows: dict[tuple, dict[str, str]] = {}
    for _, r in summ.iterrows():
        rows.setdefault(row_of(r), {})[col_of(r)] = text_of(r)
    data = [[*rk, *(cells.get(c, "") for c in columns)] for rk, cells in rows.items()]
    return pd.DataFrame(data, columns=[*row_header, *columns])


def label(row: pd.Series, extra: Sequence[str] = ()) -> str:
    return cell_label(row, tuple(extra))
