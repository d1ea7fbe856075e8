"""Plugins: datasets and models of the user's own module through `--import` / $KDBENCH_IMPORT in
every command and worker process (local pool, Ray), installed plugins (entry points) that fail to
import, the five-line dataset helpers, dataset-declared family defaults (teacher, recipe, relative
student budget), the student-not-smaller warning, per-run dataset options, and the executed
examples of docs/extending.md."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

import kdbench
from kdbench import registry
from kdbench.cli import main
from kdbench.config import RunSpec, TeacherRecipe
from kdbench.data import DATASETS, load_dataset
from kdbench.errors import KdbenchError
from kdbench.models import MODELS
from kdbench.models.budget import PAPER_BUDGETS, PAPER_TEACHERS, RELATIVE, StudentSizeWarning, budget_rule, relative_budget
from kdbench.runner import resolve
from kdbench.runner import run as run_spec

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "kdbench_test_plugin"
PLUGIN_CODE = textwrap.dedent('''
    """A user's module: a dataset whose default teacher is a model of the same module."""
    import numpy as np
    from sklearn.datasets import load_digits
    from torch import nn

    import kdbench
    from kdbench.config import TeacherRecipe

    def read():
        d = load_digits()
        return d.images[:500].astype(np.float32) / 16, d.target[:500]

    kdbench.register_image_dataset("plug-digits", read=read, num_classes=10, default_teacher="plug-mlp",
                                   teacher_recipe=TeacherRecipe(epochs=2, batch_size=32))

    @kdbench.register_model("plug-mlp")
    def plug_mlp(spec, hidden: int = 64):
        """The plugin's MLP."""
        c, h, w = spec.input_shape
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, spec.num_classes))
''')
QUICK = ["--epochs", "1", "--device", "cpu", "--no-latency"]


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    """The plugin module in a folder of its own (put on PYTHONPATH of the processes under test)."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / f"{PLUGIN}.py").write_text(PLUGIN_CODE)
    return folder


def _env(tmp_path: Path, path: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != registry.IMPORT_ENV}
    env.update(KDBENCH_CACHE=str(tmp_path / "cache"), KDBENCH_PROGRESS="0", **extra)
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(path), env.get("PYTHONPATH", "")) if p)
    return env


def _kdbench(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m kdbench ARGS` as a user types it, in its own process."""
    return subprocess.run([sys.executable, "-m", "kdbench", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


@pytest.fixture
def scratch(monkeypatch, tmp_path: Path):
    """Registrations made in this process for one test only; no progress bars, a private cache."""
    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))
    monkeypatch.setattr(registry, "_imported", [])
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KDBENCH_PROGRESS", "0")
    monkeypatch.delenv(registry.IMPORT_ENV, raising=False)


def _texts(n: int = 60):
    pos = [f"good great fine film {i}" for i in range(n)]
    neg = [f"bad awful poor film {i} and more words here" for i in range(n)]
    return pos + neg, [1] * n + [0] * n


# ---- --import / KDBENCH_IMPORT in every command and worker --------------------------------------
def test_plugin_dataset_and_model_through_import_in_data_and_run(plugin_dir: Path, tmp_path: Path):
    """`kdbench data` lists the plugin dataset; `kdbench run` trains on it with its declared default
    teacher (the plugin's model) and recipe, and an auto student sized relative to that teacher."""
    env = _env(tmp_path, plugin_dir)
    data = _kdbench(["--import", PLUGIN, "data"], env)
    assert data.returncode == 0, data.stderr
    assert re.search(r"plug-digits\s+image\s+found", data.stdout)
    out = tmp_path / "runs"
    run = _kdbench(["run", "--import", PLUGIN, "--method", "kd", "--dataset", "plug-digits", "--out", str(out), *QUICK], env)
    assert run.returncode == 0, run.stderr
    (record,) = _records(out)
    assert record["status"] == "ok" and record["spec"]["teacher"] == "plug-mlp"
    assert record["spec"]["teacher_recipe"]["epochs"] == 2 and record["spec"]["teacher_recipe"]["batch_size"] == 32
    assert record["metrics"]["params"] < record["metrics"]["teacher_params"]
    assert any("student / teacher ratio" in d and "plug-mlp" in d for d in record["deviations"])
    unknown = _kdbench(["run", "--method", "kd", "--dataset", "plug-digits", "--out", str(out), *QUICK], env)
    assert unknown.returncode == 2 and "unknown dataset 'plug-digits'" in unknown.stderr  # without --import


def test_import_reaches_the_workers_of_a_two_worker_sweep(plugin_dir: Path, tmp_path: Path):
    """A module named only by `--import` reaches the pool's worker processes (before, every run failed
    there with 'unknown dataset'): each worker loads the plugin dataset and builds the plugin model
    (the teacher its auto student is sized against)."""
    out = tmp_path / "runs"
    args = ["--import", PLUGIN, "sweep", "--method", "student", "--dataset", "plug-digits", "--seeds", "2",
            "--workers", "2", "--threads", "1", "--out", str(out), *QUICK]
    done = _kdbench(args, _env(tmp_path, plugin_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    records = _records(out)
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    assert all(any("teacher plug-mlp" in d for d in r["deviations"]) for r in records)


def test_ray_sweep_runs_on_a_plugin_dataset(plugin_dir: Path, tmp_path: Path):
    """Ray workers import the driver's `--import` modules before their runs (the module is on their
    PYTHONPATH, but nothing else would import it there)."""
    if os.environ.get("CI", "").lower() != "true":
        pytest.importorskip("ray")
    out = tmp_path / "ray"
    args = ["--import", PLUGIN, "sweep", "--method", "student", "--dataset", "plug-digits", "--seeds", "1",
            "--executor", "ray", "--threads", "1", "--out", str(out), *QUICK]
    done = _kdbench(args, _env(tmp_path, plugin_dir, RAY_DISABLE_USAGE_STATS="1"), timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    records = _records(out)
    assert len(records) == 1 and all(r["status"] == "ok" and r["spec"]["dataset"] == "plug-digits" for r in records)


def test_kdbench_import_env_is_honoured_by_list_and_sweep(plugin_dir: Path, tmp_path: Path):
    env = _env(tmp_path, plugin_dir, KDBENCH_IMPORT=f"json{os.pathsep}{PLUGIN}")
    models = _kdbench(["list", "models"], env)
    assert models.returncode == 0 and "plug-mlp" in models.stdout and "The plugin's MLP" in models.stdout
    plan = _kdbench(["sweep", "--method", "kd", "--dataset", "plug-digits", "--seeds", "1", "--dry-run",
                     "--out", str(tmp_path / "plan")], env)
    assert plan.returncode == 0 and "1 to run" in plan.stdout, plan.stderr


def test_import_of_a_missing_module_is_one_line_exit_2(capsys, monkeypatch):
    for argv in (["--import", "no.such.module", "list"], ["list", "--import", "no.such.module", "methods"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "kdbench: error: --import: cannot import module 'no.such.module'" in err
    monkeypatch.setenv(registry.IMPORT_ENV, "no.such.module")
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "$KDBENCH_IMPORT: cannot import module 'no.such.module'" in err


def test_no_such_module_at_process_level_has_no_traceback(tmp_path: Path):
    done = _kdbench(["--import", "no.such.module", "data"], _env(tmp_path))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["kdbench: error: --import: cannot import module 'no.such.module' "
                                        "(ModuleNotFoundError: No module named 'no')"]


# ---- installed plugins (entry points) -------------------------------------------------------------
def _installed(folder: Path, name: str, groups: dict[str, dict[str, str]]) -> None:
    """A distribution `name` as pip would leave it (dist-info with entry points), without pip."""
    info = folder / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in groups.items()))


def test_broken_installed_plugin_is_one_warning_and_the_rest_works(tmp_path: Path):
    """One plugin raises on import (listed in two groups), another works: every command still runs,
    the broken one is named in exactly one warning per process, the good one's model is there."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "kdb_broken_plugin.py").write_text("raise RuntimeError('this plugin is broken')\n")
    (site / "kdb_good_plugin.py").write_text(textwrap.dedent('''
        import math

        from torch import nn
        import kdbench

        @kdbench.register_model("good-plugin-mlp")
        def good(spec):
            """From an installed plugin."""
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(spec.input_shape), spec.num_classes))
    '''))
    _installed(site, "kdb-broken", {"kdbench.methods": {"broken": "kdb_broken_plugin"},
                                    "kdbench.datasets": {"broken": "kdb_broken_plugin"}})
    _installed(site, "kdb-good", {"kdbench.models": {"good": "kdb_good_plugin"}})
    env = _env(tmp_path, site)
    methods = _kdbench(["list", "methods"], env)
    assert methods.returncode == 0 and re.search(r"\|\s*kd\s*\|", methods.stdout)
    lines = [ln for ln in methods.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "kdb_broken_plugin" in lines[0] and "this plugin is broken" in lines[0], methods.stderr
    assert lines[0].startswith("kdbench: warning: ")
    plan = _kdbench(["sweep", "--method", "student", "--dataset", "digits", "--seeds", "1", "--dry-run",
                     "--out", str(tmp_path / "plan")], env)  # reads both registries the broken plugin is listed in
    assert plan.returncode == 0, plan.stderr
    assert plan.stderr.count("kdb_broken_plugin") == 1
    models = _kdbench(["list", "models"], env)
    assert models.returncode == 0 and "good-plugin-mlp" in models.stdout and "kdb_broken_plugin" not in models.stderr


# ---- the five-line helpers, end to end ---------------------------------------------------------------
def test_register_text_dataset_end_to_end(scratch):
    kdbench.register_text_dataset("tiny-texts", read=_texts, num_classes=2, options={"maxlen": 12, "num_words": 50})
    splits = load_dataset("tiny-texts")
    assert splits.spec.modality == "text" and splits.spec.input_shape == (12,) and splits.spec.vocab_size == 50
    assert sum(splits.sizes().values()) == 120 and splits.sizes()["test"] == 24  # fixed 20% test carve
    assert splits.train.x.dtype.is_floating_point is False and int(splits.train.x.max()) < 50
    assert any("no official test split" in d for d in splits.info["deviations"])
    record = kdbench.run("student", dataset="tiny-texts", epochs=1, latency=False)
    assert record["status"] == "ok" and record["data"]["source"].startswith("read by ")


def test_register_image_dataset_end_to_end(scratch):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(200, 3, 10, 10), dtype=np.uint8)
    y = np.arange(200) % 4

    def read():
        return {"train": (x[:150], y[:150]), "test": (x[150:], y[150:])}
    kdbench.register_image_dataset("tiny-images", read=read, num_classes=4)
    splits = load_dataset("tiny-images", val_fraction=0.2)
    assert splits.spec.input_shape == (3, 10, 10) and splits.sizes() == {"train": 120, "val": 30, "test": 50}
    assert splits.train.x.dtype.is_floating_point and float(splits.test.x.max()) <= 1.0
    assert np.allclose(splits.test.x.numpy() * 255, x[150:])
    assert splits.info["deviations"] == []  # read() gave its own test split
    record = kdbench.run("student", dataset="tiny-images", epochs=1, latency=False)
    assert record["status"] == "ok"


def test_reader_mistakes_are_one_clear_line(scratch):
    kdbench.register_image_dataset("bad-labels", read=lambda: (np.zeros((10, 4, 4)), np.arange(10)), num_classes=3)
    with pytest.raises(KdbenchError, match=r"labels must lie in \[0, 3\)"):
        load_dataset("bad-labels")
    kdbench.register_image_dataset("bad-range", read=lambda: (np.full((10, 4, 4), 2.0), np.zeros(10, int)), num_classes=3)
    with pytest.raises(KdbenchError, match=r"values must lie in \[0, 1\]"):
        load_dataset("bad-range")
    for i, wrong in enumerate(("just a text", ["a", "b"], {"train": (["a"], [0])})):
        kdbench.register_text_dataset(f"bad-shape-{i}", read=lambda wrong=wrong: wrong, num_classes=2)
        with pytest.raises(KdbenchError, match=r"read\(\) must return \(x, y\) or \{'train'"):
            load_dataset(f"bad-shape-{i}")


# ---- family defaults -------------------------------------------------------------------------------------
def test_dataset_declared_default_teacher_and_recipe_are_used(scratch):
    recipe = TeacherRecipe(epochs=2, batch_size=16)
    kdbench.register_text_dataset("declared-texts", read=_texts, num_classes=2, default_teacher="text-student",
                                  teacher_recipe=recipe)
    r = resolve(RunSpec(method="kd", dataset="declared-texts"))
    assert r.spec.teacher == "text-student" and r.spec.teacher_recipe == recipe
    kdbench.register_text_dataset("plain-texts", read=_texts, num_classes=2)
    r = resolve(RunSpec(method="kd", dataset="plain-texts"))  # nothing declared: the modality's paper teacher
    assert r.spec.teacher == "paper-imdb-teacher" and r.spec.teacher_recipe == TeacherRecipe()
    builtin = resolve(RunSpec(method="kd", dataset="digits"))  # kdbench's own tables: unchanged
    assert builtin.spec.teacher == "paper-mnist-teacher" and builtin.spec.teacher_recipe == TeacherRecipe(epochs=30, batch_size=64)
    assert "data_options" not in builtin.canonical  # so no run key of a built-in dataset changed
    assert budget_rule("digits") == "mnist" and budget_rule("plain-texts") == RELATIVE


def test_relative_budget_has_the_papers_ratio():
    for table, budgets in PAPER_BUDGETS.items():
        for n, budget in budgets.items():  # the paper teacher itself gets exactly the paper's students
            assert relative_budget(PAPER_TEACHERS[table], n, table) == budget
    half = relative_budget(PAPER_TEACHERS["imdb"].__class__(1_105_000, 3_600_000), 1, "imdb")
    assert abs(half.params - 673_800 / 2) <= 1


def test_auto_student_is_smaller_than_the_teacher_of_a_new_dataset(scratch):
    """The issue's case: a new text dataset's auto student once took the IMDB budget (674k params) and
    came out larger than the user's 426k-parameter teacher. Sized relative to the teacher it is smaller."""
    kdbench.register_text_dataset("big-vocab", read=lambda: _texts(100), num_classes=2,
                                  options={"num_words": 8000, "maxlen": 60})
    record = kdbench.run("kd", dataset="big-vocab", epochs=1, teacher_recipe={"epochs": 1}, latency=False)
    m = record["metrics"]
    assert record["status"] == "ok" and m["params"] < 0.35 * m["teacher_params"]
    assert m["params"] < PAPER_BUDGETS["imdb"][1].params
    assert not any("not smaller" in w for w in record.get("warnings", []))


def test_student_not_smaller_than_its_teacher_is_warned_once(scratch):
    spec = RunSpec(method="kd", dataset="digits", teacher="plain2", student="plain2", epochs=1, max_train=200,
                   teacher_recipe=TeacherRecipe(epochs=1), device="cpu")
    with pytest.warns(StudentSizeWarning, match="not smaller than its teacher plain2") as caught:
        record = run_spec(spec, latency=False)
    assert len([w for w in caught if issubclass(w.category, StudentSizeWarning)]) == 1
    assert [w for w in record["warnings"] if "not smaller" in w] == [str(caught[0].message)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", StudentSizeWarning)
        smaller = run_spec(spec.replace(teacher="plain6"), latency=False)
    assert not any("not smaller" in w for w in smaller.get("warnings", []))


# ---- per-run dataset options -----------------------------------------------------------------------------
def test_data_option_changes_the_data_the_keys_and_an_unknown_one_is_refused(scratch, capsys, tmp_path: Path):
    from kdbench.teachers import _split_identity

    kdbench.register_text_dataset("opt-texts", read=_texts, num_classes=2)
    base = resolve(RunSpec(method="kd", dataset="opt-texts"))
    short = resolve(RunSpec(method="kd", dataset="opt-texts", data_options={"maxlen": 8}))
    same = resolve(RunSpec(method="kd", dataset="opt-texts", data_options={"maxlen": 500}))  # the default
    assert short.key != base.key and same.key == base.key and short.canonical["data_options"] == {"maxlen": 8}
    plain, cut = load_dataset("opt-texts"), load_dataset("opt-texts", maxlen=8)
    assert plain.spec.input_shape == (500,) and cut.spec.input_shape == (8,)
    assert _split_identity(plain) != _split_identity(cut)  # teacher and targets caches keyed apart
    assert "data_options" not in _split_identity(plain)
    with pytest.raises(KdbenchError, match=r"dataset 'opt-texts' has no option 'maxlne' \(options: maxlen, num_words\)"):
        resolve(RunSpec(method="kd", dataset="opt-texts", data_options={"maxlne": 8}))
    with pytest.raises(KdbenchError, match="dataset 'opt-texts': maxlen must be a positive integer"):
        resolve(RunSpec(method="kd", dataset="opt-texts", data_options={"maxlen": 0}))
    out = tmp_path / "runs"
    for flag in (["--data-option", "nope=1"], ["--data-option", "maxlen"]):
        for cmd in (["run", "--method", "kd"], ["sweep", "--method", "kd", "--seeds", "1"]):
            assert main([*cmd, "--dataset", "opt-texts", "--out", str(out), *flag]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith("kdbench: error:"), err
            assert "no option 'nope'" in err or "--data-option 'maxlen' is not of the form key=value" in err, err
    assert not out.exists()


def test_data_options_in_a_sweep_merge_and_reach_the_runs(scratch, tmp_path: Path):
    kdbench.register_text_dataset("sweep-texts", read=_texts, num_classes=2)
    config = tmp_path / "sweep.yaml"
    config.write_text("method: student\ndataset: sweep-texts\nseeds: 1\nepochs: 1\ndata_options: {maxlen: 16, num_words: 64}\n")
    res = kdbench.sweep(config=config, data_options="maxlen=10", out=tmp_path / "runs", latency=False, log=None)
    assert res.ok
    (record,) = res.records
    assert record["spec"]["data_options"] == {"maxlen": 10, "num_words": 64}
    assert record["data"]["data_options"] == {"maxlen": 10, "num_words": 64}


# ---- docs/extending.md ------------------------------------------------------------------------------------
def test_extending_doc_examples_run_as_written(scratch):
    """The dataset, model and teacher recipes of docs/extending.md, executed block after block as a reader would."""
    doc = (REPO / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) >= 4
    module = types.ModuleType("kdbench_extending_doc")  # a real module: dataclasses resolve annotations through it
    sys.modules[module.__name__] = module
    try:
        for block in blocks:
            exec(compile(block, "extending.md", "exec"), module.__dict__)
    finally:
        sys.modules.pop(module.__name__, None)
    assert "my-reviews" in DATASETS and "my-digits" in DATASETS and "my-mlp" in MODELS
    assert module.record["spec"]["student"] == "my-mlp"
    assert module.taught["teacher"]["dense"] == "3"  # the own-teacher recipe ran too
    assert "## Your own teacher" in doc and "kdbench run --help" in doc.split("## Your own teacher")[1]


def test_a_dataset_standing_in_for_a_paper_dataset_declares_it_in_its_entry(scratch):
    """What a built-in dataset declares (the paper dataset it replaces, why, the student epochs), a
    user's dataset declares the same way: the schedule and the report read the entry, not a name."""
    from kdbench.recipes import default_schedule
    from kdbench.report.data import dataset_rank, paper_dataset, substitutes_of
    kdbench.register_text_dataset("my-imdb", read=_texts, num_classes=2, stands_for="imdb",
                                  substitute="120 made-up reviews", student_epochs=3)
    assert paper_dataset("my-imdb") == ("imdb", "120 made-up reviews")
    assert paper_dataset("imdb-5k")[0] == "imdb" and paper_dataset("sst2") == (None, None)  # kdbench's own
    assert dataset_rank("mnist") < dataset_rank("fashion-mnist") < dataset_rank("cifar10-jpeg") < dataset_rank("my-imdb")
    assert substitutes_of(["my-imdb"]) == ["`my-imdb` stands in for the paper's `imdb`: 120 made-up reviews"]
    assert default_schedule(RunSpec(method="student", dataset="my-imdb", student="text-student")).epochs == 3
    assert default_schedule(RunSpec(method="student", dataset="sst2", student="text-student")).epochs == 10
    assert default_schedule(RunSpec(method="student", dataset="mnist", student="image-student")).epochs == 20
