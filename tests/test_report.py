"""Reports from synthetic run records: table rows / columns / cells, notes, skips, errors, determinism,
LaTeX that compiles, figures, paper-vs-kdbench verdicts and the CLI."""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdbench import stats, store
from kdbench.cli import report_cmd
from kdbench.errors import KdbenchError
from kdbench.record import namespaced
from kdbench.report import build_report
from kdbench.report.context import Context
from kdbench.report.data import ACCURACY, load
from kdbench.report.paper import COMPARISONS, build as build_comparison
from kdbench.report.plots import pareto_front
from kdbench.report.render import latex_escape, markdown_table
from kdbench.report.table import Skipped, Table
from kdbench.report.tables import TABLES
from kdbench.store import write_record

ENV = {"kdbench_version": "0.1.0", "git_commit": "0123abc", "torch": "2.14.1", "device": "cpu", "threads": 2}
# val-best accuracies per (method, mode, n): one value per seed; "last" accuracies are these minus 1
ACC = {
    ("student", None, 1): [95.0, 95.1, 95.2],
    ("kd", None, 1): [93.0, 93.3, 93.6],  # CI contains the paper's 93.34
    ("kdgan", None, 1): [97.3],  # one seed: n=1, no spread
    ("tcn", "ff", 1): [98.0, 98.1, 98.2],
    ("tcn", "ff", 2): [97.0, 97.2, 97.4],
}
MSE = {1: [[0.30], [0.32], [0.34]], 2: [[0.20, 0.40], [0.22, 0.42], [0.24, 0.44]]}


def _write(out: Path, method: str, mode: str | None, n: int, seed: int, metrics: dict, dataset: str = "mnist",
           student: str = "auto", devs: tuple[str, ...] = (), **spec_fields) -> None:
    spec = {"method": method, "dataset": dataset, "teacher": "auto", "student": student, "budget": "paper",
            "n_students": n, "mode": mode, "epochs": None, "seed": seed, "params": {}, "params_changed": {},
            "teacher_recipe": None, "split_seed": 0, **spec_fields}
    key = store.spec_key(spec, "test")
    base = {"teacher_test_acc": 98.9, "teacher_params": 2380938, "teacher_flops": 26_460_000}
    teacher = {"key": f"paper-mnist-teacher-{dataset}", "arch": "paper-mnist-teacher", "dataset": dataset, "source": "trained",
               "recipe": {"optimizer": "adam", "lr": 0.001, "epochs": 6, "batch_size": 128, "weight_decay": 0.0}}
    write_record(out, {"run_key": key, "status": "ok", "spec": spec, "metrics": namespaced(method, {**base, **metrics}),
                       "deviations": list(devs), "env": ENV, "teacher": teacher, "code_version": "test",
                       "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:01:40+00:00"})


def write_failed(out: Path, seed: int = 0) -> None:
    """A valid record of a failed run (a failed run never counts in a table)."""
    spec = {"method": "kd", "dataset": "mnist", "seed": seed, "params_changed": {}}
    write_record(out, {"run_key": store.spec_key(spec, "test"), "status": "failed", "spec": spec,
                       "error": {"message": "boom"}, "metrics": {}, "code_version": "test"})


