"""Sweeps: grid expansion, run keys, YAML configs and presets, bad input, failures, determinism."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_sweep import TEST_METHODS, comparable, quiet_env, records, test_methods  # noqa: F401  (fixtures)

from kdbench import api, store
from kdbench.cli import main
from kdbench.sweep import PRESET_DIR, SweepSpec, list_presets, plan

# tiny and fast: 8x8 digits (shipped with scikit-learn), 300 training images, one epoch, plain2
# students and a plain2 teacher trained for one epoch (cached once per test session), one torch
# thread per run (a shared, busy CPU makes several threads per run much slower)
FAST = {"dataset": "digits", "epochs": 1, "max_train": 300, "teacher": "plain2", "teacher_epochs": 1, "student": "plain2",
        "device": "cpu"}
FAST_ARGS = ["--dataset", "digits", "--epochs", "1", "--max-train", "300", "--teacher", "plain2",
             "--teacher-epochs", "1", "--student", "plain2", "--no-latency", "--threads", "1"]


def keys(**overrides) -> list[str]:
    return [p.key for p in plan(SweepSpec.build(overrides=overrides), "/nonexistent")]


# --------------------------------------------------------------------------------- grid expansion
def test_grid_follows_each_methods_declaration():
    spec = SweepSpec.build(overrides={"method": "student,kd,tcn", "students": "1,2,4,8", "mode": "ff,gan",
                                      "seeds": "3", "dataset": "digits"})
    runs = spec.expand()
    by = {m: [r for r in runs if r.method == m] for m in ("student", "kd", "tcn")}
    assert len(runs) == 3 + 3 + 4 * 2 * 3
    for m in ("student", "kd"):  # no modes, one student: the grid's modes and n are ignored
        assert {(r.mode, r.n_students) for r in by[m]} == {(None, 1)}
        assert sorted(r.seed for r in by[m]) == [0, 1, 2]
    assert {(r.mode, r.n_students) for r in by["tcn"]} == {(m, n) for m in ("ff", "gan") for n in (1, 2, 4, 8)}
    assert all(r.dataset == "digits" for r in runs)
    planned = plan(spec, "/nonexistent")
    assert len({p.key for p in planned}) == 30 and all(p.status == "todo" for p in planned)


def test_grid_defaults_and_explicit_seeds():
    runs = SweepSpec.build(overrides={"method": "tcn"}).expand()
    assert [(r.dataset, r.mode, r.n_students, r.seed) for r in runs] == [("mnist", "ff", 1, s) for s in (0, 1, 2)]
    runs = SweepSpec.build(overrides={"method": ["kd"], "seeds": "0,5,7"}).expand()
    assert [r.seed for r in runs] == [0, 5, 7]
    runs = SweepSpec.build(overrides={"method": "kd", "seeds": [5]}).expand()
    assert [r.seed for r in runs] == [5]


def test_params_reach_the_methods_that_declare_them():
    runs = SweepSpec.build(overrides={"method": "student,kd", "seeds": 1, "params": ["temperature=2,kd.alpha=0.5"]}).expand()
    assert {r.method: r.params for r in runs} == {"student": {}, "kd": {"temperature": 2, "alpha": 0.5}}


# -------------------------------------------------------------------------------------- run keys
def test_same_spec_same_key_any_change_new_key():
    base = {"method": "kd", "seeds": 1, **FAST}
    k0 = keys(**base)
    assert k0 == keys(**base) and len(k0) == 1
    changes = [("dataset", "mnist-5k"), ("seeds", [1]), ("epochs", 2), ("batch_size", 32), ("lr", 0.05),
               ("params", {"temperature": 2.0}), ("params", {"alpha": 0.5}), ("teacher", "plain4"),
               ("teacher_epochs", 2), ("student", "plain4"), ("max_train", 299), ("val_fraction", 0.2),
               ("split_seed", 1)]
    seen = {k0[0]}
    for name, value in changes:
        k = keys(**{**base, name: value})
        assert k[0] not in seen, f"changing {name} did not change the key"
        seen.add(k[0])
    tcn = {"method": "tcn", "seeds": 1, "dataset": "digits", "teacher": "plain2"}
    variants = [keys(**tcn, students=[2]), keys(**tcn, students=[4]), keys(**tcn, students=[4], mode=["gan"]),
                keys(**tcn, students=[8])]
    assert len({v[0] for v in variants}) == 4
    assert keys(**tcn, students=[2]) == keys(**tcn, students="2")


# ------------------------------------------------------------------------------- YAML and presets
def test_yaml_config_equals_options_and_options_override(tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("method: [student, kd]\ndataset: digits\nteacher: plain2\nseeds: [0, 5]\n"
                   "epochs: 3\nparams: {kd: {temperature: 2}}\nout: somewhere\n")
    from_yaml = SweepSpec.build(config=cfg)
    assert from_yaml.out == "somewhere"
    same = SweepSpec.build(overrides={"method": "student,kd", "dataset": "digits", "teacher": "plain2",
                                      "seeds": "0,5", "epochs": "3", "params": "kd.temperature=2"})
    assert [p.key for p in plan(from_yaml, tmp_path)] == [p.key for p in plan(same, tmp_path)]
    over = SweepSpec.build(config=cfg, overrides={"epochs": 1, "params": {"alpha": 0.5}}).expand()
    assert {r.epochs for r in over} == {1}
    assert [r.params for r in over if r.method == "kd"] == [{"temperature": 2, "alpha": 0.5}] * 2


def test_groups_inherit_and_student_overrides_budget(tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text("method: kd\ndataset: digits\nseeds: 1\nbudget: repo\n"
                   "groups:\n  - teacher: plain4\n  - teacher: plain2\n    student: plain2\n")
    runs = SweepSpec.build(config=cfg).expand()
    assert [(r.teacher, r.student, r.budget) for r in runs] == [("plain4", "auto", "repo"), ("plain2", "plain2", "paper")]
    runs = SweepSpec.build(config=cfg, overrides={"student": "image-student"}).expand()
    assert {(r.student, r.budget) for r in runs} == {("image-student", "paper")}


def test_presets_ship_and_parse(capsys):
    names = {row["name"] for row in list_presets()}
    from kdbench.cli import main

    assert main(["list", "presets"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in names)
    assert {"tcn-table3-mnist", "tcn-table3-fashion-mnist", "tcn-table3-cifar10", "tcn-table3-imdb", "takd-table1",
            "tcn-table7-imagenet"} <= names
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        spec = SweepSpec.build(preset=path.stem)
        assert spec.groups and all(g.get("method") for g in spec.groups), path.name
    mnist = plan(SweepSpec.build(preset="tcn-table3-mnist"), "/nonexistent")
    assert len(mnist) == 3 + 3 + 4 * 2 * 3
    assert {p.spec.val_fraction for p in mnist} == {0.2}  # one protocol, so one teacher for all methods
    takd = SweepSpec.build(preset="takd-table1").expand()
    assert {(r.teacher, r.student) for r in takd} == {("plain10", "plain2"), ("resnet110b", "resnet8b")}  # option B, as TAKD
    assert all(r.params == ({"assistants": ["plain4"]} if r.student == "plain2" else {"assistants": ["resnet14b"]})
               for r in takd if r.method == "takd")
    assert all(r.params == {} for r in takd if r.method != "takd")


def test_demo_preset_compares_student_kd_and_tcn_on_shipped_data():
    runs = plan(SweepSpec.build(preset="demo"), "/nonexistent")
    cells = {(p.spec.method, p.spec.mode if p.spec.method == "tcn" else None,
              p.spec.n_students) for p in runs}
    assert cells == {("student", None, 1), ("kd", None, 1)} | {("tcn", "ff", n) for n in (1, 2, 4, 8)}
    assert len(runs) == 6 * 3 and {p.spec.seed for p in runs} == {0, 1, 2}
    assert {p.spec.dataset for p in runs} == {"digits"}  # ships with scikit-learn: nothing to download


@pytest.mark.parametrize("preset,dataset", [("tcn-table3-imdb", "imdb-5k"), ("tcn-sst2", "sst2")])
def test_text_presets_expand_to_the_imdb_recipe_grid(preset, dataset):
    """TCN Table 3's IMDB grid: student, kd, ff n = 1, 2, 4, 8 (10 epochs), gan in both variants (20
    epochs, the paper's IMDB recipe), 3 seeds; SST-2 the same with 64-token sequences."""
    runs = plan(SweepSpec.build(preset=preset), "/nonexistent")
    ns = (1, 2, 4, 8) if dataset == "imdb-5k" else (1, 2)  # SST-2's 64 tokens leave no n = 4, 8 student
    cells = {(p.spec.method, p.spec.mode if p.spec.method == "tcn" else None, p.spec.n_students,
              p.spec.params.get("gan_variant") if p.spec.mode == "gan" else None, p.resolved.schedule.epochs) for p in runs}
    assert cells == ({("student", None, 1, None, 10), ("kd", None, 1, None, 10)}
                     | {("tcn", "ff", n, None, 10) for n in ns}
                     | {("tcn", "gan", n, v, 20) for n in ns for v in ("code-faithful", "paper-intent")})
    assert len(runs) == (2 + 3 * len(ns)) * 3 and {p.spec.dataset for p in runs} == {dataset} and {p.spec.val_fraction for p in runs} == {0.2}
    assert {tuple(sorted(p.spec.data_options.items())) for p in runs} == ({(("maxlen", 64),)} if dataset == "sst2" else {()})


