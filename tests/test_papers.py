"""Paper modules: adding a paper is adding one file to kdbench/papers/, which the report loads by
itself; the generic report code names no paper."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import kdbench.papers as papers
from kdbench.report import build_report
from kdbench.report.data import METHOD_DISPLAY, cell_label
from kdbench.report.paper import COMPARISONS
from kdbench.report.plots import PLOTS
from kdbench.report.tables import TABLES

from test_report import make_records

ROOT = Path(__file__).resolve().parents[1]

PAPER = '''
from kdbench.report.data import METHOD_DISPLAY, MethodDisplay
from kdbench.report.paper import Comparison, RefRow, acc_fmt, column, comparison, method_runs
from kdbench.report.table import Table
from kdbench.report.tables import table
import pandas as pd

METHOD_DISPLAY.add("zzpaper_method", MethodDisplay("ZZ method", 5))


@table(95, "zzpaper_table", "ZZ paper table")
def zz_table(ctx):
    n = int((ctx.df["method"] == "kd").sum())
    return Table("zzpaper_table", "ZZ paper: KD runs", pd.DataFrame({"KD runs": [str(n)]}), pd.DataFrame({"n": [n]}))


@comparison(95, "zzpaper_cmp")
def zz_cmp(ctx):
    rows = [RefRow({"dataset": "mnist", "method": "KD"}, "mnist", 93.3, method_runs("kd"), column(ctx.accuracy.column))]
    return Comparison("paper_zzpaper_cmp", "Paper vs kdbench: ZZ paper", rows, acc_fmt)
'''


@pytest.fixture
def extra_paper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A paper module in a folder the papers package reads (as a new file in kdbench/papers/ would be)."""
    folder = tmp_path / "papers"
    folder.mkdir()
    (folder / "zzpaper.py").write_text(PAPER)
    monkeypatch.setattr(papers, "__path__", [*papers.__path__, str(folder)])
    monkeypatch.setattr(papers, "_loaded", False)
    yield
    for registry, name in ((TABLES, "zzpaper_table"), (COMPARISONS, "zzpaper_cmp"),
                           (METHOD_DISPLAY, "zzpaper_method")):
        registry._entries.pop(name, None)
    import sys
    sys.modules.pop("kdbench.papers.zzpaper", None)


def test_a_new_paper_file_is_loaded_into_the_report(extra_paper, tmp_path: Path):
    papers.load_papers()
    assert "zzpaper_table" in TABLES and "zzpaper_cmp" in COMPARISONS
    assert cell_label({"method": "zzpaper_method"}) == "ZZ method"
    out = build_report(make_records(tmp_path / "results"), tmp_path / "reports", figures=False)
    md = (out / "report.md").read_text()
    assert "ZZ paper: KD runs" in md and "Paper vs kdbench: ZZ paper" in md
    assert (out / "tables" / "zzpaper_table.csv").read_text().splitlines() == ["n", "3"]
    # ordered by the module's order: after the TCN paper's own comparisons
    assert md.index("Paper vs kdbench: ZZ paper") > md.index("Paper vs kdbench: TCN Table 3")


def test_the_shipped_papers_register_their_tables():
    papers.load_papers()
    assert {"tcn_table3", "takd_table1", "kdgan_table1"} <= set(COMPARISONS.names())
    assert {"tcn_table3_accuracy", "takd_table1"} <= set(TABLES.names())
    assert {"tcn_vs_students", "feature_mse"} <= set(PLOTS.names())
    assert [m for m in ("teacher", "student", "kd", "takd", "kdgan", "ft", "tcn")
            if m in METHOD_DISPLAY] == ["teacher", "student", "kd", "takd", "kdgan", "ft", "tcn"]
    ranks = [METHOD_DISPLAY.get(m).rank for m in ("teacher", "student", "kd", "takd", "kdgan", "ft", "tcn")]
    assert ranks == sorted(ranks)


def test_generic_report_code_names_no_paper():
    """The papers' names appear only in kdbench/papers/ (docstrings aside)."""
    pattern = re.compile(r"""["'](tcn|takd|kdgan)[_"']""")
    bad = []
    for path in sorted((ROOT / "kdbench" / "report").glob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), start=1):
            if pattern.search(line):
                bad.append(f"{path.name}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_tcn_comparisons_take_only_runs_at_the_tcn_protocol():
    """A KDGAN-table run (a max_train subset, KDGAN's MLP student) is not a TCN Table 3 'kd' run."""
    import pandas as pd

    from kdbench.papers.tcn import _paper_protocol

    df = pd.DataFrame({"method": ["kd", "kd", "kd"], "max_train": [None, 100, None],
                       "student": ["auto", "auto", "kdgan-mlp"], "run_key": ["full", "subset", "mlp"]})
    everything = lambda d: d  # noqa: E731
    assert list(_paper_protocol(everything, teacher_row=False)(df)["run_key"]) == ["full"]
    assert list(_paper_protocol(everything, teacher_row=True)(df)["run_key"]) == ["full", "mlp"]
    assert list(_paper_protocol(everything, teacher_row=False)(df.drop(columns="max_train"))["run_key"]) == ["full", "subset"]



def test_paper_cells_come_from_the_papers_own_setting():
    """A TAKD Table 1 (or FT) cell is the paper method's setting: students that ran the method, and KD
    from the teacher the method ran from. FT's resnet20 -> resnet8 KD is not the KD of a resnet56 ->
    resnet14 -> resnet8 TAKD chain, nor is KD from a smaller teacher of a teacher-size study."""
    import pandas as pd

    from kdbench.report.paper import from_teacher_of, method_runs, where_ran

    df = pd.DataFrame({"method": ["student", "kd", "kd", "kd", "takd", "student"],
                       "student": ["resnet8", "resnet8", "plain2", "plain2", "plain2", "plain2"],
                       "teacher": ["none", "resnet20", "plain10", "plain6", "plain10", "none"],
                       "dataset": ["cifar10-jpeg"] * 6, "run_key": ["s8", "kd8", "kd10", "kd6", "takd", "s2"]})
    assert list(from_teacher_of("takd", "kd")(df)["run_key"]) == ["kd10"]
    assert from_teacher_of("takd", "kd")(df[df["method"] != "takd"]).empty
    assert list(where_ran("takd", method_runs("student"))(df)["run_key"]) == ["s2"]
    assert list(where_ran("takd", from_teacher_of("takd", "kd"))(df)["run_key"]) == ["kd10"]
    assert where_ran("ft", method_runs("kd"))(df).empty
    assert where_ran("takd", method_runs("kd"))(df.iloc[:0]).empty  # no runs of the paper's dataset