def make_records(out: Path) -> Path:
    for (method, mode, n), values in ACC.items():
        for seed, v in enumerate(values):
            m = {"test_acc_valbest": v, "test_acc": v - 1.0, "params": 94650, "flops": 11_670_000,
                 "train_time_s": 10.0 + seed, "epoch_time_s": 1.0, "epochs_run": 10}
            devs = ("KD weights: alpha 0.9 | T 4",) if method == "kd" else ()
            if method == "tcn":
                m.update(feature_mse_per_student=MSE[n][seed], feature_mse=float(np.mean(MSE[n][seed])),
                         params_per_student=[94650 // n] * n, flops_per_student=[11_670_000 // n] * n,
                         finetuned=True, test_acc_valbest_no_finetune=v - 0.5, test_acc_no_finetune=v - 1.5,
                         train_time_per_student_s=[10.0 / n] * n,
                         latency={"b1": {"teacher": 2.0, "sequential": 1.0 * n, "fused": 0.8, "parallel": 0.5},
                                  "b256": {"teacher": 40.0, "sequential": 9.0 * n, "fused": 7.0, "parallel": 5.0}})
                devs = ("student family: parametric_budget",)
            _write(out, method, mode, n, seed, m, devs=devs)
    # a record that failed never counts, and a stray temporary file is ignored
    write_failed(out, seed=9)
    (out / ".kd-mnist-s0.json.123.tmp").write_text("{half")
    return out


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_records(tmp_path_factory.mktemp("results") / "sweep1")


@pytest.fixture(scope="module")
def report_dir(records: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_report(records, tmp_path_factory.mktemp("reports"))


def ctx_for(records: Path, accuracy: str = "valbest", **kw) -> Context:
    return Context(load(records), ACCURACY.get(accuracy), accuracy, **kw)


def _half(values: list[float]) -> float:
    return float(stats.summarize(values)["ci_high"] - np.mean(values))


# ------------------------------------------------------------------------------------------ tables

def test_tcn_table3_rows_columns_and_cells(records: Path):
    t = TABLES.get("tcn_table3_accuracy").build(ctx_for(records))
    assert isinstance(t, Table)
    assert list(t.display.columns) == ["Method", "mnist"]
    assert list(t.display["Method"]) == ["Teacher", "Student (no KD)", "KD", "KDGAN", "TCN FF (n=1)", "TCN FF (n=2)"]
    cell = dict(zip(t.display["Method"], t.display["mnist"]))
    assert cell["KD"] == f"93.30 ± {_half(ACC['kd', None, 1]):.2f} (n=3)" == "93.30 ± 0.75 (n=3)"
    assert cell["KDGAN"] == "97.30 (n=1, no spread)"
    assert cell["Teacher"] == "98.90 (n=1, no spread)"  # one cached teacher shared by all runs counts once
    # student / TCN n=1 differ from KD by far more than their spread: significant after Holm
    assert cell["TCN FF (n=1)"].endswith("†") and cell["Student (no KD)"].endswith("†")
    assert "†" not in cell["KD"] and "†" not in cell["KDGAN"]
    notes = " ".join(t.notes)
    assert "val-best" in notes and "test_acc_valbest" in notes
    assert "Seeds per cell: 1 to 3" in notes
    assert "KD weights: alpha 0.9 | T 4 (3/13 runs)" in notes
    data = t.data.set_index("label")
    assert data.loc["KD", "n"] == 3 and data.loc["KD", "mean"] == pytest.approx(93.3)
    assert data.loc["TCN FF (n=1)", "p_value"] <= data.loc["TCN FF (n=1)", "p_holm"] < 0.05


def test_last_epoch_accuracy_is_an_option(records: Path):
    t = TABLES.get("tcn_table3_accuracy").build(ctx_for(records, "last"))
    cell = dict(zip(t.display["Method"], t.display["mnist"]))
    assert cell["KD"].startswith("92.30 ± ")
    assert "last epoch" in t.title and any("`test_acc`" in n for n in t.notes)


def test_feature_mse_finetune_latency_params_and_time_tables(records: Path):
    ctx = ctx_for(records)
    t1 = TABLES.get("tcn_table1_feature_mse").build(ctx)
    assert list(t1.display.columns) == ["Dataset", "Configuration", "S1", "S2", "All"]
    row = t1.display[t1.display["Configuration"] == "TCN FF (n=2)"].iloc[0]
    assert row["S1"].startswith("0.220 ± ") and row["S2"].startswith("0.420 ± ") and row["All"].startswith("0.320")
    assert t1.display[t1.display["Configuration"] == "TCN FF (n=1)"].iloc[0]["S2"] == ""

    t2 = TABLES.get("tcn_table2_finetune").build(ctx)
    row = t2.display[t2.display["Configuration"] == "TCN FF (n=2)"].iloc[0]
    assert row["Without fine-tuning"].startswith("96.70 ± ") and row["With fine-tuning"].startswith("97.20 ± ")
    assert row["Gain (with − without)"] == "0.50 ± 0.00 (n=3)"

    t5 = TABLES.get("tcn_table5_inference_time").build(ctx)
    assert {"Teacher", "Sequential", "Fused", "Parallel"} <= set(t5.display.columns)
    row = t5.display[(t5.display["Configuration"] == "TCN FF (n=2)") & (t5.display["Batch"] == "256")].iloc[0]
    assert row["Sequential"].startswith("18.0 ") and row["Teacher"].startswith("40.0 ")

    t6 = TABLES.get("tcn_table6_params_flops").build(ctx)
    rows = {c: r for c, r in zip(t6.display["Configuration"], t6.display.to_dict("records"))}
    assert rows["Teacher"]["Params all"] == "2.38M"
    assert rows["TCN FF (n=2)"]["Params each"] == "47.33k" and rows["TCN FF (n=2)"]["FLOPs all"] == "11.67M"

    t8 = TABLES.get("tcn_table8_training_time").build(ctx)
    row = t8.display[t8.display["Configuration"] == "TCN FF (n=2)"].iloc[0]
    assert row["Seconds / student"] == "5.00 ± 0.00 (n=3)" and row["Total fit (s)"].startswith("11.0 ± ")


def test_missing_tables_are_skipped_not_crashed(records: Path, tmp_path: Path):
    ctx = ctx_for(records)
    skipped = TABLES.get("takd_table1").build(ctx)
    assert isinstance(skipped, Skipped) and "TAKD" in skipped.reason
    only_kd = tmp_path / "only_kd"
    for seed, v in enumerate([90.0, 91.0]):
        _write(only_kd, "kd", None, 1, seed, {"test_acc_valbest": v, "test_acc": v})
    out = build_report(only_kd, tmp_path / "rep", formats="md")  # figures on: the empty ones must be skipped
    text = (out / "report.md").read_text()
    assert "### Skipped tables" in text
    assert "TCN Table 1 (per-student feature MSE): no TCN run records" in text
    assert "skipped, no TCN run records" in text  # figures too
    assert "90.50 ± " in text  # the KD accuracy still makes it into the summary table
    out = build_report(only_kd, tmp_path / "rep", name="b", formats="md", baseline_method="nokd", figures=False)
    assert "The baseline method `nokd` has no runs here: no significance tests." in (out / "report.md").read_text()


def test_takd_table_and_significance(tmp_path: Path):
    res = tmp_path / "takd"
    for method, vals in (("student", [80.0, 80.1, 80.2]), ("kd", [81.0, 81.1, 81.2]), ("takd", [81.1, 81.2, 81.0])):
        for seed, v in enumerate(vals):
            _write(res, method, None, 1, seed, {"test_acc_valbest": v, "test_acc": v}, dataset="cifar10-jpeg",
                   student="resnet8", devs=("CIFAR-10 JPEG copy",))
    ctx = ctx_for(res)
    t = TABLES.get("takd_table1").build(ctx)
    assert list(t.display.columns) == ["Dataset", "Student", "Student (no KD)", "KD", "TAKD"]
    row = t.display.iloc[0]
    assert row["Student (no KD)"].endswith("†") and not row["TAKD"].endswith("†")
    assert any("stands in for the paper's `cifar10`" in n for n in t.notes)
    cmp = build_comparison(ctx, COMPARISONS.get("takd_table1")(ctx))
    got = cmp.data[cmp.data["kdbench_cell"] == "TAKD"].iloc[0]
    assert got["published"] == pytest.approx(88.98) and got["diff"] == pytest.approx(81.1 - 88.98)
    assert got["verdict"] == "no"
    assert set(cmp.data[cmp.data["family"] == "plain_cnn"]["verdict"]) == {"not run"}


def test_takd_comparison_matches_the_papers_resnet8_with_the_option_b_student(tmp_path: Path):
    res = tmp_path / "takd-b"
    for method, v in (("student", 80.0), ("kd", 81.0), ("takd", 82.0)):
        for seed in range(2):
            _write(res, method, None, 1, seed, {"test_acc_valbest": v + seed, "test_acc": v}, dataset="cifar10-jpeg",
                   student="resnet8b")
    ctx = ctx_for(res)
    cmp = build_comparison(ctx, COMPARISONS.get("takd_table1")(ctx)).data
    resnet = cmp[cmp["family"] == "resnet"].set_index("method")
    assert resnet.loc["TAKD", "diff"] == pytest.approx(82.5 - 88.98)
    assert resnet.loc["no KD", "diff"] == pytest.approx(80.5 - 88.52)


def test_paper_vs_kdbench_table3(records: Path):
    ctx = ctx_for(records)
    t = build_comparison(ctx, COMPARISONS.get("tcn_table3")(ctx))
    assert set(t.data["dataset"]) == {"mnist"}  # datasets kdbench never ran are left out
    d = t.data.set_index("kdbench_cell")
    assert d.loc["KD", "published"] == pytest.approx(93.34)
    assert d.loc["KD", "diff"] == pytest.approx(93.3 - 93.34)
    assert d.loc["KD", "verdict"] == "yes"  # 93.34 lies in 93.30 ± 0.75
    assert d.loc["TCN FF (n=1)", "verdict"] == "no"  # 98.10 ± 0.25 vs 98.65
    assert d.loc["KDGAN", "verdict"] == "n<2"
    assert d.loc["Teacher", "published"] == pytest.approx(98.11)
    assert "not run" in set(t.data["verdict"])  # e.g. TCN GAN rows
    shown = t.display.set_index("kdbench cell")
    assert shown.loc["KD (mnist)", "Paper in CI"] == "yes"
    assert shown.loc["KD (mnist)", "95% CI"] == "[92.55, 94.05]"


def test_paper_vs_kdbench_params_use_a_tolerance(records: Path):
    ctx = ctx_for(records)
    t = build_comparison(ctx, COMPARISONS.get("tcn_table6")(ctx))
    d = t.data
    single = d[(d["config"] == "single_student") & (d["quantity"] == "params_each") & (d["kdbench_cell"] == "KD")]
    assert single.iloc[0]["verdict"] == "yes"  # 94650 exactly
    tcn2 = d[(d["config"] == "tcn") & (d["students"] == "2") & (d["quantity"] == "params_each")].iloc[0]
    assert tcn2["mean"] == 47325 and tcn2["verdict"] == "yes"  # 2.1% above 46.36k
    assert "Within 5%" in t.display.columns


# ------------------------------------------------------------------------------------------ files

def test_report_files_and_contents(report_dir: Path):
    assert report_dir.name == "sweep1"
    md = (report_dir / "report.md").read_text()
    for heading in ("## Protocol", "## Runs", "TCN Table 3", "TCN Table 1", "TCN Table 2", "TCN Table 5",
                    "TCN Table 6", "TCN Table 8", "Paper vs kdbench: TCN Table 3", "## Figures", "## Appendix"):
        assert heading in md, heading
    assert "1 failed records are not counted" in md
    assert "| git_commit | 0123abc | 13 |" in md
    assert "KD weights: alpha 0.9 \\| T 4" in md  # pipes escaped inside Markdown cells
    assert "![Accuracy vs parameters (Pareto front)](figures/acc_vs_params.png)" in md
    for fig in ("acc_vs_params", "tcn_vs_students", "feature_mse"):
        assert (report_dir / "figures" / f"{fig}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (report_dir / "figures" / f"{fig}.pdf").read_bytes()[:5] == b"%PDF-"
    csv = pd.read_csv(report_dir / "tables" / "tcn_table3_accuracy.csv")
    assert {"label", "mean", "std", "n", "ci_low", "ci_high", "p_value", "p_holm"} <= set(csv.columns)
    assert (report_dir / "tables" / "tcn_table3_accuracy.tex").exists()
    tex = (report_dir / "tables.tex").read_text()
    assert r"\documentclass" in tex and r"\usepackage{booktabs}" in tex and r"\toprule" in tex
    assert r"$\pm$" in tex and "±" not in tex


def _text_outputs(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.suffix in (".md", ".tex", ".csv")}


def test_teachers_table_says_how_each_teacher_was_made(records: Path):
    from kdbench.report.context import Context
    from kdbench.report.data import ACCURACY, load
    from kdbench.report.tables import teachers_table

    results = load(records)
    t = teachers_table(Context(results, ACCURACY.get("valbest"), "valbest", "kd", False, "ci"))
    assert t.display.to_dict("records") == [{"Teacher": "paper-mnist-teacher", "Dataset": "mnist", "Made by": "trained",
                                             "Recipe / weights": "adam lr 0.001, 6 epochs, batch 128", "Val acc (%)": "",
                                             "Test acc (%)": "98.90", "Runs": str(t.data["runs"].iloc[0])}]
    assert t.data["runs"].iloc[0] == len(results.frame)  # every ok run, counted once under its one teacher


def test_sweep_cost_splits_each_runs_wall_time(records: Path):
    from kdbench.report.context import Context
    from kdbench.report.data import ACCURACY, load
    from kdbench.report.tables import sweep_cost

    results = load(records)
    t = sweep_cost(Context(results, ACCURACY.get("valbest"), "valbest", "kd", False, "ci"))
    total = t.display[t.display["Configuration"] == "all runs"].iloc[0]
    n = len(results.frame[results.frame["dataset"] == total["Dataset"]])
    assert total["Runs"] == str(n) and total["Wall (s)"] == f"{100 * n:,}"  # 100 s per record
    fit = pd.to_numeric(results.frame["train_time_s"], errors="coerce").fillna(0)
    rest = (100 - fit).clip(lower=0)
    mnist = results.frame["dataset"] == total["Dataset"]
    assert total["Measurement and rest (s)"] == f"{rest[mnist].sum():,.0f}"


def test_regenerating_gives_identical_files(records: Path, report_dir: Path, tmp_path: Path):
    first = _text_outputs(report_dir)
    assert len(first) > 20
    again = build_report(records, tmp_path / "elsewhere", name="sweep1")
    assert _text_outputs(again) == first


def test_rebuild_in_place_is_identical_and_removes_outputs_no_longer_made(records: Path, tmp_path: Path):
    out = build_report(records, tmp_path, name="r", figures=False)
    first = _text_outputs(out)
    (out / "tables" / "stale_table.csv").write_text("x\n")
    (out / "figures").mkdir()
    (out / "figures" / "old.png").write_bytes(b"png")
    (out / "notes.txt").write_text("mine")  # not a report output: kept
    build_report(records, tmp_path, name="r", figures=False)
    assert _text_outputs(out) == first
    assert not (out / "tables" / "stale_table.csv").exists() and not (out / "figures" / "old.png").exists()
    assert (out / "notes.txt").exists()
    only_csv = build_report(records, tmp_path, name="c", formats="csv", figures=False)
    assert (only_csv / "tables" / "tcn_table3_accuracy.csv").exists()
    assert not (only_csv / "report.md").exists() and not (only_csv / "tables.tex").exists()


def test_latex_compiles_to_a_pdf_with_pages(report_dir: Path, tmp_path: Path):
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        if os.environ.get("CI") == "true":
            pytest.fail("pdflatex is required under CI=true (apt-get install -y texlive-latex-recommended)")
        pytest.skip("pdflatex not installed")
    work = tmp_path / "tex"
    shutil.copytree(report_dir, work)
    for _ in range(2):  # longtable settles column widths on the second pass
        proc = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "tables.tex"], cwd=work,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-3000:]
    pdf = work / "tables.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    if shutil.which("pdfinfo"):
        info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
        pages = int(next(line.split()[-1] for line in info.splitlines() if line.startswith("Pages:")))
        assert pages >= 1
    else:
        assert b"/Type /Page" in pdf.read_bytes()


# ------------------------------------------------------------------------------------------ errors, CLI

def test_user_errors_are_one_line(tmp_path: Path, records: Path):
    cases = [
        (lambda: build_report(tmp_path / "nope", tmp_path), "does not exist"),
        (lambda: build_report(tmp_path, tmp_path / "r"), "no successful run records"),
        (lambda: build_report(records, tmp_path, formats="md,pdf"), "unknown report format 'pdf'"),
        (lambda: build_report(records, tmp_path, formats="latx"), "did you mean 'latex'"),
        (lambda: build_report(records, tmp_path, accuracy="best"), "unknown accuracy selection 'best'"),
        (lambda: build_report(records, tmp_path, name="../x"), "report name"),
    ]
    for call, message in cases:
        with pytest.raises(KdbenchError) as err:
            call()
        assert message in str(err.value) and "\n" not in str(err.value)
    failed_only = tmp_path / "failed"
    write_failed(failed_only)
    with pytest.raises(KdbenchError, match=r"\(1 failed\)"):
        build_report(failed_only, tmp_path)


def test_cli_parser_and_run(records: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    parser = argparse.ArgumentParser(prog="kdbench")
    report_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(records), "--out", str(tmp_path), "--name", "cli", "--format", "md,csv",
                              "--accuracy", "last", "--bootstrap", "--no-figures"])
    assert args.func is report_cmd.run
    assert report_cmd.run(args) == 0
    assert "report written to" in capsys.readouterr().out
    md = (tmp_path / "cli" / "report.md").read_text()
    assert "at the last epoch" in md and "bootstrap" in md
    assert not (tmp_path / "cli" / "tables.tex").exists()
    args = parser.parse_args(["report", str(tmp_path / "missing")])
    with pytest.raises(KdbenchError):
        report_cmd.run(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["report", str(records), "--accuracy", "best"])


