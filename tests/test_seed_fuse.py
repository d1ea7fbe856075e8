"""Seed fusion (kdbench.seed_fuse): the seeds of one cell trained as one computation give each seed
what its run alone gives (per method), `auto` decides and is recorded, `--no-fuse-seeds` turns it
off, a partly done group runs only its missing members, and locks and failures stay per member."""
from __future__ import annotations

import math

import pytest
import torch
from helpers_sweep import comparable, quiet_env, records  # noqa: F401  (fixture)

from kdbench import api, store
from kdbench.cli import main
from kdbench.config import RunSpec
from kdbench.errors import KdbenchError
from kdbench.executors import claim, group_jobs, make_job, run_group
from kdbench.runner import _prepare, build_context, evaluate, execute, execute_seeds, resolve
from kdbench.fuse_plan import FUSE_MAX_MACS_CPU, Sizer, decide
from kdbench.seed_fuse import fuse_mode

TINY = {"dataset": "digits", "epochs": 1, "max_train": 240, "device": "cpu"}
TEACHER = {"teacher": "plain2", "teacher_recipe": {"epochs": 1, "batch_size": 64}}
CASES = {
    "student grouped": ("student", {"student": "image-student"}),
    "student vmap+batchnorm": ("student", {"student": "plain2"}),
    "kd": ("kd", {"student": "image-student", **TEACHER}),
    "kd augmented (teacher on each batch)": ("kd", {"student": "image-student", "augment": "crop-flip", **TEACHER}),
    "tcn ff": ("tcn", {"n_students": 2, "mode": "ff", **TEACHER}),
    "tcn ff, students fused in each run": ("tcn", {"n_students": 2, "mode": "ff", "params": {"fused": True}, **TEACHER}),
}


def _resolved(method: str, fields: dict, seeds=(0, 1)) -> list:
    return [resolve(RunSpec.from_dict({"method": method, "seed": s, **TINY, **fields})) for s in seeds]


def _fits(rs: list, fused: bool) -> tuple[list, object]:
    """The FitResults of the runs alone (each seeded, as the runner does) or fused, and the data."""
    prep = _prepare(rs[0], None, False)
    ctxs = [build_context(r, prep.data, prep.device, prep.teacher, False, prep.timings) for r in rs]
    method = rs[0].method(rs[0].params)
    if fused:
        return method.fit_seeds(ctxs), prep.data
    out = []
    for r, ctx in zip(rs, ctxs):
        torch.manual_seed(r.spec.seed)
        out.append(method.fit(ctx))
    return out, prep.data


