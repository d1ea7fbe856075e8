"""Epoch checkpoints (kdbench.resume): a run stopped after a saved epoch resumes to the record an
uninterrupted run writes, for every method and mode; the checkpoints go once the record is written."""
from __future__ import annotations

import os

import pytest
from helpers_sweep import comparable

from kdbench.config import RunSpec
from kdbench.errors import KdbenchError
from kdbench.method import load_methods
from kdbench.resume import PARTIAL_DIR, LoopCheckpoint, every_seconds
from kdbench.runner import execute

DATASET, MAX_TRAIN, EPOCHS = "digits", 300, 3


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    """One private cache for the module (the digits teacher trains once), no progress bars."""
    old = {k: os.environ.get(k) for k in ("KDBENCH_CACHE", "KDBENCH_PROGRESS")}
    os.environ["KDBENCH_CACHE"] = str(tmp_path_factory.mktemp("resume-cache"))
    os.environ["KDBENCH_PROGRESS"] = "0"
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def stop_after_save(monkeypatch, n: int) -> list[str]:
    """Make the n-th checkpoint save of this process raise KeyboardInterrupt right after writing
    (a kill after that epoch); returns the list of saved files."""
    saved: list[str] = []
    original = LoopCheckpoint.save

    def save(self, state):
        original(self, state)
        saved.append(self.path.name)
        if len(saved) == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(LoopCheckpoint, "save", save)
    return saved


def interrupted_then_resumed(spec: RunSpec, out, monkeypatch, stop_at: int) -> tuple[dict, list[str]]:
    with monkeypatch.context() as m:
        saved = stop_after_save(m, stop_at)
        with pytest.raises(KeyboardInterrupt):
            execute(spec, out, progress=False, latency=False, checkpoint_every=0)
    assert not list(out.glob("*.json")), "an interrupted run writes no record"
    assert list((out / PARTIAL_DIR).glob("*/loop-*.pt")), "the interrupted run left its checkpoints"
    record = execute(spec, out, progress=False, latency=False, checkpoint_every=0)
    return record, saved


def _cases() -> list[tuple[str, str | None]]:
    return [(name, mode) for name, cls in load_methods().items() for mode in cls.modes]


@pytest.mark.parametrize("method,mode", _cases(), ids=lambda v: str(v))
def test_a_run_stopped_after_an_epoch_resumes_to_the_uninterrupted_record(method, mode, tmp_path, monkeypatch):
    spec = RunSpec(method=method, dataset=DATASET, mode=mode, epochs=EPOCHS, max_train=MAX_TRAIN, seed=0)
    whole = execute(spec, tmp_path / "whole", progress=False, latency=False, checkpoint_every=None)
    assert whole["status"] == "ok", whole.get("error", {}).get("traceback")
    resumed, saved = interrupted_then_resumed(spec, tmp_path / "resumed", monkeypatch, stop_at=2)
    assert resumed["status"] == "ok", resumed.get("error", {}).get("traceback")
    assert comparable(resumed) == comparable(whole)
    assert resumed["env"]["resumed"]["loops"][0]["epoch"] >= 1
    assert "resumed" not in whole["env"]
    assert not (tmp_path / "resumed" / PARTIAL_DIR).exists(), "the checkpoints go once the record is written"


def test_a_later_stage_resumes_and_a_finished_stage_is_restored_without_training(tmp_path, monkeypatch):
    """TAKD: the assistant's loop (3 epochs, saved after each) finished, the student's stopped after
    its 2nd epoch; the resumed run trains only the student's last epoch."""
    spec = RunSpec(method="takd", dataset=DATASET, epochs=EPOCHS, max_train=MAX_TRAIN, seed=1,
                   params={"assistants": ["plain2"]})
    whole = execute(spec, tmp_path / "whole", progress=False, latency=False, checkpoint_every=None)
    resumed, saved = interrupted_then_resumed(spec, tmp_path / "resumed", monkeypatch, stop_at=EPOCHS + 2)
    assert saved == ["loop-1.pt"] * EPOCHS + ["loop-2.pt"] * 2
    assert comparable(resumed) == comparable(whole)
    loops = {r["loop"]: r["epoch"] for r in resumed["env"]["resumed"]["loops"]}
    assert loops == {"loop-1": EPOCHS, "loop-2": 2}
    assert resumed["metrics"]["train_time_s"] > 0


def test_a_checkpoint_of_another_loop_is_ignored(tmp_path, monkeypatch):
    """A file whose loop has another shape (the spec or code changed under the same key) is not loaded."""
    spec = RunSpec(method="student", dataset=DATASET, epochs=EPOCHS, max_train=MAX_TRAIN, seed=0)
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        stop_after_save(m, 1)
        with pytest.raises(KeyboardInterrupt):
            execute(spec, out, progress=False, latency=False, checkpoint_every=0)
    (path,) = (out / PARTIAL_DIR).glob("*/loop-1.pt")
    import torch

    state = torch.load(path, weights_only=True)
    state["fingerprint"]["batches"] += 1
    torch.save(state, path)
    record = execute(spec, out, progress=False, latency=False, checkpoint_every=0)
    assert record["status"] == "ok" and "resumed" not in record["env"]


def test_short_loops_write_no_checkpoint(tmp_path, monkeypatch):
    saved = stop_after_save(monkeypatch, 10**6)
    spec = RunSpec(method="student", dataset=DATASET, epochs=2, max_train=MAX_TRAIN, seed=0)
    assert execute(spec, tmp_path, progress=False, latency=False)["status"] == "ok"  # the default: every 300 s
    assert saved == []


@pytest.mark.parametrize("bad", ["-1", "soon", "nan"])
def test_bad_checkpoint_interval_is_one_line(bad):
    with pytest.raises(KdbenchError, match="checkpoint_every"):
        every_seconds(bad)
    assert every_seconds("off") is None and every_seconds("0") == 0.0


def test_the_dry_run_names_a_run_stopped_in_training(tmp_path):
    from kdbench.resume import run_folder
    from kdbench.sweep import PLAN_STATES, SweepSpec, plan

    spec = SweepSpec.build(overrides={"method": "student", "dataset": "digits", "seeds": "1"})
    (first,) = plan(spec, tmp_path)
    assert first.status == "todo"
    folder = run_folder(tmp_path, first.key)
    folder.mkdir(parents=True)
    (folder / "loop-1.pt").write_bytes(b"")
    (again,) = plan(spec, tmp_path)
    assert again.status == "partial" and "resumes" in PLAN_STATES[again.status]