# ------------------------------------------------------------------------------------------ helpers

def test_latex_escape_and_markdown_cells():
    assert latex_escape("a_b & 50% #1 ± {x} ~") == r"a\_b \& 50\% \#1 $\pm$ \{x\} \textasciitilde{}"
    assert latex_escape("naïve") == "naive"
    md = markdown_table(pd.DataFrame({"Name": ["a|b"], "Value": ["1.00 ± 0.10 (n=3)"]}))
    assert md.splitlines() == ["| Name | Value |", "|:---|---:|", "| a\\|b | 1.00 ± 0.10 (n=3) |"]


def test_pareto_front():
    x = np.array([10.0, 20.0, 5.0, 40.0, 20.0])
    y = np.array([90.0, 89.0, 80.0, 95.0, 92.0])
    assert list(pareto_front(x, y)) == [2, 0, 4, 3]
    assert math.isclose(y[pareto_front(x, y)].max(), 95.0)


def test_gan_cells_say_which_variant_ran():
    from kdbench.papers.tcn import gan_variant_notes

    df = pd.DataFrame({"method": ["tcn", "tcn", "tcn", "kd"], "mode": ["gan", "gan", "ff", ""],
                       "tcn.gan_variant": ["code-faithful", "paper-intent", "code-faithful", None]})
    notes = gan_variant_notes(df)
    assert len(notes) == 2 and "code-faithful" in notes[0] and notes[0].endswith("1/2 runs.") and "paper-intent" in notes[1]
    assert gan_variant_notes(df[df["mode"] != "gan"]) == []


