"""Run records on disk: one JSON file per run, written atomically, loaded into a tidy DataFrame.

A record is only ever read as a result when it parsed completely and says `status == "ok"`;
a kill at any moment leaves either the old file, the new file, or a stray temporary that is ignored.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import pandas as pd

SCHEMA_VERSION = 1
RECORD_SUFFIX = ".json"
# spec fields promoted to DataFrame columns (one row per run)
SPEC_COLUMNS = ("method", "dataset", "teacher", "student", "budget", "n_students", "mode", "epochs", "seed")


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _current_umask()
FILE_MODE = 0o666 & ~UMASK  # what open() would give: mkstemp's private 0600 must not leak into results
DIR_MODE = 0o777 & ~UMASK


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through `write(fileobj)` into a temp file beside `path`, fsync, then rename over it, so
    readers see the old or the new content, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))
    try:  # make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def record_path(out_dir: Path, run_key: str) -> Path:
    return Path(out_dir) / f"{run_key}{RECORD_SUFFIX}"


def write_record(out_dir: Path, record: dict[str, Any]) -> Path:
    """Atomically write one RunRecord named by its run key."""
    record = {"schema": SCHEMA_VERSION, **record}
    path = record_path(out_dir, record["run_key"])
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, default=_json_default, allow_nan=True))
    return path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at `path`, or None when it is missing, unreadable or not a complete record."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or "run_key" not in rec or "status" not in rec or "spec" not in rec:
        return None
    return rec


def iter_records(out_dir: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(Path(out_dir).glob(f"*{RECORD_SUFFIX}")):
        if path.name.startswith("."):
            continue
        rec = read_record(path)
        if rec is not None:
            yield rec


def is_done(out_dir: Path, run_key: str) -> bool:
    rec = read_record(record_path(out_dir, run_key))
    return rec is not None and rec.get("status") == "ok"


def variant_label(spec: dict[str, Any]) -> str:
    """Short label of the method parameters that differ from their defaults (e.g. `gan_variant=paper-intent`)."""
    changed = spec.get("params_changed") or {}
    return ",".join(f"{k}={changed[k]}" for k in sorted(changed)) or "default"


def record_to_row(rec: dict[str, Any]) -> dict[str, Any]:
    """Flatten one record to a tidy row: spec columns, status, scalar metrics, list metrics kept as lists."""
    spec = rec.get("spec", {})
    row: dict[str, Any] = {"run_key": rec["run_key"], "status": rec["status"]}
    for col in SPEC_COLUMNS:
        row[col] = spec.get(col)
    row["variant"] = variant_label(spec)
    row["error"] = (rec.get("error") or {}).get("message") if rec["status"] != "ok" else None
    for name, value in (rec.get("metrics") or {}).items():
        if name in row:  # spec columns win over a metric of the same name
            name = f"metric.{name}"
        if isinstance(value, dict):
            for sub, v in _flatten(value, name):
                row[sub] = v
        else:
            row[name] = value
    row["deviations"] = "; ".join(rec.get("deviations") or [])
    row["wall_s"] = _wall_s(rec)
    return row


def _wall_s(rec: dict[str, Any]) -> float | None:
    """A run's wall time from its record's start and finish stamps (1 s resolution), or None."""
    from datetime import datetime

    try:
        return (datetime.fromisoformat(rec["finished_at"]) - datetime.fromisoformat(rec["started_at"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def _flatten(d: dict[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        key = f"{prefix}.{k}"
        if isinstance(v, dict):
            yield from _flatten(v, key)
        else:
            yield key, v


def load_results(out_dir: str | Path, include_failed: bool = False) -> pd.DataFrame:
    """All records of a results directory as one DataFrame, one row per run (failed runs optional)."""
    rows = [record_to_row(r) for r in iter_records(Path(out_dir))]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["run_key", "status", *SPEC_COLUMNS, "variant"])
    if not include_failed:
        df = df[df["status"] == "ok"].reset_index(drop=True)
    return df
