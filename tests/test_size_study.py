"""The size study of `kdbench report`: Pareto fronts against params and MACs, the "which method wins at
which budget" table checked against scipy, its figure, and no size section for runs of one size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st

from kdbench import store
from kdbench.report import build_report
from kdbench.report.context import Context
from kdbench.report.data import ACCURACY, load
from kdbench.report.plots import pareto_front
from kdbench.report import sizes
from kdbench.store import write_record
from test_report import make_records

SIZES = {"s-a": 1000, "s-b": 4000, "s-c": 16000}  # student field -> params of a single student
# (method, size) -> mean test accuracy; seeds add OFFSETS[method] (unequal spreads: Welch, not Student)
MEAN = {("student", "s-a"): 90.0, ("kd", "s-a"): 91.0, ("tcn", "s-a"): 89.0,
        ("student", "s-b"): 92.0, ("kd", "s-b"): 91.5, ("tcn", "s-b"): 93.0,
        ("student", "s-c"): 92.5, ("kd", "s-c"): 94.0, ("tcn", "s-c"): 93.5}
OFFSETS = {"student": [-0.2, 0.0, 0.2], "kd": [-0.5, 0.1, 0.4], "tcn": [-0.05, 0.0, 0.05]}


def params_macs(method: str, size: str) -> tuple[int, int]:
    """TCN (n=2) has 10% more params but half the MACs per param, so its fronts differ."""
    p = SIZES[size]
    return (int(p * 1.1), int(p * 1.1 * 5)) if method == "tcn" else (p, p * 10)


def write_run(out: Path, method: str, student: str, seed: int, acc: float, params: int, macs: int,
              n: int = 1) -> None:
    spec = {"method": method, "dataset": "mnist", "teacher": "auto", "student": student, "budget": "paper",
            "n_students": n, "mode": "ff" if method == "tcn" else None, "epochs": None, "seed": seed, "params": {},
            "params_changed": {}, "teacher_recipe": None, "split_seed": 0}
    write_record(out, {"run_key": store.spec_key(spec, "test"), "status": "ok", "spec": spec, "code_version": "test",
                       "metrics": {"test_acc_valbest": acc, "test_acc": acc, "val_acc": acc, "params": params,
                                   "macs": macs, "flops": 2 * macs}})


def values(method: str, size: str) -> list[float]:
    return [MEAN[method, size] + o for o in OFFSETS[method]]


@pytest.fixture(scope="module")
def size_records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sizes") / "sizes"
    for (method, size) in MEAN:
        p, m = params_macs(method, size)
        for seed, acc in enumerate(values(method, size)):
            write_run(out, method, size, seed, acc, p, m, n=2 if method == "tcn" else 1)
    return out


def ctx_of(path: Path) -> Context:
    return Context(load(path), ACCURACY.get("valbest"))


def brute_front(x: np.ndarray, y: np.ndarray) -> set[int]:
    """Points no other point dominates (x as small or smaller and y higher, or x smaller and y as high)."""
    return {i for i in range(len(x))
            if not any((x[j] <= x[i] and y[j] > y[i]) or (x[j] < x[i] and y[j] >= y[i]) for j in range(len(x)))}


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(50):
        x, y = rng.choice(1000, 12, replace=False).astype(float), rng.permutation(12).astype(float)
        assert set(pareto_front(x, y).tolist()) == brute_front(x, y)


def test_size_fronts_against_params_and_macs(size_records: Path):
    ctx = ctx_of(size_records)
    df = sizes.size_frame(ctx)
    assert sizes.spans_sizes(df)
    summ, _, extras = sizes.cell_summary(ctx, df)
    assert extras == ("student",) and len(summ) == 9
    table = sizes.pareto_table(ctx, df, summ, extras)
    data = table.data.set_index(["method", "student"])
    on_params = set(data.index[data["pareto_params"]])
    on_macs = set(data.index[data["pareto_macs"]])
    assert on_params == {("kd", "s-a"), ("student", "s-b"), ("tcn", "s-b"), ("kd", "s-c")}
    assert on_macs == {("tcn", "s-a"), ("kd", "s-a"), ("tcn", "s-b"), ("tcn", "s-c"), ("kd", "s-c")}
    # the same fronts by brute force over the cell means
    cells = list(MEAN)
    y = np.array([np.mean(values(*c)) for c in cells])
    for col, got in ((0, on_params), (1, on_macs)):
        x = np.array([params_macs(*c)[col] for c in cells], float)
        assert {(c[0], c[1]) for i, c in enumerate(cells) if i in brute_front(x, y)} == got
    assert list(data["params"]) == sorted(data["params"])


def holm_by_hand(p: list[float]) -> list[float]:
    order = np.argsort(p)
    adj, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adj[i] = running
    return adj


def test_winner_table_against_scipy(size_records: Path):
    ctx = ctx_of(size_records)
    table = sizes.winner_table(ctx, sizes.size_frame(ctx))
    out = table.data.set_index("student")
    assert list(out.index) == ["s-a", "s-b", "s-c"]  # budgets by size
    pvals = []
    for size in out.index:
        ranked = sorted(("student", "kd", "tcn"), key=lambda m: -np.mean(values(m, size)))
        best, second = ranked[:2]
        res = st.ttest_ind(values(best, size), values(second, size), equal_var=False)
        row = out.loc[size]
        assert row["best"].split(" ")[0].lower() in best and row["runner_up"].split(" ")[0].lower() in second
        assert row["best_mean"] == pytest.approx(np.mean(values(best, size)))
        assert row["margin"] == pytest.approx(np.mean(values(best, size)) - np.mean(values(second, size)))
        assert row["p_value"] == pytest.approx(res.pvalue, rel=1e-12)
        assert row["t"] == pytest.approx(res.statistic, rel=1e-12)
        pvals.append(res.pvalue)
    assert out["p_holm"].tolist() == pytest.approx(holm_by_hand(pvals), rel=1e-12)
    assert list(table.display["Best"]) == ["KD", "TCN FF (n=2)", "KD"]
    assert table.display["Margin"].iloc[0] == "+1.00"


def test_report_has_the_size_section_and_its_figure(size_records: Path, tmp_path: Path):
    rep = build_report(size_records, tmp_path, name="sizes", formats="md,csv,latex")
    md = (rep / "report.md").read_text()
    assert "## Size study" in md
    assert md.index("## Size study") < md.index("## Figures")
    assert "### Size study: which method wins at which budget" in md
    assert "![Size study: accuracy vs params and MACs (Pareto front)](figures/size_study.png)" in md
    for f in ("figures/size_study.png", "figures/size_study.pdf", "tables/size_pareto.csv", "tables/size_winners.tex"):
        assert (rep / f).stat().st_size > 0
    assert (rep / "figures" / "size_study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # tables only: the figure of the earlier build goes, the tables stay
    build_report(size_records, tmp_path, name="sizes", formats="md,csv", figures=False)
    assert not (rep / "figures" / "size_study.png").exists() and (rep / "tables" / "size_winners.csv").exists()


def test_one_size_has_no_size_section(tmp_path: Path):
    one = make_records(tmp_path / "one")  # the report tests' records: one student size
    tcn_n = tmp_path / "tcn_n"  # TCN at n = 1, 2, 4: params differ with n, the student size does not
    for n in (1, 2, 4):
        for seed in range(2):
            write_run(tcn_n, "tcn", "auto", seed, 97.0 + seed, 1000 * n, 5000 * n, n=n)
    for path in (one, tcn_n):
        ctx = ctx_of(path)
        assert sizes.build(ctx, tmp_path / "out") == ([], [])
        assert not (tmp_path / "out").exists()
        rep = build_report(path, tmp_path / "reports", formats="md,csv", figures=False)
        assert "Size study" not in (rep / "report.md").read_text()
        assert not list((rep / "tables").glob("size_*"))
