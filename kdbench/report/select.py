"""`--select val`: tuning on val. Per cell, the hyperparameters with the best mean val accuracy over
seeds win, and every table then shows the winners' runs only.

A cell is the report's cell (`BASE_KEYS` plus the extra keys that vary) less the columns that are
hyperparameters (`TUNED_KEYS`); what is searched in a cell is every spec field (method parameters
included) that takes more than one value among its runs, the seed aside. The choice is made from a
frame that holds the run keys, those fields and `val_acc` only: test accuracy cannot enter it."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import stats
from ..errors import KdbenchError
from .context import Context, label, sort_cells
from .data import BASE_KEYS, Results, _norm_key, numeric, varying_extras
from .table import Skipped, Table

SELECTIONS = ("none", "val")
VAL_COLUMN = "val_acc"  # top-1 % on val at the val-best epoch
TUNED_KEYS = ("variant", "epochs")  # report cell columns that are hyperparameters: searched, not cells
NOT_SEARCHED = ("seed", "params_changed")  # the replicate, and a field derived from `params`
TIE = 1e-9  # val means closer than this are a tie: the first configuration in sorted order wins


def check_selection(select: str) -> str:
    """`none` or `val`; anything else is one clear line."""
    if select not in SELECTIONS:
        raise KdbenchError(f"unknown selection '{select}' (known: {', '.join(SELECTIONS)})")
    return select


def selection_keys(df: pd.DataFrame) -> list[str]:
    """The report's cell columns less the tuned ones: runs that differ only in these compete."""
    base = tuple(k for k in BASE_KEYS if k not in TUNED_KEYS)
    return [*base, *(k for k in varying_extras(df, base) if k not in TUNED_KEYS)]


def flat_fields(spec: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A spec as dotted field names (`params.temperature`, `teacher_recipe.lr`) with comparable values."""
    out: dict[str, Any] = {}
    for k in sorted(spec, key=str):
        v, name = spec[k], f"{prefix}{k}"
        if isinstance(v, Mapping):  # an empty one adds no field: `{}` and a missing mapping are the same
            out.update(flat_fields(v, name + "."))
        elif isinstance(v, (list, tuple)):
            out[name] = json.dumps(v, sort_keys=True, default=str)
        else:
            out[name] = _norm_key(v)
    return out


@dataclass
class Candidate:
    """One configuration of a cell: its values of the searched fields and its runs' val accuracies."""

    values: tuple
    run_keys: list[str]
    val: np.ndarray

    @property
    def val_mean(self) -> float:
        return float(self.val.mean()) if self.val.size else math.nan


@dataclass
class Choice:
    """What was searched in one cell and which configuration won (None: no val accuracy to choose by)."""

    cell: dict[str, Any]
    searched: tuple[str, ...]
    candidates: list[Candidate]
    winner: int | None

    @property
    def won(self) -> Candidate | None:
        return None if self.winner is None else self.candidates[self.winner]


@dataclass
class Selection:
    """Every cell's choice, and how many ok runs there were before the losers were dropped."""

    keys: list[str]
    extras: tuple[str, ...]
    choices: list[Choice] = field(default_factory=list)
    n_runs: int = 0

    @property
    def run_keys(self) -> set[str]:
        return {k for c in self.choices if c.won is not None for k in c.won.run_keys}

    @property
    def searched(self) -> list[Choice]:
        return [c for c in self.choices if len(c.candidates) > 1]


def choose(candidates: Sequence[Candidate]) -> int | None:
    """Index of the configuration with the best mean val accuracy; a tie (within TIE) goes to the first
    in the given (sorted) order; None when no configuration has a finite val accuracy. A lone
    configuration wins without one: there is nothing to choose."""
    if len(candidates) == 1:
        return 0
    means = [c.val_mean for c in candidates]
    finite = [m for m in means if math.isfinite(m)]
    if not finite:
        return None
    best = max(finite)
    return next(i for i, m in enumerate(means) if math.isfinite(m) and m >= best - TIE)


def val_view(results: Results) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The only frame the choice reads: cell columns, run key, the flattened spec fields and `val_acc`."""
    df = results.frame
    keys = selection_keys(df)
    fields = pd.DataFrame([flat_fields(results.specs.get(k, {})) for k in df["run_key"]], index=df.index, dtype=object)
    fields = fields.drop(columns=[c for c in fields.columns if c in NOT_SEARCHED or c in keys])
    view = pd.concat([df[[*keys, "run_key"]], fields.where(fields.notna(), "")], axis=1)
    view[VAL_COLUMN] = numeric(df, VAL_COLUMN)
    return view, keys, list(fields.columns)


def _finite(values: pd.Series) -> np.ndarray:
    v = values.to_numpy(dtype=float)
    return v[np.isfinite(v)]


def select_on_val(results: Results) -> Selection:
    """Per cell, the configuration with the best mean val accuracy over seeds (see `choose`)."""
    view, keys, fields = val_view(results)
    base = tuple(k for k in BASE_KEYS if k not in TUNED_KEYS)
    sel = Selection(keys=keys, extras=tuple(k for k in keys if k not in base), n_runs=len(view))
    for cell, runs in view.groupby(keys, sort=False, dropna=False):
        cell = cell if isinstance(cell, tuple) else (cell,)
        searched = tuple(f for f in fields if runs[f].nunique(dropna=False) > 1)
        groups: dict[tuple, pd.DataFrame] = {}
        for values, sub in (runs.groupby(list(searched), sort=False, dropna=False) if searched else [((), runs)]):
            groups[values if isinstance(values, tuple) else (values,)] = sub
        order = sorted(groups, key=lambda v: tuple(stats.order_key(x) for x in v))
        cands = [Candidate(v, list(groups[v]["run_key"]), _finite(groups[v][VAL_COLUMN])) for v in order]
        sel.choices.append(Choice(dict(zip(keys, cell)), searched, cands, choose(cands)))
    return sel


def apply(results: Results, sel: Selection) -> Results:
    """The results with the winners' runs only (the losers' test accuracies go nowhere)."""
    keep = sel.run_keys
    frame = results.frame[results.frame["run_key"].isin(keep)].reset_index(drop=True)
    return dataclasses.replace(results, frame=frame)


def _show(value: Any) -> str:
    return "(unset)" if value == "" else str(value)


def _config(names: Sequence[str], values: Sequence[Any]) -> str:
    return "; ".join(f"{n}={_show(v)}" for n, v in zip(names, values))


def _searched_text(c: Choice) -> str:
    parts = []
    for j, name in enumerate(c.searched):
        vals = sorted({cand.values[j] for cand in c.candidates}, key=stats.order_key)
        parts.append(f"{name} ∈ {{{', '.join(_show(v) for v in vals)}}}")
    return "; ".join(parts) + f" ({len(c.candidates)} configurations)"


def protocol_line(sel: Selection, ctx: Context) -> str:
    """The protocol's statement of what `--select val` did."""
    return (f"Tuning on val (`--select val`): in each cell, the configuration with the best mean `{VAL_COLUMN}` "
            f"over seeds is kept and the others are dropped before any table is built; test accuracy is never read "
            f"for the choice. {len(sel.searched)} cell(s) had something to search"
            f"{' (see the selection table)' if sel.searched else ''}; the tables show {len(ctx.df)} of {sel.n_runs} "
            f"ok runs.")


