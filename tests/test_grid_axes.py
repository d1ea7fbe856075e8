"""Any run field or method parameter as a grid axis: lists are crossed (sizes, teachers, parameters of
one method only), `--student-scale` sizes the budget students, unchanged specs keep their run keys,
and bad lists are one line and exit 2 before anything is written."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from kdbench.api import check_student_scales
from kdbench.cli import main
from kdbench.config import RunSpec
from kdbench.data import DataSpec
from kdbench.models import create_model
from kdbench.sweep import SweepSpec, plan, resolve_all

DIGITS = {"dataset": "digits", "seeds": 2}


def specs(**overrides):
    return SweepSpec.build(overrides=overrides).expand()


def keys(**overrides) -> list[str]:
    return [p.key for p in plan(SweepSpec.build(overrides=overrides), "/nonexistent")]


def by_method(runs) -> dict[str, list[RunSpec]]:
    out: dict[str, list[RunSpec]] = {}
    for r in runs:
        out.setdefault(r.method, []).append(r)
    return out


# ------------------------------------------------------------------------------------- crossing
def test_student_sizes_and_counts_cross_for_the_methods_that_take_them():
    runs = specs(method="kd,tcn", students="1,2", student_scale="0.5,1,2", **DIGITS)
    m = by_method(runs)
    assert len(m["kd"]) == 3 * 2  # kd trains one student: the n axis is not crossed
    assert len(m["tcn"]) == 2 * 3 * 2
    assert {(r.n_students, r.student_scale) for r in m["tcn"]} == {(n, s) for n in (1, 2) for s in (0.5, 1.0, 2.0)}
    got = keys(method="kd,tcn", students="1,2", student_scale="0.5,1,2", **DIGITS)
    assert len(got) == len(set(got)) == len(runs)


def test_teachers_cross_for_the_methods_that_have_one():
    m = by_method(specs(method="student,kd", teacher="plain2,plain4", student="plain2", **DIGITS))
    assert sorted((r.teacher, r.seed) for r in m["kd"]) == [(t, s) for t in ("plain2", "plain4") for s in (0, 1)]
    assert len(m["student"]) == 2  # no teacher: one run per seed, not one per teacher
    assert len(set(keys(method="student,kd", teacher="plain2,plain4", student="plain2", **DIGITS))) == 2 + 4


def test_a_parameter_list_reaches_only_the_methods_that_have_it():
    runs = specs(method="student,kd,takd", student="plain2", teacher="plain4",
                 params=["temperature=1,4", "alpha=0.5,0.9", "takd.assistants=[plain2],[plain4]"], **DIGITS)
    m = by_method(runs)
    assert [r.params for r in m["student"]] == [{}, {}]
    assert sorted((r.params["temperature"], r.params["alpha"]) for r in m["kd"]) == \
        sorted((t, a) for t in (1, 4) for a in (0.5, 0.9) for _ in (0, 1))
    assert sorted(str(r.params) for r in m["takd"]) == sorted(str({"assistants": [a]}) for a in ("plain2", "plain4")
                                                              for _ in (0, 1))  # not crossed with kd's lists


def test_a_list_parameter_keeps_its_list_meaning():
    # `assistants=plain6,plain4` is ONE chain of two assistants, as before; an axis of chains needs brackets
    one = specs(method="takd", student="plain2", teacher="plain10", params="assistants=plain6,plain4", seeds=1)
    assert [r.params for r in one] == [{"assistants": "plain6,plain4"}]
    axis = specs(method="takd", student="plain2", teacher="plain10", params="assistants=[plain8,plain4],[plain6]", seeds=1)
    assert [r.params["assistants"] for r in axis] == [["plain8", "plain4"], ["plain6"]]


def test_yaml_lists_give_the_grid_of_the_command_line(tmp_path):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text("method: [student, kd]\ndataset: digits\nstudent: plain2\nteacher: [plain2, plain4]\n"
                   "epochs: [1, 2]\nseeds: 2\nparams: {kd: {temperature: [1, 4]}}\n")
    from_yaml = [p.key for p in plan(SweepSpec.build(config=cfg), tmp_path)]
    same = keys(method="student,kd", dataset="digits", student="plain2", teacher="plain2,plain4", epochs="1,2",
                seeds=2, params="kd.temperature=1,4")
    assert from_yaml == same and len(same) == 2 * 2 + 2 * 2 * 2 * 2


def test_dry_run_shows_the_grid_and_its_size(tmp_path, capsys):
    out = tmp_path / "out"
    argv = "sweep --method student,kd --dataset digits --student plain2 --teacher plain2,plain4 --epochs 1,2 --seeds 2 " \
           f"--param temperature=1,4 --dry-run --out {out}"
    assert main(shlex.split(argv)) == 0
    text = capsys.readouterr().out
    assert "grid method [student, kd] x teacher [plain2, plain4] x epochs [1, 2] x param temperature [1, 4] " \
           "x seeds [0, 1] -> 20 runs" in text
    assert "sweep: 20 runs" in text and "20 to run" in text and not out.exists()
    header = next(line for line in text.splitlines() if line.startswith("| run_key"))
    assert {"teacher", "params"} <= {c.strip() for c in header.split("|")}  # the varying axes are columns


# ----------------------------------------------------------------------------- run keys unchanged
def test_scale_one_and_late_defaults_keep_run_keys():
    assert "student_scale" not in RunSpec(method="kd").to_dict()
    assert RunSpec(method="kd", student_scale=2).student_scale == 2.0  # 2 and 2.0: one spec
    base = dict(method="tcn", students="1,2", dataset="digits", seeds=1)
    assert keys(**base, student_scale=1) == keys(**base) == keys(**base, student_scale="1.0")
    assert set(keys(**base, student_scale=0.5)).isdisjoint(keys(**base))


@pytest.mark.parametrize("preset,results", [("ci-mnist", "results/baseline/ci-mnist"),
                                            ("tcn-table3-mnist,tcn-table3-mnist-gan-cpu", "results/tcn-table3-mnist"),
                                            ("tcn-table3-fashion-mnist,tcn-table3-fashion-mnist-gan-cpu",
                                             "results/tcn-table3-fashion-mnist"),
                                            ("kdgan-table1-mnist-pilot", "results/kdgan-table1-mnist-pilot"),
                                            ("kdgan-table1-mnist", "results/kdgan-table1-mnist"),
                                            ("tcn-table3-imdb", "results/tcn-table3-imdb"),
                                            ("tcn-sst2", "results/tcn-sst2"),
                                            ("takd-size-teacher,takd-size-ta", "results/takd-size"),
                                            ("timm-cifar10", "results/timm-cifar10")])
def test_committed_records_are_still_in_their_presets_dry_run(preset, results, tmp_path, capsys):
    committed = {p.stem for p in (Path(__file__).parent.parent / results).glob("*.json") if p.name != "summary.json"}
    if not committed:
        pytest.skip(f"no committed records in {results}")
    planned = set()
    for name in preset.split(","):  # a folder may hold the records of more than one preset
        assert main(["sweep", "--preset", name, "--dry-run", "--out", str(tmp_path / "out")]) == 0
        planned |= set(re.findall(r"\| ([a-z0-9-]+-s\d+-[0-9a-f]{16}) ", capsys.readouterr().out))
    assert committed <= planned, sorted(committed - planned)[:3]


# ----------------------------------------------------------------------------- student sizes, built
def test_student_scale_builds_and_records_the_scaled_student(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KDBENCH_PROGRESS", "0")
    out = tmp_path / "runs"
    base = ["run", "--method", "student", "--dataset", "digits", "--epochs", "1", "--max-train", "200", "--no-latency",
            "--device", "cpu", "--out", str(out)]
    assert main(base) == 0 and main([*base, "--student-scale", "0.5"]) == 0
    recs = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    by_scale = {r["spec"].get("student_scale", 1.0): r["metrics"] for r in recs}
    assert set(by_scale) == {1.0, 0.5}
    ratio = by_scale[0.5]["params"] / by_scale[1.0]["params"]
    assert 0.45 <= ratio <= 0.55 and by_scale[0.5]["macs"] < by_scale[1.0]["macs"]  # params and MACs as built


# ----------------------------------------------------------------------------------- bad input
def _yaml(tmp_path: Path, text: str) -> str:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return str(p)


BAD = [
    ("sweep --method kd --device cpu,cuda", r"field 'device': cannot be a grid axis"),
    ("sweep --method kd --amp bf16,fp16", r"field 'amp': cannot be a grid axis"),
    ("sweep --config {yaml}", r"field 'teacher_normalize': cannot be a grid axis"),
    ("run --method kd --epochs 5,10", r"--epochs: takes one value in `kdbench run`"),
    ("sweep --method kd --epochs 5,,10", r"field 'epochs': .*empty item"),
    ("sweep --method kd --param temperature=1,,4", r"parameter 'temperature' .*empty item"),
    ("sweep --method kd --teacher plain2,", r"field 'teacher': .*empty item"),
    ("sweep --method kd --student plain2,plain2", r"field 'student': lists 'plain2' twice"),
    ("sweep --method kd --param temperature=4,4.0", r"parameter 'temperature' lists 4.0 twice"),
    ("sweep --method kd --student-scale 1,1.0", r"field 'student_scale': lists 1.0 twice"),
    ("sweep --method student,kd --param temprature=1,4", r"no method of this sweep .* has parameter 'temprature'"),
    ("sweep --method student --param temperature=1,4", r"method 'student' has no parameter 'temperature'"),
    ("sweep --method takd --param assistants=[plain4],plain6", r"write each value of the list parameter in brackets"),
    ("sweep --method kd --student-scale 0", r"field 'student_scale': must be > 0, got 0"),
    ("sweep --method kd --student-scale 0.5,-1", r"field 'student_scale': item -1.0 must be > 0"),
    ("run --method kd --student-scale 0", r"--student-scale must be > 0, got 0"),
    ("sweep --method kd --student plain2 --student-scale 0.5", r"student 'plain2' and student_scale .* contradict"),
    ("run --method kd --student plain2 --student-scale 0.5", r"student_scale 0.5 scales the auto .* explicit"),
    ("sweep --method kd --student-scale 0.0001,1", r"no image-student for \(1, 8, 8\) fits 9 params .*0.0001 x the paper budget"),
    ("run --method tcn --students 2 --student-scale 0.0001", r"no image-student .* try another --student-scale"),
    ("sweep --method kd --seeds 101 --epochs " + ",".join(map(str, range(1, 101))),
     r"the grid has 10,100 runs, more than the 10,000 .* --yes"),
]


@pytest.mark.parametrize("argv,pattern", BAD, ids=[a for a, _ in BAD])
def test_bad_lists_are_one_line_exit_2_nothing_written(argv, pattern, tmp_path, capsys):
    yaml = _yaml(tmp_path, "method: kd\ndataset: digits\nteacher_normalize: [imagenet, cifar10]\n")
    out = tmp_path / "out"
    args = [*shlex.split(argv.format(yaml=yaml)), "--out", str(out)]
    if "--config" not in args:
        args += ["--dataset", "digits"]
    rc = main(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("kdbench: error: "), lines
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists()


def test_yes_lifts_the_grid_limit(tmp_path, capsys, monkeypatch):
    spec = SweepSpec.build(overrides={"method": "kd", "seeds": 101, "epochs": list(range(1, 101)), "dataset": "digits"})
    assert spec.size() == 10_100
    assert len(spec.expand(limit=None)) == 10_100  # built, not resolved: the limit is a guard, not a cap
    monkeypatch.setattr("kdbench.sweep.MAX_RUNS", 5)  # the CLI path, on a grid small enough to plan
    argv = ["sweep", "--method", "kd", "--dataset", "digits", "--seeds", "6", "--dry-run", "--out", str(tmp_path / "o")]
    assert main(argv) == 2 and "the grid has 6 runs, more than the 5" in capsys.readouterr().err
    assert main([*argv, "--yes"]) == 0 and "sweep: 6 runs" in capsys.readouterr().out


# ----------------------------------------------------------------------------------- TAKD presets
def test_takd_size_presets_expand_to_their_grids():
    teacher = plan(SweepSpec.build(preset="takd-size-teacher"), "/nonexistent")
    cells = sorted({(p.spec.method, p.spec.teacher) for p in teacher})
    assert cells == [("kd", t) for t in ("plain10", "plain4", "plain6", "plain8")] + [("student", "none")]
    assert len(teacher) == (4 + 1) * 3 and {p.spec.seed for p in teacher} == {0, 1, 2}
    assert {(p.spec.student, p.spec.dataset, p.spec.max_train) for p in teacher} == {("plain2", "cifar10-jpeg", 10000)}

    ta = plan(SweepSpec.build(preset="takd-size-ta"), "/nonexistent")
    takd = [p for p in ta if p.spec.method == "takd"]
    assert sorted({tuple(p.spec.params["assistants"]) for p in takd}) == [("plain4",), ("plain6",), ("plain8",)]
    assert len(takd) == 3 * 3 and {p.spec.teacher for p in takd} == {"plain10"}
    assert sorted({p.spec.method for p in ta}) == ["kd", "student", "takd"] and len(ta) == 3 + 3 + 9
    # one recipe: the no-KD and KD-from-plain10 runs of the two presets are the same runs
    shared = {p.key for p in ta if p.spec.method != "takd"}
    assert shared <= {p.key for p in teacher}


def shared_weights_stand_in(tmp_path, monkeypatch, arch: str, file: str) -> None:
    """A zoo `arch` state dict where the shared pretrained weights would be (planning hashes the file)."""
    weights = tmp_path / "cifar10-resnet-akamaster" / file
    weights.parent.mkdir(exist_ok=True)
    torch.save(create_model(arch, DataSpec((3, 32, 32), 10)).state_dict(), weights)
    monkeypatch.setenv("KDBENCH_WEIGHTS", str(tmp_path))


def test_takd_table1_cpu_preset_holds_both_rows_and_shares_the_size_study_runs(monkeypatch, tmp_path):
    shared_weights_stand_in(tmp_path, monkeypatch, "resnet56", "resnet56-4bfd9763.th")
    table = plan(SweepSpec.build(preset="takd-table1-cpu"), "/nonexistent")
    assert len(table) == 2 * 3 * 3 and {p.spec.max_train for p in table} == {10000}
    rows = {(p.spec.student, p.spec.epochs, tuple(p.spec.params.get("assistants", ()))) for p in table if p.spec.method == "takd"}
    assert rows == {("plain2", 30, ("plain4",)), ("resnet8b", 40, ("resnet14b",))}
    assert {p.spec.teacher for p in table if p.spec.student == "resnet8b" and p.spec.method != "student"} == {
        "file:resnet56=$KDBENCH_WEIGHTS/cifar10-resnet-akamaster/resnet56-4bfd9763.th"}  # portable: keys hold no local path
    plain = {p.key for p in table if p.spec.student == "plain2"}
    assert plain <= {p.key for p in plan(SweepSpec.build(preset="takd-size-ta"), "/nonexistent")}

def test_ft_cifar10_cpu_preset_crosses_three_methods_over_one_pretrained_teacher(monkeypatch, tmp_path):
    shared_weights_stand_in(tmp_path, monkeypatch, "resnet20", "resnet20-12fca82f.th")
    table = plan(SweepSpec.build(preset="ft-cifar10-cpu"), "/nonexistent")
    assert sorted((p.spec.method, p.spec.seed) for p in table) == [(m, s) for m in ("ft", "kd", "student") for s in range(3)]
    assert {(p.spec.student, p.spec.epochs, p.spec.max_train) for p in table} == {("resnet8", 40, 10000)}
    assert {p.spec.teacher for p in table if p.spec.method != "student"} == {
        "file:resnet20=$KDBENCH_WEIGHTS/cifar10-resnet-akamaster/resnet20-12fca82f.th"}

def test_tcn_table3_cifar10_cpu_preset_runs_every_cell_on_three_seeds(monkeypatch, tmp_path):
    shared_weights_stand_in(tmp_path, monkeypatch, "resnet56", "resnet56-4bfd9763.th")
    table = plan(SweepSpec.build(preset="tcn-table3-cifar10-cpu"), "/nonexistent")
    cells = sorted((p.spec.method, p.spec.mode or "", p.spec.params.get("gan_variant", ""), p.spec.n_students, p.spec.seed)
                   for p in table if p.spec.method == "tcn" and p.spec.mode == "gan")
    assert cells == ([("tcn", "gan", "code-faithful", 4, s) for s in range(3)]
                     + [("tcn", "gan", "paper-intent", n, s) for n in (1, 2, 4, 8) for s in range(3)])
    ff = [p for p in table if p.spec.mode == "ff"]
    assert sorted({p.spec.n_students for p in ff}) == [1, 2, 4, 8] and {p.spec.seed for p in ff} == {0, 1, 2}
    assert len(table) == 6 + 12 + 15 and {p.spec.val_fraction for p in table} == {0.2}
    assert {p.spec.epochs for p in table if p.spec.mode == "gan"} == {10}

def test_an_auto_student_its_data_options_make_unbuildable_is_refused_before_any_training(tmp_path, capsys, monkeypatch):
    """64-token SST-2 makes the relative budget of 8 students 17k parameters, which no text student
    with a 5,000-word embedding meets: one line, exit 2, no teacher trained (and the preset asks only
    for the cells that can be built)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KDBENCH_CACHE", str(cache))
    args = ["sweep", "--method", "tcn", "--students", "8", "--dataset", "sst2", "--data-option", "maxlen=64",
            "--seeds", "1", "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sst2 {'maxlen': 64}, 8 student(s): no text-student" in err[0] and "Traceback" not in err[0]
    assert not (cache / "teachers").exists() and not list((tmp_path / "out").glob("*.json"))
    check_student_scales(resolve_all(SweepSpec.build(preset="tcn-sst2").expand()), None)  # raises on an unbuildable cell
