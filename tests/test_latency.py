"""The quiet latency pass (kdbench.latency): the stopping rule on a synthetic timer, the pass over a
tiny results directory (CLI and the sweep's last step), the records it leaves (valid, same keys and
accuracies), the load recorded for every timed phase, and the report's oversubscription marks."""
from __future__ import annotations

import json
import math
import shlex
import shutil
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from helpers_sweep import comparable, quiet_env, records  # noqa: F401  (autouse fixture)
from kdbench import store
from kdbench.cli import main
from kdbench import latency as latency_module
from kdbench import measure
from kdbench.measure import (LoadProbe, StopRule, Timing, adaptive_timing, ci_within, cpu_pressure_us, latency_ms, median_ci,
                             min_rounds, oversubscribed, sample_until)
from kdbench.report.context import Context
from kdbench.report.data import ACCURACY, load
from kdbench.report.tables import OVERSUBSCRIBED, TABLES, environment_table

TINY = "--dataset digits --max-train 60 --epochs 1 --teacher plain2 --teacher-epochs 1 --seeds 1 --threads 1"
LATENCY_TIMINGS = {"latency_ms_b1", "latency_ms_b256"}
TCN_VARIANTS = {f"latency.b{b}.{v}" for b in (1, 256) for v in ("sequential", "fused", "parallel", "teacher")}


# ------------------------------------------------------------------------------------ stopping rule

class FakeTimer:
    """Timed calls of a known distribution (lognormal around `median_ms`), on a fake clock that
    advances by each call's time: the stopping rule sees exactly what a real timer would."""

    def __init__(self, median_ms: float, sigma: float, seed: int = 0, clock_step_s: float | None = None):
        self.rng = np.random.default_rng(seed)
        self.median_ms, self.sigma, self.step = median_ms, sigma, clock_step_s
        self.now = 0.0
        self.calls = 0

    def sample(self) -> float:
        self.calls += 1
        ms = float(self.median_ms * np.exp(self.sigma * self.rng.standard_normal()))
        self.now += self.step if self.step is not None else ms / 1000.0
        return ms

    def clock(self) -> float:
        return self.now


def test_stopping_rule_stops_once_the_ci_of_the_median_is_within_10_percent():
    rule = StopRule(max_repeats=5000, min_seconds=0.0, max_seconds=1e9)
    for sigma in (0.02, 0.2, 0.5):
        timer = FakeTimer(10.0, sigma)
        t = sample_until(timer.sample, rule, timer.clock)
        assert not t.capped and t.repeats == timer.calls >= rule.min_repeats
        assert ci_within(t.median_ms, t.ci_ms, 0.10), (sigma, t)
        assert t.ci_ms[0] <= t.median_ms <= t.ci_ms[1]
        assert abs(t.median_ms - 10.0) <= 1.0  # within 10% of the true median
    # more noise needs more calls; tight noise stops at the minimum
    timer = FakeTimer(10.0, 0.02)
    assert sample_until(timer.sample, rule, timer.clock).repeats == rule.min_repeats
    timer = FakeTimer(10.0, 0.5)
    assert sample_until(timer.sample, rule, timer.clock).repeats > 50


def test_stopping_rule_times_at_least_min_seconds_unless_max_repeats_comes_first():
    timer = FakeTimer(10.0, 0.02)  # settled after 10 calls = 0.1 s of timing
    t = sample_until(timer.sample, StopRule(min_seconds=0.5, max_seconds=1e9), timer.clock)
    assert not t.capped and t.seconds >= 0.5 and 50 <= t.repeats <= 51
    timer = FakeTimer(0.1, 0.02)  # 0.1 ms calls: 2000 calls are 0.2 s, short of min_seconds
    t = sample_until(timer.sample, StopRule(min_seconds=0.5, max_repeats=2000, max_seconds=1e9), timer.clock)
    assert not t.capped and t.repeats == 2000 and t.seconds < 0.5


