"""Statistics over seeds: mean, spread, 95% CI, Welch's t-test against a baseline, Holm correction.

The one statistics module: reports and the CI gate (`check`) both test with `welch_test`, and both
group runs into cells by `CELL_KEYS`. Every number in a report comes with its n; with n < 2 there is no spread, and this module says so
(NaN) instead of inventing one. All tests and intervals are scipy's; only the Holm step-down is
written here (a dozen lines, no statsmodels dependency).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _st

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0  # fixed: the same records must give the same report, byte for byte

# the run-spec fields that identify a cell (its seeds are the observations): the CI gate's cells
# exactly, and the base of a report's cells (which add extra fields, e.g. `max_train`, where they vary)
CELL_KEYS = ("dataset", "method", "mode", "n_students", "variant")
ALTERNATIVES = ("two-sided", "less", "greater")


def _clean(values: Iterable[Any]) -> np.ndarray:
    """Finite floats only: missing metrics (None / NaN) are not observations."""
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=float).ravel()
    return arr[np.isfinite(arr)]


def t_interval(values: Iterable[Any], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided Student-t CI of the mean (df = n - 1); (NaN, NaN) when n < 2."""
    x = _clean(values)
    n = x.size
    if n < 2:
        return (math.nan, math.nan)
    mean = float(x.mean())
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    half = float(_st.t.ppf(0.5 + confidence / 2.0, n - 1)) * sem
    return (mean - half, mean + half)


