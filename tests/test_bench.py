"""Smoke tests of the benchmark machinery (`kdbench bench`): it runs on tiny sizes, its equality
assertions hold, and its helpers measure what they claim. No test asserts a speed."""
from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import torch

from kdbench import bench
from kdbench.cli import main
from kdbench.data.base import DataSpec, Split, Splits
from kdbench.models import create_model, dense_view


def _splits(n: int = 40) -> Splits:
    g = torch.Generator().manual_seed(0)
    make = lambda k: Split(torch.rand(k, 1, 8, 8, generator=g), torch.randint(0, 10, (k,), generator=g))  # noqa: E731
    return Splits("toy", make(n), make(12), make(12), DataSpec((1, 8, 8), 10))


def test_teacher_rows_run_the_teacher_per_index_and_match_eager_outputs():
    torch.manual_seed(0)
    teacher = create_model("paper-mnist-teacher", DataSpec((1, 8, 8), 10)).eval()
    data = _splits()
    view = dense_view(teacher)
    with torch.inference_mode():
        feats = view.features(data.train.x)
        logits = view.classifier(feats)
    t = bench.teacher_in_loop_targets(teacher, data)("train")
    idx = torch.tensor([3, 0, 17, 17, 39])
    assert t.features.shape == feats.shape and t.logits.shape == logits.shape and len(t.features) == 40
    torch.testing.assert_close(t.features[idx], feats[idx], rtol=0, atol=1e-6)
    torch.testing.assert_close(t.logits[idx], logits[idx], rtol=0, atol=1e-6)
    cols = torch.stack([torch.arange(0, 64), torch.arange(64, 128)])  # TCN's (k, w) column groups
    lazy = t.features[:, cols]
    assert lazy.shape == feats[:, cols].shape == (40, 2, 64)
    got = lazy[idx]
    torch.testing.assert_close(got, feats[:, cols][idx], rtol=0, atol=1e-6)
    assert not got.is_inference() and not t.logits[idx].is_inference()  # usable as a loss target
    val = bench.teacher_in_loop_targets(teacher, data)("val")  # whole split, eager
    torch.testing.assert_close(val.features, predict_features(view, data.val.x), rtol=0, atol=1e-6)


def predict_features(view, x):
    with torch.inference_mode():
        return view.features(x)


def test_interleave_alternates_arms_and_collects_each_measurement():
    calls = []
    out = bench.interleave({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}, rounds=3)
    assert calls == ["a", "b"] * 3
    assert out == {"a": [1.0] * 3, "b": [2.0] * 3}


def test_ratio_and_goals():
    row = bench.BenchRow("x", "slow", 8.0, "fast", 2.0, "s", bench.Goal(">=", 4.0))
    assert row.ratio == 4.0 and row.met is True
    assert bench.BenchRow("x", "a", 1.0, "b", 2.0, "s", bench.Goal("<=", 1.0)).met is True
    assert bench.BenchRow("x", "a", 3.0, "b", 2.0, "s", bench.Goal(">=", 4.0)).met is False
    assert bench.BenchRow("x", "a", 3.0, "b", None, "s", bench.Goal(">=", 4.0)).met is None
    assert bench.BenchRow("x", "a", 3.0, "b", 1.0, "s").met is None  # report only


def test_state_differences_count_entries_not_just_the_maximum():
    a = {"w": torch.zeros(1000), "b": torch.zeros(2)}
    b = {"w": torch.zeros(1000), "b": torch.tensor([0.0, 5e-4])}
    assert bench.max_abs_diff(a, b) == pytest.approx(5e-4)
    assert bench.off_fraction(a, b, 1e-4) == pytest.approx(1 / 1002)
    assert bench.off_fraction(a, a, 0.0) == 0.0 and bench.off_fraction(a, {"w": a["w"]}, 1e-4) == 1.0


def test_comparable_keeps_results_and_drops_timings():
    rec = {"status": "ok", "metrics": {"test_acc": 97.5, "train_time_s": 3.0, "teacher_load_s": 0.1, "epoch_time_s": 1.0,
                                      "latency_ms_b1": 0.2, "peak_rss_mb": 900, "finetune_time_s_last": 0.4, "macs": 10},
           "history": [{"epoch": 1, "mse": 0.5, "time_s": 2.0}]}
    c = bench.comparable(rec)
    assert c == {"status": "ok", "metrics": {"test_acc": 97.5, "macs": 10}, "history": [{"epoch": 1, "mse": 0.5}]}
    other = json.loads(json.dumps(rec))
    other["metrics"]["test_acc"] = 97.4
    assert bench.comparable(other) != c


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_memory_mapped_targets_are_found_and_shared_between_processes(tmp_path):
    path = tmp_path / "features.npy"
    np.save(path, np.random.default_rng(0).random((2048, 1024), dtype=np.float32))  # 8 MiB
    with warnings.catch_warnings():  # torch warns (once per process) that the read-only map is not writable
        warnings.simplefilter("ignore", UserWarning)
        mapped = torch.from_numpy(np.load(path, mmap_mode="r"))
    assert bench.mapped_file(mapped) == str(path)
    assert bench.mapped_file(torch.zeros(10)) is None
    share = bench.mmap_sharing(str(path), workers=2)
    mb = share["file_mb"]
    assert share["copy"]["uss_mb"] > 1.5 * mb  # each process holds a private copy
    assert share["mmap"]["uss_mb"] < 0.25 * mb  # the mapped pages are shared, not private
    assert share["copy"]["pss_mb"] > 1.5 * share["mmap"]["pss_mb"]


