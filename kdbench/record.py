"""The run record as a type: one place says which fields an ok and a failed run's record hold.

Records travel as plain dicts (JSON on disk, `kdbench.run`'s return value, trackers, the latency
pass), so `RunRecord` is how they are built, not how they are passed around: the runner and the
executors build one with `RunRecord.ok` / `RunRecord.failed` and hand on `to_dict()`, whose keys
keep the order records have always had. `store` checks what it reads against `SCHEMA_VERSION`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1  # the record format this kdbench writes and reads; a newer one is skipped when read

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