def test_kdgan_table1_preset_expands_to_the_papers_grid():
    runs = plan(SweepSpec.build(preset="kdgan-table1-mnist"), "/nonexistent")
    cells = {(p.spec.max_train, p.spec.method, p.spec.params.get("variant")) for p in runs}
    assert len(runs) == 3 * 4 * 3 and {p.spec.seed for p in runs} == {0, 1, 2}
    assert cells == {(n, m, v) for n in (100, 1000, 10000)
                     for m, v in (("student", None), ("kd", None), ("kdgan", "frozen-teacher"), ("kdgan", "three-player"))}
    assert {p.spec.student for p in runs} == {"kdgan-mlp"}
    assert {p.spec.teacher for p in runs if p.spec.method != "student"} == {"kdgan-lenet"}
    # epochs from the pilot's curves: more passes where an epoch is one or a few Adam steps
    assert {(p.spec.max_train, p.spec.epochs) for p in runs} == {(100, 200), (1000, 60), (10000, 20)}
    pilot = plan(SweepSpec.build(preset="kdgan-table1-mnist-pilot"), "/nonexistent")
    assert {p.spec.epochs for p in pilot} == {20}
    assert {p.key for p in runs if p.spec.max_train == 10000} <= {p.key for p in pilot}  # converged: shared


