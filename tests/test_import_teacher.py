"""Imported CIFAR ResNets carry their input normalisation (issue: the shared weights scored ~35%
without it), and a checkpoint that cannot be the named architecture is refused before any work."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kdbench.cli import main

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "cifar10-resnet-akamaster"


def _weights(name: str) -> Path:
    found = sorted(WEIGHTS.glob(f"{name}-*.th"))
    if not found:
        pytest.skip(f"no shared {name} weights under {WEIGHTS}")
    return found[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache for the module: cifar10-jpeg is decoded once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def env(cache: Path, data_root: Path, monkeypatch) -> Path:
    monkeypatch.setenv("KDBENCH_CACHE", str(cache))
    monkeypatch.setenv("KDBENCH_DATA", str(data_root))
    monkeypatch.setenv("KDBENCH_PROGRESS", "0")
    if not (data_root / "cifar10-jpeg").exists():
        pytest.skip("cifar10-jpeg is not under the data root")
    return cache


def _sidecar(cache: Path, key: str) -> dict:
    return json.loads((cache / "teachers" / key / "meta.json").read_text())["info"]


@pytest.mark.parametrize("arch", ["resnet20", "resnet56"])
def test_shared_resnets_imported_through_the_cli_score_above_80(arch, env, capsys):
    # a small val split keeps the test quick; the score is on the whole 10,000-image test split
    args = ["teacher", "import", "--dataset", "cifar10-jpeg", "--max-train", "2000", "--arch", arch,
            "--normalize", "imagenet", str(_weights(arch))]
    assert main(args) == 0
    out = capsys.readouterr().out
    key, acc = re.search(r"teacher (\S+): test_acc=([\d.]+)", out).groups()
    assert float(acc) >= 80.0, out
    info = _sidecar(env, key)
    assert info["normalize"] == "imagenet" and len(info["checkpoint_sha256"]) == 64


def test_normalisation_is_part_of_the_import_key(env, capsys):
    path = str(_weights("resnet20"))
    keys = []
    for norm in ("imagenet", "none"):
        assert main(["teacher", "import", "--dataset", "cifar10-jpeg", "--max-train", "2000", "--arch", "resnet20",
                     "--normalize", norm, path]) == 0
        key, acc = re.search(r"teacher (\S+): test_acc=([\d.]+)", capsys.readouterr().out).groups()
        keys.append((key, float(acc)))
    (k_norm, acc_norm), (k_raw, acc_raw) = keys
    assert k_norm != k_raw
    assert acc_raw < acc_norm - 20  # the defect this guards against: raw [0, 1] inputs into weights that expect ImageNet stats


@pytest.mark.parametrize("value", ["1,x", "0.5,0", "1,2,3", "0.5/0.5,0.2"])
def test_malformed_normalize_is_one_line_and_exit_2(value, env, capsys):
    code = main(["teacher", "import", "--dataset", "cifar10-jpeg", "--arch", "resnet20", "--normalize", value,
                 str(_weights("resnet20"))])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "normalize" in err[0]


def test_checkpoint_of_another_architecture_is_refused_before_training(env, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", "--method", "kd", "--dataset", "cifar10-jpeg", "--teacher", f"file:resnet56={_weights('resnet20')}",
                 "--teacher-normalize", "imagenet", "--student", "resnet8", "--epochs", "1", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "do not fit teacher 'resnet56'" in err[0], err
    assert not list(out.glob("*.json")) if out.exists() else True



def test_checkpoint_path_expands_environment_variables_but_the_run_key_does_not(env, monkeypatch, tmp_path):
    """`$KDBENCH_WEIGHTS/...` in a preset resolves per machine; the key keeps the string as written."""
    from kdbench.config import RunSpec
    from kdbench.runner import resolve
    from kdbench.teachers import checkpoint_teacher

    weights = _weights("resnet20")
    teacher = f"file:resnet20=$KDBENCH_WEIGHTS/{weights.name}"
    monkeypatch.setenv("KDBENCH_WEIGHTS", str(weights.parent))
    assert checkpoint_teacher(teacher, "cifar10-jpeg") == ("resnet20", weights)
    spec = RunSpec(method="kd", dataset="cifar10-jpeg", teacher=teacher, teacher_normalize="imagenet", student="resnet8")
    key = resolve(spec).key
    (tmp_path / weights.name).symlink_to(weights)  # the same weights on another machine's path
    monkeypatch.setenv("KDBENCH_WEIGHTS", str(tmp_path))
    assert resolve(spec).key == key


def test_unset_variable_in_a_checkpoint_path_is_one_line_and_exit_2(env, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("KDBENCH_UNSET_DIR", raising=False)
    code = main(["run", "--method", "kd", "--dataset", "cifar10-jpeg", "--teacher", "file:resnet20=$KDBENCH_UNSET_DIR/r.th",
                 "--student", "resnet8", "--epochs", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "environment variable" in err[0], err
