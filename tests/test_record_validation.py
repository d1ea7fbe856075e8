"""Records are validated when they are read (issue 19, item 4): a truncated, retyped, renamed or
edited record is named in one warning block by `report` and `check`, counted by no table or cell,
and rerun by a resumed sweep; a run without a finite metric fails the gate instead of improving it.

The synthetic records come from the report and gate tests (`make_records`, `write_dir`), so the
same fixtures that pin those features here prove that nothing invalid slips into them.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers_sweep import comparable, quiet_env, records  # noqa: F401  (autouse fixture)
from test_check import BASE, baseline, row_of, run_cli, write_dir, write_run  # noqa: F401  (baseline: fixture)
from test_report import make_records

from kdbench import store
from kdbench.cli import main
from kdbench.report import build_report
from kdbench.report.data import load

REPO = Path(__file__).resolve().parents[1]
FAST_ARGS = ["--dataset", "digits", "--epochs", "1", "--max-train", "300", "--student", "plain2",
             "--no-latency", "--threads", "1"]


def record_file(out: Path, method: str, seed: int) -> Path:
    """The record file of `method`'s run with `seed` (there is one per cell in these fixtures)."""
    (path,) = [p for p in store.record_files(out)
               if (r := json.loads(p.read_text()))["spec"]["method"] == method and r["spec"]["seed"] == seed]
    return path


