"""Bad input that is only visible on disk or in the environment is refused before any training
starts (docs/design.md §7): an explicit --data-root that does not exist, a corrupt data file, a
KDBENCH_CACHE that is a file, an invalid report name, an unwritable --out, a parameter outside its
declared Range. Each gives exit code 2 and one stderr line, and leaves no record and no teacher.

Also here: cache entries that cannot prove what they hold are rebuilt, `~` in KDBENCH_CACHE is
expanded, and a failed download leaves no empty folders behind."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pytest
import torch
from helpers_sweep import comparable
from test_reliability import make_idx_mnist

from kdbench import api
from kdbench.cache import CacheEntry, CorruptCacheWarning, cache_root
from kdbench.cli import main, one_line
from kdbench.config import RunSpec, TeacherRecipe, read_yaml_file
from kdbench.data import cache as data_cache
from kdbench.data import decode_dataset, download
from kdbench.data.cache import CacheCorruptionWarning
from kdbench.data.catalogue import DATASETS, locate
from kdbench.errors import KdbenchError
from kdbench.method import Method, Range, build_params, check_ranges, load_methods, param_ranges
from kdbench.runner import run
from kdbench.sweep import SweepSpec, list_presets

# a complete quick run on the tiny IDX MNIST of the `env` fixture; each test breaks one thing
RUN = ["--method", "kd", "--dataset", "mnist", "--teacher", "plain2", "--teacher-epochs", "1", "--student", "plain2",
       "--epochs", "1", "--no-latency"]
COMMANDS = ["run", "sweep"]


@dataclass
class Env:
    root: Path
    data: Path  # a good data root, also $KDBENCH_DATA
    cache: Path
    out: Path


@pytest.fixture
def env(tmp_path: Path, monkeypatch) -> Env:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KDBENCH_PROGRESS", "0")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    data = make_idx_mnist(tmp_path / "data")
    monkeypatch.setenv("KDBENCH_DATA", str(data))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Env(tmp_path, data, tmp_path / "cache", tmp_path / "out")
    torch.set_num_threads(before)


def refused(argv: list[str], capsys) -> str:
    """Run the CLI in-process; it must exit 2 with exactly one `kdbench: error:` line. Returns the line."""
    rc = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, f"exit {rc}; stderr: {captured.err[-600:]}; stdout: {captured.out[-300:]}"
    assert len(lines) == 1 and lines[0].startswith("kdbench: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def assert_nothing_trained(env: Env, out: Path | None = None) -> None:
    """No record anywhere under --out, no teacher and no teacher targets in the cache."""
    out = out or env.out
    assert not (out.exists() and any(out.glob("*.json"))), f"a record was written into {out}"
    for kind in ("teachers", "targets"):
        assert not any((env.cache / kind).glob("*/meta.json")), f"a {kind} cache entry was built"


# ----------------------------------------------------------------------------------- good input
def test_good_input_passes_preflight_and_runs(env: Env, capsys) -> None:
    """The control: with nothing broken the same command line trains and writes its record."""
    assert main(["run", *RUN, "--data-root", str(env.data), "--out", str(env.out)]) == 0, capsys.readouterr().err
    assert len(list(env.out.glob("*.json"))) == 1 and any((env.cache / "teachers").glob("*/meta.json"))


# ----------------------------------------------------------------------------------- data roots
def _bad_root(env: Env, kind: str) -> Path:
    p = env.root / f"root-{kind}"
    if kind == "loop":
        p.symlink_to(p)
    elif kind == "dangling":
        p.symlink_to(env.root / "gone")
    elif kind == "file":
        p.write_text("not a folder\n")
    return p  # kind "missing": nothing there


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind,why", [("missing", "does not exist"), ("loop", "is a symlink loop"),
                                      ("dangling", "does not exist"), ("file", "is not a directory")])
def test_explicit_data_root_must_exist_even_with_kdbench_data(command: str, kind: str, why: str, env: Env, capsys) -> None:
    """$KDBENCH_DATA holds good MNIST; a mistyped --data-root must not silently train on it."""
    root = _bad_root(env, kind)
    line = refused([command, *RUN, "--data-root", str(root), "--out", str(env.out)], capsys)
    assert f"--data-root '{root}' {why}" in line, line
    assert_nothing_trained(env)
    with pytest.raises(KdbenchError, match=why):  # the library refuses it too
        locate(DATASETS.get("mnist"), root)


# ----------------------------------------------------------------------------------- data files
def _corrupt_copy(env: Env, damage: str) -> Path:
    root = env.root / f"corrupt-{damage}"
    shutil.copytree(env.data, root)
    f = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"\x07\x07" + raw[2:])
    return root


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage,why", [("truncate", "needs 24000 data bytes"), ("magic", "bad magic number")])
def test_corrupt_idx_file_refused_before_training(command: str, damage: str, why: str, env: Env, capsys) -> None:
    root = _corrupt_copy(env, damage)
    line = refused([command, *RUN, "--data-root", str(root), "--out", str(env.out)], capsys)
    assert "corrupt IDX file" in line and "train-images-idx3-ubyte" in line and why in line, line
    assert_nothing_trained(env)
    assert not any(env.cache.rglob("*.npy")), "a dataset cache entry was written from a corrupt file"


# ----------------------------------------------------------------------------------- the cache folder
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", ["file", "under-file"])
def test_cache_that_is_a_file_refused_before_training(command: str, where: str, env: Env, capsys, monkeypatch) -> None:
    afile = env.root / "cache-file"
    afile.write_text("I am a file\n")
    cache = afile if where == "file" else afile / "sub"
    monkeypatch.setenv("KDBENCH_CACHE", str(cache))
    line = refused([command, *RUN, "--out", str(env.out)], capsys)
    assert f"cache folder '{cache}' (KDBENCH_CACHE)" in line and "not a directory" in line, line
    assert not env.out.exists() and afile.read_text() == "I am a file\n"


def test_cache_root_expands_tilde(env: Env, monkeypatch) -> None:
    """KDBENCH_CACHE='~/x' is ~/x for every cache (datasets, teachers, targets), never ./~/x."""
    monkeypatch.setenv("KDBENCH_CACHE", "~/kcache")
    home = env.root / "home"
    assert cache_root() == home / "kcache"
    assert data_cache.cache_root is cache_root  # one helper, not two that can disagree
    meta, built = CacheEntry("teachers", "k").get_or_build(lambda d: (d / "w.bin").write_bytes(b"w") and {})
    assert built and (home / "kcache" / "teachers" / "k" / "w.bin").is_file()
    decode_dataset(DATASETS.get("mnist"), env.data / "MNIST" / "raw")
    assert any((home / "kcache" / "datasets" / "mnist").glob("*/entry.json"))
    assert not (env.root / "~").exists()


# ----------------------------------------------------------------------------------- report name, --out
@pytest.mark.parametrize("argv,name", [(["--report-name", "../up"], "../up"), (["--report-name", "a b"], "a b"),
                                       ([], "my run")])  # [] : the default name, from --out
def test_invalid_report_name_refused_before_the_sweep(argv: list[str], name: str, env: Env, capsys) -> None:
    out = env.root / "my run"
    line = refused(["sweep", *RUN, "--out", str(out), "--report", *argv], capsys)
    assert f"report name '{name}' must be" in line, line
    assert_nothing_trained(env, out)
    assert not out.exists() and not (env.root / "reports").exists()


@pytest.fixture
def unwritable(tmp_path: Path):
    """An existing folder this process cannot write into: immutable for root (permission bits do not
    stop root), read-only permissions otherwise."""
    d = tmp_path / "readonly"
    d.mkdir()
    locked = None
    if os.geteuid() != 0:
        d.chmod(0o555)
        locked = "chmod"
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0:
        locked = "chattr"
    try:
        (d / "probe").touch()
    except OSError:
        pass
    else:
        pytest.skip("cannot make a folder unwritable here")
    yield d
    if locked == "chattr":
        subprocess.run(["chattr", "-i", str(d)], check=True)
    else:
        d.chmod(0o755)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("sub", [False, True])
def test_unwritable_out_refused_before_training(command: str, sub: bool, env: Env, unwritable: Path, capsys) -> None:
    """Found after training before: the finished run's record was lost."""
    out = unwritable / "sub" if sub else unwritable
    line = refused([command, *RUN, "--out", str(out)], capsys)
    assert f"--out '{out}'" in line and ("cannot be created in" if sub else "is not writable") in line, line
    assert_nothing_trained(env, out)
    assert not list(unwritable.iterdir())


