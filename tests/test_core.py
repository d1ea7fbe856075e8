"""Core seams: run keys, the training loop, records, parameter validation, the registry."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Literal

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from kdbench import store
from kdbench.config import RunSpec, TeacherRecipe, parse_int_list, parse_params, run_key
from kdbench.engine import Step, accuracy, iterate_batches, train
from kdbench.errors import DivergenceError, KdbenchError
from kdbench.method import Method, build_params
from kdbench.registry import Registry


# ---- run keys -------------------------------------------------------------------------------
def _canon(**kw):
    return RunSpec(method="kd", **kw).to_dict()


def test_same_spec_same_key_and_every_field_changes_it():
    base = _canon()
    assert run_key(base) == run_key(_canon())
    changes = {"dataset": "fashion-mnist", "params": {"temperature": 2.0}, "teacher": "x", "student": "y",
               "budget": "repo", "n_students": 2, "mode": "ff", "epochs": 3, "batch_size": 64, "lr": 0.1,
               "seed": 1, "val_fraction": 0.2, "split_seed": 3, "max_train": 100, "device": "cuda",
               "teacher_recipe": TeacherRecipe(epochs=1), "augment": "crop-flip", "teacher_normalize": "imagenet",
               "data_options": {"maxlen": 100}, "amp": "bf16", "compile": True, "student_scale": 0.5}
    assert set(changes) | {"method"} == {f.name for f in dataclasses.fields(RunSpec)}
    keys = {run_key(base)}
    for field, value in changes.items():
        keys.add(run_key(_canon(**{field: value})))
    assert len(keys) == len(changes) + 1


def test_late_fields_at_their_default_leave_old_run_keys_unchanged():
    from kdbench.config import LATE_FIELDS

    canon = _canon()
    assert not set(LATE_FIELDS) & set(canon)  # so the keys of records made before these fields existed still match
    assert RunSpec.from_dict(canon) == RunSpec(method="kd")
    assert _canon(augment="crop-flip")["augment"] == "crop-flip"


def test_spec_roundtrip_through_dict():
    spec = RunSpec(method="tcn", mode="gan", n_students=4, params={"lam": 2.0}, teacher_recipe=TeacherRecipe(epochs=2))
    again = RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    with pytest.raises(KdbenchError, match="unknown run field"):
        RunSpec.from_dict({"method": "kd", "bogus": 1})


# ---- parsers ----------------------------------------------------------------------------------
def test_parse_int_list_accepts_and_rejects():
    assert parse_int_list("1,2,4,8", "students") == [1, 2, 4, 8]
    for bad in ("1,,2", "a", "-1", "", "0", "2,2"):
        with pytest.raises(KdbenchError):
            parse_int_list(bad, "students")


def test_parse_params_values_and_lists():
    assert parse_params(["temperature=4,alpha=0.9", "reduction=mean"]) == {"temperature": 4, "alpha": 0.9, "reduction": "mean"}
    assert parse_params(["assistants=plain6,plain4"]) == {"assistants": "plain6,plain4"}
    assert parse_params(["flag=true"]) == {"flag": True}
    with pytest.raises(KdbenchError, match="key=value"):
        parse_params(["novalue"])


class _Dummy(Method):
    name = "dummy"

    @dataclass
    class Params:
        temperature: float = 4.0
        steps: int = 2
        flag: bool = False
        kind: Literal["a", "b"] = "a"
        names: list[str] = dataclasses.field(default_factory=list)


def test_build_params_types_and_unknown_keys():
    p = build_params(_Dummy, {"temperature": 2, "steps": 3, "flag": True, "kind": "b", "names": "x,y"})
    assert (p.temperature, p.steps, p.flag, p.kind, p.names) == (2.0, 3, True, "b", ["x", "y"])
    with pytest.raises(KdbenchError, match="did you mean 'temperature'"):
        build_params(_Dummy, {"temprature": 1.0})
    with pytest.raises(KdbenchError, match="must be an integer"):
        build_params(_Dummy, {"steps": 1.5})
    with pytest.raises(KdbenchError, match="must be a number"):
        build_params(_Dummy, {"temperature": "hot"})
    with pytest.raises(KdbenchError, match="must be one of"):
        build_params(_Dummy, {"kind": "c"})


def test_registry_did_you_mean():
    reg: Registry[int] = Registry("widget")
    reg.add("resnet20", 1)
    with pytest.raises(KdbenchError, match="did you mean 'resnet20'"):
        reg.get("resnet2O")


# ---- the training loop --------------------------------------------------------------------------
def _toy(seed=0, n=256):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return x, y


def _fit(seed=0, epochs=3):
    torch.manual_seed(seed)
    x, y = _toy()
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    res = train([Step("ce", opt, lambda b: {"ce": F.cross_entropy(model(b.x), b.y)})], {"m": model}, x, y,
                epochs=epochs, batch_size=32, seed=seed, progress=False,
                evaluate=lambda: {"val_acc": accuracy(model(x), y)})
    return model, res


def test_loop_learns_is_deterministic_and_keeps_history():
    m1, r1 = _fit()
    m2, r2 = _fit()
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["epoch"] for h in r1.history] == [1, 2, 3]
    assert r1.history[-1]["val_acc"] > 90
    assert r1.best_epoch in (1, 2, 3) and r1.best_score == max(h["val_acc"] for h in r1.history)
    m3, _ = _fit(seed=1)
    assert not torch.equal(m1[0].weight, m3[0].weight)


def test_loop_restores_val_best_state():
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    scores = iter([1.0, 3.0, 2.0])
    weights = []

    def on_epoch(epoch):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        weights.append(epoch)

    x, y = torch.zeros(4, 1), torch.zeros(4, dtype=torch.long)
    res = train([Step("s", opt, lambda b: {"l": model(b.x).sum() * 0})], {"m": model}, x, y, epochs=3, batch_size=2,
                evaluate=lambda: {"val_acc": next(scores)}, on_epoch_start=on_epoch, progress=False)
    assert res.best_epoch == 2 and float(model.weight.detach()) == 3.0
    res.restore_best({"m": model})
    assert float(model.weight.detach()) == 2.0


def test_loop_runs_several_steps_in_order_with_repeat():
    calls = []
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def make(name):
        def fn(batch):
            calls.append(name)
            return {"l": model(batch.x).pow(2).mean()}
        return fn

    x, y = torch.randn(8, 2), torch.zeros(8, dtype=torch.long)
    res = train([Step("d", opt, make("d"), repeat=2), Step("g", opt, make("g"))], {"m": model}, x, y,
                epochs=1, batch_size=4, progress=False)
    assert calls == ["d", "d", "g"] * 2
    assert "d/l" in res.history[0] and "g/l" in res.history[0]


def test_nan_guard_names_epoch_and_step():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 2), torch.zeros(8, dtype=torch.long)
    with pytest.raises(DivergenceError) as e:
        train([Step("gen", opt, lambda b: {"bad": model(b.x).sum() * float("nan")})], {"m": model}, x, y,
              epochs=2, batch_size=4, progress=False)
    assert e.value.epoch == 1 and e.value.step == "gen" and e.value.loss_name == "bad"


def test_batches_cover_split_once_and_carry_indices():
    x = torch.arange(10).float()[:, None]
    y = torch.arange(10)
    batches = list(iterate_batches(x, y, 4, torch.Generator().manual_seed(0)))
    idx = torch.cat([b.idx for b in batches])
    assert sorted(idx.tolist()) == list(range(10))
    for b in batches:
        assert torch.equal(b.y, b.idx) and torch.equal(b.x[:, 0].long(), b.idx)


def test_accuracy_top1_top5_and_binary():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    assert accuracy(logits, torch.tensor([1, 1])) == 50.0
    assert accuracy(logits, torch.tensor([1, 1]), k=2) == 100.0
    assert accuracy(torch.tensor([[2.0], [-1.0]]), torch.tensor([1, 1])) == 50.0


# ---- records ----------------------------------------------------------------------------------
def test_records_atomic_roundtrip_and_partial_files_ignored(tmp_path):
    spec1 = {"method": "kd", "dataset": "mnist", "seed": 0, "params_changed": {"temperature": 2.0}}
    spec2 = {"method": "kd", "dataset": "mnist", "seed": 1}
    k1, k2 = store.spec_key(spec1, "test"), store.spec_key(spec2, "test")  # records are validated: real keys
    rec = {"run_key": k1, "status": "ok", "spec": spec1, "code_version": "test",
           "metrics": {"test_acc": 97.5, "latency": {"b1": {"fused": 1.0}}}}
    store.write_record(tmp_path, rec)
    store.write_record(tmp_path, {"run_key": k2, "status": "failed", "spec": spec2, "code_version": "test", "metrics": {},
                                  "error": {"message": "boom"}})
    (tmp_path / "k3.json").write_text('{"run_key": "k3", "status": "ok", "spe')  # half-written by a killed process
    (tmp_path / ".k4.json.abc.tmp").write_text("{}")
    assert store.is_done(tmp_path, k1) and not store.is_done(tmp_path, k2) and not store.is_done(tmp_path, "k3")
    with pytest.warns(UserWarning, match="k3.json"):
        df = store.load_results(tmp_path)
    assert list(df["run_key"]) == [k1]
    assert df.loc[0, "latency.b1.fused"] == 1.0 and df.loc[0, "variant"] == "temperature=2.0"
    assert len(store.load_results(tmp_path, include_failed=True)) == 2
    assert math.isclose(json.loads((tmp_path / f"{k1}.json").read_text())["metrics"]["test_acc"], 97.5)


def test_resolve_fills_a_moded_methods_default_mode():
    """`kdbench run --method tcn` without --mode is the first declared mode (ff), same key as asking for it."""
    from kdbench.runner import resolve

    implicit = resolve(RunSpec(method="tcn", dataset="mnist-5k", n_students=2))
    explicit = resolve(RunSpec(method="tcn", dataset="mnist-5k", n_students=2, mode="ff"))
    assert implicit.spec.mode == "ff" and implicit.key == explicit.key
    assert resolve(RunSpec(method="kd", dataset="mnist-5k")).spec.mode is None


def test_keep_freed_memory_changes_no_result():
    """The allocator setting only changes where memory comes from: same predictions, bit for bit."""
    import subprocess
    import sys

    code = ("import sys, torch; from kdbench.engine import keep_freed_memory, predict; torch.manual_seed(0); "
            "m = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8*26*26, 10)); "
            "x = torch.randn(600, 1, 28, 28); on = sys.argv[1] == 'on' and keep_freed_memory(); "
            "print(on, predict(m, x, 256).double().sum().item())")
    out = {arg: subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, check=True).stdout.split()
           for arg in ("off", "on")}
    assert out["off"][1] == out["on"][1]
    assert out["on"][0] == str(sys.platform.startswith("linux"))  # active on glibc Linux
    import os

    env = {**os.environ, "KDBENCH_KEEP_FREED_MEMORY": "0"}
    assert subprocess.run([sys.executable, "-c", code, "on"], capture_output=True, text=True, check=True,
                          env=env).stdout.split()[0] == "False"  # the switch for before / after measurements


def test_environment_names_the_commit_read_at_import_and_the_memory_format(monkeypatch):
    from kdbench import measure

    monkeypatch.setattr(measure, "_git_commit", lambda: "moved-on")  # the checkout changed mid-sweep
    env = measure.environment(torch.device("cpu"))
    assert env["git_commit"] == measure.CODE_COMMIT != "moved-on"
    assert env["memory_format"] == "channels_last"
    monkeypatch.setenv("KDBENCH_CHANNELS_LAST", "0")
    assert measure.environment(torch.device("cpu"))["memory_format"] == "contiguous"


def test_place_makes_conv_weights_channels_last_on_cpu_only_when_enabled(monkeypatch):
    from kdbench.models import place

    conv = place(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(2, 2)), torch.device("cpu"))
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last) and not conv[0].weight.is_contiguous()
    monkeypatch.setenv("KDBENCH_CHANNELS_LAST", "0")
    assert place(nn.Conv2d(3, 4, 3), torch.device("cpu")).weight.is_contiguous()