def _close_rows(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k, v in ra.items():
            if k == "time_s" or not isinstance(v, float):
                assert k == "time_s" or v == rb[k], k
            else:
                assert math.isclose(v, rb[k], rel_tol=1e-4, abs_tol=1e-6), (k, v, rb[k])


@pytest.mark.parametrize("case", list(CASES))
def test_fused_seeds_equal_their_runs_alone(case):
    method, fields = CASES[case]
    rs = _resolved(method, fields)
    alone, data = _fits(rs, fused=False)
    fused, _ = _fits(rs, fused=True)
    for a, f in zip(alone, fused):
        for tag in ("last_state", "valbest_state"):
            sa, sf = getattr(a, tag), getattr(f, tag)
            assert sa.keys() == sf.keys()
            for k in sa:
                torch.testing.assert_close(sf[k], sa[k], rtol=1e-4, atol=1e-4, msg=f"{tag} {k}")
        _close_rows(a.history, f.history)
        assert evaluate(a, data) == evaluate(f, data)  # test / val accuracies, last and val-best
        if method == "tcn":
            for k in ("feature_mse", "feature_mse_per_student", "test_acc_no_finetune", "test_acc_valbest_no_finetune"):
                assert f.metrics[k] == pytest.approx(a.metrics[k], rel=1e-4), k
            for k in ("best_epoch_per_student", "fusion", "fused_groups", "val_acc_finetune", "val_acc_valbest_finetune"):
                assert f.metrics[k] == a.metrics[k], k
    seeds_differ = any(not torch.equal(alone[0].last_state[k], alone[1].last_state[k]) for k in alone[0].last_state)
    assert seeds_differ  # two seeds, two different runs: the comparison above is not trivially true


def test_auto_decides_from_device_and_size():
    sizer = Sizer()
    small = _resolved("student", {"student": "image-student"})  # 81.6 kMAC on 8x8, grouped layers
    d = decide(small, "auto", "cpu", sizer)
    assert d.fused and d.copies == 2 and d.macs <= FUSE_MAX_MACS_CPU and "auto: cpu" in d.reason
    batchnorm = _resolved("student", {"student": "plain2"})  # BatchNorm: only the vmap form
    assert not decide(batchnorm, "auto", "cpu", sizer).fused
    assert decide(batchnorm, "auto", "cuda", sizer).fused  # an accelerator fuses every size
    assert decide(batchnorm, "on", "cpu", sizer).fused
    off = decide(small, "off", "cpu", sizer)
    assert not off.fused and off.copies == 1 and "off" in off.reason
    dropout = _resolved("student", {"student": "kdgan-mlp"})
    assert "dropout" in decide(dropout, "on", "cuda", sizer).reason
    gan = _resolved("tcn", {"n_students": 2, "mode": "gan", **TEACHER})
    assert not decide(gan, "auto", "cuda", sizer).fused
    assert not decide(small[:1], "auto", "cpu", sizer).fused  # no sibling
    assert [fuse_mode(v) for v in ("auto", True, False, "off")] == ["auto", "on", "off", "off"]
    with pytest.raises(KdbenchError, match="fuse_seeds"):
        fuse_mode("maybe")


SWEEP = ["sweep", "--method", "student", "--student", "image-student", "--dataset", "digits", "--epochs", "1",
         "--max-train", "240", "--no-latency", "--threads", "1", "--device", "cpu"]


def test_sweep_records_fusion_and_no_fuse_seeds_turns_it_off(tmp_path, capsys):
    assert main([*SWEEP, "--seeds", "2", "--out", str(tmp_path / "on")]) == 0
    assert main([*SWEEP, "--seeds", "2", "--out", str(tmp_path / "off"), "--no-fuse-seeds"]) == 0
    on, off = records(tmp_path / "on"), records(tmp_path / "off")
    assert on.keys() == off.keys() and len(on) == 2  # same run keys: fused and unfused runs are the same runs
    for key in on:
        f, u = on[key]["env"]["seed_fusion"], off[key]["env"]["seed_fusion"]
        assert f["fused"] and f["copies"] == 2 and f["mode"] == "auto" and f["group_train_time_s"] == pytest.approx(2 * on[key]["metrics"]["train_time_s"])
        assert not u["fused"] and u["mode"] == "off"
        for m in ("test_acc", "test_acc_valbest", "val_acc"):
            assert on[key]["metrics"][m] == off[key]["metrics"][m]
    with pytest.raises(KdbenchError, match="fuse_seeds"):  # bad input: one line, before anything runs
        api.sweep("student", seeds=2, out=tmp_path / "bad", fuse_seeds="sometimes", log=None, **TINY)
    assert not (tmp_path / "bad").exists()


def test_resumed_group_runs_only_its_missing_members(tmp_path):
    out = tmp_path / "runs"
    kw = dict(student="image-student", out=out, latency=False, log=None, threads=1, **TINY)
    first = api.sweep("student", seeds=2, **kw)
    assert first.ran == 2
    stamps = {k: store.record_path(out, k).stat().st_mtime_ns for k in records(out)}
    more = api.sweep("student", seeds=4, **kw)  # seeds 2 and 3 are new: they train fused, 0 and 1 stay
    assert more.ran == 2 and more.skipped == 2
    recs = records(out)
    assert {k: store.record_path(out, k).stat().st_mtime_ns for k in stamps} == stamps
    new = [r for k, r in recs.items() if k not in stamps]
    assert sorted(r["spec"]["seed"] for r in new) == [2, 3]
    assert all(r["env"]["seed_fusion"]["fused"] and r["env"]["seed_fusion"]["seeds"] == [2, 3] for r in new)
    lone = next(k for k, r in recs.items() if r["spec"]["seed"] == 3)
    before = comparable(recs[lone])
    store.record_path(out, lone).unlink()
    again = api.sweep("student", seeds=4, **kw)  # one member missing: it runs alone, equal to its fused self
    assert again.ran == 1 and "seed_fusion" not in records(out)[lone]["env"]
    after = comparable(records(out)[lone])
    # the weights and every metric are bit-identical; the logged epoch-mean loss is summed per copy
    # in the fused group, so it matches to float32 rounding only
    assert after["history"] == [pytest.approx(row, rel=1e-6) for row in before["history"]]
    assert {k: v for k, v in after.items() if k != "history"} == {k: v for k, v in before.items() if k != "history"}


def test_a_held_member_is_left_to_its_holder_and_the_rest_train_fused(tmp_path):
    rs = _resolved("student", {"student": "image-student"}, seeds=(0, 1, 2))
    jobs = [make_job(r, tmp_path, latency=False, progress=False) for r in rs]
    units = group_jobs(jobs)
    assert len(units) == 1 and [j.key for j in units[0]] == [j.key for j in jobs]
    with claim(tmp_path, jobs[1].key) as held:  # another sweep is running seed 1
        assert held
        fins = run_group(units[0])
    assert fins[1] is None and not store.record_path(tmp_path, jobs[1].key).exists()
    for fin in (fins[0], fins[2]):
        note = fin.record["env"]["seed_fusion"]
        assert fin.record["status"] == "ok" and note["fused"] and note["copies"] == 2 and note["seeds"] == [0, 2]


def test_a_failing_fused_group_writes_nothing_of_itself_and_runs_each_seed_alone(tmp_path, monkeypatch):
    from kdbench.methods.student import Student

    def broken(self, ctxs):
        raise RuntimeError("fused group broke")

    rs = _resolved("student", {"student": "image-student"})
    expected = [comparable(execute(r.spec, tmp_path / "alone", resolved=r, latency=False)) for r in rs]
    monkeypatch.setattr(Student, "fit_seeds", broken)
    recs = execute_seeds(rs, tmp_path / "fallback", latency=False, note={"mode": "auto"})
    assert [comparable(r) for r in recs] == expected
    for r in recs:
        note = r["env"]["seed_fusion"]
        assert r["status"] == "ok" and not note["fused"] and "fused group broke" in note["reason"]
    assert sorted(p.name for p in (tmp_path / "fallback").glob("*.json")) == sorted(p.name for p in (tmp_path / "alone").glob("*.json"))


def test_pool_hands_a_group_to_one_worker(tmp_path):
    kw = dict(student="image-student", latency=False, log=None, threads=1, **TINY)
    pool = api.sweep("student", seeds=2, workers=2, out=tmp_path / "pool", **kw)
    serial = api.sweep("student", seeds=2, out=tmp_path / "serial", **kw)
    assert pool.ok and pool.ran == 2
    assert [comparable(r) for r in pool.records] == [comparable(r) for r in serial.records]
    assert all(r["env"]["seed_fusion"]["fused"] for r in pool.records)


def test_trackers_see_each_fused_seed_as_its_run_alone(tmp_path):
    pytest.importorskip("tensorboard")
    from test_tracking import _tensorboard_steps

    res = api.sweep("student", seeds=2, out=tmp_path, latency=False, log=None, trackers="tensorboard",
                    student="image-student", **{**TINY, "epochs": 2})
    assert res.ok and all(r["env"]["seed_fusion"]["fused"] for r in res.records)
    for rec in res.records:  # its own epochs, replayed once its group is trained
        assert _tensorboard_steps(tmp_path, rec["run_key"]) == [1, 2]


@pytest.mark.parametrize("arch,channels_last", [("image-student", False), ("image-student", True), ("plain2", True)])
def test_stacked_copies_read_their_own_input(arch, channels_last):
    """`share` consecutive copies read one input of x (s, B, ...): grouped layers (image-student)
    and vmap (plain2, BatchNorm) give each copy what it gives alone, gradients included."""
    import copy

    from kdbench.data.base import DataSpec
    from kdbench.models import create_model
    from kdbench.tcn_fuse import Grouped, stack

    torch.manual_seed(0)
    mods = [create_model(arch, DataSpec((1, 8, 8), 10)) for _ in range(6)]
    if channels_last:
        mods = [m.to(memory_format=torch.channels_last) for m in mods]
    ref = copy.deepcopy(mods)
    fused = stack(mods, batched_input=True, share=2).eval()
    assert isinstance(fused, Grouped) == (arch == "image-student")
    x = torch.randn(3, 5, 1, 8, 8)
    out = fused(x)
    expected = torch.stack([m.eval()(x[i // 2]) for i, m in enumerate(ref)])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.pow(2).sum().backward()
    expected.pow(2).sum().backward()
    for i, m in enumerate(ref):
        for n, p in m.named_parameters():
            torch.testing.assert_close(getattr(fused, n.replace(".", "__")).grad[i], p.grad, rtol=1e-4, atol=1e-5, msg=n)