def bootstrap_interval(values: Iterable[Any], confidence: float = CONFIDENCE,
                       n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Bootstrap CI of the mean (scipy, BCa, fixed seed); (NaN, NaN) when n < 2.

    With all values equal the resampling distribution is a point, so the interval is that point
    (scipy would warn and return NaN)."""
    x = _clean(values)
    if x.size < 2:
        return (math.nan, math.nan)
    if np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = _st.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                            method="BCa", rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):  # BCa can fail on tiny samples: fall back
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = _st.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                                method="percentile", rng=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (lo, hi)


def summarize(values: Iterable[Any], confidence: float = CONFIDENCE, bootstrap: bool = False) -> dict[str, float]:
    """mean, std (ddof 1), n and the CI of the mean (Student t, or bootstrap when asked).

    n counts finite values only; n < 2 gives std and CI NaN (one seed has no spread)."""
    x = _clean(values)
    n = int(x.size)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n >= 2 else math.nan
    lo, hi = (bootstrap_interval(x, confidence) if bootstrap else t_interval(x, confidence))
    return {"mean": mean, "std": std, "n": n, "ci_low": lo, "ci_high": hi}


def welch_test(a: Iterable[Any], b: Iterable[Any], alternative: str = "two-sided") -> dict[str, float]:
    """Welch's two-sample t-test (unequal variances): t, Welch-Satterthwaite df, and the p-value of
    `alternative` ("two-sided", or one-sided "less" / "greater": mean of a below / above b's).

    NaN when either side has n < 2 or both have zero variance (the test is undefined there)."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"unknown alternative '{alternative}' (known: {', '.join(ALTERNATIVES)})")
    x, y = _clean(a), _clean(b)
    nan = {"t": math.nan, "df": math.nan, "p": math.nan}
    if x.size < 2 or y.size < 2:
        return nan
    if x.var(ddof=1) == 0 and y.var(ddof=1) == 0:
        return nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = _st.ttest_ind(x, y, equal_var=False, alternative=alternative)
    return {"t": float(res.statistic), "df": float(res.df), "p": float(res.pvalue)}


def welch_one_sided(new: Iterable[Any], base: Iterable[Any]) -> tuple[float, float]:
    """One-sided Welch p-values (new < base, new > base), as the CI gate judges a cell; n >= 2 per side.

    When neither side varies the t statistic is undefined: equal means give p = 1 both ways, a
    difference is certain (p = 0 in its direction), so a deterministic rerun can still regress."""
    x, y = _clean(new), _clean(base)
    if x.size >= 2 and y.size >= 2 and x.var(ddof=1) == 0 and y.var(ddof=1) == 0:
        if x.mean() == y.mean():
            return 1.0, 1.0
        return (0.0, 1.0) if x.mean() < y.mean() else (1.0, 0.0)
    return welch_test(x, y, "less")["p"], welch_test(x, y, "greater")["p"]


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order; NaN entries stay NaN and do not count.

    Sorted ascending p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


# --------------------------------------------------------------------------- per-cell summaries

SUMMARY_COLUMNS = ("mean", "std", "n", "ci_low", "ci_high", "baseline", "baseline_mean", "diff",
                   "t", "df", "p_value", "p_holm")


def _order_key(value: Any) -> tuple[int, Any]:
    """Sort mixed key values stably: missing first, then numbers, then strings."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (0, 0)
    if isinstance(value, (bool, np.bool_)):
        return (1, int(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (1, float(value))
    return (2, str(value))


def order_key(value: Any) -> tuple[int, Any]:
    """The stable sort key of mixed key values (missing, numbers, strings): deterministic tie-breaks."""
    return _order_key(value)


def _same(a: Any, b: Any) -> bool:
    return _order_key(a) == _order_key(b)


def summary_table(df: pd.DataFrame, value: str, by: Sequence[str], baseline_method: str | None = "kd",
                  method_col: str = "method", match: Sequence[str] = ("dataset",),
                  confidence: float = CONFIDENCE, bootstrap: bool = False) -> pd.DataFrame:
    """One row per cell (unique values of `by`): summary of `value` over runs, Welch test vs baseline.

    The baseline of a cell is the cell of `baseline_method` that shares the `match` columns (e.g. the
    dataset); among several, the one agreeing on most other `by` columns, ties broken by sort order.
    Holm adjusts the p-values across the whole returned table. The baseline cell itself gets no p."""
    by = list(by)
    if df.empty or value not in df.columns:
        return pd.DataFrame(columns=[*by, *SUMMARY_COLUMNS])
    groups: dict[tuple, np.ndarray] = {}
    for key, sub in df.groupby(by, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        vals = _clean(sub[value])
        if key in groups:  # NaN keys can split into equal-looking groups; merge them
            vals = np.concatenate([groups[key], vals])
        groups[key] = vals
    keys = sorted(groups, key=lambda k: tuple(_order_key(v) for v in k))
    keys = [k for k in keys if groups[k].size]  # a cell with no observation is not a cell
    mi = by.index(method_col) if method_col in by else None
    match_idx = [by.index(c) for c in match if c in by]
    other_idx = [i for i in range(len(by)) if i != mi and i not in match_idx]
    rows = []
    for key in keys:
        s = summarize(groups[key], confidence=confidence, bootstrap=bootstrap)
        row: dict[str, Any] = dict(zip(by, key))
        row.update(s)
        row.update({"baseline": "", "baseline_mean": math.nan, "diff": math.nan,
                    "t": math.nan, "df": math.nan, "p_value": math.nan})
        if baseline_method is not None and mi is not None and key[mi] != baseline_method:
            cands = [k for k in keys if k[mi] == baseline_method and all(_same(k[i], key[i]) for i in match_idx)]
            if cands:
                base = max(cands, key=lambda k: sum(_same(k[i], key[i]) for i in other_idx))  # first max wins
                w = welch_test(groups[key], groups[base])
                row.update({"baseline": label_of(dict(zip(by, base))),
                            "baseline_mean": float(groups[base].mean()),
                            "diff": s["mean"] - float(groups[base].mean()),
                            "t": w["t"], "df": w["df"], "p_value": w["p"]})
        rows.append(row)
    out = pd.DataFrame(rows, columns=[*by, *SUMMARY_COLUMNS])
    out["p_holm"] = holm(out["p_value"].to_numpy(dtype=float)) if len(out) else []
    out["n"] = out["n"].astype(int)
    return out


def label_of(key: dict[str, Any]) -> str:
    """`k=v` pairs of the non-missing key fields, in the given order (names a baseline cell)."""
    parts = []
    for k, v in key.items():
        if _order_key(v)[0] == 0 or v == "":
            continue
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        parts.append(f"{k}={v}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- cell formatting

def auto_decimals(x: float, significant: int = 3, minimum: int = 0, maximum: int = 6) -> int:
    """Decimals that show `significant` digits of x (0.00412 -> 5, 12.3 -> 1)."""
    if not math.isfinite(x) or x == 0:
        return minimum
    d = significant - 1 - int(math.floor(math.log10(abs(x))))
    return max(minimum, min(maximum, d))


def format_cell(summary: dict[str, float], decimals: int = 2, spread: str = "ci") -> str:
    """`97.81 ± 0.12 (n=3)`; `97.81 (n=1, no spread)` for one value; `n/a` for none.

    spread "ci": ± the half-width of the CI (or `[low, high]` when it is asymmetric, e.g. bootstrap);
    spread "std": ± the sample standard deviation."""
    n = int(summary.get("n", 0) or 0)
    mean = summary.get("mean", math.nan)
    if n == 0 or not math.isfinite(mean):
        return "n/a"
    m = f"{mean:.{decimals}f}"
    if n < 2:
        return f"{m} (n=1, no spread)"
    if spread == "std":
        return f"{m} ± {summary['std']:.{decimals}f} (n={n})"
    lo, hi = summary["ci_low"], summary["ci_high"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{m} (n={n}, no CI)"
    up, down = hi - mean, mean - lo
    if abs(up - down) <= 0.5 * 10 ** (-decimals) + 1e-12 * max(1.0, abs(mean)):
        return f"{m} ± {max(up, down):.{decimals}f} (n={n})"
    return f"{m} [{lo:.{decimals}f}, {hi:.{decimals}f}] (n={n})"


def format_p(p: float) -> str:
    """p-values for tables: 3 significant digits, `<0.001` below, `n/a` when undefined."""
    if p is None or not math.isfinite(p):
        return "n/a"
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}"
