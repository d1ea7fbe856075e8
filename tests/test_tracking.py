"""Experiment tracking (`--log tensorboard,mlflow,wandb`) against the real client libraries, each read
back with its own reader; tracking changes no result; bad trackers are one line, exit 2, before any
training; worker processes (the local pool, Ray) track their runs; `kdbench export` writes one tidy
Parquet / CSV table equal to `load_results`."""
from __future__ import annotations

import json
import os
import shlex
import struct
import sys
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pytest
from helpers_sweep import comparable, quiet_env, test_methods  # noqa: F401  (fixtures)

from kdbench import api, tracking
from kdbench.cli import main
from kdbench.store import load_results

REPO = Path(__file__).resolve().parents[1]
OK = "--dataset digits --max-train 60 --epochs 2 --teacher plain2 --teacher-epochs 1 --no-latency"
FAST = {"dataset": "digits", "epochs": 2, "max_train": 60, "device": "cpu"}  # for `student` runs (no teacher)


def _tracker_env(mp: pytest.MonkeyPatch, cache: Path) -> None:
    """No user tracker settings leak in (offline W&B, local MLflow store), no progress bars."""
    for k in [k for k in os.environ if k.startswith(("MLFLOW_", "WANDB_"))]:
        mp.delenv(k)
    home = cache.parent / "tracker-home"
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        mp.setenv(var, str(home / var.lower()))
    mp.setenv("KDBENCH_CACHE", str(cache))
    mp.setenv("KDBENCH_PROGRESS", "0")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """One tiny kd run with all three trackers and the same run without any."""
    base = tmp_path_factory.mktemp("tracking")
    cache = tmp_path_factory.getbasetemp() / "sweep-cache"  # the one helpers_sweep's quiet_env uses
    cache.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        _tracker_env(mp, cache)
        out = {}
        for name, extra in (("plain", ""), ("tracked", " --log tensorboard,mlflow --log wandb")):
            argv = shlex.split(f"run --method kd {OK} --out {base / name}{extra}")
            assert main(argv) == 0
            (path,) = (base / name).glob("*.json")
            out[name] = json.loads(path.read_text())
        out["dir"] = base / "tracked"
        yield out


def _history(record: dict[str, Any], key: str) -> list[float]:
    return [row[key] for row in record["history"]]


