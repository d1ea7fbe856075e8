"""kdbench.stats against values computed by hand on fixed data."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdbench import stats

# two-sided 95% Student-t critical values from a printed t table (not from scipy)
T975 = {2: 4.302652729749464, 4: 2.7764451051977987}


def test_summarize_mean_std_and_t_interval_by_hand():
    s = stats.summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["n"] == 5
    assert s["mean"] == pytest.approx(3.0)
    assert s["std"] == pytest.approx(math.sqrt(2.5))  # sum of squares 10 / (n - 1)
    half = T975[4] * math.sqrt(2.5) / math.sqrt(5)  # 1.96324...
    assert s["ci_low"] == pytest.approx(3.0 - half, abs=1e-9)
    assert s["ci_high"] == pytest.approx(3.0 + half, abs=1e-9)
    assert half == pytest.approx(1.963243, abs=1e-6)


def test_summarize_drops_missing_values_and_n1_has_no_spread():
    s = stats.summarize([97.81, None, float("nan")])
    assert s["n"] == 1 and s["mean"] == pytest.approx(97.81)
    assert math.isnan(s["std"]) and math.isnan(s["ci_low"]) and math.isnan(s["ci_high"])
    assert stats.format_cell(s) == "97.81 (n=1, no spread)"
    empty = stats.summarize([])
    assert empty["n"] == 0 and math.isnan(empty["mean"])
    assert stats.format_cell(empty) == "n/a"


def test_format_cell_ci_half_width_std_and_asymmetric():
    vals = [97.7, 97.8, 97.93]
    s = stats.summarize(vals)
    sd = float(np.std(vals, ddof=1))
    half = T975[2] * sd / math.sqrt(3)
    assert stats.format_cell(s) == f"97.81 ± {half:.2f} (n=3)"
    assert stats.format_cell(s, spread="std") == f"97.81 ± {sd:.2f} (n=3)"
    asym = {"mean": 1.0, "std": 0.5, "n": 4, "ci_low": 0.5, "ci_high": 2.0}
    assert stats.format_cell(asym) == "1.00 [0.50, 2.00] (n=4)"
    assert stats.format_cell({**asym, "ci_low": 0.0}) == "1.00 ± 1.00 (n=4)"


def _t_sf_by_simpson(t: float, df: float, steps: int = 20000) -> float:
    """Upper tail of Student t from its density, integrated with Simpson's rule (no scipy)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    pdf = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    h = t / steps
    area = pdf(0) + pdf(t) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, steps))
    return 0.5 - area * h / 3


def test_welch_against_hand_computed_df_t_and_p():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    va, vb = 5 / 3, 10.0  # sample variances by hand
    se2 = va / 4 + vb / 5
    t = (2.5 - 6.0) / math.sqrt(se2)
    df = se2 ** 2 / ((va / 4) ** 2 / 3 + (vb / 5) ** 2 / 4)
    assert t == pytest.approx(-2.251436, abs=1e-6) and df == pytest.approx(5.520788, abs=1e-6)
    p = 2 * _t_sf_by_simpson(abs(t), df)
    w = stats.welch_test(a, b)
    assert w["t"] == pytest.approx(t, rel=1e-9)
    assert w["df"] == pytest.approx(df, rel=1e-9)
    assert w["p"] == pytest.approx(p, abs=1e-7)
    assert 0.05 < w["p"] < 0.1  # not significant at 5%: 0.0696...


def test_welch_undefined_cases_are_nan():
    assert math.isnan(stats.welch_test([1.0], [1.0, 2.0])["p"])
    assert math.isnan(stats.welch_test([1.0, 1.0], [2.0, 2.0])["p"])  # both variances zero


def test_holm_order_and_adjusted_values():
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> monotone 0.06
    adj = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02])
    adj = stats.holm([0.02, float("nan"), 0.5])  # NaN does not count: m = 2
    np.testing.assert_allclose(adj, [0.04, np.nan, 0.5])
    np.testing.assert_allclose(stats.holm([0.6, 0.7]), [1.0, 1.0])  # capped at 1
    assert stats.holm([]).size == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=12))
def test_holm_properties(ps):
    adj = stats.holm(ps)
    p = np.asarray(ps)
    assert np.all(adj >= p - 1e-15) and np.all(adj <= 1.0)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adj[order]) >= -1e-15)  # monotone in the raw p order
    assert adj.min() == pytest.approx(min(1.0, len(ps) * p.min()))


