"""Bring your own teacher (issue 16, items 1 and 4): an nn.Module passed to `kdbench.run` / `sweep`,
a checkpoint of an importable class (`--teacher file:pkg.module:Class=PATH`), normalisation by name or
numbers, cache keys that follow the weights and the architecture (the stale-cache scenario), and the
warning when a teacher's val accuracy is above its test accuracy beyond chance."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import kdbench
from kdbench import store, teachers
from kdbench.cache import sha256_file
from kdbench.cli import main
from kdbench.config import TeacherRecipe
from kdbench.data import load_dataset
from kdbench.data.base import DataSpec
from kdbench.engine import accuracy, predict
from kdbench.errors import KdbenchError
from kdbench.models import MODELS
from kdbench.models.dense import ExternalModel
from kdbench.models.protocol import Normalize
from kdbench.models.weights import load_weights

QUICK = dict(dataset="digits", max_train=60, epochs=1, student="plain2", latency=False)
CLI_QUICK = ["--dataset", "digits", "--max-train", "60", "--epochs", "1", "--student", "plain2", "--no-latency"]

NETS = '''
from torch import nn


class Net(nn.Module):
    """A user's teacher class: it takes the class count."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU())
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


class NotAModule:
    pass
'''


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch) -> Path:
    """A private cache, no progress bars, an importable `h16_nets` module, and no module teachers
    registered by other tests."""
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KDBENCH_PROGRESS", "0")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "h16_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(teachers, "_MODULE_TEACHERS", {})
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", max_train=60)


def mlp(act: type[nn.Module] = nn.ReLU, width: int = 32) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), act(), nn.Linear(width, 10))


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 150) -> nn.Module:
    """Full-batch Adam: a tiny teacher that is clearly better than chance, in well under a second."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def accuracy_of(model: nn.Module, data, transform=lambda x: x) -> float:
    """Test accuracy of a copy of `model` in eval mode (the caller's module keeps its mode)."""
    model = copy.deepcopy(model).eval()
    return accuracy(predict(model, transform(data.test.x)), data.test.y)


def entries(cache: Path, kind: str) -> set[str]:
    return {p.parent.name for p in (cache / kind).glob("*/meta.json")}


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------------------------- nn.Module teachers
def test_module_teacher_is_evaluated_described_and_left_untouched(data, env):
    torch.manual_seed(0)
    t = fit(mlp(), data.train.x, data.train.y)
    t.train()
    rec = kdbench.run("kd", teacher=t, dense="3", **QUICK)
    assert rec["status"] == "ok" and rec["spec"]["teacher"].startswith("module:torch.nn.modules.container.Sequential@")
    assert rec["metrics"]["teacher_test_acc"] == pytest.approx(accuracy_of(t, data), abs=1e-9)
    block = rec["teacher"]
    assert block["class"] == "torch.nn.modules.container.Sequential" and block["dense"] == "3" and block["dense_width"] == 32
    assert len(block["module_weights_sha256"]) == 64 and len(block["architecture_sha256"]) == 64
    assert block["weights_sha256"] and block["source"] == "nn.Module passed in Python"
    assert t.training and all(p.requires_grad for p in t.parameters()), "the caller's module was changed"
    json.dumps(rec["spec"])  # the spec stays JSON


def test_module_teacher_keys_follow_its_weights_and_its_architecture(data, env):
    torch.manual_seed(0)
    t = fit(mlp(), data.train.x, data.train.y)
    first = kdbench.run("kd", teacher=t, **QUICK)
    targets = entries(env, "targets")
    again = kdbench.run("kd", teacher=t, **QUICK)
    assert (again["run_key"], again["teacher"]["key"]) == (first["run_key"], first["teacher"]["key"])
    assert entries(env, "targets") == targets, "the same weights computed their targets again"

    with torch.no_grad():
        t[3].bias += 3.0 * torch.arange(10.0)  # other weights, same architecture
    changed = kdbench.run("kd", teacher=t, **QUICK)
    assert changed["spec"]["teacher"] != first["spec"]["teacher"] and changed["run_key"] != first["run_key"]
    assert changed["teacher"]["key"] != first["teacher"]["key"]
    assert entries(env, "targets") - targets, "new weights reused the old targets"
    assert changed["metrics"]["teacher_test_acc"] == pytest.approx(accuracy_of(t, data), abs=1e-9)

    tanh = mlp(nn.Tanh)  # the same weights in another architecture (no shape changes)
    tanh.load_state_dict(t.state_dict())
    other = kdbench.run("kd", teacher=tanh, **QUICK)
    assert other["teacher"]["module_weights_sha256"] == changed["teacher"]["module_weights_sha256"]
    assert other["teacher"]["key"] != changed["teacher"]["key"] and other["run_key"] != changed["run_key"]


def test_normalize_numbers_apply_before_the_module_and_key_the_teacher(data, env):
    torch.manual_seed(0)
    t = fit(mlp(), (data.train.x - 0.5) / 0.25, data.train.y)
    plain = kdbench.run("kd", teacher=t, **QUICK)
    normed = kdbench.run("kd", teacher=t, normalize=(0.5, 0.25), **QUICK)
    assert normed["spec"]["teacher_normalize"] == "0.5,0.25" and normed["teacher"]["normalize"] == "0.5,0.25"
    assert normed["teacher"]["key"] != plain["teacher"]["key"] and normed["run_key"] != plain["run_key"]
    want = accuracy_of(t, data, lambda x: (x - 0.5) / 0.25)
    assert normed["metrics"]["teacher_test_acc"] == pytest.approx(want, abs=1e-9)
    assert kdbench.run("kd", teacher=t, teacher_normalize="0.5,0.25", **QUICK)["run_key"] == normed["run_key"]


def test_external_model_keeps_the_state_dict_names_and_strict_loading(tmp_path):
    import h16_nets

    net = h16_nets.Net()
    wrapped = ExternalModel(net, None, Normalize((0.5,), (0.25,)))
    assert list(wrapped.state_dict()) == list(net.state_dict()) == ["body.1.weight", "body.1.bias", "fc.weight", "fc.bias"]
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)
    fresh = ExternalModel(h16_nets.Net(), None, Normalize((0.5,), (0.25,)))
    load_weights(fresh, path)  # strict
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))
    fresh.load_state_dict(net.state_dict(), strict=True)
    torch.save({k: v for k, v in net.state_dict().items() if k != "fc.bias"}, path)
    with pytest.raises(KdbenchError, match="missing keys fc.bias"):
        load_weights(ExternalModel(h16_nets.Net()), path)


def test_dense_as_a_layer_name_or_a_function_gives_the_same_features(data, env):
    torch.manual_seed(0)
    t = fit(mlp(), data.train.x, data.train.y)
    tcn = {**QUICK, "student": "auto", "n_students": 2}
    by_name = kdbench.run("tcn", teacher=t, dense="3", **tcn)
    by_fn = kdbench.run("tcn", teacher=t, dense=lambda m, x: m[2](m[1](m[0](x))), **tcn)
    assert by_fn["teacher"]["dense"].startswith("fn:") and by_fn["teacher"]["key"] != by_name["teacher"]["key"]
    assert by_name["metrics"]["tcn"]["teacher_dense_width"] == by_fn["metrics"]["tcn"]["teacher_dense_width"] == 32
    for metric in ("test_acc", "test_acc_valbest", "val_acc"):
        assert by_fn["metrics"][metric] == by_name["metrics"][metric], metric


def test_a_dense_layer_that_is_not_the_head_is_one_clear_error(data):
    t = mlp()
    with pytest.raises(KdbenchError, match="does not give the model's output; dense= must name the last layer"):
        kdbench.run("kd", teacher=t, dense="1", **QUICK)


def test_a_module_teacher_reaches_pool_workers(data, env, tmp_path):
    torch.manual_seed(0)
    t = fit(mlp(), data.train.x, data.train.y)
    res = kdbench.sweep("kd", teacher=t, dense="3", seeds=2, workers=2, out=tmp_path / "out", log=None, **QUICK)
    assert res.ok and len(res.records) == 2
    assert len({r["teacher"]["key"] for r in res.records}) == 1
    with pytest.raises(KdbenchError, match="cannot be sent to worker processes") as exc:
        kdbench.sweep("kd", teacher=t, dense=lambda m, x: m[2](m[1](m[0](x))), seeds=2, workers=2,
                      out=tmp_path / "out2", log=None, **QUICK)
    one_line(exc)
    assert not (tmp_path / "out2").exists()


def test_a_module_teacher_record_rerun_from_the_cli_is_one_line(data, tmp_path, capsys, monkeypatch):
    rec = kdbench.run("kd", teacher=mlp(), out=tmp_path / "out", **QUICK)
    path = store.record_path(tmp_path / "out", rec["run_key"])
    assert store.read_record(path) is not None
    monkeypatch.setattr(teachers, "_MODULE_TEACHERS", {})  # another process: the module is not there
    rc = main(["run", "--from-record", str(path), "--out", str(tmp_path / "again")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "was an nn.Module passed to kdbench.run" in err[0], err
    assert not (tmp_path / "again").exists()


# --------------------------------------------------------------------------------------------- file:pkg.module:Class=PATH
def test_importable_class_checkpoint_loads_strictly_with_its_normalisation(data, env, tmp_path, capsys):
    import h16_nets

    torch.manual_seed(0)
    net = fit(h16_nets.Net(), (data.train.x - 0.5) / 0.25, data.train.y)
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)
    out = tmp_path / "out"
    rc = main(["run", "--method", "kd", *CLI_QUICK, "--teacher", f"file:h16_nets:Net={path}",
               "--teacher-normalize", "0.5,0.25", "--out", str(out)])
    assert rc == 0, capsys.readouterr()
    rec = json.loads(next(out.glob("*.json")).read_text())
    block = rec["teacher"]
    assert block["class"] == "h16_nets.Net" and block["checkpoint_sha256"] == sha256_file(path)
    assert block["normalize"] == "0.5,0.25" and len(block["architecture_sha256"]) == 64
    want = accuracy_of(net, data, lambda x: (x - 0.5) / 0.25)
    assert rec["metrics"]["teacher_test_acc"] == pytest.approx(want, abs=1e-9) and want > 50


# --------------------------------------------------------------------------------------------- the stale-cache scenario
def register_tiny(monkeypatch, act: type[nn.Module], width: int = 16) -> None:
    """(Re)define the model 'h16-tiny' under the same name, as a user fixing their model would."""
    def factory(spec: DataSpec) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, width), act(), nn.Linear(width, spec.num_classes))

    factory.modality = "image"  # type: ignore[attr-defined]
    factory.default_spec = DataSpec((1, 8, 8), 10, "image")  # type: ignore[attr-defined]
    monkeypatch.setitem(MODELS._entries, "h16-tiny", factory)


def test_a_model_fixed_under_the_same_name_misses_the_cache(data, env, tmp_path, monkeypatch):
    register_tiny(monkeypatch, nn.ReLU)
    torch.manual_seed(0)
    net = fit(MODELS.get("h16-tiny")(data.spec), data.train.x, data.train.y)
    path = tmp_path / "tiny.pt"
    torch.save(net.state_dict(), path)
    teacher = f"file:h16-tiny={path}"
    first = kdbench.run("kd", teacher=teacher, **QUICK)
    assert first["metrics"]["teacher_test_acc"] == pytest.approx(accuracy_of(net, data), abs=1e-9)

    register_tiny(monkeypatch, nn.Tanh)  # the code changed, the name and the checkpoint did not
    fixed = MODELS.get("h16-tiny")(data.spec)
    fixed.load_state_dict(torch.load(path))
    second = kdbench.run("kd", teacher=teacher, **QUICK)
    assert second["teacher"]["key"] != first["teacher"]["key"]
    assert second["teacher"]["architecture_sha256"] != first["teacher"]["architecture_sha256"]
    assert second["metrics"]["teacher_test_acc"] == pytest.approx(accuracy_of(fixed, data), abs=1e-9)
    assert second["metrics"]["teacher_test_acc"] != first["metrics"]["teacher_test_acc"]

    register_tiny(monkeypatch, nn.Tanh, width=24)  # a new layout and new weights in the same file
    wider = fit(MODELS.get("h16-tiny")(data.spec), data.train.x, data.train.y, steps=20)
    torch.save(wider.state_dict(), path)
    third = kdbench.run("kd", teacher=teacher, **QUICK)
    assert third["teacher"]["key"] not in (first["teacher"]["key"], second["teacher"]["key"])
    assert third["metrics"]["teacher_test_acc"] == pytest.approx(accuracy_of(wider, data), abs=1e-9)
    assert third["run_key"] == first["run_key"], "run keys hold the teacher's spec, not its cache key"


def test_a_trained_plugin_teacher_is_retrained_when_its_code_changes(data, env, monkeypatch):
    recipe = TeacherRecipe(epochs=1, batch_size=32)
    register_tiny(monkeypatch, nn.ReLU)
    first = kdbench.run("kd", teacher="h16-tiny", teacher_recipe=recipe, **QUICK)
    register_tiny(monkeypatch, nn.Tanh)
    second = kdbench.run("kd", teacher="h16-tiny", teacher_recipe=recipe, **QUICK)
    assert second["teacher"]["key"] != first["teacher"]["key"] and len(entries(env, "teachers")) == 2
    assert second["run_key"] == first["run_key"]


def test_kdbench_zoo_teacher_keys_are_unchanged():
    """The trained zoo teachers already in caches keep their keys (their code is versioned by CODE_VERSION)."""
    assert teachers.versioned_by_kdbench("plain2") and teachers.versioned_by_kdbench("paper-mnist-teacher")
    assert not teachers.versioned_by_kdbench("timm/resnet18")


def test_teacher_keys_follow_the_teacher_version_not_the_code_version(monkeypatch):
    """A CODE_VERSION bump (re-runs every student) keeps the cached teachers; a TEACHER_VERSION bump retrains them."""
    from kdbench import config
    from kdbench.config import TeacherRecipe
    from kdbench.data import load_dataset

    data = load_dataset("digits")
    recipe = TeacherRecipe(epochs=1)
    before = teachers.teacher_cache_key("plain2", data, recipe)
    monkeypatch.setattr(config, "CODE_VERSION", "9.9.9+other")
    monkeypatch.setattr(teachers, "CODE_VERSION", "9.9.9+other")
    assert teachers.teacher_cache_key("plain2", data, recipe) == before
    monkeypatch.setattr(teachers, "TEACHER_VERSION", "9.9.9+teacher")
    assert teachers.teacher_cache_key("plain2", data, recipe) != before


# --------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("fields,pattern", [
    (dict(dense="nope"), r"dense='nope' is not a layer of teacher Sequential \(layers: 0, 1, 2, 3\)"),
    (dict(dense=3), r"dense= must be a layer name of the teacher or a function"),
    (dict(normalize="0.5/0.5,0.2/0.2"), r"teacher_normalize '0.5/0.5,0.2/0.2' gives 2 channels, dataset 'digits' has 1"),
    (dict(normalize="imagenet"), r"gives 3 channels, dataset 'digits' has 1"),
    (dict(normalize=(1, 2, 3)), r"normalize=\(1, 2, 3\) is not imagenet, cifar10, none, or MEAN,STD"),
    (dict(normalize="1,0"), r"normalize '1,0' is not"),
    (dict(normalize="0.5,0.2", teacher_normalize="imagenet"), r"contradict"),
])
def test_bad_module_teacher_input_is_one_line_before_any_work(fields, pattern, env, tmp_path):
    for call in (lambda: kdbench.run("kd", teacher=mlp(), out=tmp_path / "out", **QUICK, **fields),
                 lambda: kdbench.sweep("kd", teacher=mlp(), seeds=2, out=tmp_path / "out", log=None, **QUICK, **fields)):
        with pytest.raises(KdbenchError) as exc:
            call()
        assert re.search(pattern, one_line(exc)), str(exc.value)
    assert not (tmp_path / "out").exists() and not list(env.rglob("meta.json"))


def test_dense_without_a_module_teacher_is_refused():
    with pytest.raises(KdbenchError, match="dense= names the dense layer of a teacher nn.Module"):
        kdbench.run("kd", teacher="plain2", dense="fc", **QUICK)


@pytest.mark.parametrize("teacher,extra,pattern", [
    ("file:no.such.module:Net={p}", [], r"cannot import module 'no.such.module' of teacher class .*No module named 'no'"),
    ("file:h16_nets:NotAModule={p}", [], r"teacher class 'h16_nets:NotAModule' is not an nn.Module class"),
    ("file:h16_nets:Missing={p}", [], r"module 'h16_nets' has no 'Missing'"),
    ("file:h16_nets:Net={p}", ["--teacher-normalize", "0.5/0.5,0.2/0.2"], r"gives 2 channels, dataset 'digits' has 1"),
    ("file:h16_nets:Net={bad}", [], r"do not fit teacher class 'h16_nets:Net': missing keys fc.weight"),
])
def test_bad_importable_teacher_is_one_line_and_exit_2(teacher, extra, pattern, env, tmp_path, capsys):
    import h16_nets

    good, bad = tmp_path / "net.pt", tmp_path / "bad.pt"
    torch.save(h16_nets.Net().state_dict(), good)
    torch.save({k: v for k, v in h16_nets.Net().state_dict().items() if not k.startswith("fc.")}, bad)
    out = tmp_path / "out"
    rc = main(["run", "--method", "kd", *CLI_QUICK, "--teacher", teacher.format(p=good, bad=bad), *extra, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and re.search(pattern, err[0]), err
    assert not out.exists() and not list(env.rglob("meta.json"))


# --------------------------------------------------------------------------------------------- val above test
def test_val_test_rule():
    def info(val: float, test: float, n_val: int = 6000, n_test: int = 10000) -> dict:
        return {"arch": "t", "metrics": {"val_acc": val, "test_acc": test}, "split": {"sizes": {"val": n_val, "test": n_test}}}

    warning = teachers.val_test_warning(info(99.83, 99.05))  # the imported MNIST teacher
    assert warning and "95% binomial interval" in warning and "n_val=6000, n_test=10000" in warning
    assert teachers.val_test_warning(info(99.15, 99.05)) is None  # within chance
    assert teachers.val_test_warning(info(98.0, 99.05)) is None  # val below test
    assert teachers.val_test_warning(info(100.0, 96.0, 50, 50)) is None  # too few rows to tell
    assert teachers.val_test_warning({"metrics": {}}) is None


def test_a_teacher_that_saw_the_val_split_is_flagged_in_the_record_and_the_report(data, env, tmp_path):
    from kdbench.report import build_report

    torch.manual_seed(0)
    leaky = fit(mlp(width=64), data.val.x, data.val.y, steps=300)  # trained on kdbench's val split
    rec = kdbench.run("kd", teacher=leaky, out=tmp_path / "out", **QUICK)
    assert rec["metrics"]["teacher_val_acc"] > rec["metrics"]["teacher_test_acc"] + 5
    leaks = [w for w in rec["warnings"] if "val split may overlap" in w]
    assert len(leaks) == 1 and rec["teacher"]["warnings"] == leaks
    path = store.record_path(tmp_path / "out", rec["run_key"])
    assert store.read_record(path) is not None, store.load_record(path)
    report = build_report(tmp_path / "out", tmp_path / "reports", name="r", formats="md", figures=False)
    text = next(Path(report).rglob("*.md")).read_text()
    teachers_at = text.index("Teachers")
    assert text.index("Warning: teacher torch.nn.modules.container.Sequential: val accuracy", teachers_at) > teachers_at

    fair = kdbench.run("kd", teacher=fit(mlp(width=64), data.train.x, data.train.y), **QUICK)
    assert not any("val split" in w for w in fair.get("warnings", [])) and "warnings" not in fair["teacher"]


def test_record_warnings_must_be_strings(tmp_path):
    rec = kdbench.run("student", **QUICK)
    path = tmp_path / f"{rec['run_key']}.json"
    store.write_record(tmp_path, {**rec, "warnings": [3]})
    assert "field 'warnings' must list strings" in store.load_record(path).reason
    store.write_record(tmp_path, {**rec, "warnings": ["a warning"]})
    assert store.read_record(path) is not None
