"""Per-method versions in run keys: bumping one method's `version` re-keys that method's runs and no
other, the default version enters no key (so every committed record keeps its key), and the run key's
student count comes from what the method declares (`multi_student`), not from its name."""
from __future__ import annotations

from pathlib import Path

import pytest

from kdbench import store
from kdbench.config import CODE_VERSION, METHOD_VERSION, RunSpec, run_key
from kdbench.errors import KdbenchError
from kdbench.method import Method, get_method, register_method
from kdbench.runner import resolve
from kdbench.sweep import SweepSpec, plan

PRESET = "tcn-table3-mnist"
COMMITTED = Path(__file__).parent.parent / "results" / PRESET


def planned(tmp_path: Path) -> dict[str, str]:
    """Run key -> method of every run the preset plans."""
    return {p.key: p.spec.method for p in plan(SweepSpec.build(preset=PRESET), tmp_path / "out")}


@pytest.mark.parametrize("bumped", ["kd", "tcn"])
def test_bumping_one_method_version_changes_the_keys_of_its_runs_only(bumped, tmp_path, monkeypatch):
    before = planned(tmp_path)
    monkeypatch.setattr(get_method(bumped), "version", 2)
    after = planned(tmp_path)
    assert len(after) == len(before) and bumped in before.values() and len(set(before.values())) > 1
    kept = {k: m for k, m in before.items() if m != bumped}
    assert {k: m for k, m in after.items() if m != bumped} == kept  # every other method: the same keys
    old, new = ({k for k, m in d.items() if m == bumped} for d in (before, after))
    assert len(new) == len(old) and old.isdisjoint(new)  # all of the bumped method's runs: new keys
    # the readable prefix is unchanged: only the hash moves
    assert sorted(k.rpartition("-")[0] for k in new) == sorted(k.rpartition("-")[0] for k in old)
    monkeypatch.setattr(get_method(bumped), "version", 1)
    assert planned(tmp_path) == before  # back at the default: the old keys again


def test_committed_records_keep_their_keys(tmp_path):
    committed = {p.stem for p in COMMITTED.glob("*.json")}
    assert committed, f"no committed records in {COMMITTED}"
    # the folder also holds the runs of the table's GAN preset
    keys = set(planned(tmp_path)) | {p.key for p in plan(SweepSpec.build(preset=f"{PRESET}-gan-cpu"), tmp_path / "out")}
    assert committed <= keys, sorted(committed - keys)[:3]


def test_a_bumped_version_is_in_the_record_spec_and_its_key_checks(monkeypatch):
    """The reader recomputes a bumped run's key from the stored spec, and a spec read back still parses."""
    for name, multi in (("kd", False), ("tcn", True)):
        r = resolve(RunSpec(method=name, dataset="mnist", n_students=2 if multi else 1))
        assert METHOD_VERSION not in r.canonical
        monkeypatch.setattr(get_method(name), "version", 3)
        bumped = resolve(r.spec)
        assert bumped.canonical == {**r.canonical, METHOD_VERSION: 3} and bumped.key != r.key
        assert store.spec_key(bumped.canonical, CODE_VERSION, label_students=multi) == bumped.key
        assert RunSpec.from_dict(bumped.canonical).method == name


def test_the_student_count_is_in_the_key_of_multi_student_methods():
    keys = {name: resolve(RunSpec(method=name, dataset="mnist")).key for name in ("kd", "tcn")}
    assert get_method("tcn").multi_student and not get_method("kd").multi_student
    assert keys["tcn"].startswith("tcn-ff-n1-mnist-s0-") and keys["kd"].startswith("kd-mnist-s0-")
    canonical = resolve(RunSpec(method="kd", dataset="mnist")).canonical
    counted = run_key(canonical, label_students=True)
    assert counted.startswith("kd-n1-mnist-s0-") and counted.rpartition("-")[2] == keys["kd"].rpartition("-")[2]


@pytest.mark.parametrize("version", [0, "2", 2.0, True, None])
def test_a_bad_version_declaration_is_refused_at_registration(version):
    cls = type("BadVersion", (Method,), {"name": "versiontest-bad", "version": version})
    with pytest.raises(KdbenchError, match="versiontest-bad.*integer >= 1"):
        register_method(cls)
    with pytest.raises(KdbenchError):
        get_method("versiontest-bad")  # not registered