def test_bootstrap_interval_is_deterministic_and_sane():
    x = [97.1, 97.5, 97.3, 97.9, 97.2]
    a = stats.summarize(x, bootstrap=True)
    b = stats.summarize(x, bootstrap=True)
    assert (a["ci_low"], a["ci_high"]) == (b["ci_low"], b["ci_high"])
    assert min(x) <= a["ci_low"] < a["mean"] < a["ci_high"] <= max(x)
    assert stats.bootstrap_interval([3.0, 3.0, 3.0]) == (3.0, 3.0)
    assert all(math.isnan(v) for v in stats.bootstrap_interval([1.0]))


def test_summary_table_welch_vs_baseline_per_dataset_and_holm():
    rows = []
    data = {("a", "kd"): [1, 2, 3, 4], ("a", "tcn"): [2, 4, 6, 8, 10], ("a", "student"): [0, 0.5, 1],
            ("b", "kd"): [5, 5.5, 6], ("b", "tcn"): [7, 7.2]}
    for (ds, m), vals in data.items():
        rows += [{"dataset": ds, "method": m, "acc": v} for v in vals]
    rows.append({"dataset": "b", "method": "tcn", "acc": None})  # missing metric: not an observation
    summ = stats.summary_table(pd.DataFrame(rows), "acc", ["dataset", "method"], baseline_method="kd")
    assert list(zip(summ["dataset"], summ["method"])) == [("a", "kd"), ("a", "student"), ("a", "tcn"),
                                                         ("b", "kd"), ("b", "tcn")]
    cell = summ.set_index(["dataset", "method"])
    assert cell.loc[("b", "tcn"), "n"] == 2
    assert math.isnan(cell.loc[("a", "kd"), "p_value"]) and cell.loc[("a", "kd"), "baseline"] == ""
    assert cell.loc[("a", "tcn"), "p_value"] == pytest.approx(stats.welch_test(data["a", "tcn"], data["a", "kd"])["p"])
    assert cell.loc[("b", "tcn"), "p_value"] == pytest.approx(stats.welch_test(data["b", "tcn"], data["b", "kd"])["p"])
    assert cell.loc[("b", "tcn"), "baseline"] == "dataset=b, method=kd"
    assert cell.loc[("a", "tcn"), "diff"] == pytest.approx(6.0 - 2.5)
    np.testing.assert_allclose(summ["p_holm"], stats.holm(summ["p_value"].to_numpy()))
    # with 3 p-values, the smallest is multiplied by 3
    p = summ["p_value"].dropna().sort_values()
    assert summ["p_holm"].min() == pytest.approx(min(1.0, 3 * p.iloc[0]))


def test_summary_table_prefers_the_baseline_cell_agreeing_on_more_keys():
    rows = [{"dataset": "a", "method": "kd", "student": s, "acc": v}
            for s, vals in (("small", [1.0, 1.1, 1.2]), ("big", [5.0, 5.2, 5.1])) for v in vals]
    rows += [{"dataset": "a", "method": "takd", "student": "big", "acc": v} for v in (5.5, 5.6, 5.4)]
    summ = stats.summary_table(pd.DataFrame(rows), "acc", ["dataset", "method", "student"])
    takd = summ[summ["method"] == "takd"].iloc[0]
    assert "student=big" in takd["baseline"]
    assert takd["baseline_mean"] == pytest.approx(5.1)


def test_auto_decimals_and_format_p():
    assert stats.auto_decimals(0.00412) == 5
    assert stats.auto_decimals(12.3) == 1
    assert stats.auto_decimals(1234.0) == 0
    assert stats.format_p(0.0004) == "<0.001"
    assert stats.format_p(0.04567) == "0.046"
    assert stats.format_p(float("nan")) == "n/a"


def test_welch_one_sided_alternatives_are_scipys_and_the_gate_uses_them():
    from scipy import stats as st

    from kdbench import check

    a, b = [96.9, 97.1, 97.0], [97.6, 97.9, 97.5, 97.7]
    for alt in ("less", "greater"):
        assert stats.welch_test(a, b, alt)["p"] == pytest.approx(st.ttest_ind(a, b, equal_var=False, alternative=alt).pvalue)
    less, greater = stats.welch_one_sided(a, b)
    assert less < 0.01 and greater == pytest.approx(1 - less)
    assert stats.welch_one_sided([1.0, 1.0], [1.0, 1.0]) == (1.0, 1.0)  # no spread, equal means
    assert stats.welch_one_sided([0.0, 0.0], [1.0, 1.0]) == (0.0, 1.0)  # no spread, a certain drop
    assert check.welch_one_sided is stats.welch_one_sided and check.CELL_FIELDS == stats.CELL_KEYS
    with pytest.raises(ValueError, match="unknown alternative"):
        stats.welch_test(a, b, "lower")
