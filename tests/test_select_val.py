"""`kdbench report --select val`: per cell, the hyperparameters with the best mean val accuracy win; the
choice never reads test accuracy (shuffled, NaN or absent test accuracies give the same choice), ties are
broken deterministically, and the report shows the winner's test accuracy only."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdbench import stats, store
from kdbench.cli import build_parser
from kdbench.errors import KdbenchError
from kdbench.report import build_report
from kdbench.report.data import load
from kdbench.report.select import Candidate, choose, select_on_val
from kdbench.store import write_record

# (method, {searched fields}) -> per seed (val, test). kd: temperature; student: epochs. Test accuracy is
# highest where val is not, so a choice that peeked at test would pick another winner.
RUNS = {
    ("kd", (("temperature", 1),), None): [(95.0, 99.0), (95.2, 99.1), (95.4, 99.2)],
    ("kd", (("temperature", 4),), None): [(90.0, 90.0), (90.0, 90.1), (99.0, 90.2)],  # best single val, mean 93
    ("kd", (("temperature", 8),), None): [(96.0, 91.0), (96.1, 91.1), (96.2, 91.2)],  # best mean val: wins
    ("student", (), 5): [(94.0, 98.0), (94.0, 98.5), (94.0, 98.9)],
    ("student", (), 10): [(94.5, 93.0), (94.6, 93.1), (94.7, 93.2)],  # wins on val
    ("tcn", (), None): [(97.0, 97.5), (97.1, 97.6), (97.2, 97.7)],  # one configuration: nothing searched
}


def spec_of(method: str, params: dict, epochs: int | None, seed: int) -> dict:
    return {"method": method, "dataset": "mnist", "teacher": "auto", "student": "auto", "budget": "paper",
            "n_students": 1, "mode": "ff" if method == "tcn" else None, "epochs": epochs, "seed": seed,
            "params": dict(params), "params_changed": dict(params), "teacher_recipe": None, "split_seed": 0}


def write_run(out: Path, spec: dict, val: float, test: float) -> str:
    key = store.spec_key(spec, "test")
    write_record(out, {"run_key": key, "status": "ok", "spec": spec, "code_version": "test",
                       "metrics": {"val_acc": val, "test_acc_valbest": test, "test_acc": test - 0.5, "params": 1000}})
    return key


def make(out: Path, runs: dict = RUNS) -> dict[tuple, list[str]]:
    """Write the records; return the run keys of each configuration."""
    keys = {}
    for (method, params, epochs), seeds in runs.items():
        keys[method, params, epochs] = [write_run(out, spec_of(method, dict(params), epochs, s), v, t)
                                        for s, (v, t) in enumerate(seeds)]
    return keys


def rewrite_test(out: Path, new_test) -> None:
    """Replace the test accuracies of every record (val untouched) with new_test(index, old)."""
    for i, path in enumerate(store.record_files(out)):
        rec = json.loads(path.read_text())
        for k in ("test_acc_valbest", "test_acc"):
            rec["metrics"][k] = new_test(i, rec["metrics"][k])
        path.write_text(json.dumps(rec, allow_nan=True))


def winners(results_dir: Path) -> dict[tuple, tuple]:
    sel = select_on_val(load(results_dir))
    return {tuple(c.cell.values()): (c.searched, c.won.values if c.won else None, sorted(c.won.run_keys))
            for c in sel.choices}


@pytest.fixture
def results(tmp_path: Path) -> tuple[Path, dict]:
    out = tmp_path / "tuned"
    return out, make(out)


def test_winner_is_best_mean_val_per_cell(results):
    out, keys = results
    sel = select_on_val(load(out))
    got = {c.cell["method"]: c for c in sel.choices}
    assert got["kd"].searched == ("params.temperature",)
    assert got["kd"].won.values == (8,)  # mean 96.1 beats temperature=4's single 99.0 (mean 93.0)
    assert sorted(got["kd"].won.run_keys) == sorted(keys["kd", (("temperature", 8),), None])
    assert got["student"].searched == ("epochs",) and got["student"].won.values == (10,)
    assert got["tcn"].searched == () and len(got["tcn"].candidates) == 1
    # the same choice computed independently with pandas from the records' val accuracies
    rows = [{"method": m, "config": (p, e), "val": v} for (m, p, e), seeds in RUNS.items() for v, _ in seeds]
    best = pd.DataFrame(rows).groupby(["method", "config"])["val"].mean().groupby(level=0).idxmax()
    assert got["kd"].won.values == (dict(best["kd"][1][0])["temperature"],)
    assert got["student"].won.values == (best["student"][1][1],)


@pytest.mark.parametrize("how", ["permute", "nan", "garbage"])
def test_choice_never_reads_test_accuracy(results, how):
    out, _ = results
    before = winners(out)
    rng = np.random.default_rng(0)
    olds = [json.loads(p.read_text())["metrics"]["test_acc_valbest"] for p in store.record_files(out)]
    perm = rng.permutation(len(olds))
    new = {"permute": lambda i, old: olds[perm[i]] + (old - olds[i]),  # test_acc moves with test_acc_valbest
           "nan": lambda i, old: math.nan,
           "garbage": lambda i, old: float(rng.uniform(-1e6, 1e6))}[how]
    rewrite_test(out, new)
    assert winners(out) == before


def test_choice_needs_no_test_column_at_all(results):
    out, _ = results
    res = load(out)
    before = {tuple(c.cell.values()): c.won.values for c in select_on_val(res).choices}
    res.frame = res.frame.drop(columns=[c for c in res.frame.columns if c.startswith("test_")])
    assert {tuple(c.cell.values()): c.won.values for c in select_on_val(res).choices} == before


def test_ties_go_to_the_first_configuration_in_sorted_order(tmp_path: Path):
    tie = {("kd", (("temperature", t),), None): [(95.0, 90.0 + t), (96.0, 91.0 + t)] for t in (8, 2, 4)}
    tie["kd", (("temperature", 1),), None] = [(96.0, 99.0), (95.0, 99.0)]  # same mean, other seed order
    out = tmp_path / "tie"
    make(out, tie)
    (choice,) = select_on_val(load(out)).choices
    assert [c.values for c in choice.candidates] == [(1,), (2,), (4,), (8,)]
    assert choice.won.values == (1,)
    # choose() itself: first of equal means, NaN-only candidates never win, a lone one wins without val
    cands = [Candidate((v,), [], np.asarray(x, float)) for v, x in ((1, [90.0]), (2, [92.0, 92.0]), (3, [92.0]))]
    assert choose(cands) == 1
    assert choose([Candidate((1,), [], np.asarray([])), cands[0]]) == 1
    assert choose([Candidate((1,), [], np.asarray([])), Candidate((2,), [], np.asarray([]))]) is None
    assert choose([Candidate((1,), [], np.asarray([]))]) == 0


def test_report_shows_the_winner_only_and_says_what_was_searched(results, tmp_path: Path):
    out, keys = results
    rep = build_report(out, tmp_path / "reports", name="tuned", formats="md,csv", figures=False, select="val")
    md = (rep / "report.md").read_text()
    assert "Tuning on val (`--select val`)" in md and "the tables show 9 of 18 ok runs" in md
    assert "### Hyperparameters selected on val" in md
    sel = pd.read_csv(rep / "tables" / "selection_val.csv")
    kd = sel[sel["method"] == "kd"].set_index("params.temperature")
    assert kd.loc[8, "winner"] and not kd.loc[1, "winner"] and not kd.loc[4, "winner"]
    assert kd.loc[8, "val_mean"] == pytest.approx(96.1)
    assert kd.loc[8, "test_mean"] == pytest.approx(91.1)  # the winner's test mean
    assert kd.loc[[1, 4], "test_mean"].isna().all()  # losers' test accuracy is not reported
    summary = pd.read_csv(rep / "tables" / "summary_accuracy.csv")
    assert sorted(summary["label"]) == ["KD [temperature=8]", "Student (no KD)", "TCN FF (n=1)"]
    student = summary[summary["method"] == "student"].iloc[0]
    assert student["mean"] == pytest.approx(93.1) and student["n"] == 3  # epochs=10's test, not epochs=5's
    half = stats.summarize([91.0, 91.1, 91.2])["ci_high"] - 91.1
    assert f"| mnist | KD | params.temperature ∈ {{1, 4, 8}} (3 configurations) | params.temperature=8 |" in md
    assert f"91.10 ± {half:.2f} (n=3)" in md
    # without --select every configuration is its own cell, as before
    plain = build_report(out, tmp_path / "reports", name="plain", formats="csv", figures=False)
    assert len(pd.read_csv(plain / "tables" / "summary_accuracy.csv")) == 6


def test_bad_selection_is_one_line(results, tmp_path: Path):
    out, _ = results
    with pytest.raises(KdbenchError, match=r"^unknown selection 'test' \(known: none, val\)$"):
        build_report(out, tmp_path, select="test")
    args = build_parser().parse_args(["report", str(out), "--out", str(tmp_path), "--select", "val", "--no-figures",
                                      "--format", "md"])
    assert args.select == "val" and args.func(args) == 0
    assert "Hyperparameters selected on val" in (tmp_path / "tuned" / "report.md").read_text()
    with pytest.raises(KdbenchError, match="invalid choice: 'best'"):
        build_parser().parse_args(["report", str(out), "--select", "best"])


def test_no_val_accuracy_is_one_line(tmp_path: Path):
    out = tmp_path / "noval"
    for t in (1, 4):
        spec = spec_of("kd", {"temperature": t}, None, 0)
        write_record(out, {"run_key": store.spec_key(spec, "test"), "status": "ok", "spec": spec,
                           "code_version": "test", "metrics": {"test_acc_valbest": 90.0}})
    with pytest.raises(KdbenchError, match="no run .* records a val accuracy"):
        build_report(out, tmp_path / "r", figures=False, select="val")


def test_fields_are_crossed_and_searched_together(tmp_path: Path):
    """temperature x epochs: four configurations of one cell; the best mean val of the four wins."""
    val = {(1, 5): 90.0, (1, 10): 91.0, (4, 5): 93.0, (4, 10): 92.0}
    grid = {("kd", (("temperature", t),), e): [(v - 0.1, 99.0 - v), (v + 0.1, 99.0 - v)] for (t, e), v in val.items()}
    out = tmp_path / "grid"
    make(out, grid)
    (choice,) = select_on_val(load(out)).choices
    assert choice.searched == ("epochs", "params.temperature")
    assert len(choice.candidates) == 4 and choice.won.values == (5, 4)