def test_stopping_rule_caps_on_calls_and_on_seconds_and_says_so():
    noisy = FakeTimer(10.0, 5.0)  # a CI within 10% needs ~ (5 / 0.1)^2 calls: far beyond the cap
    t = sample_until(noisy.sample, StopRule(max_repeats=200, max_seconds=1e9), noisy.clock)
    assert t.capped and t.repeats == 200 and not ci_within(t.median_ms, t.ci_ms, 0.10)
    slow = FakeTimer(10.0, 0.01, clock_step_s=1.0)  # quiet, but each call takes a second of the budget
    t = sample_until(slow.sample, StopRule(max_seconds=4.0), slow.clock)
    assert t.capped and t.repeats == 4 < StopRule().min_repeats and t.seconds == 4.0


def test_median_ci_is_the_binomial_order_statistic_interval():
    from scipy import stats

    rng = np.random.default_rng(1)
    assert median_ci(sorted(rng.random(5))) == (-math.inf, math.inf)  # 2 / 2^5 > 5%: no interval covers
    for n in (6, 10, 31, 200):
        x = np.sort(rng.lognormal(size=n))
        r = max(i for i in range(n // 2) if 2 * stats.binom.cdf(i, n, 0.5) <= 0.05)  # misses the median <= 5%
        assert median_ci(x) == (x[r], x[n - 1 - r])
        if hasattr(stats, "quantile_test"):  # scipy >= 1.12: the same interval
            ci = stats.quantile_test(x, q=float(np.median(x)), p=0.5).confidence_interval(0.95)
            assert median_ci(x) == (float(ci.low), float(ci.high))


def test_latency_ms_follows_the_rule_inside_adaptive_timing_only():
    model, x = nn.Linear(8, 4), torch.zeros(1, 8)
    with adaptive_timing(StopRule(min_repeats=7, max_repeats=7)) as got:
        value = latency_ms(model, x, 4, torch.device("cpu"))
        latency_ms(model, x, 1, torch.device("cpu"))
    assert [t.repeats for t in got] == [7, 7] and got[0].median_ms == value
    assert len(got) == 2 and latency_ms(model, x, 1, torch.device("cpu")) > 0  # outside: fixed repeats, nothing recorded


def test_a_timing_across_rounds_is_the_median_and_ci_of_the_rounds_medians():
    rule = StopRule()
    one = StopRule(min_seconds=0.0, max_repeats=40, max_seconds=1e9)
    rounds = [sample_until(FakeTimer(1.0 + 0.01 * i, 0.2, seed=i).sample, one) for i in range(10)]
    t = Timing.across_rounds(rounds, rule)
    medians = sorted(r.median_ms for r in rounds)
    assert t.median_ms == float(np.median(medians)) and t.ci_ms == median_ci(medians)
    assert t.repeats == sum(r.repeats for r in rounds) and t.seconds == sum(r.seconds for r in rounds)
    assert not t.capped and "samples" not in t.as_dict()  # rounds that agree within 10%: settled
    slow = [sample_until(FakeTimer(1.0 + (i % 2), 0.01, seed=i).sample, one) for i in range(10)]
    assert all(not r.capped for r in slow) and Timing.across_rounds(slow, rule).capped  # 1 ms / 2 ms rounds: each
    # round is settled, but the rounds disagree, and the timing says so
    assert Timing.across_rounds(rounds[:5], rule).capped  # 5 rounds bound no 95% CI of their median
    assert min_rounds(0.95) == 6 and min_rounds(0.99) == 8
    with pytest.raises(ValueError):
        Timing.across_rounds([], rule)


def test_load_probe_records_the_cpus_the_load_and_oversubscription():
    block = LoadProbe().finish()
    assert block["cpus"] >= 1 and block["threads"] == torch.get_num_threads() and block["wall_s"] >= 0
    if block["cpu_wait_share"] is not None:  # Linux with CPU pressure: the share decides
        assert block["oversubscribed"] == (block["cpu_wait_share"] > measure.WAIT_LIMIT)
    else:
        assert block["oversubscribed"] == (max(block["loadavg_start"], block["loadavg_end"]) > block["cpus"])


def test_oversubscription_is_judged_by_cpu_pressure_over_the_phase(tmp_path, monkeypatch):
    # CPU pressure, where the kernel reports it, decides; a stale load average (the minute before) does not
    assert oversubscribed(0.05, (9.0, 9.0), 2) is False and oversubscribed(0.5, (0.1, 0.1), 2) is True
    assert oversubscribed(None, (3.0, 1.0), 2) is True and oversubscribed(None, (1.0, 1.5), 2) is False
    assert oversubscribed(None, (None, None), 2) is None
    psi = tmp_path / "cpu"
    psi.write_text("some avg10=7.93 avg60=7.72 avg300=3.19 total=18505952\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert cpu_pressure_us(str(psi)) == 18505952 and cpu_pressure_us(str(tmp_path / "absent")) is None
    readings = iter([1_000_000, 1_000_000 + 300_000])  # 0.3 s of waiting in a phase of about 0.5 s
    monkeypatch.setattr(measure, "cpu_pressure_us", lambda: next(readings))
    probe = LoadProbe()
    time.sleep(0.5)
    block = probe.finish()
    assert 0.4 < block["cpu_wait_share"] <= 0.6 and block["oversubscribed"] is True


# ---------------------------------------------------------------------------------- the pass itself

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Iterator[Path]:
    """A tiny results directory trained without latency: student, kd and TCN n = 2 on digits."""
    out = tmp_path_factory.mktemp("latency") / "runs"
    cache = tmp_path_factory.getbasetemp() / "sweep-cache"  # the one helpers_sweep's quiet_env uses
    cache.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDBENCH_CACHE", str(cache))
        mp.setenv("KDBENCH_PROGRESS", "0")
        argv = shlex.split(f"sweep --method student,kd,tcn --students 2 {TINY} --no-latency --out {out}")
        assert main(argv) == 0
    yield out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_latency_command_fills_quiet_latency_into_valid_records(trained: Path, tmp_path: Path, capsys):
    out = _copy(trained, tmp_path / "runs")
    before = records(out)
    assert all("latency_ms_b1" not in r["metrics"] and set(r["env"]["load"]) >= {"train"} for r in before.values())
    assert main(["latency", str(out), "--max-seconds", "2"]) == 0
    assert "3 run(s) timed, 0 already timed" in capsys.readouterr().out
    after = records(out)
    assert set(after) == set(before)
    for key, rec in after.items():
        assert store.check_record(rec, store.record_path(out, key)) is None  # still a valid record
        assert comparable(rec) == comparable(before[key])  # key, spec, accuracies, history: untouched
        assert rec["metrics"]["test_acc"] == before[key]["metrics"]["test_acc"]
        m = rec["metrics"]
        rounds = m["latency_pass"]["rounds"]  # more than the default only while a timing is wider than asked
        assert m["latency_quiet"] is True and m["latency_pass"]["threads"] == 1
        assert latency_module.DEFAULT_ROUNDS <= rounds <= 2 * latency_module.DEFAULT_ROUNDS
        timings = m["latency_pass"]["timings"]
        expected = LATENCY_TIMINGS | (TCN_VARIANTS if rec["spec"]["method"] == "tcn" else set())
        assert set(timings) == expected
        for name, t in timings.items():
            value = m[name] if name in m else m["latency"][name.split(".")[1]][name.split(".")[2]]
            assert value == t["median_ms"] > 0 and t["repeats"] >= 1 and len(t["ci_ms"]) == 2
            assert t["capped"] or ci_within(t["median_ms"], tuple(t["ci_ms"]), 0.10)
        assert m["latency_pass"]["capped"] == any(t["capped"] for t in timings.values())
        load = rec["env"]["load"]
        assert set(load) >= {"train", "latency"} and isinstance(load["latency"]["oversubscribed"], bool)
        assert load["train"] == before[key]["env"]["load"]["train"]  # the training phase's load is kept
    assert main(["latency", str(out)]) == 0  # nothing left to time
    assert "0 run(s) timed, 3 already timed" in capsys.readouterr().out
    assert records(out) == after


def test_the_pass_times_every_run_once_per_round_interleaved(trained: Path, tmp_path: Path, monkeypatch):
    """Round-robin, not one run after another: the machine's drift falls on all runs alike."""
    out = _copy(trained, tmp_path / "runs")
    order: list[int] = []
    real = latency_module.latency_ms

    def spy(model, example, batch, device, repeats=20):
        if batch == 1 and not isinstance(model, latency_module.nn.Sequential):
            order.append(id(model))
        return real(model, example, batch, device, repeats)

    monkeypatch.setattr(latency_module, "latency_ms", spy)
    result = latency_module.quiet_pass(out, rounds=6, max_rounds=6, rule=StopRule(max_seconds=0.5), log=None)
    assert len(result.measured) == 3
    runs = list(dict.fromkeys(order))  # the deployed predictors and the teacher, in first-timed order
    assert len(runs) >= 3 and order == runs * 6
    for rec in records(out).values():
        passed = rec["metrics"]["latency_pass"]
        assert passed["rounds"] == 6
        assert all(t["repeats"] >= 6 and all(map(math.isfinite, t["ci_ms"])) for t in passed["timings"].values())


def test_a_run_with_a_timing_wider_than_asked_gets_more_rounds_alone(trained: Path, tmp_path: Path, monkeypatch):
    """Repeats until the CI is within the rule: a wide run gets further rounds, the settled ones none,
    up to max_rounds; the record says how many rounds it got."""
    out = _copy(trained, tmp_path / "runs")
    target = sorted(records(out))[0]
    def prep(medians: list[float]) -> latency_module._Prepared:
        return latency_module._Prepared({}, nn.Identity(), None, torch.zeros(1), torch.device("cpu"), None,
                                        {"latency_ms_b1": [Timing(m, (m, m), 10, False, 0.1) for m in medians]})

    timer = latency_module._Timer(StopRule(), 6, None)
    assert not timer.wide(prep([1.0] * 6))  # six agreeing rounds: settled
    assert timer.wide(prep([1.0, 2.0] * 3))  # rounds of 1 ms and 2 ms: the CI across them is wide

    def wide(self, prep) -> bool:  # one run stays wide until it has 9 rounds
        return prep.rec["run_key"] == target and len(prep.parts["latency_ms_b1"]) < 9

    monkeypatch.setattr(latency_module._Timer, "wide", wide)
    latency_module.quiet_pass(out, rounds=6, rule=StopRule(max_seconds=0.3), log=None)
    got = {k: r["metrics"]["latency_pass"]["rounds"] for k, r in records(out).items()}
    assert got == {k: 9 if k == target else 6 for k in got}
    monkeypatch.setattr(latency_module._Timer, "wide", lambda self, prep: True)  # never settles: the cap
    latency_module.quiet_pass(out, rounds=6, max_rounds=8, rule=StopRule(max_seconds=0.3), force=True, log=None)
    assert {r["metrics"]["latency_pass"]["rounds"] for r in records(out).values()} == {8}


def test_a_predictor_that_cannot_be_rebuilt_is_skipped_with_why(trained: Path, tmp_path: Path, capsys):
    out = _copy(trained, tmp_path / "runs")
    path = next(p for p in sorted(out.glob("kd-*.json")))
    rec = json.loads(path.read_text())
    rec["metrics"]["params"] += 1  # metrics are not hashed: the record stays valid, its model is another
    store.write_record(out, rec)
    assert main(["latency", str(out), "--max-seconds", "0.5", "--max-rounds", "10"]) == 1
    text = capsys.readouterr().out
    assert f"skipped {rec['run_key']}: the rebuilt kd predictor has" in text and "2 run(s) timed" in text
    assert "latency_quiet" not in json.loads(path.read_text())["metrics"]


def test_sweep_ends_with_the_quiet_pass_unless_no_latency(tmp_path: Path):
    out = tmp_path / "runs"
    assert main(shlex.split(f"sweep --method student {TINY} --out {out}")) == 0
    (rec,) = records(out).values()
    assert rec["metrics"]["latency_quiet"] is True and rec["metrics"]["latency_pass"]["threads"] == 1
    assert set(rec["env"]["load"]) == {"train", "latency"}
    plain = tmp_path / "plain"
    assert main(shlex.split(f"sweep --method student {TINY} --out {plain} --no-latency")) == 0
    (rec,) = records(plain).values()
    assert not {"latency_ms_b1", "latency_quiet", "latency_pass"} & set(rec["metrics"])
    assert set(rec["env"]["load"]) == {"train"}


@pytest.mark.parametrize("argv, message", [
    ("latency {missing}", "does not exist"),
    ("latency {out} --threads 0", "latency threads must be an integer >= 1"),
    ("latency {out} --rel-ci 2", "--rel-ci must be in (0, 1)"),
    ("latency {out} --max-repeats 3", "--max-repeats must be >= 6"),
    ("latency {out} --rounds 5", "latency rounds must be an integer >= 6"),
    ("latency {out} --max-rounds 8", "latency max rounds must be an integer >= the rounds (10)"),
])
def test_bad_input_is_one_line(tmp_path: Path, capsys, argv: str, message: str):
    (tmp_path / "out").mkdir()
    assert main(shlex.split(argv.format(missing=tmp_path / "nope", out=tmp_path / "out"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdbench: error:") and message in err[0]


# ------------------------------------------------------------------------------------------ report

def _record(out: Path, n: int, seed: int, busy: bool) -> None:
    spec = {"method": "tcn", "dataset": "mnist", "teacher": "auto", "student": "auto", "budget": "paper",
            "n_students": n, "mode": "ff", "epochs": None, "seed": seed, "params": {}, "params_changed": {},
            "teacher_recipe": None, "split_seed": 0}
    phase = {"cpus": 2, "loadavg_start": 5.0 if busy else 0.5, "loadavg_end": 1.0, "oversubscribed": busy}
    metrics = {"test_acc_valbest": 97.0, "test_acc": 96.0, "params": 100, "flops": 1000, "train_time_s": 10.0 + seed,
               "epoch_time_s": 1.0, "epochs_run": 10, "latency_ms_b1": 1.0, "latency_ms_b256": 9.0,
               "latency": {"b1": {"teacher": 2.0, "sequential": 1.0, "fused": 0.8, "parallel": 0.5}},
               "latency_quiet": True, "latency_pass": {"threads": 1, "capped": False, "rule": {"rel_halfwidth": 0.1}}}
    store.write_record(out, {"run_key": store.spec_key(spec, "test"), "status": "ok", "spec": spec, "metrics": metrics,
                             "env": {"device": "cpu", "load": {"train": phase, "latency": phase}}, "code_version": "test",
                             "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:01:00+00:00"})


def test_report_flags_cells_timed_under_oversubscription(tmp_path: Path):
    out = tmp_path / "results"
    for seed in (0, 1):
        _record(out, 1, seed, busy=False)
        _record(out, 2, seed, busy=seed == 1)  # one of the n = 2 cell's two runs was timed on a busy machine
    ctx = Context(load(out), ACCURACY.get("valbest"), "valbest")
    for name, column in (("tcn_table5_inference_time", "Deployed"), ("tcn_table8_training_time", "Total fit (s)"),
                         ("sweep_cost", "Fit (s)")):
        t = TABLES.get(name).build(ctx)
        cells = dict(zip(t.display["Configuration"] + "/" + t.display.get("Batch", ""), t.display[column]))
        flagged = {c for c, text in cells.items() if text.endswith(OVERSUBSCRIBED)}
        assert flagged and all("n=2" in c for c in flagged) and any("n=1" in c for c in cells), (name, cells)
        note = next(n for n in t.notes if n.startswith(OVERSUBSCRIBED))
        assert "1 run(s) of 1 cell(s)" in note and "oversubscribed" in note, note
    t5 = TABLES.get("tcn_table5_inference_time").build(ctx)
    assert any("4 run(s) timed in the quiet pass" in n and "within 10%" in n for n in t5.notes)
    fields = set(environment_table(ctx).data["field"])  # the appendix shows the flags, not per-run numbers
    assert {"load.train.oversubscribed", "load.latency.oversubscribed"} <= fields
    assert not any(f.startswith("load.") and not f.endswith(".oversubscribed") for f in fields)
