"""The run record as a type: one place says which fields an ok and a failed run's record hold.

Records travel as plain dicts (JSON on disk, `kdbench.run`'s return value, trackers, the latency
pass), so `RunRecord` is how they are built, not how they are passed around: the runner and the
executors build one with `RunRecord.ok` / `RunRecord.failed` and hand on `to_dict()`, whose keys
keep the order records have always had. `store` checks what it reads against `SCHEMA_VERSION`.

Metrics are namespaced (schema 2): the measurements every run has (`SHARED_METRICS`: accuracies,
times, sizes, latency, memory, the teacher's) sit at the top of `metrics`, and whatever else a
method reports sits under `metrics[<method name>]` (`metrics["tcn"]["feature_mse"]`), so that no
method's name can shadow a shared one or another method's. Schema-1 records (all flat) are read as
schema 2 (`upgrade`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 2  # the record format this kdbench writes; a newer one is skipped when read
READS = (1, 2)  # the schemas it reads (1: flat metrics, upgraded to 2 when read)

# The metrics of every run (the runner's measurements; `best_epoch`, `epochs_run`, `epoch_time_s`
# also from a method that says so): the top level of `metrics`. Any other key is the method's own.
SHARED_METRICS = frozenset({
    "test_acc", "test_acc_valbest", "test_top5", "test_top5_valbest", "val_acc",
    "train_time_s", "targets_time_s", "teacher_time_s", "teacher_load_s", "epochs_run", "epoch_time_s", "best_epoch",
    "params", "macs", "flops", "params_per_student", "macs_per_student", "flops_per_student",
    "teacher_params", "teacher_macs", "teacher_flops", "teacher_test_acc", "teacher_val_acc",
    "latency_ms_b1", "latency_ms_b256", "latency", "latency_pass", "latency_quiet", "peak_rss_mb", "peak_cuda_mb",
})


def namespaced(method: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics` with the keys that are not shared moved under `metrics[method]`."""
    out = {k: v for k, v in metrics.items() if k in SHARED_METRICS or (k == method and isinstance(v, dict))}
    own = {k: v for k, v in metrics.items() if k not in out}
    if own:
        out[method] = {**out.get(method, {}), **own}
    return out


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """A valid schema-1 record in the schema-2 layout (its method's metrics namespaced); others as they are."""
    if record.get("schema") != 1:
        return record
    method = (record.get("spec") or {}).get("method", "")
    return {**record, "schema": SCHEMA_VERSION, "metrics": namespaced(method, record.get("metrics") or {})}

# to_dict's key order: every field, in the order records have always been written
_ORDER = ("run_key", "status", "spec", "error", "metrics", "history", "deviations", "data", "teacher",
          "warnings", "env", "code_version", "started_at", "finished_at")
_OK_ONLY = ("history", "deviations", "data", "teacher")  # written (teacher: null included) only for ok runs


@dataclass
class RunRecord:
    """One run's record. Build it with `ok` or `failed`; `to_dict` gives what is written."""

    run_key: str
    status: str
    spec: dict[str, Any]
    metrics: dict[str, Any]
    env: dict[str, Any]
    code_version: str
    error: dict[str, Any] | None = None  # a failed run's type, message, traceback (and epoch)
    history: list[dict[str, Any]] = field(default_factory=list)
    deviations: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] | None = None  # None: the run had no teacher
    warnings: list[str] = field(default_factory=list)  # written only when there are some
    started_at: str | None = None
    finished_at: str | None = None

    @classmethod
    def ok(cls, run_key: str, spec: dict[str, Any], metrics: dict[str, Any], *, history: list[dict[str, Any]],
           deviations: list[str], data: dict[str, Any], teacher: dict[str, Any] | None, env: dict[str, Any],
           code_version: str, warnings: list[str] | None = None) -> RunRecord:
        """The record of a run that trained and was measured."""
        return cls(run_key, "ok", spec, metrics, env, code_version, history=history, deviations=deviations,
                   data=data, teacher=teacher, warnings=list(warnings or []))

    @classmethod
    def failed(cls, run_key: str, spec: dict[str, Any], error: dict[str, Any], *, env: dict[str, Any],
               code_version: str, started_at: str | None = None, finished_at: str | None = None) -> RunRecord:
        """The record of a run that raised (`error`: at least `type` and `message`)."""
        return cls(run_key, "failed", spec, {}, env, code_version, error=error,
                   started_at=started_at, finished_at=finished_at)

    def to_dict(self) -> dict[str, Any]:
        """The record as written (less `schema`, which `store.write_record` puts first)."""
        out: dict[str, Any] = {}
        for name in _ORDER:
            value = getattr(self, name)
            if name in _OK_ONLY and self.status != "ok":
                continue
            if name in ("error", "started_at", "finished_at") and value is None:
                continue
            if name == "warnings" and not value:
                continue
            out[name] = value
        return out
