"""The whole `kdbench bench --quick` (process-pool sweeps and subprocess memory runs included):
every equality check must hold. Speeds are printed, never asserted."""
from __future__ import annotations

from kdbench.bench import BenchConfig, run_benches, table_rows


def test_quick_bench_all_checks_hold(bench_cache, capsys):
    report = run_benches(BenchConfig(quick=True))
    with capsys.disabled():
        for row in table_rows(report):
            print(" | ".join(str(v) for v in row.values()))
    bad = [(r.name, r.error, r.checks) for r in report.rows if r.error or not all(r.checks.values())]
    assert not bad, bad
    assert {r.name.split(":")[0] for r in report.rows} == {"targets", "fused", "layout", "parallel", "efficiency", "inference",
                                                            "memory", "profile", "overhead", "alternative", "seed fusion",
                                                            "seed fusion auto"}