# ----------------------------------------------------------------------------------- parameter ranges
def _outside(bounds: Range) -> float:
    """A value just outside `bounds` (the lower side when there is one)."""
    if bounds.gt is not None:
        return bounds.gt
    if bounds.ge is not None:
        return bounds.ge - 1
    return bounds.lt if bounds.lt is not None else bounds.le + 1


def _is_list(cls: type[Method], key: str) -> bool:
    hint = typing.get_type_hints(cls.Params)[key]
    return list in (typing.get_origin(hint), *map(typing.get_origin, typing.get_args(hint)))


def test_every_declared_range_is_checked_and_the_defaults_lie_in_it() -> None:
    ranged = 0
    for name, cls in load_methods().items():
        check_ranges(cls, cls.Params())  # the defaults are valid
        for key, bounds in param_ranges(cls).items():
            bad = _outside(bounds)
            with pytest.raises(KdbenchError, match=rf"parameter '{key}' of '{name}' must be {re.escape(str(bounds))}"):
                build_params(cls, {key: [bad] if _is_list(cls, key) else bad})
            ranged += 1
    assert ranged >= 15
    kd = load_methods().get("kd")
    assert param_ranges(kd) == {"temperature": Range(gt=0), "alpha": Range(ge=0, le=1)}


def test_ranges_are_checked_at_plan_time(tmp_path: Path) -> None:
    """A dry run refuses them: nothing has to train before the mistake is seen."""
    for params, what in (({"temperature": 0}, "> 0"), ({"temperature": -4}, "> 0"), ({"alpha": 2}, r"in \[0, 1\]")):
        with pytest.raises(KdbenchError, match=rf"'{next(iter(params))}' of 'kd' must be {what}"):
            api.sweep("kd", dataset="digits", params=params, out=tmp_path / "out", dry_run=True, log=None)
    assert not (tmp_path / "out").exists()