# ----------------------------------------------------------------------------------- bad input
def _bad_yaml(tmp_path: Path, text: str) -> str:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


BAD = [
    (["--method", "tcn", "--students", "1,,2"], "empty item"),
    (["--method", "tcn", "--students", "a"], "'a' is not an integer"),
    (["--method", "tcn", "--students", "-1"], "must be >= 1"),
    (["--method", "tcn", "--students", "2,2"], "twice"),
    (["--method", "kd,nosuch"], "unknown method 'nosuch'"),
    (["--method", "kd", "--student", "plain2", "--budget", "repo"], "contradict"),
    (["--preset", "tcn-table3-mnist", "--config", "{yaml_ok}"], "contradict"),
    (["--preset", "tcn-table3-mnst"], "did you mean 'tcn-table3-mnist'"),
    (["--config", "{missing}"], "cannot read sweep config"),
    (["--config", "{yaml_syntax}"], "not valid YAML"),
    (["--config", "{yaml_field}"], "field 'students'"),
    (["--config", "{yaml_unknown}"], "did you mean 'students'"),
    (["--config", "{yaml_list}"], "must be a mapping"),
    (["--method", "kd", "--out", "{a_file}"], "is not a directory"),
    (["--method", "kd", "--seeds", "0"], "must be >= 1"),
    (["--method", "tcn", "--mode", "bogus"], "no mode 'bogus'"),
    (["--method", "kd", "--param", "temprature=2"], "no parameter 'temprature'"),
    (["--method", "kd", "--workers", "0"], "--workers must be"),
    (["--method", "kd", "--executor", "dask"], "unknown executor 'dask'"),
    (["--method", "kd", "--address", "1.2.3.4:6379"], "--address is for --executor ray"),
    (["--seeds", "2"], "no method given"),
    (["--method", "student", "--dataset", "cifar10"], "dataset 'cifar10' not found"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_nothing_written(argv, message, tmp_path, capsys):
    subs = {"yaml_ok": _bad_yaml(tmp_path, "method: kd\n"), "missing": str(tmp_path / "nope.yaml")}
    if "{yaml_syntax}" in argv:
        subs["yaml_syntax"] = _bad_yaml(tmp_path, "method: [kd\nseeds: 2\n")
    if "{yaml_field}" in argv:
        subs["yaml_field"] = _bad_yaml(tmp_path, "method: tcn\nstudents: [1, x]\n")
    if "{yaml_unknown}" in argv:
        subs["yaml_unknown"] = _bad_yaml(tmp_path, "method: tcn\nstudnets: [1, 2]\n")
    if "{yaml_list}" in argv:
        subs["yaml_list"] = _bad_yaml(tmp_path, "- method: kd\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    subs["a_file"] = str(a_file)
    argv = [a.format(**subs) if "{" in a else a for a in argv]
    out = tmp_path / "out"
    if "--out" not in argv:
        argv += ["--out", str(out)]
    own_data = any(a in argv for a in ("--config", "--preset", "--dataset"))
    rc = main(["sweep", *argv] if own_data else ["sweep", *argv, "--dataset", "digits"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdbench: error:"), err
    assert message in lines[0]
    assert not out.exists()


# ---------------------------------------------------------------------- running: failures, dry run
def test_failing_run_is_recorded_and_the_sweep_goes_on(test_methods, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["sweep", "--method", "student,sweeptest-raise", "--seeds", "2", *FAST_ARGS, "--out", str(out)]
    assert main(argv) == 1
    text = capsys.readouterr().out
    recs = records(out)
    status = sorted((r["spec"]["method"], r["status"]) for r in recs.values())
    assert status == [("student", "ok"), ("student", "ok"), ("sweeptest-raise", "failed"), ("sweeptest-raise", "failed")]
    failed = [r for r in recs.values() if r["status"] == "failed"]
    assert all(r["error"]["type"] == "RuntimeError" and "deliberate" in r["error"]["message"] for r in failed)
    assert "FAILED RuntimeError" in text and "2 failed" in text
    assert all(not store.is_done(out, r["run_key"]) for r in failed)
    # rerun: the ok runs are skipped (untouched), the failed ones are redone
    mtimes = {k: store.record_path(out, k).stat().st_mtime_ns for k, r in recs.items() if r["status"] == "ok"}
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert "2 run now, 2 already done" in text
    assert {k: store.record_path(out, k).stat().st_mtime_ns for k in mtimes} == mtimes


def test_dry_run_lists_runs_and_what_is_done(tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["sweep", "--method", "student", "--seeds", "2", *FAST_ARGS, "--out", str(out)]
    assert main([*argv, "--dry-run"]) == 0
    assert "0 done" in capsys.readouterr().out and not out.exists()
    assert main([*argv[:4], "1", *argv[5:]]) == 0  # seed 0 only
    capsys.readouterr()
    assert main([*argv, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "1 done" in text and "1 to run" in text and "student-digits-s1-" in text


# --------------------------------------------------------------------------- API and determinism
def test_api_sweep_is_deterministic_and_loads(tmp_path):
    """The same specs run twice in this process give bit-identical metrics (timings aside)."""
    kw = dict(seeds=1, latency=False, log=None, threads=1, **FAST)
    first = api.sweep(["student", "kd"], out=tmp_path / "a", **kw)
    second = api.sweep("student,kd", out=tmp_path / "b", **kw)
    assert first.ok and second.ok and first.ran == 2 and len(first.records) == 2
    assert [comparable(r) for r in first.records] == [comparable(r) for r in second.records]
    assert all(isinstance(r["metrics"]["test_acc_valbest"], float) for r in first.records)
    df = api.load_results(tmp_path / "a")
    assert sorted(df["run_key"]) == sorted(first.df["run_key"]) and len(df) == 2
    summary = first.summary()
    assert list(summary["method"]) == ["student", "kd"] and list(summary["n_seeds"]) == [1, 1]
    again = api.sweep(["student", "kd"], out=tmp_path / "a", **kw)  # resume: nothing left to do
    assert again.ran == 0 and again.skipped == 2 and again.ok


def test_api_rejects_unknown_fields():
    from kdbench.errors import KdbenchError

    with pytest.raises(KdbenchError, match="did you mean 'students'"):
        api.sweep("tcn", studnets=[1, 2], dry_run=True)


def test_out_defaults_to_the_preset_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = api.sweep(preset="tcn-table3-mnist", dry_run=True, log=None)
    assert res.out_dir == Path("results/tcn-table3-mnist") and not res.out_dir.exists()
    assert os.listdir(tmp_path) == []


def test_kdbench_sweep_is_both_the_api_and_the_module():
    import kdbench
    import kdbench.sweep as module

    res = kdbench.sweep("kd", dataset="digits", seeds=2, dry_run=True, log=None)
    assert [p.status for p in res.planned] == ["todo", "todo"]
    assert module("kd", dataset="digits", seeds=2, dry_run=True, log=None).planned == res.planned
    assert module.SweepSpec is SweepSpec


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_gan_cpu_presets_expand_to_the_stated_grids_and_share_the_ff_cells_protocol(dataset):
    """The GAN cells of TCN Table 3 at a CPU recipe: paper-intent n = 1, 2, 4, 8 at 10 epochs per student,
    2 seeds; on MNIST also the decisive n = 4 cell at the paper's 35 epochs in both variants. Same split,
    students and teacher as the ff preset, so its records join that preset's folder and its KD cell."""
    runs = plan(SweepSpec.build(preset=f"tcn-table3-{dataset}-gan-cpu"), "/nonexistent")
    cells = {(p.spec.n_students, p.spec.params.get("gan_variant"), p.resolved.schedule.epochs) for p in runs}
    expected = {(n, "paper-intent", 10) for n in (1, 2, 4, 8)}
    if dataset == "mnist":
        expected |= {(4, v, 35) for v in ("code-faithful", "paper-intent")}
    assert cells == expected and len(runs) == 2 * len(expected) and {p.spec.seed for p in runs} == {0, 1}
    assert {(p.spec.method, p.spec.mode) for p in runs} == {("tcn", "gan")}
    ff = plan(SweepSpec.build(preset=f"tcn-table3-{dataset}"), "/nonexistent")
    assert ({(p.spec.dataset, p.spec.val_fraction, p.spec.budget, p.resolved.spec.teacher) for p in runs}
            == {(p.spec.dataset, p.spec.val_fraction, p.spec.budget, p.resolved.spec.teacher) for p in ff if p.spec.method == "tcn"})


def test_cli_lines_reach_a_redirected_log_as_printed():
    """`nohup kdbench sweep ... > log`: stdout is a file, not a terminal, and must still be line-buffered,
    or a sweep's per-run lines wait in the buffer until it exits."""
    code = "import sys; from kdbench.cli import main; main(['list', 'presets']); sys.stderr.write(repr(sys.stdout.line_buffering))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stderr.endswith("True")
