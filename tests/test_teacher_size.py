"""The teacher- and assistant-size sections of `kdbench report` on synthetic records: the tables, the
figures, the verdicts checked against scipy (a case where the largest teacher is not the best, one where
it is, an assistant that beats KD), and no section when neither the teacher nor the chain varies."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st

from kdbench import store
from kdbench.report import build_report
from kdbench.report import teacher_sizes as ts
from kdbench.report.context import Context
from kdbench.report.data import ACCURACY, load
from kdbench.store import write_record
from test_report import make_records

TEACHERS = {"t4": 20_000, "t6": 60_000, "t8": 150_000, "t10": 400_000}  # teacher -> its params
ASSIST = {"a4": 20_000, "a6": 60_000, "a8": 150_000}  # assistant -> its params
OFFSETS = [-0.3, -0.1, 0.4]  # sum 0: the cell means are the nominal ones
# (student, teacher) -> kd mean: for s1 the best teacher is t6, not the largest; for s2 it is t10
KD = {("s1", "t4"): 91.0, ("s1", "t6"): 93.0, ("s1", "t8"): 92.5, ("s1", "t10"): 92.0,
      ("s2", "t4"): 80.0, ("s2", "t6"): 81.0, ("s2", "t8"): 82.0, ("s2", "t10"): 83.0}
NO_KD = {"s1": 90.0, "s2": 79.0}
TAKD = {"a4": 92.3, "a6": 93.6, "a8": 92.8}  # s1, teacher t10
SPREAD = {"kd": 1.0, "student": 0.5, "takd": 0.7}  # unequal spreads: Welch, not Student


def write_run(out: Path, method: str, student: str, teacher: str, seed: int, acc: float,
              assistant: str | None = None) -> None:
    params = {"assistants": [assistant]} if assistant else {}
    spec = {"method": method, "dataset": "mnist", "teacher": teacher, "student": student, "budget": "paper",
            "n_students": 1, "mode": None, "epochs": None, "seed": seed, "params": params, "params_changed": params,
            "teacher_recipe": None, "split_seed": 0}
    metrics = {"test_acc_valbest": acc, "test_acc": acc, "val_acc": acc, "params": 5000, "macs": 50_000}
    if teacher != "none":
        metrics["teacher_params"] = TEACHERS[teacher]
    if assistant:
        metrics["takd"] = {"takd_stages": [{"stage": 0, "arch": assistant, "params": ASSIST[assistant]},
                                           {"stage": 1, "arch": student, "params": 5000}]}  # the method's own metrics
    write_record(out, {"run_key": store.spec_key(spec, "test"), "status": "ok", "spec": spec, "code_version": "test",
                       "metrics": metrics})


def values(mean: float, method: str) -> list[float]:
    return [mean + SPREAD[method] * o for o in OFFSETS]


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teachers") / "teachers"
    for (student, teacher), mean in KD.items():
        for seed, acc in enumerate(values(mean, "kd")):
            write_run(out, "kd", student, teacher, seed, acc)
    for student, mean in NO_KD.items():
        for seed, acc in enumerate(values(mean, "student")):
            write_run(out, "student", student, "none", seed, acc)
    for a, mean in TAKD.items():
        for seed, acc in enumerate(values(mean, "takd")):
            write_run(out, "takd", "s1", "t10", seed, acc, assistant=a)
    return out


def ctx_of(path: Path) -> Context:
    return Context(load(path), ACCURACY.get("valbest"))


def welch_p(a: list[float], b: list[float]) -> float:
    return float(st.ttest_ind(a, b, equal_var=False).pvalue)


def test_teacher_table_and_verdicts(records: Path):
    ctx = ctx_of(records)
    sections = {s.heading: s for s in ts.build(ctx, records.parent / "out", figures=False)}
    assert list(sections) == ["Teacher size", "Assistant size"]
    tables = {t.name: t for t in sections["Teacher size"].tables}
    assert list(tables) == ["teacher_size_mnist_s1", "teacher_size_mnist_s2", "teacher_size_verdicts"]
    s1 = tables["teacher_size_mnist_s1"].display
    assert list(s1["Teacher"]) == ["t4", "t6", "t8", "t10", "none (no teacher)"]  # smallest teacher first
    assert list(s1["Teacher params"]) == ["20.00k", "60.00k", "150.00k", "400.00k", ""]
    assert list(s1.columns[2:]) == ["KD", "Student (no KD)"]  # the configurations, then the no-teacher one
    kd_col, ref_col = s1.columns[2], s1.columns[3]
    half = st.t.ppf(0.975, 2) * np.std(values(93.0, "kd"), ddof=1) / np.sqrt(3)
    assert s1[kd_col].iloc[1] == f"93.00 ± {half:.2f} (n=3)"
    assert s1[ref_col].iloc[4].startswith("90.00 ± ") and s1[kd_col].iloc[4] == ""
    v = tables["teacher_size_verdicts"].data.set_index("student")
    # s1: the largest teacher (t10) is not the best (t6): Welch of the two, Holm across the two rows
    assert not v.loc["s1", "best_is_largest"] and v.loc["s1", "best"] == "t6" and v.loc["s1", "largest"] == "t10"
    p = welch_p(values(92.0, "kd"), values(93.0, "kd"))
    assert v.loc["s1", "p_value"] == pytest.approx(p, rel=1e-12)
    assert v.loc["s1", "p_holm"] == pytest.approx(p, rel=1e-12)  # the other row has no test
    assert v.loc["s1", "diff"] == pytest.approx(-1.0)
    assert v.loc["s1", "verdict"].startswith("no: t6 (60.00k params) gives the best student; the largest, t10")
    assert "1.00 points lower" in v.loc["s1", "verdict"]
    assert v.loc["s1", "verdict"].endswith(": significant" if p < 0.05 else ": not significant")
    # s2: accuracy rises with the teacher: the largest is the best, no test
    assert v.loc["s2", "best_is_largest"] and np.isnan(v.loc["s2", "p_value"])
    assert v.loc["s2", "verdict"] == "yes: the largest teacher, t10 (400.00k params), gives the best student"


def test_assistant_table_and_verdict(records: Path):
    ctx = ctx_of(records)
    section = ts.build(ctx, records.parent / "out", figures=False)[1]
    tables = {t.name: t for t in section.tables}
    assert list(tables) == ["assistant_size_mnist_s1_t10", "assistant_size_verdicts"]
    d = tables["assistant_size_mnist_s1_t10"].display
    assert list(d["Assistants"]) == ["a4", "a6", "a8", "none (no assistant)", "none (no teacher)"]
    assert list(d["Assistant params"]) == ["20.00k", "60.00k", "150.00k", "", ""]
    assert d.iloc[1, 2].startswith("93.60 ± ") and d.iloc[3, 3].startswith("92.00 ± ")
    v = tables["assistant_size_verdicts"].data.iloc[0]
    assert v["best"] == "a6" and v["beats_baseline"] and v["diff"] == pytest.approx(1.6)
    assert v["p_value"] == pytest.approx(welch_p(values(93.6, "takd"), values(92.0, "kd")), rel=1e-12)
    assert v["verdict"].startswith("yes: assistant a6 beats KD from t10 by +1.60 points (Welch p = ")
    assert v["verdict"].endswith(": significant" if v["p_holm"] < 0.05 else ": not significant")


def test_assistant_that_does_not_beat_kd(tmp_path: Path):
    for a, mean in TAKD.items():
        for seed, acc in enumerate(values(mean - 2.0, "takd")):
            write_run(tmp_path, "takd", "s1", "t10", seed, acc, assistant=a)
    for seed, acc in enumerate(values(92.0, "kd")):
        write_run(tmp_path, "kd", "s1", "t10", seed, acc)
    sections = ts.build(ctx_of(tmp_path), tmp_path / "out", figures=False)
    assert [s.heading for s in sections] == ["Assistant size"]  # one teacher: no teacher section
    v = sections[0].tables[-1].data.iloc[0]
    assert v["best"] == "a6" and not v["beats_baseline"] and v["diff"] == pytest.approx(-0.4)
    assert v["verdict"].startswith("no: the best assistant, a6, is 0.40 points below KD from t10")


def test_report_has_both_sections_and_figures(records: Path, tmp_path: Path):
    rep = build_report(records, tmp_path, name="teachers", formats="md,csv,latex")
    md = (rep / "report.md").read_text()
    assert md.index("## Teacher size") < md.index("## Assistant size") < md.index("## Appendix")
    assert "### Teacher size: is the largest teacher the best?" in md
    assert "![Teacher size: student accuracy vs teacher params](figures/teacher_size.png)" in md
    assert "![Assistant size: student accuracy vs assistant params](figures/assistant_size.png)" in md
    for f in ("teacher_size", "assistant_size"):
        assert (rep / "figures" / f"{f}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (rep / "figures" / f"{f}.pdf").stat().st_size > 0
    for t in ("teacher_size_verdicts.csv", "assistant_size_verdicts.tex", "teacher_size_mnist_s1.csv"):
        assert (rep / "tables" / t).stat().st_size > 0
    again = build_report(records, tmp_path / "again", name="teachers", formats="md,csv")
    assert (again / "report.md").read_text() == md  # deterministic


def test_no_variation_no_section(tmp_path: Path):
    one = make_records(tmp_path / "one")  # one teacher, no assistants
    ctx = ctx_of(one)
    assert ts.build(ctx, tmp_path / "out") == []
    assert not (tmp_path / "out").exists()
    rep = build_report(one, tmp_path / "reports", formats="md,csv", figures=False)
    md = (rep / "report.md").read_text()
    assert "Teacher size" not in md and "Assistant size" not in md
    assert not list((rep / "tables").glob("*_size_*"))
