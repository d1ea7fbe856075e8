"""The run record type (kdbench/record.py) and the versioned reader (issue 17, item 4): `RunRecord.ok`
and `RunRecord.failed` give the keys, in the order, records have always been written with, and they
validate when read back; a record of a newer schema is skipped with one warning naming its file and
schema, left byte for byte as it is and never rerun over, while a record without a schema or with an
unknown one is invalid; a schema-1 record (flat metrics) is read in the schema-2 layout (namespaced).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from kdbench import store
from kdbench.record import SCHEMA_VERSION, RunRecord, namespaced
from kdbench.sweep import SweepSpec, plan

SPEC = {"method": "kd", "dataset": "mnist", "mode": None, "n_students": 1, "seed": 0, "epochs": 2,
        "max_train": 6000, "device": "cpu", "params_changed": {}}
ENV = {"torch": "2.x", "device": "cpu", "gpu": None, "cpu": "a test CPU", "threads": 1}


def ok_record(**kw: Any) -> RunRecord:
    args: dict[str, Any] = dict(history=[{"epoch": 1, "loss": 0.5}], deviations=["a deviation"], data={"train": 10},
                                teacher=None, env=ENV, code_version="test")
    return RunRecord.ok(store.spec_key(SPEC, "test"), SPEC, {"test_acc": 97.0, "test_acc_valbest": 97.5}, **{**args, **kw})


def failed_record(**kw: Any) -> RunRecord:
    error = {"type": "RuntimeError", "message": "boom", "traceback": "Traceback ..."}
    return RunRecord.failed(store.spec_key(SPEC, "test"), SPEC, error, env=ENV, code_version="test", **kw)


# ------------------------------------------------------------------------------------ constructors

def test_ok_record_keys_in_the_written_order() -> None:
    rec = ok_record().to_dict()
    assert list(rec) == ["run_key", "status", "spec", "metrics", "history", "deviations", "data", "teacher", "env",
                         "code_version"]
    assert rec["status"] == "ok" and rec["teacher"] is None  # no teacher: written as null, not left out
    assert list(ok_record(warnings=["w"]).to_dict()) == [
        "run_key", "status", "spec", "metrics", "history", "deviations", "data", "teacher", "warnings", "env",
        "code_version"]


def test_failed_record_keys_in_the_written_order() -> None:
    rec = failed_record().to_dict()
    assert list(rec) == ["run_key", "status", "spec", "error", "metrics", "env", "code_version"]
    assert rec["status"] == "failed" and rec["metrics"] == {} and rec["error"]["message"] == "boom"
    stamped = failed_record(started_at="2025-01-01T00:00:00+00:00", finished_at="2025-01-01T00:00:01+00:00")
    assert list(stamped.to_dict())[-2:] == ["started_at", "finished_at"]


@pytest.mark.parametrize("make", [ok_record, failed_record], ids=["ok", "failed"])
def test_built_records_validate_when_read(tmp_path: Path, make) -> None:
    path = store.write_record(tmp_path, make().to_dict())
    rec = store.load_record(path)
    assert not isinstance(rec, store.Invalid), rec
    assert rec["schema"] == SCHEMA_VERSION


# ------------------------------------------------------------------------------------ the versioned reader

def _with_schema(tmp_path: Path, schema: Any) -> Path:
    path = store.write_record(tmp_path, ok_record().to_dict())
    rec = json.loads(path.read_text())
    if schema is None:
        rec.pop("schema")
    else:
        rec["schema"] = schema
    path.write_text(json.dumps(rec))
    return path


def test_newer_schema_is_skipped_with_one_warning_and_left_as_it_is(tmp_path: Path) -> None:
    path = _with_schema(tmp_path, SCHEMA_VERSION + 1)
    before = path.read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        valid, invalid = store.read_records(tmp_path)
    assert valid == [] and invalid == []  # neither counted nor listed as invalid
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert path.name in message and f"schema {SCHEMA_VERSION + 1}" in message and "\n" not in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = store.load_record(path)
        assert isinstance(rec, store.Newer) and rec.schema == SCHEMA_VERSION + 1
        assert store.read_record(path) is None and not store.is_done(tmp_path, path.stem)
        assert store.load_results(tmp_path).empty
    assert [str(w.message) for w in caught if "invalid record" in str(w.message)] == []
    assert path.read_bytes() == before


def test_a_resumed_sweep_does_not_rerun_over_a_newer_record(tmp_path: Path) -> None:
    spec = SweepSpec.build(overrides={"method": "kd", "dataset": "digits", "seeds": "1"})
    (first,) = plan(spec, tmp_path)
    assert first.status == "todo"
    path = store.record_path(tmp_path, first.key)
    path.write_text(json.dumps({"schema": SCHEMA_VERSION + 1, "something": "this kdbench does not know"}))
    before = path.read_bytes()
    with pytest.warns(UserWarning, match=f"schema {SCHEMA_VERSION + 1}"):
        (again,) = plan(spec, tmp_path)
    assert again.status == "done"  # left to the kdbench that wrote it: never rerun over
    assert path.read_bytes() == before


@pytest.mark.parametrize("schema, reason", [
    (None, "no schema version"),
    (0, "schema version 0, this kdbench reads versions 1, 2"),
    (True, "schema version True"),
    (str(SCHEMA_VERSION + 1), f"schema version '{SCHEMA_VERSION + 1}'"),
    (float(SCHEMA_VERSION + 1), f"schema version {float(SCHEMA_VERSION + 1)}"),
], ids=["missing", "older", "a-bool", "a-string", "a-float"])
def test_missing_older_or_mistyped_schema_is_read_as_before(tmp_path: Path, schema: Any, reason: str) -> None:
    path = _with_schema(tmp_path, schema)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no newer-schema warning from reading it
        valid, invalid = store.read_records(tmp_path)
    assert valid == [] and len(invalid) == 1 and not isinstance(invalid[0], store.Newer)
    assert reason in invalid[0].reason and invalid[0].path == path


# ------------------------------------------------------------------------------- namespaced metrics

def test_a_methods_own_metrics_sit_under_its_name_and_shared_ones_at_the_top() -> None:
    flat = {"test_acc": 90.0, "params": 10, "best_epoch": 3, "feature_mse": 0.5, "mode": "ff", "fusion": {"a": 1}}
    out = namespaced("tcn", flat)
    assert out == {"test_acc": 90.0, "params": 10, "best_epoch": 3, "tcn": {"feature_mse": 0.5, "mode": "ff", "fusion": {"a": 1}}}
    assert namespaced("kd", {"test_acc": 1.0}) == {"test_acc": 1.0}  # nothing of its own: no namespace
    assert namespaced("tcn", out) == out  # idempotent


def test_a_schema_1_record_is_read_with_its_metrics_namespaced(tmp_path: Path) -> None:
    """The committed records are schema 1 (flat): read, they look like the records written now,
    and the report's columns name the method (`kd.temperature_used`)."""
    rec = {"schema": 1, **ok_record().to_dict()}
    rec["metrics"] = {**rec["metrics"], "temperature_used": 4.0}
    path = store.record_path(tmp_path, rec["run_key"])
    path.write_text(json.dumps(rec))
    (read,), invalid = store.read_records(tmp_path)
    assert invalid == [] and read["schema"] == SCHEMA_VERSION
    assert read["metrics"] == {"test_acc": 97.0, "test_acc_valbest": 97.5, "kd": {"temperature_used": 4.0}}
    row = store.record_to_row(read)
    assert row["kd.temperature_used"] == 4.0 and row["test_acc"] == 97.0


def test_a_new_record_holds_the_methods_own_metrics_under_its_name(tmp_path: Path, monkeypatch) -> None:
    from kdbench.config import RunSpec
    from kdbench.runner import execute

    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    rec = execute(RunSpec(method="tcn", mode="ff", n_students=2, dataset="digits", epochs=1, max_train=200),
                  tmp_path, progress=False, latency=False)
    assert rec["status"] == "ok"
    m = rec["metrics"]
    assert "feature_mse" not in m and isinstance(m["tcn"]["feature_mse"], float)
    assert m["params_per_student"] and m["test_acc"] >= 0  # the runner's measurements stay at the top
    on_disk = json.loads(store.record_path(tmp_path, rec["run_key"]).read_text())
    assert on_disk["schema"] == SCHEMA_VERSION and on_disk["metrics"] == m