def selection_table(ctx: Context, sel: Selection) -> Table | Skipped:
    """Per searched cell: what was searched, what won, its val mean and its test accuracy (only the winner's)."""
    name, title = "selection_val", "Hyperparameters selected on val"
    if not sel.searched:
        return Skipped(name, title, "no cell has more than one configuration: nothing was searched")
    col = ctx.accuracy.column
    test = ctx.df.set_index("run_key")[col] if col in ctx.df.columns else pd.Series(dtype=float)
    rows, data = [], []
    for c in sel.searched:
        won = c.won
        val = ctx.summarize(won.val) if won is not None else stats.summarize([])
        tst = ctx.summarize(pd.to_numeric(test.reindex(won.run_keys), errors="coerce")) if won is not None \
            else stats.summarize([])
        others = [cand.val_mean for i, cand in enumerate(c.candidates) if i != c.winner and math.isfinite(cand.val_mean)]
        rows.append({**c.cell, "searched": _searched_text(c),
                     "winner": _config(c.searched, won.values) if won is not None else "none: no val accuracy",
                     "val": val, "runner_up": max(others) if others else math.nan, "test": tst})
        for i, cand in enumerate(c.candidates):
            is_won = i == c.winner
            data.append({**c.cell, "configuration": _config(c.searched, cand.values),
                         **{f: v for f, v in zip(c.searched, cand.values)},
                         "val_mean": cand.val_mean, "val_n": int(cand.val.size), "winner": is_won,
                         **{f"test_{k}": (tst[k] if is_won else math.nan) for k in ("mean", "ci_low", "ci_high", "n")}})
    frame = sort_cells(pd.DataFrame(rows), sel.extras)
    display = pd.DataFrame({
        "Dataset": frame["dataset"],
        "Cell": [label(r, sel.extras) for _, r in frame.iterrows()],
        "Searched": frame["searched"],
        "Winner": frame["winner"],
        "Val acc of winner (%)": [ctx.cell(v, 2) for v in frame["val"]],
        "Best other val mean (%)": [f"{v:.2f}" if math.isfinite(v) else "" for v in frame["runner_up"]],
        "Test acc of winner (%)": [ctx.cell(t, 2) for t in frame["test"]],
    })
    lone = len(sel.choices) - len(sel.searched)
    undecided = sum(c.winner is None for c in sel.searched)
    notes = [f"Chosen on `{VAL_COLUMN}` (top-1 % on val at the val-best epoch), mean over seeds; a tie within {TIE:g} "
             "goes to the first configuration in sorted order. Test accuracy is shown for the winner only and was "
             "not read to choose it. " + ctx.accuracy_note(),
             "Searched: every spec field besides the seed (method parameters as `params.NAME`) that takes more than "
             "one value among the cell's runs.", ctx.spread_note()]
    if lone:
        notes.append(f"{lone} cell(s) with a single configuration are not listed (nothing to search).")
    if undecided:
        notes.append(f"{undecided} cell(s) have no `{VAL_COLUMN}` in their records: nothing could be chosen, and "
                     "their runs are left out of every table.")
    return Table(name, f"{title}: test accuracy (%) of the val-chosen configuration", display,
                 pd.DataFrame(data), notes)