def test_a_new_method_declares_ranges_without_writing_checks() -> None:
    class Tiny(Method):
        name = "rangetest"

        @dataclass
        class Params:
            width: Annotated[int, Range(ge=1)] = 4
            share: Annotated[list[float] | None, Range(gt=0, lt=1)] = None
            free: float = -3.0  # no declared range: anything finite

    assert build_params(Tiny, {"width": 1, "share": [0.5], "free": -1e9}).width == 1
    with pytest.raises(KdbenchError, match=r"'width' of 'rangetest' must be >= 1, got 0"):
        build_params(Tiny, {"width": 0})
    with pytest.raises(KdbenchError, match=r"'share' of 'rangetest' must be in \(0, 1\), got 1\.0 in \[0\.5, 1\.0\]"):
        build_params(Tiny, {"share": [0.5, 1.0]})


def test_range_text_and_edges() -> None:
    assert [str(r) for r in (Range(gt=0), Range(ge=1), Range(le=3), Range(lt=2), Range(ge=0, le=1), Range(gt=0, lt=1),
                             Range(ge=0, lt=1), Range(gt=0, le=0.5))] == [
        "> 0", ">= 1", "<= 3", "< 2", "in [0, 1]", "in (0, 1)", "in [0, 1)", "in (0, 0.5]"]
    assert 0 in Range(ge=0, le=1) and 1 in Range(ge=0, le=1) and 0 not in Range(gt=0) and 1 not in Range(ge=0, lt=1)