def edit(path: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    """Rewrite a record file after `change(record)` (a hand edit)."""
    rec = json.loads(path.read_text())
    change(rec)
    path.write_text(json.dumps(rec))
    return path


def truncate(path: Path) -> Path:
    """Cut a record file in half, as a full disk or a copy interrupted outside kdbench would."""
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    return path


def damage(out: Path, method: str) -> list[str]:
    """The three defects of the issue on one cell's seeds 0, 1, 2: truncated, `"metrics": "x"`, and
    a copy of seed 2 under another file name. Returns the names of the invalid files."""
    first, second, third = (record_file(out, method, seed) for seed in (0, 1, 2))
    truncate(first)
    edit(second, lambda r: r.update(metrics="x"))
    shutil.copy(third, out / "copy-of-a-record.json")
    return sorted([first.name, second.name, "copy-of-a-record.json"])


# --------------------------------------------------------------------------- the schema, case by case

def _valid(tmp_path: Path) -> Path:
    out = tmp_path / "runs"
    write_run(out, "kd", None, 1, 0, 97.5)
    (path,) = store.record_files(out)
    return path


DEFECTS = [
    ("truncated", truncate, "not valid JSON: truncated or corrupt"),
    ("metrics-not-an-object", lambda p: edit(p, lambda r: r.update(metrics="x")),
     "field 'metrics' must be an object, got str 'x'"),
    ("not-an-object", lambda p: p.write_text("[1, 2]"), "not a JSON object but a list"),
    ("no-schema", lambda p: edit(p, lambda r: r.pop("schema")), "no schema version"),
    # a newer schema is not invalid but skipped and left as it is: tests/test_record.py
    ("schema-a-bool", lambda p: edit(p, lambda r: r.update(schema=True)), "schema version True"),
    ("no-run-key", lambda p: edit(p, lambda r: r.pop("run_key")), "field 'run_key' is missing"),
    ("unknown-status", lambda p: edit(p, lambda r: r.update(status="done")), "status 'done' is not one of ok, failed"),
    ("accuracy-a-string", lambda p: edit(p, lambda r: r["metrics"].update(test_acc_valbest="97.5")),
     "metric 'test_acc_valbest' must be a number"),
    ("deviations-not-strings", lambda p: edit(p, lambda r: r.update(deviations=[1])), "'deviations' must list strings"),
    ("failed-without-error", lambda p: edit(p, lambda r: r.update(status="failed")), "needs an 'error' object"),
    ("spec-field-retyped", lambda p: edit(p, lambda r: r["spec"].update(epochs="two")), "spec: run field 'epochs'"),
    ("spec-edited", lambda p: edit(p, lambda r: r["spec"].update(epochs=3)), "its run key does not match its spec"),
    ("spec-without-seed", lambda p: edit(p, lambda r: r["spec"].pop("seed")), "field 'spec.seed' is missing"),
    ("renamed", lambda p: p.rename(p.with_name("renamed.json")), "is not its file name (a copy or a renamed file?)"),
]


@pytest.mark.parametrize("make_bad, reason", [d[1:] for d in DEFECTS], ids=[d[0] for d in DEFECTS])
def test_each_defect_is_named_excluded_and_not_done(tmp_path: Path, make_bad, reason: str) -> None:
    path = _valid(tmp_path)
    key = path.stem
    assert store.is_done(path.parent, key)
    make_bad(path)
    valid, invalid = store.read_records(path.parent)
    assert valid == [] and len(invalid) == 1 and reason in invalid[0].reason, invalid
    assert "\n" not in invalid[0].reason
    assert not store.is_done(path.parent, key)  # a resumed sweep reruns it
    assert list(store.iter_records(path.parent)) == []
    with pytest.warns(UserWarning, match="1 invalid record file"):
        assert store.load_results(path.parent).empty


def test_committed_records_all_validate() -> None:
    """The schema describes the records kdbench really writes: every committed record passes it."""
    dirs = sorted({p.parent for p in (REPO / "results").rglob("*.json")} - {REPO / "results" / "bench"})
    assert len(dirs) >= 5
    for d in dirs:
        valid, invalid = store.read_records(d)
        assert invalid == [] and len(valid) == len(store.record_files(d)) > 0, (d, invalid)


# --------------------------------------------------------------------------- reports

def test_report_lists_invalid_records_in_one_block_and_counts_each_run_once(tmp_path: Path, capsys) -> None:
    out = make_records(tmp_path / "sweep")
    n_kd = len(load(out).frame.query("method == 'kd'"))
    names = damage(out, "kd")
    results = load(out)  # `"metrics": "x"` used to crash here with a traceback
    assert sorted(i.path.name for i in results.invalid) == names
    assert len(results.frame.query("method == 'kd'")) == n_kd - 2  # the copy of seed 2 is not a second seed 2
    assert results.frame["run_key"].is_unique
    assert main(["report", str(out), "--out", str(tmp_path / "reports"), "--format", "md", "--no-figures"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: 3 invalid record files excluded from the report:") and err.count("  - ") == 3
    md = (tmp_path / "reports" / "sweep" / "report.md").read_text()
    assert md.count("## Warning") == 1 and "## Warning: 3 invalid record files excluded" in md
    block = md.split("## Warning", 1)[1].split("## Protocol", 1)[0]
    assert [line.split("`")[1] for line in block.splitlines() if line.startswith("- `")] == names
    assert "3 invalid record files are excluded (listed above)" in md


def test_report_of_valid_records_has_no_warning(tmp_path: Path) -> None:
    report = build_report(make_records(tmp_path / "sweep"), tmp_path / "reports", formats="md", figures=False,
                          log=lambda text: pytest.fail(f"unexpected warning: {text}"))
    assert "Warning" not in (report / "report.md").read_text()


def test_report_and_check_of_a_file_say_it_is_a_file(tmp_path: Path, capsys) -> None:
    """Issue 19, item 8: `report FILE` used to say the file "does not exist"."""
    path = _valid(tmp_path)
    for argv in (["report", str(path), "--out", str(tmp_path / "reports")], ["check", str(path), "--baseline", str(path)],
                 ["check", str(path.parent), "--baseline", str(path)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"path '{path}' is a file, not a directory" in err, err
        assert "does not exist" not in err, err


def test_report_of_only_invalid_records_is_one_line(tmp_path: Path, capsys) -> None:
    truncate(_valid(tmp_path))
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "(1 invalid: kd-mnist-s0-" in err and "not valid JSON" in err, err


# --------------------------------------------------------------------------- the gate

def test_check_lists_invalid_records_once_and_fails_without_a_regression(baseline: Path, tmp_path: Path, capsys) -> None:
    new = write_dir(tmp_path / "new", BASE)
    names = damage(new, "kd")  # a copy used to be 'two ok runs' (exit 2), metrics "x" a traceback
    rc, out, err = run_cli(capsys, "check", str(new), "--baseline", str(baseline))
    assert rc == 1 and err == "", err
    assert out.count("WARNING:") == 1 and "3 invalid record file(s) in the results, excluded from every cell" in out
    assert [line.split(":")[0].strip(" -") for line in out.splitlines() if line.startswith("  - ")] == names
    assert "REGRESSION" not in out  # a damaged record is not a drop in accuracy
    assert "kd n=1 mnist: seed(s) 0, 1 of the baseline not in the new results" in out
    assert out.rstrip().endswith("check FAILED: 3 invalid record file(s) (listed above)")


def test_nan_or_missing_metric_fails_the_gate_instead_of_improving(baseline: Path, tmp_path: Path, capsys) -> None:
    better = {cell: [v + 1.0 for v in values] for cell, values in BASE.items()}  # every cell one point up
    new = write_dir(tmp_path / "new", better)
    write_run(new, "kd", None, 1, 3, math.nan)  # the worst seed diverged: NaN, not a high mean of the rest
    write_run(new, "student", None, 1, 2, None)  # an ok record without the metric
    rc, out, _ = run_cli(capsys, "check", str(new), "--baseline", str(baseline))
    assert rc == 1, out
    assert "INCOMPLETE" in row_of(out, "kd n=1 mnist") and "INCOMPLETE" in row_of(out, "student n=1 mnist")
    assert "improved" in row_of(out, "tcn ff n=1 mnist")  # complete cells are still judged on their values
    assert "kd n=1 mnist: 1 run(s) without a usable value: seed 3: test_acc_valbest is nan" in out
    assert "student n=1 mnist: 1 run(s) without a usable value: seed 2: no test_acc_valbest" in out
    assert "check FAILED: 2 incomplete cell(s) (a run without a usable test_acc_valbest): kd n=1 mnist, student n=1 mnist" in out


def test_baseline_with_an_invalid_record_is_refused(baseline: Path, tmp_path: Path, capsys) -> None:
    new = write_dir(tmp_path / "new", BASE)
    truncate(record_file(baseline, "kd", 1))
    rc, _, err = run_cli(capsys, "check", str(new), "--baseline", str(baseline))
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "holds 1 invalid record file(s)" in err and "rerun `kdbench baseline update`" in err


# --------------------------------------------------------------------------- resume

def test_resume_reruns_invalid_records(tmp_path: Path, capsys) -> None:
    out = tmp_path / "runs"
    argv = ["sweep", "--method", "student", "--seeds", "3", *FAST_ARGS, "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    clean = records(out)
    paths = [record_file(out, "student", seed) for seed in (0, 1, 2)]
    truncate(paths[0])
    edit(paths[1], lambda r: r.update(metrics="x"))  # used to count as done, and was never repaired
    assert [store.is_done(out, p.stem) for p in paths] == [False, False, True]
    assert main(argv) == 0
    assert "2 run now, 1 already done" in capsys.readouterr().out
    again = records(out)
    assert {k: comparable(r) for k, r in again.items()} == {k: comparable(r) for k, r in clean.items()}
    assert store.read_records(out)[1] == []



def test_dry_run_names_an_invalid_record(tmp_path, monkeypatch, capsys):
    """The plan shows an invalid record as such (it will rerun), not as a run never made."""
    from kdbench.cli import main

    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    args = ["sweep", "--method", "student", "--dataset", "digits", "--max-train", "60", "--epochs", "1", "--seeds", "1",
            "--no-latency", "--out", str(out)]
    assert main(args) == 0
    record = next(out.glob("student-*.json"))
    record.write_text(record.read_text()[:40])  # truncated
    capsys.readouterr()
    assert main([*args, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "invalid record, will rerun" in text and "1 invalid records (will rerun)" in text