def test_time_whiskers_never_reach_below_zero(records: Path):
    """Training-time error bars: the interval of the geometric mean (from log times) stays positive
    where the t-interval of the arithmetic mean of skewed seeds goes negative."""
    from kdbench.report.plots import log_summary

    ctx = ctx_for(records)
    df = ctx.df[ctx.df["method"] == "tcn"].copy()
    df["train_time_s"] = [1.0, 40.0, 90.0] * (len(df) // 3) + [5.0] * (len(df) % 3)  # skewed seeds
    keys = ["method", "mode", "n_students", "dataset"]
    arithmetic = ctx.summary(df, "train_time_s", keys)
    geometric = log_summary(ctx, df, "train_time_s", keys)
    assert (arithmetic["ci_low"] < 0).any()  # the defect: a negative whisker
    assert (geometric["ci_low"].dropna() > 0).all() and (geometric["ci_low"] <= geometric["mean"]).all()
    assert (geometric["mean"] <= geometric["ci_high"]).all()


def test_paper_vs_kdbench_kdgan_table1_matches_train_subsets(tmp_path: Path):
    """Each KDGAN row (train images, method) meets the kdbench cell of the same `max_train` only."""
    out = tmp_path / "kdgan"
    for n_images, kd_acc in ((100, 60.0), (1000, 90.0)):
        for seed in range(3):
            for method, acc in (("kd", kd_acc), ("kdgan", kd_acc + 5), ("student", kd_acc - 5)):
                _write(out, method, None, 1, seed, {"test_acc_valbest": acc + seed, "test_acc": acc},
                       student="kdgan-mlp", max_train=n_images)
    ctx = ctx_for(out)
    table = build_comparison(ctx, COMPARISONS.get("kdgan_table1")(ctx))
    data = table.data.set_index(["train images", "method"])
    assert data.loc[("100", "distn"), "mean"] == pytest.approx(61.0)
    assert data.loc[("1000", "distn"), "mean"] == pytest.approx(91.0)
    assert data.loc[("1000", "kdgan"), "mean"] == pytest.approx(96.0)
    assert data.loc[("1000", "kdgan"), "published"] == pytest.approx(96.42)
    assert data.loc[("10000", "kdgan"), "kdbench_cell"] == "not run"
    # the cells of different subsets stay apart in the ordinary tables too
    assert set(ctx.summary(ctx.df, "test_acc_valbest", ["method", "max_train"])["max_train"]) == {100, 1000}


def test_every_shipped_reference_table_parses():
    from importlib import resources

    from kdbench.report.paper import reference

    names = [p.name[:-4] for p in (resources.files("kdbench") / "reference").iterdir() if p.name.endswith(".csv")]
    assert {"kdgan_table1", "ft_reference", "takd_table1", "tcn_table3_accuracy"} <= set(names)
    for name in names:
        table = reference(name)
        assert len(table) and "" not in table.columns, name


def test_learning_curves_average_the_histories_of_seeds(tmp_path: Path):
    from kdbench.report.plots import curve_frame, learning_curves

    out = tmp_path / "curves"
    for seed in range(2):
        _write(out, "kd", None, 1, seed, {"test_acc_valbest": 90.0, "test_acc": 90.0})
    for path in out.glob("*.json"):  # histories: val_acc 80 + 10 * epoch + seed
        rec = json.loads(path.read_text())
        rec["history"] = [{"epoch": e, "val_acc": 80.0 + 10 * e + rec["spec"]["seed"]} for e in (1, 2)]
        path.write_text(json.dumps(rec))
    ctx = ctx_for(out)
    frame = curve_frame(ctx, ["dataset", "method"])
    assert frame.groupby("step")["val_acc"].mean().tolist() == [90.5, 100.5]
    fig = learning_curves(ctx, tmp_path / "report")
    assert fig.files and (tmp_path / "report" / fig.files[0]).read_bytes()[:4] == b"\x89PNG"


def test_an_imported_teacher_is_shown_by_its_file_name_not_this_machines_folder():
    from kdbench.report.tables import _teacher_source

    assert _teacher_source({"source": "imported from /work/shared/weights/cifar/resnet56-4bfd9763.th"}) == \
        "imported from resnet56-4bfd9763.th"
    assert _teacher_source({"source": "trained"}) == "trained" and _teacher_source({}) == ""