# ----------------------------------------------------------------------------------- config files
def test_yaml_duplicate_keys_refused_merge_keys_kept(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("groups:\n  - {lr: 0.1, lr: 0.2}\n")
    with pytest.raises(KdbenchError, match=r"duplicate key 'lr' \(first at line 2\) at line 2"):
        read_yaml_file(p, "sweep config")
    p.write_text("base: &b {epochs: 1, lr: 0.1}\nrun:\n  <<: *b\n  lr: 0.5\n")  # overriding a merged key is fine
    assert read_yaml_file(p)["run"] == {"epochs": 1, "lr": 0.5}


def test_shipped_presets_load_with_the_strict_loader() -> None:
    for row in list_presets():
        SweepSpec.build(preset=row["name"])


# ----------------------------------------------------------------------------------- cache entries
def _writer(d: Path) -> dict:
    (d / "w.bin").write_bytes(b"weights" * 100)
    return {"arch": "test"}


@pytest.mark.parametrize("meta", [{"info": {}}, {"files": {}, "info": {}}, {"files": ["w.bin"], "info": {}},
                                  {"files": {"w.bin": "abc"}, "info": {}}, {"files": {"..": "0" * 64}, "info": {}}],
                         ids=["no-files", "empty-files", "files-a-list", "bad-digest", "dot-dot"])
def test_cache_entry_that_lists_no_checksummed_files_is_rebuilt(meta: dict, tmp_path: Path) -> None:
    entry = CacheEntry("teachers", "k", tmp_path)
    entry.get_or_build(_writer)
    (entry.dir / "w.bin").write_bytes(b"weig")  # truncated
    entry.meta_path.write_text(json.dumps(meta))  # ... and a sidecar that does not say what it should hold
    with pytest.warns(CorruptCacheWarning, match="rebuilding"):
        assert not entry.valid()
    with pytest.warns(CorruptCacheWarning):
        meta_after, built = entry.get_or_build(_writer)
    assert built and (entry.dir / "w.bin").read_bytes() == b"weights" * 100 and entry.valid(warn=False)
    assert list(meta_after["files"]) == ["w.bin"]


def test_cache_writer_that_writes_nothing_publishes_nothing(tmp_path: Path) -> None:
    entry = CacheEntry("teachers", "k", tmp_path)
    with pytest.raises(RuntimeError, match="wrote no files"):
        entry.get_or_build(lambda d: {})
    assert not entry.dir.exists() and not [p for p in entry.dir.parent.iterdir() if p.is_dir()]


def test_teacher_entry_without_file_list_is_rebuilt_not_used(env: Env) -> None:
    """The end-to-end case: a truncated teacher whose meta.json lists no files made the run fail."""
    spec = RunSpec(method="kd", dataset="mnist", teacher="plain2", teacher_recipe=TeacherRecipe(epochs=1, batch_size=64),
                   student="plain2", epochs=1, batch_size=64, device="cpu")
    clean = run(spec, latency=False, progress=False)
    (entry,) = [d for d in (env.cache / "teachers").iterdir() if d.is_dir()]
    weights = entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    meta = json.loads((entry / "meta.json").read_text())
    (entry / "meta.json").write_text(json.dumps({"info": meta["info"]}))
    for target_meta in (env.cache / "targets").glob("*/meta.json"):  # targets then come from the teacher actually loaded
        target_meta.unlink()
    with pytest.warns(CorruptCacheWarning, match="lists no checksummed files"):
        again = run(spec, latency=False, progress=False)
    assert again["status"] == "ok" and comparable(again) == comparable(clean)


def test_dataset_sidecar_listing_no_arrays_is_rebuilt(env: Env) -> None:
    entry, location = DATASETS.get("mnist"), env.data / "MNIST" / "raw"
    first, state = decode_dataset(entry, location)
    assert state == "built"
    expected = np.array(first.arrays["train_x"])  # a private copy: the entry's files are memory-mapped
    del first
    (sidecar,) = (env.cache / "datasets" / "mnist").glob("*/entry.json")
    side = json.loads(sidecar.read_text())
    (sidecar.parent / "train_x.npy").write_bytes(b"truncated")
    sidecar.write_text(json.dumps({**side, "arrays": {}}))
    with pytest.warns(CacheCorruptionWarning, match="lists no arrays"):
        again, state = decode_dataset(entry, location)
    assert state == "built" and np.array_equal(again.arrays["train_x"], expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_dataset(entry, location)[1] == "hit"


# ----------------------------------------------------------------------------------- downloads
class _DeadNetwork:
    """Stands in for torchvision.datasets.MNIST: makes its folders, then the network fails."""

    def __init__(self, root, train=True, download=False):
        (Path(root) / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")


def test_failed_download_leaves_no_empty_folders(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd, "MNIST", _DeadNetwork)
    with pytest.raises(KdbenchError, match="download of 'mnist' .* failed"):
        download("mnist", tmp_path / "new" / "root")
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "existing"  # a root that was there keeps itself and what it held
    (kept / "other").mkdir(parents=True)
    (kept / "notes.txt").write_text("mine\n")
    with pytest.raises(KdbenchError, match="failed"):
        download("mnist", kept)
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt", "other"]


# ----------------------------------------------------------------------------------- error lines
@pytest.mark.parametrize("argv", [["sweep", "--workers", "x"], ["sweep", "--bogus"], ["run", "--epochs", "ten"],
                                  ["run", "--dataset", "digits"], ["baseline"], ["nosuchcommand"]])
def test_error_prefix_is_never_doubled(argv: list[str], capsys) -> None:
    line = refused(argv, capsys)
    assert not line.startswith("kdbench: error: kdbench"), line


def test_one_line_drops_a_message_s_own_prefix() -> None:
    assert one_line("kdbench sweep: argument --x: bad\n  more") == "argument --x: bad more"
    assert one_line("kdbench: error: kdbench run: oops") == "oops"
    assert one_line("kdbench-like names stay: x") == "kdbench-like names stay: x"
