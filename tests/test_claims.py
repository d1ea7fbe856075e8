"""Paper claims: the verdict rules on fixed numbers, and the claims table of a report from synthetic
records (which claims apply, the step rows, Welch / Holm, the verdict per claim)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import kdbench.papers as papers
from kdbench import stats
from kdbench.report import build_report
from kdbench.report.claims import (CLAIMS, CONTRADICTED, HOLDS, NO_DIFFERENCE, NOT_RUN, REVERSED, REVERSED_UNTESTED,
                                   SAME_DIRECTION, UNTESTED, build_claims, claim_verdict, step_verdict, two_sided_p)
from kdbench.report.paper import COMPARISONS
from kdbench.report.tables import TABLES

from test_report import _write, ctx_for, make_records


@pytest.mark.parametrize("diff, p, strict, expected", [
    (1.0, 0.01, True, HOLDS), (1.0, 0.20, True, SAME_DIRECTION), (-1.0, 0.20, True, REVERSED),
    (-1.0, 0.01, True, CONTRADICTED), (1.0, math.nan, True, UNTESTED), (-1.0, math.nan, True, REVERSED_UNTESTED),
    (0.0, 0.90, True, NO_DIFFERENCE), (math.nan, math.nan, True, NOT_RUN),
    # >=: holds unless significantly below; untested, nothing can be said either way
    (1.0, 0.20, False, HOLDS), (-1.0, 0.20, False, HOLDS), (0.0, math.nan, False, UNTESTED),
    (-1.0, math.nan, False, UNTESTED), (-1.0, 0.01, False, CONTRADICTED), (1.0, 0.01, False, HOLDS),
])
def test_step_verdicts(diff, p, strict, expected):
    assert step_verdict(diff, p, strict, alpha=0.05) == expected


def test_claim_verdict_is_its_weakest_step():
    assert claim_verdict([HOLDS]) == "supported (every step holds, significant where strict)"
    assert claim_verdict([HOLDS, SAME_DIRECTION]).startswith("not contradicted, not shown")
    assert claim_verdict([HOLDS, UNTESTED]).startswith("not contradicted, not shown")
    assert claim_verdict([HOLDS, REVERSED]).startswith("not supported")
    assert claim_verdict([HOLDS, NO_DIFFERENCE]).startswith("not supported")
    assert claim_verdict([HOLDS, CONTRADICTED, HOLDS]) == ("contradicted (a step is significantly reversed); "
                                                          "steps: holds 2, contradicted 1")
    assert claim_verdict([NOT_RUN, CONTRADICTED]).startswith("contradicted")  # a step not run hides no reversal
    assert claim_verdict([NOT_RUN, HOLDS]).startswith("incomplete")


def test_two_sided_p_is_welch_and_decides_sides_that_do_not_vary():
    a, b = np.array([64.0, 64.2, 64.4]), np.array([62.0, 62.3, 62.6])
    assert two_sided_p(a, b) == pytest.approx(stats.welch_test(a, b)["p"])
    assert two_sided_p(np.array([1.0, 1.0]), np.array([0.0, 0.0])) == 0.0  # a deterministic difference
    assert two_sided_p(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 1.0
    assert math.isnan(two_sided_p(np.array([1.0]), b))


def test_the_papers_register_their_claims():
    papers.load_papers()
    assert {"takd_table1", "ft", "tcn_ff_over_kd", "tcn_gan_over_kd", "tcn_gan_vs_ff", "kdgan_table1"} <= set(CLAIMS.names())
    assert "ft_cifar" in COMPARISONS.names() and "ft_paraphraser" in TABLES.names()


def _cifar(out: Path, method: str, values: list[float], student: str = "resnet8b", **metrics) -> None:
    for seed, v in enumerate(values):
        _write(out, method, None, 1, seed, {"test_acc_valbest": v, "test_acc": v, **metrics}, dataset="cifar10-jpeg",
               student=student)


def test_report_claims_table_rows_and_verdicts(tmp_path: Path):
    out = make_records(tmp_path / "results")  # mnist: student, kd, kdgan (1 seed), tcn ff n = 1, 2
    _cifar(out, "student", [60.0, 60.4, 60.8])
    _cifar(out, "kd", [62.0, 62.3, 62.6])
    _cifar(out, "takd", [64.0, 64.2, 64.4])
    _cifar(out, "student", [70.0, 70.2, 70.4], student="plain2")  # TAKD reversed below KD on plain2
    _cifar(out, "kd", [71.0, 71.3, 71.6], student="plain2")
    _cifar(out, "takd", [68.0, 68.1, 68.2], student="plain2")
    _cifar(out, "ft", [61.9, 62.4, 62.5], student="resnet8b", paraphraser_val_l1=0.1)  # FT = KD within noise
    papers.load_papers()
    t = build_claims(ctx_for(out))
    data = t.data
    by = {(r.claim, r.group, r.step, r.higher): r for r in data.itertuples()}
    takd = by["takd_table1", "cifar10-jpeg; student=resnet8b", "TAKD > KD", "TAKD"]
    assert takd.diff == pytest.approx(1.9) and takd.p_value == pytest.approx(stats.welch_test([64.0, 64.2, 64.4],
                                                                                             [62.0, 62.3, 62.6])["p"])
    assert takd.p_holm >= takd.p_value and takd.verdict == HOLDS
    assert by["takd_table1", "cifar10-jpeg; student=plain2", "TAKD > KD", "TAKD"].verdict == CONTRADICTED
    ft = by["ft", "cifar10-jpeg; student=resnet8b", "FT ≥ KD", "FT"]
    assert ft.diff < 0 and ft.verdict == HOLDS  # not significantly below
    # claims speak only where their subject ran: no TAKD claim on mnist, no KDGAN test with one seed
    assert not any(g.startswith("mnist") for c, g, *_ in by if c == "takd_table1")
    kdgan = data[data["claim"] == "kdgan_table1"]
    assert list(kdgan["verdict"]) == [UNTESTED]  # 97.3 (one seed) above KD's 93.3: direction only
    tcn = data[data["claim"] == "tcn_ff_over_kd"]
    assert list(tcn["higher"]) == ["TCN FF (n=1) [student=auto]", "TCN FF (n=2) [student=auto]"] and set(tcn["verdict"]) == {HOLDS}
    # Holm within one claim on one group: the three TAKD steps on resnet8b, by hand
    fam = data[(data["claim"] == "takd_table1") & (data["group"] == "cifar10-jpeg; student=resnet8b")]
    p = fam["p_value"].to_numpy()
    order = np.argsort(p)
    by_hand = np.maximum.accumulate([min(1.0, (3 - i) * p[j]) for i, j in enumerate(order)])
    assert np.allclose(fam["p_holm"].to_numpy()[order], by_hand)
    assert len(fam) == 3 and fam["p_holm"].ge(fam["p_value"]).all()
    notes = " ".join(t.notes)
    assert ("Verdict, TAKD Table 1: TAKD > KD > no KD on cifar10-jpeg; student=plain2: contradicted" in notes
            and "Verdict, TAKD Table 1: TAKD > KD > no KD on cifar10-jpeg; student=resnet8b: supported" in notes)
    assert "Verdict, TCN Table 3: TCN FF > KD on mnist" in notes and "Holm-adjusted across the steps of one claim" in notes
    assert "Seeds per cell: 1 to 3; 31 runs." in notes  # the 34 runs but the 3 mnist no-KD ones, which no step used

    md = (build_report(out, tmp_path / "reports", figures=False) / "report.md").read_text()
    assert "### Paper claims: kdbench's verdicts" in md and "### FT: paraphraser reconstruction loss (val L1)" in md
    assert "Paper vs kdbench: factor transfer on CIFAR" in md
    paraphraser = pd.read_csv(tmp_path / "reports" / "results" / "tables" / "ft_paraphraser.csv")
    assert paraphraser["mean"].tolist() == [pytest.approx(0.1)]


def test_a_missing_side_makes_the_claim_incomplete(tmp_path: Path):
    out = tmp_path / "results"
    _cifar(out, "takd", [64.0, 64.2, 64.4])
    _cifar(out, "kd", [62.0, 62.3, 62.6])
    papers.load_papers()
    t = build_claims(ctx_for(out))
    rows = t.data[t.data["claim"] == "takd_table1"]
    assert list(rows["verdict"]) == [HOLDS, NOT_RUN, NOT_RUN]
    assert "TAKD > KD > no KD on cifar10-jpeg; student=resnet8b: incomplete" in " ".join(t.notes)


def test_a_claim_is_tested_on_its_papers_datasets_only(tmp_path: Path):
    out = make_records(tmp_path / "results")  # mnist only: TAKD's and FT's claims are CIFAR ones
    for seed, v in enumerate([96.0, 96.1, 96.2]):
        _write(out, "takd", None, 1, seed, {"test_acc_valbest": v, "test_acc": v})
    papers.load_papers()
    data = build_claims(ctx_for(out)).data
    assert "takd_table1" not in set(data["claim"]) and "tcn_ff_over_kd" in set(data["claim"])
