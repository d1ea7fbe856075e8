"""The CI accuracy gate (`kdbench check`, `kdbench baseline update`).

Synthetic records pin the decision rule (Welch AND minimum effect, missing / extra cells, the
"identical" message, bad input); a small real demonstration at the end trains a mini-baseline
with the real sweep and shows that a deliberately broken method fails the gate while an unchanged
rerun passes.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import pytest

from kdbench import check as chk
from kdbench import store
from kdbench.cli import main

GIT = {"git_commit": "0123456789abcdef0123456789abcdef01234567", "git_dirty": False}
SEEDS = (0, 1, 2, 3)
# four seeds of each cell: a spread of about 0.3 points, like a short MNIST protocol
BASE = {
    ("student", None, 1): [97.10, 97.45, 96.95, 97.30],
    ("kd", None, 1): [97.60, 97.85, 97.40, 97.70],
    ("tcn", "ff", 1): [98.10, 98.35, 97.95, 98.20],
    ("tcn", "ff", 4): [97.20, 97.55, 97.05, 97.40],
}


def write_run(out: Path, method: str, mode: str | None, n: int, seed: int, acc: float | None, *, dataset: str = "mnist",
              status: str = "ok", epochs: int = 2, params_changed: dict | None = None, threads: int = 2) -> None:
    spec = {"method": method, "dataset": dataset, "mode": mode, "n_students": n, "seed": seed, "epochs": epochs,
            "max_train": 6000, "device": "cpu", "params_changed": params_changed or {}}
    metrics = {} if acc is None else {"test_acc_valbest": acc, "test_acc": acc - 0.05}
    rec = {"run_key": store.spec_key(spec, "test"), "status": status, "spec": spec,
           "metrics": metrics if status == "ok" else {}, "code_version": "test",
           "env": {"torch": "2.x", "device": "cpu", "gpu": None, "cpu": "a test CPU", "threads": threads}}
    if status != "ok":
        rec["error"] = {"type": "RuntimeError", "message": "boom"}
    store.write_record(out, rec)


def write_dir(out: Path, cells: dict, **kw) -> Path:
    for (method, mode, n), values in cells.items():
        for seed, acc in zip(SEEDS, values):
            write_run(out, method, mode, n, seed, acc, **kw)
    return out


@pytest.fixture
def baseline(tmp_path: Path) -> Path:
    base = write_dir(tmp_path / "baseline", BASE)
    chk.write_summary(base, preset="unit", git=GIT, date="2025-01-01T00:00:00+00:00")
    return base


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def row_of(output: str, label: str) -> str:
    rows = [line for line in output.splitlines() if line.startswith(f"| {label} ")]
    assert len(rows) == 1, output
    return rows[0]


# --------------------------------------------------------------------------- the decision rule

def test_unchanged_rerun_passes_as_identical(baseline, tmp_path, capsys):
    new = write_dir(tmp_path / "new", BASE)
    rc, out, err = run_cli(capsys, "check", str(new), "--baseline", str(baseline))
    assert rc == 0, out + err
    assert "identical to the baseline (deterministic CPU rerun)" in out
    assert "check passed: 4 cell(s)" in out
    assert "commit 0123456789ab" in out and "preset unit" in out
    for label in ("student n=1 mnist", "kd n=1 mnist", "tcn ff n=1 mnist", "tcn ff n=4 mnist"):
        row = row_of(out, label)
        assert "| ok " in row and "+0.00" in row


def test_clear_drop_fails_naming_the_cell(baseline, tmp_path, capsys):
    cells = dict(BASE)
    cells[("tcn", "ff", 4)] = [v - 2.0 for v in BASE[("tcn", "ff", 4)][::-1]]  # -2 points, other seed order
    new = write_dir(tmp_path / "new", cells)
    rc, out, _ = run_cli(capsys, "check", str(new), "--baseline", str(baseline))
    assert rc == 1
    row = row_of(out, "tcn ff n=4 mnist")
    assert "REGRESSION" in row and "-2.00" in row
    assert "check FAILED: 1 regression(s): tcn ff n=4 mnist" in out
    assert "| ok " in row_of(out, "kd n=1 mnist")
    assert "every cell: identical" not in out


def test_within_noise_wiggle_passes(baseline, tmp_path, capsys):
    wiggle = [-0.25, 0.15, -0.1, 0.05]  # mean -0.04, well inside the seeds' spread
    cells = {k: [v + w for v, w in zip(vals, wiggle)] for k, vals in BASE.items()}
    new = write_dir(tmp_path / "new", cells, threads=1)
    rc, out, _ = run_cli(capsys, "check", str(new), "--baseline", str(baseline))
    assert rc == 0, out
    assert "REGRESSION" not in out and chk.IDENTICAL_NOTE not in out
    assert "check passed" in out
    # why the values are not bit-identical is said, per cell
    assert "environment differs from the baseline (bit-identical values not expected): threads 2 -> 1" in out


def test_significant_drop_below_min_effect_is_not_a_regression(baseline, tmp_path):
    # every kd seed exactly 0.3 points lower: Welch calls it significant, but 0.3 < the 0.5-point minimum
    cells = dict(BASE)
    cells[("kd", None, 1)] = [v - 0.3 for v in BASE[("kd", None, 1)]]
    new = write_dir(tmp_path / "new", cells)
    kd = next(c for c in chk.check(new, baseline).cells if c.cell[1] == "kd")
    assert kd.p < 0.05 and kd.diff == pytest.approx(-0.3) and kd.verdict == chk.OK
    strict = next(c for c in chk.check(new, baseline, min_effect=0.2).cells if c.cell[1] == "kd")
    assert strict.verdict == chk.REGRESSION


def test_large_but_noisy_drop_is_not_significant(tmp_path):
    base = write_dir(tmp_path / "b", {("kd", None, 1): [90.0, 97.0, 93.0, 96.0]})
    chk.write_summary(base, git=GIT)
    new = write_dir(tmp_path / "n", {("kd", None, 1): [95.0, 89.0, 96.0, 91.0]})
    c = chk.check(new, base).cells[0]
    assert c.diff == pytest.approx(-1.25) and c.p > 0.05 and c.verdict == chk.OK


def test_missing_cell_fails_and_extra_cell_is_reported(baseline, tmp_path, capsys):
    cells = {k: v for k, v in BASE.items() if k != ("tcn", "ff", 1)}
    cells[("tcn", "ff", 2)] = [97.8, 97.9, 97.7, 97.85]
    new = write_dir(tmp_path / "new", cells)
    rc, out, _ = run_cli(capsys, "check", str(new), "--baseline", str(baseline))
    assert rc == 1
    assert "missing" in row_of(out, "tcn ff n=1 mnist")
    assert "extra" in row_of(out, "tcn ff n=2 mnist")
    assert "extra cell(s), not gated: tcn ff n=2 mnist" in out
    assert "1 missing cell(s): tcn ff n=1 mnist" in out


def test_extra_cell_alone_passes(baseline, tmp_path, capsys):
    new = write_dir(tmp_path / "new", {**BASE, ("kd", None, 1): BASE[("kd", None, 1)]})
    write_run(new, "kd", None, 1, 0, 96.0, params_changed={"temperature": 2.0})
    rc, out, _ = run_cli(capsys, "check", str(new), "--baseline", str(baseline))
    assert rc == 0, out
    assert "extra" in row_of(out, "kd n=1 mnist [temperature=2.0]")
    assert "96.00 ± n/a (1)" in out


def test_failed_runs_make_a_cell_missing(baseline, tmp_path, capsys):
    cells = {k: v for k, v in BASE.items() if k != ("kd", None, 1)}
    new = write_dir(tmp_path / "new", cells)
    for seed in SEEDS:
        write_run(new, "kd", None, 1, seed, None, status="failed")
    rc, out, _ = run_cli(capsys, "check", str(new), "--baseline", str(baseline))
    assert rc == 1
    assert "missing" in row_of(out, "kd n=1 mnist")
    assert "no usable run: 4 run(s) without a usable value: seed 0: failed run; seed 1: failed run" in out


def test_single_seed_falls_back_to_the_min_effect_rule(tmp_path, capsys):
    base = write_dir(tmp_path / "b", {("kd", None, 1): [97.6], ("student", None, 1): [97.2]})
    chk.write_summary(base, git=GIT)
    new = write_dir(tmp_path / "n", {("kd", None, 1): [96.9], ("student", None, 1): [97.0]})
    rc, out, _ = run_cli(capsys, "check", str(new), "--baseline", str(base))
    assert rc == 1
    assert "REGRESSION" in row_of(out, "kd n=1 mnist")  # -0.7 > 0.5 points
    assert "| ok " in row_of(out, "student n=1 mnist")  # -0.2 within 0.5 points
    assert "min-effect rule only" in out
    assert "97.60 ± n/a (1)" in out


def test_improvement_is_reported_and_passes(baseline, tmp_path, capsys):
    cells = dict(BASE)
    cells[("student", None, 1)] = [v + 1.5 for v in BASE[("student", None, 1)]]
    new = write_dir(tmp_path / "new", cells)
    rc, out, _ = run_cli(capsys, "check", str(new), "--baseline", str(baseline))
    assert rc == 0
    assert "improved" in row_of(out, "student n=1 mnist")


def test_metric_option_and_protocol_note(baseline, tmp_path, capsys):
    new = write_dir(tmp_path / "new", BASE, epochs=3)
    rc, out, _ = run_cli(capsys, "check", str(new), "--baseline", str(baseline), "--metric", "test_acc")
    assert rc == 0
    assert "accuracy gate: test_acc (%)" in out
    assert "protocol differs from the baseline: epochs 2 -> 3" in out


def test_welch_p_values_match_scipy_and_handle_zero_spread():
    import numpy as np
    from scipy import stats

    a, b = np.array([96.9, 97.1, 97.0]), np.array([97.6, 97.9, 97.5, 97.7])
    less, greater = chk.welch_one_sided(a, b)
    assert less == pytest.approx(stats.ttest_ind(a, b, equal_var=False, alternative="less").pvalue)
    assert greater == pytest.approx(1 - less)
    same = np.array([97.0, 97.0])
    assert chk.welch_one_sided(same, same) == (1.0, 1.0)
    assert chk.welch_one_sided(same - 1, same) == (0.0, 1.0)


# --------------------------------------------------------------------------- bad input -> one line, exit 2

@pytest.mark.parametrize("case", ["no-results-dir", "empty-results", "no-baseline", "no-summary", "bad-summary",
                                  "stale-summary", "unknown-metric", "bad-alpha", "duplicate-seed"])
def test_bad_input_is_one_line_exit_2(case, baseline, tmp_path, capsys):
    new = tmp_path / "new"
    base = baseline
    metric = []
    if case == "no-results-dir":
        new = tmp_path / "nope"
    elif case == "empty-results":
        new.mkdir()
    else:
        write_dir(new, BASE)
    if case == "no-baseline":
        base = tmp_path / "no-such-baseline"
    elif case == "no-summary":
        (base / chk.SUMMARY_FILE).unlink()
    elif case == "bad-summary":
        (base / chk.SUMMARY_FILE).write_text("{not json")
    elif case == "stale-summary":
        write_run(base, "kd", None, 1, 7, 95.0)  # a record the summary does not describe
    elif case == "unknown-metric":
        metric = ["--metric", "test_acc_valbets"]
    elif case == "bad-alpha":
        metric = ["--alpha", "1.5"]
    elif case == "duplicate-seed":
        write_run(new, "kd", None, 1, 0, 97.0, epochs=5)
    rc, out, err = run_cli(capsys, "check", str(new), "--baseline", str(base), *metric)
    assert rc == 2, out + err
    assert out == ""
    assert err.startswith("kdbench: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- summary and baseline update

def test_summary_describes_each_cell(baseline):
    summary = json.loads((baseline / chk.SUMMARY_FILE).read_text())
    assert summary["metric"] == "test_acc_valbest" and summary["preset"] == "unit"
    cells = [c for c in summary["cells"] if c["metric"] == "test_acc_valbest"]
    assert len(cells) == 4
    tcn4 = next(c for c in cells if c["method"] == "tcn" and c["n_students"] == 4)
    vals = BASE[("tcn", "ff", 4)]
    assert tcn4["mode"] == "ff" and tcn4["variant"] == "default" and tcn4["dataset"] == "mnist"
    assert tcn4["seeds"] == list(SEEDS) and tcn4["values"] == vals and tcn4["n"] == 4
    assert tcn4["mean"] == pytest.approx(sum(vals) / 4)
    mean = sum(vals) / 4
    assert tcn4["std"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in vals) / 3))
    assert tcn4["git_commit"] == GIT["git_commit"] and tcn4["date"] == "2025-01-01T00:00:00+00:00"
    assert {c["metric"] for c in summary["cells"]} == {"test_acc_valbest", "test_acc"}


def test_git_info_reads_the_commit(tmp_path):
    info = chk.git_info(Path(__file__).resolve().parent)
    if info["git_commit"] is not None:  # a checkout (an sdist has no .git)
        assert re.fullmatch("[0-9a-f]{40}", info["git_commit"]) and isinstance(info["git_dirty"], bool)
    assert chk.git_info(tmp_path) == {"git_commit": None, "git_dirty": None}


def _update_args(tmp_path: Path, out: Path) -> argparse.Namespace:
    return argparse.Namespace(preset="ci-mnist", out=str(out), data_root=None, workers=None, threads=1)


def test_baseline_update_keeps_the_old_baseline_when_the_sweep_fails(baseline, tmp_path, monkeypatch):
    import kdbench.cli as cli
    from kdbench.cli import check_cmd

    before = sorted(p.name for p in baseline.iterdir())
    monkeypatch.setattr(cli, "main", lambda argv: 1)
    with pytest.raises(chk.KdbenchError, match="left unchanged"):
        check_cmd.run_update(_update_args(tmp_path, baseline))
    assert sorted(p.name for p in baseline.iterdir()) == before
    assert not [p for p in baseline.parent.iterdir() if p.name.startswith(".baseline.new-")]


def test_baseline_update_replaces_the_directory(baseline, tmp_path, monkeypatch):
    import kdbench.cli as cli
    from kdbench.cli import check_cmd

    def fake_sweep(argv):
        assert argv[:3] == ["sweep", "--preset", "ci-mnist"] and argv[-2:] == ["--threads", "1"], argv
        out = Path(argv[argv.index("--out") + 1])
        write_dir(out, {("kd", None, 1): [98.0, 98.2, 98.1, 98.3]})
        return 0

    monkeypatch.setattr(cli, "main", fake_sweep)
    assert check_cmd.run_update(_update_args(tmp_path, baseline)) == 0
    summary = json.loads((baseline / chk.SUMMARY_FILE).read_text())
    assert summary["preset"] == "ci-mnist" and summary["protocol"]["dataset"] == "mnist"
    assert summary["command"] == f"kdbench sweep --preset ci-mnist --out {baseline} --threads 1"
    assert {(c["method"], c["n"]) for c in summary["cells"]} == {("kd", 4)}
    assert len(list(baseline.glob("kd-*.json"))) == 4 and not list(baseline.glob("tcn-*.json"))
    assert [p.name for p in baseline.parent.iterdir() if p.name.startswith(".")] == []


def test_unknown_preset_is_one_line(capsys, tmp_path):
    rc, out, err = run_cli(capsys, "baseline", "update", "--preset", "ci-mnsit", "--out", str(tmp_path / "b"))
    assert rc == 2 and "unknown preset 'ci-mnsit'; did you mean 'ci-mnist'" in err
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- real demonstration (tiny)

def _misaligned_kd_loss(student_logits, teacher_logits, temperature, reduction="batchmean"):
    """A classic bug: the soft targets are paired with the wrong samples (teacher logits shifted by one)."""
    from kdbench.losses import kd_loss

    return kd_loss(student_logits, teacher_logits.roll(1, dims=0), temperature, reduction)


def test_broken_method_fails_the_gate_and_an_unchanged_rerun_passes(tmp_path, monkeypatch, capsys):
    """Mini-baseline with the real sweep on `digits` (ships with scikit-learn), then (a) an unchanged
    rerun passes as identical, (b) a rerun with a broken kd loss fails the gate on the kd cell only."""
    from kdbench import api
    from kdbench.method import get_method

    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KDBENCH_PROGRESS", "0")
    # small and fast: a 7.5k-parameter student, 5 epochs, one thread (tiny models gain nothing from more)
    protocol = dict(method=["student", "kd"], dataset="digits", student="image-student", seeds=3, epochs=5,
                    batch_size=32, lr=3e-3, teacher_epochs=10, device="cpu", latency=False, threads=1, log=None)

    def sweep(out: Path) -> Path:
        res = api.sweep(out=out, **protocol)
        assert res.ok, [r.get("error") for r in res.failed]
        return out

    base = sweep(tmp_path / "baseline")
    chk.write_summary(base, preset="digits-demo", git=GIT)

    rc, out, _ = run_cli(capsys, "check", str(sweep(tmp_path / "rerun")), "--baseline", str(base))
    assert rc == 0, out
    assert "check passed: 2 cell(s), no regression; identical to the baseline (deterministic CPU rerun)" in out

    kd_module = sys.modules[get_method("kd").__module__]
    monkeypatch.setattr(kd_module, "kd_loss", _misaligned_kd_loss)
    rc, out, _ = run_cli(capsys, "check", str(sweep(tmp_path / "broken")), "--baseline", str(base))
    assert rc == 1, out
    assert "REGRESSION" in row_of(out, "kd n=1 digits")
    assert "| ok " in row_of(out, "student n=1 digits")
    assert "check FAILED: 1 regression(s): kd n=1 digits" in out
    print(out)  # the readable diff, for `pytest -s`