def test_run_polled_sees_the_memory_of_a_child_process():
    code = "import time; b = bytearray(96 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.0)"
    res = bench.run_polled([sys.executable, "-c", code], env=None, interval=0.05)
    assert res["returncode"] == 0
    assert res["peak_tree_rss_mb"] > 90


@pytest.fixture(scope="module")
def quick_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-cache")


def test_quick_bench_runs_and_its_equality_checks_hold(tmp_path, quick_cache, monkeypatch, capsys):
    """`kdbench bench --quick` on package-shipped data (the in-process benchmarks; the process-pool
    and subprocess ones are exercised by benchmarks/ and by the helpers above)."""
    monkeypatch.setenv("KDBENCH_CACHE", str(quick_cache))
    monkeypatch.setenv("KDBENCH_PROGRESS", "0")
    threads = torch.get_num_threads()
    rc = main(["bench", "--quick", "--only", "targets,fused,layout,efficiency,inference,profile,overhead", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert torch.get_num_threads() == threads  # the bench's fixed thread count is restored
    header = out.splitlines()[0]
    for col in ("name", "A", "B", "ratio A/B", "goal", "met?", "notes"):
        assert f" {col} " in header
    report = json.loads((tmp_path / "bench.json").read_text())
    names = [r["name"] for r in report["rows"]]
    assert any(n.startswith("targets") for n in names) and sum(n.startswith("fused") for n in names) == 3
    assert sum(n.startswith("layout") for n in names) == 2
    assert report["checks_ok"] and report["config"]["threads"] == 1
    assert report["env"]["load_avg_1_5_15"] is not None
    for row in report["rows"]:
        assert row["error"] is None, row
        assert all(row["checks"].values()), row
        assert row["a"] is not None and row["b"] is not None and row["load_avg"] is not None
    targets = next(r for r in report["rows"] if r["name"].startswith("targets"))
    assert targets["checks"] == {"identical per-epoch loss history": True}
    assert len(targets["details"]["loss_history"]) == 4  # one epoch of each of the 4 sequential students
    goals = {r["name"]: r["goal"] for r in report["rows"]}
    # the retired goals are gone, their rows kept: cached targets (4x), fused gan (1.4x), 30% of the
    # matmul peak for the tiny n = 4 and n = 8 students
    assert goals["targets: teacher in loop / cached"] == "-" and goals["fused: gan n=8 sequential / fused"] == "-"
    assert goals["efficiency: TCN n=4 training loop / matmul peak"] == goals["efficiency: TCN n=8 training loop / matmul peak"] == "-"
    assert goals["fused: ff n=8 sequential / fused"] == ">= 1.4" and goals["efficiency: TCN n=1 training loop / matmul peak"] == ">= 0.3"
    assert goals["overhead: kdbench KD epoch / hand-written loop"] == "<= 1.1"
    assert (tmp_path / "bench.md").read_text().startswith("# kdbench bench")
    assert (tmp_path / "profile_tcn_ff_n4.txt").exists() and (tmp_path / "profile_kd.txt").exists()


def test_in_loop_arm_really_runs_the_teacher(quick_cache, monkeypatch):
    """The `targets` benchmark's baseline must call the teacher once per batch and student."""
    monkeypatch.setenv("KDBENCH_CACHE", str(quick_cache))
    s = bench.Session(bench.BenchConfig(quick=True))
    setup = s.setup("tcn", n_students=2, mode="ff", epochs=1, params={"fused": False, "finetune": False})
    cached = s.context(setup)
    cached.targets("train"), cached.targets("val")  # built (or read) before counting teacher calls
    calls = []
    body = setup.teacher.model.body  # features(x) = neck(body(stem(x))): count the trunk's calls
    handle = body.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        bench.fit_once(setup, s.context(setup, 64, in_loop=True))
        in_loop = list(calls)
        calls.clear()
        bench.fit_once(setup, s.context(setup, 64))
    finally:
        handle.remove()
    batch = setup.resolved.schedule.batch_size
    assert in_loop.count(min(64, batch)) >= 2  # 2 students x 1 batch of 64 (+ one eager val pass)
    assert calls == []  # the cached arm never runs the teacher


def test_unknown_benchmark_is_one_line_with_a_suggestion(capsys):
    assert main(["bench", "--only", "fussed"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'fussed'; did you mean 'fused'" in err and len(err.strip().splitlines()) == 1


def test_cli_lists_every_benchmark_in_its_order(capsys):
    from kdbench.cli import bench_cmd

    assert list(bench_cmd.NAMES) == bench.ORDER and sorted(bench.ORDER) == bench.BENCHES.names()
    assert bench.select(None) == bench.ORDER and bench.select("profile, targets") == ["targets", "profile"]
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "--quick" in out and all(n in out for n in bench.ORDER)
