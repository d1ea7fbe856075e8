"""The bench package (`kdbench.bench`): core bench modules never import the methods package (TCN's
benchmarks register from kdbench/methods/tcn_bench.py), the new `overhead` and `alternative` benchmarks run
and their equality checks can fail, and `seeds` is the seed-fusion measurement. No test asserts a speed."""
from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from kdbench import bench
from kdbench.bench import overhead

BENCH_DIR = Path(bench.__file__).parent


def _imported_modules(path: Path, package: str = "kdbench.bench") -> list[str]:
    """Every module an import statement of `path` names, relative ones resolved within `package`."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            pkg = package.split(".")
            parts = pkg[: len(pkg) + 1 - node.level] if node.level else []
            mod = ".".join(parts + ([node.module] if node.module else []))
            names += [mod] + [f"{mod}.{a.name}" for a in node.names]
    return names


def test_core_bench_modules_import_no_method_module():
    files = sorted(BENCH_DIR.glob("*.py"))
    assert len(files) >= 10  # one module per benchmark, plus the shared ones
    assert "kdbench.methods.tcn" in _imported_modules(Path(bench.__file__).parents[1] / "methods" / "tcn_bench.py",
                                                    "kdbench.methods")
    for path in files:
        bad = [m for m in _imported_modules(path) if m.split(".")[:2] == ["kdbench", "methods"] or m.split(".")[0] == "methods"]
        assert not bad, f"{path.name} imports {bad}"


def test_importing_the_bench_loads_no_method_until_the_registry_is_read():
    code = ("import sys, kdbench.bench as b\n"
            "print(sorted(m for m in sys.modules if m.startswith('kdbench.methods')))\n"
            "names = b.BENCHES.names()\n"
            "print('kdbench.methods.tcn_bench' in sys.modules, 'fused' in names, 'alternative' in names)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "True True True"


@pytest.fixture(scope="module")
def quick_session(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("KDBENCH_CACHE", str(tmp_path_factory.mktemp("bench-cache")))
    mp.setenv("KDBENCH_PROGRESS", "0")
    yield bench.Session(bench.BenchConfig(quick=True))
    mp.undo()


def test_hand_loop_equals_kdbench_and_the_check_can_fail(quick_session):
    s = quick_session
    setup = s.setup(overhead.METHOD, epochs=1)
    ctx = lambda: s.context(setup, 256, n_eval=64)  # noqa: E731
    fit = bench.fit_once(setup, ctx()).fit
    hand = overhead.hand_kd_epoch(setup, ctx())
    assert bench.max_abs_diff(fit.last_state, hand.state) == 0.0
    assert hand.val_acc == pytest.approx(fit.history[-1]["val_acc"], abs=1e-9)
    other = dataclasses.replace(setup, resolved=dataclasses.replace(setup.resolved, spec=setup.resolved.spec.replace(seed=1)))
    assert bench.max_abs_diff(fit.last_state, overhead.hand_kd_epoch(other, ctx()).state) > 1e-3  # another init and order


def test_overhead_row_has_its_goal_and_checks(quick_session):
    (row,) = bench.BENCHES.get("overhead")(quick_session)
    assert str(row.goal) == "<= 1.1" and row.a > 0 and row.b > 0
    assert row.checks and all(row.checks.values()), row.checks
    assert len(row.details["kdbench_s"]) == len(row.details["hand_s"]) == quick_session.cfg.n_rounds


def test_alternative_runs_both_arms_on_the_same_cut_slice(quick_session, monkeypatch):
    """In-process (one worker), so that no process pool starts in the test."""
    import kdbench.executors

    monkeypatch.setattr(kdbench.executors, "cpu_count", lambda: 1)
    (row,) = bench.BENCHES.get("alternative")(quick_session)
    assert str(row.goal) == ">= 2.5" and row.a > 0 and row.b > 0
    assert row.checks == {"every kdbench run ok": True, "targets computed inside every kdbench arm": True}
    d = row.details
    assert d["workers"] == 1 and d["runs"] == ["student", "kd", "tcn n=1", "tcn n=2", "tcn n=4", "tcn n=8"]
    assert d["sweep_fields"]["max_train"] == quick_session.sizes.grid_train == 128
    assert "val 32 of" in row.notes and "cut:" in row.notes  # the preset's 80/20 proportion kept
    for arm in ("alternative", "kdbench"):
        assert set(d["per_arm"][arm][0]["test_acc_valbest"]) == set(d["runs"])


def test_seeds_bench_is_the_seed_fusion_measurement(quick_session, monkeypatch):
    import kdbench.bench_fuse

    got = []
    row = bench.BenchRow("seed fusion: tcn ff n=8", "separate runs", 3.0, "fused", 1.5, "s", bench.Goal(">=", 1.5))
    monkeypatch.setattr(kdbench.bench_fuse, "bench_seed_fusion", lambda s: got.append(s) or [row])
    assert bench.BENCHES.get("seeds")(quick_session) == [row] and got == [quick_session]