def test_tensorboard_event_files_hold_the_epochs_and_the_record(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    rec = runs["tracked"]
    acc = EventAccumulator(str(runs["dir"] / "tensorboard" / rec["run_key"]), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    epoch_keys = [k for k in rec["history"][0] if k != "epoch"]
    assert set(epoch_keys) <= set(acc.Tags()["scalars"]) and "val_acc" in epoch_keys
    for key in epoch_keys:
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx(_history(rec, key))
    assert acc.Scalars("final/test_acc_valbest")[0].value == pytest.approx(rec["metrics"]["test_acc_valbest"])
    text = {tag.split("/")[0]: make_ndarray(acc.Tensors(tag)[0].tensor_proto).item().decode() for tag in acc.Tags()["tensors"]}
    assert text["status"] == "ok" and rec["run_key"] in text["spec"]
    assert text["deviations"] == ("; ".join(rec["deviations"]) or "none")


def test_mlflow_file_store_read_back_through_its_client(runs, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    rec = runs["tracked"]
    client = MlflowClient(tracking_uri=(runs["dir"] / "mlruns").as_uri())
    exp = client.get_experiment_by_name("kdbench")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == rec["run_key"] and run.info.status == "FINISHED"
    for key in ("val_acc", "time_s"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2]
        assert [m.value for m in history] == pytest.approx(_history(rec, key))
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    assert metrics["final/test_acc"] == pytest.approx(rec["metrics"]["test_acc"])
    assert params["method"] == "kd" and params["epochs"] == "2" and params["teacher_recipe.epochs"] == "1"
    assert tags["kdbench.run_key"] == rec["run_key"] and tags["kdbench.status"] == "ok"
    stored = client.download_artifacts(run.info.run_id, "record.json", str(runs["dir"].parent / "mlflow-dl"))
    assert json.loads(Path(stored).read_text())["metrics"]["test_acc"] == rec["metrics"]["test_acc"]


def _wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records of a `.wandb` file: W&B's own Record messages, in the LevelDB log
    framing W&B writes them in (32 KiB blocks of 7-byte-headed chunks after a 7-byte file header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += block - pos % block
            continue
        parts = (b"" if kind in (1, 2) else parts) + data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            rec = pb.Record()
            rec.ParseFromString(parts)
            yield rec


def test_wandb_offline_run_holds_history_summary_and_config(runs):
    rec = runs["tracked"]
    (run_dir,) = (runs["dir"] / "wandb").glob("offline-run-*")
    (log,) = run_dir.glob("*.wandb")
    history, summary, config, names = {}, {}, {}, []
    for r in _wandb_records(log):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            names.append(r.run.display_name)
            config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            history[row["_step"]] = row
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
    assert names == [rec["run_key"]]
    assert config["method"] == "kd" and config["run_key"] == rec["run_key"] and config["epochs"] == 2
    assert sorted(history) == [1, 2]
    assert [history[s]["val_acc"] for s in (1, 2)] == pytest.approx(_history(rec, "val_acc"))
    assert summary["final/test_acc_valbest"] == pytest.approx(rec["metrics"]["test_acc_valbest"])
    assert summary["status"] == "ok"


def test_tracking_changes_no_result(runs):
    """Same run key, spec, metrics, history and teacher with and without --log; the record does
    not mention the trackers."""
    plain, tracked = runs["plain"], runs["tracked"]
    assert tracked["run_key"] == plain["run_key"]
    assert comparable(tracked) == comparable(plain)
    assert set(tracked) == set(plain) and "log" not in tracked["spec"]


class _Recorder:
    """A tracker that keeps what it is given (registered for one test)."""

    calls: list[tuple[str, Any]] = []

    def __init__(self, root: Path):
        self.root = root

    def start(self, run_key, spec):
        self.calls.append(("start", (run_key, spec)))

    def log_epoch(self, epoch, metrics):
        self.calls.append(("epoch", (epoch, metrics)))

    def finish(self, record):
        self.calls.append(("finish", record))


class _Broken(_Recorder):
    def log_epoch(self, epoch, metrics):
        raise OSError("disk full")


@pytest.fixture
def own_trackers(monkeypatch):
    _Recorder.calls = []
    for name, cls in (("recorder", _Recorder), ("broken", _Broken)):
        monkeypatch.setitem(tracking.TRACKERS._entries, name,
                            tracking.TrackerType(cls, package="json", extra=name))


def test_a_registered_tracker_gets_every_epoch_and_the_record_and_a_broken_one_fails_nothing(own_trackers, tmp_path,
                                                                                             caplog):
    """The registry is the seam (no tracker names in the runner); a tracker that raises stops with
    one warning and the run is still ok, its record unchanged."""
    record = api.run("student", out=tmp_path, latency=False, trackers="broken,recorder", **FAST)
    assert record["status"] == "ok"
    kinds = [k for k, _ in _Recorder.calls]
    assert kinds == ["start", "start", "epoch", "epoch", "finish"]  # both started; the broken one left at epoch 1
    assert _Recorder.calls[0][1][0] == record["run_key"] and _Recorder.calls[0][1][1] == record["spec"]
    epochs = [v for k, v in _Recorder.calls if k == "epoch"]
    assert [e for e, _ in epochs] == [1, 2]
    assert [m for _, m in epochs] == [{k: v for k, v in row.items() if k != "epoch"} for row in record["history"]]
    assert _Recorder.calls[-1][1] == record
    warnings = [r.getMessage() for r in caplog.records if r.name == "kdbench.tracking"]
    assert len(warnings) == 1 and "tracker broken stopped logging" in warnings[0] and "disk full" in warnings[0]


def test_a_failed_run_is_finished_as_failed_in_the_trackers(own_trackers, test_methods, tmp_path):
    record = api.run("sweeptest-raise", out=tmp_path, latency=False, trackers="recorder", **FAST)
    assert record["status"] == "failed"
    last = _Recorder.calls[-1][1]
    assert [k for k, _ in _Recorder.calls] == ["start", "finish"] and last["status"] == "failed"
    assert last["run_key"] == record["run_key"] and "deliberate failure" in last["error"]["message"]


def test_stages_other_than_the_method_prefix_their_metrics_and_steps_run_on():
    s = tracking.Session("tcn")
    got = []
    s.trackers["r"] = type("T", (), {"log_epoch": lambda self, e, m: got.append((e, m))})()
    s.epoch("tcn", {"epoch": 1, "ce": 0.5})
    s.epoch("tcn ff s0", {"epoch": 1, "val_mse": 0.25, "flag": True})
    assert got == [(1, {"ce": 0.5}), (2, {"tcn_ff_s0/val_mse": 0.25})]


@pytest.mark.parametrize("argv", [f"run --method kd {OK} --log nope", f"sweep --method kd {OK} --log tensorboard --log nope"])
def test_unknown_tracker_is_one_line_exit_2(argv, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(shlex.split(f"{argv} --out {out}")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdbench: error: unknown tracker 'nope'") and "wandb" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_missing_tracker_package_is_one_line_before_training(command, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(shlex.split(f"{command} --method kd {OK} --log wandb --out {out}")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--log wandb needs the 'wandb' package" in err[0] and "kdbench[wandb]" in err[0]
    assert not out.exists() and not (tmp_path / "cache").exists()  # nothing trained, nothing written


def _tensorboard_steps(out: Path, key: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard" / key))
    acc.Reload()
    return [e.step for e in acc.Scalars("val_acc")]


def test_pool_workers_track_their_runs(tmp_path, monkeypatch):
    """Two pool workers, every tracker: each run has its event files, its MLflow run (one
    experiment, however the workers raced to create it) and its offline W&B run."""
    from mlflow import MlflowClient

    _tracker_env(monkeypatch, Path(os.environ["KDBENCH_CACHE"]))
    res = api.sweep("student", seeds=2, workers=2, threads=1, out=tmp_path, latency=False, log=None,
                    trackers=["tensorboard", "mlflow,wandb"], **FAST)
    assert res.ok and len(res.records) == 2
    keys = sorted(rec["run_key"] for rec in res.records)
    for key in keys:
        assert _tensorboard_steps(tmp_path, key) == [1, 2]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("kdbench").experiment_id])
    assert sorted(r.info.run_name for r in runs) == keys and {r.info.status for r in runs} == {"FINISHED"}
    assert len(list((tmp_path / "wandb").glob("offline-run-*/*.wandb"))) == 2


def test_ray_tasks_track_their_runs(tmp_path):
    if os.environ.get("CI", "").lower() == "true":
        import ray  # CI installs the ray extra: missing Ray must fail there
    else:
        ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        res = api.sweep("student", seeds=1, executor="ray", threads=1, out=tmp_path, latency=False, log=None,
                        trackers="tensorboard", **FAST)
    finally:
        ray.shutdown()
    assert res.ok and _tensorboard_steps(tmp_path, res.records[0]["run_key"]) == [1, 2]


# ---------------------------------------------------------------------------------------------
# kdbench export
# ---------------------------------------------------------------------------------------------
RICH = REPO / "results" / "methods-mnist"  # committed records of every method: lists, flags, gaps


def _expected(folder: Path) -> pd.DataFrame:
    from kdbench.store import tidy

    return tidy(load_results(folder))


def test_export_parquet_reads_back_equal_to_load_results(tmp_path, capsys):
    out = tmp_path / "all.parquet"
    assert main(["export", str(RICH), "-o", str(out)]) == 0
    assert f"to {out}" in capsys.readouterr().out
    back = pd.read_parquet(out)
    expected = _expected(RICH)
    pd.testing.assert_frame_equal(back, expected)
    assert len(back) == len(load_results(RICH)) and back["params_per_student"].notna().any()
    assert json.loads(back.dropna(subset=["params_per_student"])["params_per_student"].iloc[0])  # lists as JSON text


def test_export_csv_reads_back_equal_to_load_results(tmp_path):
    out = tmp_path / "all.csv"
    assert main(["export", str(RICH), "--format", "csv", "-o", str(out)]) == 0
    back = pd.read_csv(out).convert_dtypes()
    expected = _expected(RICH)
    assert list(back.columns) == list(expected.columns)
    for c in expected.columns:  # CSV tells no empty text from a missing value
        if expected[c].dtype == "string":
            expected[c] = expected[c].replace("", pd.NA)
    typed = [c for c in expected.columns if expected[c].notna().any()]  # an empty CSV column has no type
    pd.testing.assert_frame_equal(back[typed], expected[typed])
    assert all(back[c].isna().all() for c in expected.columns if c not in typed)


def test_export_of_a_tracked_run_and_its_default_file(runs):
    assert main(["export", str(runs["dir"]), "--format", "csv"]) == 0
    back = pd.read_csv(runs["dir"].with_name("tracked.csv"))
    assert list(back["run_key"]) == [runs["tracked"]["run_key"]]


@pytest.mark.parametrize("argv, message", [
    ("export {tmp}/nowhere -o {tmp}/x.csv", "does not exist"),
    ("export {tmp}/empty -o {tmp}/x.csv", "no run records"),
    ("export {rich} --format csv -o {tmp}/x.parquet", "--format csv contradicts"),
    ("export {rich} --format xlsx", "invalid choice: 'xlsx'"),
])
def test_export_bad_input_is_one_line_exit_2(argv, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(shlex.split(argv.format(tmp=tmp_path, rich=RICH))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.parquet").exists()


def test_export_is_python_api_too(tmp_path):
    import kdbench

    path, table = kdbench.export_results(RICH, tmp_path / "all.csv")
    assert path == tmp_path / "all.csv" and len(table) == len(load_results(RICH))
    assert list(pd.read_csv(path).columns) == list(table.columns)
