"""Bad input catalogue (docs/design.md §7): every case gives exactly one line on stderr starting with
`kdbench: error:`, exit code 2, no traceback, and leaves nothing behind (no --out folder, no cache
entry). The cases run in-process through `kdbench.cli.main` (fast); a few run as real processes to
prove there is no traceback at the process level either."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kdbench.cli import main

REPO = Path(__file__).resolve().parents[1]
# a valid quick run; each case breaks one thing
OK = "--dataset digits --max-train 60 --epochs 1 --teacher plain2 --teacher-epochs 1 --no-latency"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: asking for it is not an error")


def _unreadable(files: Path) -> Path:
    """A config the process cannot read: chmod 000 where that bites (not as root), else a directory
    given where a file is expected (which no user can read as a file)."""
    p = files / "locked.yaml"
    p.write_text("method: kd\n")
    p.chmod(0)
    try:
        p.read_text()
    except PermissionError:
        return p
    p.chmod(0o600)
    d = files / "a-directory.yaml"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture
def files(tmp_path: Path, monkeypatch) -> Path:
    """Bad files of every kind, and an environment where no data root holds MNIST."""
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KDBENCH_PROGRESS", "0")
    monkeypatch.delenv("KDBENCH_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "files"
    f.mkdir()
    (f / "afile").write_text("not a directory\n")
    (f / "empty.yaml").write_text("")
    (f / "empty.json").write_text("")
    (f / "bad.yaml").write_text("method: [kd, tcn\ndataset: digits\n")
    (f / "list.yaml").write_text("- kd\n- tcn\n")
    (f / "wrongtype.yaml").write_text(yaml.safe_dump({"method": "kd", "dataset": "digits", "epochs": "many"}))
    (f / "wrongtype2.yaml").write_text(yaml.safe_dump({"method": "tcn", "dataset": "digits", "students": {"a": 1}}))
    (f / "unknown.yaml").write_text(yaml.safe_dump({"method": "kd", "datset": "digits"}))
    (f / "notjson.json").write_text("{'spec': not json")
    rec = {"run_key": "x", "status": "ok", "spec": {"method": "kd", "dataset": "digits"}}
    (f / "list.json").write_text(json.dumps([rec]))
    (f / "badtype.json").write_text(json.dumps({**rec, "spec": {**rec["spec"], "epochs": "abc"}}))
    (f / "badparams.json").write_text(json.dumps({**rec, "spec": {**rec["spec"], "params": [1, 2]}}))
    (f / "unknownfield.json").write_text(json.dumps({**rec, "spec": {**rec["spec"], "frobnicate": 1}}))
    (f / "badrecipe.json").write_text(json.dumps({**rec, "spec": {**rec["spec"], "teacher_recipe": {"epochs": 1, "warp": 9}}}))
    (f / "good.json").write_text(json.dumps(rec))
    (f / "text.pt").write_text("hello, I am not a checkpoint\n")
    (f / "empty.pt").write_bytes(b"")
    (f / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")
    (f / "unreadable").symlink_to(_unreadable(f))
    (f / "loop").symlink_to(f / "loop")  # a symlink loop
    (f / "random.pt").write_bytes(bytes(range(7, 256)) * 16)  # no pickle of any object: just bytes
    (f / "latin1.yaml").write_bytes("method: kd\ndataset: digits\nout: r\xe9sultats\n".encode("latin-1"))
    (f / "dupkey.yaml").write_text("method: kd\ndataset: digits\nmethod: tcn\n")
    return f


# (id, argv after `kdbench`, a regular expression the error line must match)
CASES = [
    # unknown names, with a did-you-mean
    ("unknown-method", f"run --method kdd {OK}", r"unknown method 'kdd'; did you mean 'kd'"),
    ("unknown-dataset", "run --method kd --dataset digts", r"unknown dataset 'digts'; did you mean 'digits'"),
    ("unknown-student", f"run --method kd {OK} --student plain3", r"unknown model 'plain3'; did you mean"),
    ("unknown-teacher", "run --method kd --dataset digits --teacher resnet21", r"unknown model 'resnet21'; did you mean"),
    ("unknown-subcommand", "rnu --method kd", r"invalid choice: 'rnu'"),
    ("unknown-option", f"run --method kd {OK} --epoch-count 3", r"unrecognized arguments: --epoch-count"),
    ("unknown-device", f"run --method kd {OK} --device gpu0", r"unknown device 'gpu0'"),
    ("cuda-absent", f"run --method kd {OK} --device cuda", r"CUDA is not available", NO_CUDA),
    ("unknown-sweep-method", f"sweep --method kd,tcnn {OK}", r"unknown method 'tcnn'; did you mean 'tcn'"),
    ("unknown-executor", f"sweep --method kd {OK} --executor slurm", r"unknown executor 'slurm'"),
    ("unknown-preset", "sweep --preset tcn-table9", r"unknown preset 'tcn-table9'"),
    ("unknown-budget", f"run --method kd {OK} --budget tiny", r"invalid choice: 'tiny'"),
    ("teacher-unknown-arch", "teacher import --dataset digits --arch plain3 {f}/text.pt", r"unknown model 'plain3'"),
    # bad numbers
    ("students-not-int", f"run --method tcn {OK} --students two", r"--students 'two' is not an integer"),
    ("students-zero", f"run --method tcn {OK} --students 0", r"--students must be >= 1"),
    ("students-for-kd", f"run --method kd {OK} --students 2", r"trains one student"),
    ("students-no-budget", f"run --method tcn {OK} --students 3", r"no paper budget student for n=3"),
    ("impossible-chunking", "run --method tcn --dataset digits --students 300 --student image-student",
     r"--students 300 exceeds the teacher's dense width 256"),
    ("epochs-zero", f"run --method kd {OK} --epochs 0", r"'epochs' must be an integer >= 1"),
    ("epochs-text", f"run --method kd {OK} --epochs ten", r"argument --epochs: invalid int value: 'ten'"),
    ("lr-negative", f"run --method kd {OK} --lr -1", r"'lr' must be a finite number > 0"),
    ("lr-nan", f"run --method kd {OK} --lr nan", r"'lr' must be a finite number"),
    ("lr-inf", f"run --method kd {OK} --lr inf", r"'lr' must be a finite number"),
    ("batch-zero", f"run --method kd {OK} --batch-size 0", r"'batch_size' must be an integer >= 1"),
    ("val-fraction", f"run --method kd {OK} --val-fraction 1.5", r"'val_fraction' must be a number in \(0, 1\)"),
    ("max-train-zero", "run --method kd --dataset digits --max-train 0", r"'max_train' must be an integer >= 1"),
    ("seed-negative", f"run --method kd {OK} --seed -1", r"'seed' must be an integer >= 0"),
    ("teacher-epochs-zero", "run --method kd --dataset digits --teacher-epochs 0", r"--teacher-epochs must be >= 1"),
    ("sweep-students-empty-item", f"sweep --method tcn {OK} --students 1,,2", r"'students'.*empty item"),
    ("sweep-students-twice", f"sweep --method tcn {OK} --students 2,2", r"'students': lists 2 twice"),
    ("sweep-students-negative", f"sweep --method tcn {OK} --students -1", r"'students': item -1 must be >= 1"),
    ("sweep-seeds-zero", f"sweep --method kd {OK} --seeds 0", r"'seeds': 0 must be >= 1"),
    ("sweep-seeds-text", f"sweep --method kd {OK} --seeds some", r"'seeds': 'some' is not an integer"),
    ("sweep-workers-zero", f"sweep --method kd {OK} --workers 0", r"--workers must be an integer >= 1"),
    ("sweep-lr-nan", f"sweep --method kd {OK} --lr nan", r"'lr'"),
    ("teacher-train-epochs-zero", "teacher train --dataset digits --arch plain2 --epochs 0", r"--epochs must be >= 1"),
    # malformed --param
    ("param-no-equals", f"run --method kd {OK} --param temperature", r"--param 'temperature' is not of the form key=value"),
    ("param-unknown", f"run --method kd {OK} --param tempreature=2", r"no parameter 'tempreature'; did you mean 'temperature'"),
    ("param-wrong-type", f"run --method kd {OK} --param temperature=hot", r"'temperature' of 'kd' must be a number"),
    ("param-nan", f"run --method kd {OK} --param temperature=NaN", r"must be a finite number"),
    ("param-bad-key", f"run --method kd {OK} --param 1x=2", r"--param key '1x' is not a valid name"),
    ("param-empty-key", f"run --method kd {OK} --param =2", r"--param key '' is not a valid name"),
    ("param-literal", f"run --method kd {OK} --param reduction=sum", r"'reduction' of 'kd' must be one of"),
    # parameters outside their declared Range (kd temperature=0 used to fail in epoch 1, -4 / alpha=2 to finish "ok")
    ("param-range-zero", f"run --method kd {OK} --param temperature=0", r"'temperature' of 'kd' must be > 0, got 0"),
    ("param-range-negative", f"run --method kd {OK} --param temperature=-4", r"'temperature' of 'kd' must be > 0, got -4"),
    ("param-range-alpha", f"run --method kd {OK} --param alpha=2", r"'alpha' of 'kd' must be in \[0, 1\], got 2"),
    ("sweep-param-range", f"sweep --method kd,student {OK} --param alpha=-0.5", r"'alpha' of 'kd' must be in \[0, 1\]"),
    ("param-range-list-item", f"run --method takd {OK} --param temperatures=[4,0]", r"'temperatures' of 'takd' must be > 0, got 0"),
    ("param-range-int", f"run --method ft {OK} --param paraphraser_epochs=0", r"'paraphraser_epochs' of 'ft' must be >= 1"),
    ("sweep-param-typo", f"sweep --method kd,student {OK} --param tempreature=2", r"has parameter 'tempreature'; did you mean 'temperature'"),
    ("sweep-param-other-method", f"sweep --method kd {OK} --param tcn.lam=2", r"parameter 'tcn.lam' is for method 'tcn'"),
    ("mode-for-kd", f"run --method kd {OK} --mode gan", r"does not take --mode gan"),
    ("sweep-mode-unknown", f"sweep --method tcn {OK} --mode ffn", r"method 'tcn' has no mode 'ffn'"),
    ("budget-repo-unavailable", f"run --method tcn --students 2 {OK} --budget repo", r"budget family 'repo' .* is not available"),
    # contradictory options
    ("student-and-budget", f"run --method kd {OK} --student plain2 --budget repo", r"--student plain2 and --budget repo contradict"),
    ("sweep-student-and-budget", f"sweep --method kd {OK} --student plain2 --budget paper", r"contradict"),
    ("preset-and-config", "sweep --preset ci-mnist --config {f}/bad.yaml", r"--preset and --config contradict"),
    ("record-and-method", "run --from-record {f}/good.json --method kd", r"--from-record .* contradicts --method"),
    ("record-and-epochs", "run --from-record {f}/good.json --epochs 3", r"contradicts --epochs"),
    ("address-without-ray", f"sweep --method kd {OK} --address 10.0.0.1:6379", r"--address is for --executor ray"),
    ("no-method", f"run {OK}", r"--method is required"),
    # paths that do not exist, files of the wrong kind or format, empty files, no permission
    ("missing-data", "run --method kd --dataset mnist --data-root {f}", r"dataset 'mnist' not found: .*to get it"),
    ("sweep-missing-data", "sweep --method kd --dataset mnist --data-root {f}", r"dataset 'mnist' not found: .*to get it"),
    ("data-root-missing", "run --method kd --dataset mnist --data-root {f}/nowhere", r"--data-root '.*/nowhere' does not exist"),
    ("sweep-data-root-missing", "sweep --method kd --dataset mnist --data-root {f}/nowhere", r"--data-root .* does not exist"),
    ("data-root-missing-package-data", f"run --method kd {OK} --data-root {{f}}/nowhere", r"--data-root .* does not exist"),
    ("data-root-is-file", "run --method kd --dataset mnist --data-root {f}/afile", r"--data-root .* is not a directory"),
    ("data-root-symlink-loop", "sweep --method kd --dataset mnist --data-root {f}/loop", r"--data-root .* is a symlink loop"),
    ("teacher-file-missing", "run --method kd --dataset digits --teacher file:plain2={f}/nowhere.pt", r"teacher checkpoint .* does not exist"),
    ("out-is-file", f"run --method kd {OK} --out {{f}}/afile", r"--out .* exists and is not a directory"),
    ("out-under-file", f"run --method kd {OK} --out {{f}}/afile/sub", r"cannot be created: .* is not a directory"),
    ("sweep-out-is-file", f"sweep --method kd {OK} --out {{f}}/afile", r"--out .* exists and is not a directory"),
    ("record-missing", "run --from-record {f}/nowhere.json", r"cannot read record .*No such file"),
    ("record-empty", "run --from-record {f}/empty.json", r"record .* is empty"),
    ("record-not-json", "run --from-record {f}/notjson.json", r"is not valid JSON"),
    ("record-a-list", "run --from-record {f}/list.json", r"is not a kdbench run record"),
    ("record-a-directory", "run --from-record {f}", r"cannot read record"),
    ("record-wrong-type", "run --from-record {f}/badtype.json", r"run field 'epochs' must be an integer"),
    ("record-params-list", "run --from-record {f}/badparams.json", r"run field 'params' must be a mapping"),
    ("record-unknown-field", "run --from-record {f}/unknownfield.json", r"unknown run field\(s\): frobnicate"),
    ("record-bad-recipe", "run --from-record {f}/badrecipe.json", r"unknown teacher_recipe field\(s\): warp"),
    ("config-missing", "sweep --config {f}/nowhere.yaml", r"cannot read sweep config .*No such file"),
    ("config-empty", "sweep --config {f}/empty.yaml", r"sweep config .* is empty"),
    ("config-bad-yaml", "sweep --config {f}/bad.yaml", r"is not valid YAML: .* at line \d+, column \d+"),
    ("config-a-list", "sweep --config {f}/list.yaml", r"must be a mapping of fields .* not a list"),
    ("config-wrong-type", "sweep --config {f}/wrongtype.yaml", r"field 'epochs': 'many' is not an integer"),
    ("config-wrong-type-students", "sweep --config {f}/wrongtype2.yaml", r"field 'students'"),
    ("config-unknown-field", "sweep --config {f}/unknown.yaml", r"unknown sweep field 'datset'; did you mean 'dataset'"),
    ("config-unreadable", "sweep --config {f}/unreadable", r"cannot read sweep config"),
    ("config-not-utf8", "sweep --config {f}/latin1.yaml", r"sweep config .* is not UTF-8 text \(byte 0xe9 at offset \d+\)"),
    ("config-duplicate-key", "sweep --config {f}/dupkey.yaml", r"duplicate key 'method' \(first at line 1\) at line 3"),
    ("sweep-report-name", f"sweep --method kd {OK} --report --report-name ../up", r"report name '../up' must be"),
    ("sweep-report-name-dry-run", f"sweep --method kd {OK} --report --report-name 'a b' --dry-run", r"report name 'a b'"),
    ("checkpoint-missing", "teacher import --dataset digits --arch plain2 {f}/nowhere.pt", r"does not exist"),
    ("checkpoint-text", "teacher import --dataset digits --arch plain2 {f}/text.pt", r"cannot read weights .*not a torch"),
    ("checkpoint-empty", "teacher import --dataset digits --arch plain2 {f}/empty.pt", r"weights file .* is empty"),
    ("checkpoint-bad-safetensors", "teacher import --dataset digits --arch plain2 {f}/junk.safetensors", r"cannot read weights"),
    ("checkpoint-random-bytes", "teacher import --dataset digits --arch plain2 {f}/random.pt",
     r"^(?!.*pickled).*cannot read weights .*not a torch .*checkpoint \(corrupt or another format"),
    # argparse errors of a subcommand: one "kdbench: error:" prefix, not "kdbench: error: kdbench sweep: ..."
    ("subcommand-bad-int", f"sweep --method kd {OK} --workers x", r"^kdbench: error: argument --workers: invalid int value"),
    ("subcommand-unknown-option", f"sweep --method kd {OK} --frobnicate", r"^kdbench: error: unrecognized arguments: --frobnicate \(see `kdbench sweep --help`\)"),
    ("run-no-method-prefix", f"run {OK}", r"^kdbench: error: --method is required"),
    ("report-missing-dir", "report {f}/nowhere", r"does not exist"),
]


PARAMS = [pytest.param(*c[:3], id=c[0], marks=c[3:]) for c in CASES]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("case_id,argv,pattern", PARAMS)
def test_bad_input(case_id: str, argv: str, pattern: str, files: Path, capsys) -> None:
    import re

    out = files.parent / "out"
    args = shlex.split(argv.format(f=files))
    if "--out" not in args and args[0] in ("run", "sweep"):
        args += ["--out", str(out)]
    before = _snapshot(files)
    rc = main(args)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, f"exit {rc}; stderr: {captured.err[-600:]}; stdout: {captured.out[-300:]}"
    assert len(lines) == 1, f"expected one line, got:\n{captured.err}"
    assert lines[0].startswith("kdbench: error: "), lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert re.search(pattern, lines[0]), f"{lines[0]!r} does not match {pattern!r}"
    # nothing left behind: no results folder, no cache entry, the input files untouched
    assert not out.exists(), f"--out {out} was created"
    cache = files.parent / "cache"
    assert not any(cache.rglob("meta.json")) and not any(cache.rglob("*.npy")), "a cache entry was written"
    assert _snapshot(files) == before


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


def test_existing_results_left_unchanged(files: Path, capsys) -> None:
    """Bad input against a results directory that already holds records changes nothing in it."""
    out = files.parent / "results"
    out.mkdir()
    (out / "kd-digits-s0-0123456789abcdef.json").write_text(json.dumps({"run_key": "kd-digits-s0-0123456789abcdef",
                                                                          "status": "ok", "spec": {}, "metrics": {}}))
    (out / "notes.txt").write_text("keep me\n")
    before = _snapshot(out)
    for argv in (f"sweep --method kd,nosuch {OK}", f"sweep --method kd {OK} --students 1,x",
                 f"run --method kd {OK} --param alpha=2x", f"run --method kd {OK} --device nowhere",
                 f"sweep --method kd {OK} --lr -3"):
        assert main(shlex.split(argv) + ["--out", str(out)]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("kdbench: error: ") and len(err.strip().splitlines()) == 1, err
    assert _snapshot(out) == before


# a few cases as real processes: exit code 2 and exactly one stderr line, no traceback, at the process level
PROCESS_CASES = [
    ("unknown-method", f"sweep --method kdd {OK}", "unknown method 'kdd'"),
    ("record-wrong-type", "run --from-record {f}/badtype.json", "run field 'epochs'"),
    ("checkpoint-text", "teacher import --dataset digits --arch plain2 {f}/text.pt", "cannot read weights"),
]


def test_bad_input_as_processes(files: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = files.parent / "out"
    procs = []
    for case_id, argv, expect in PROCESS_CASES:  # started together: the interpreter start-ups overlap
        args = [sys.executable, "-m", "kdbench", *shlex.split(argv.format(f=files))]
        if args[3] in ("run", "sweep"):
            args += ["--out", str(out)]
        procs.append((case_id, expect, subprocess.Popen(args, env=env, cwd=files.parent, text=True,
                                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    for case_id, expect, p in procs:
        stdout, stderr = p.communicate(timeout=300)
        lines = stderr.strip().splitlines()
        assert p.returncode == 2, (case_id, p.returncode, stderr[-800:])
        assert len(lines) == 1 and lines[0].startswith("kdbench: error: ") and expect in lines[0], (case_id, stderr)
        assert "Traceback" not in stderr + stdout, case_id
    assert not out.exists()
