"""Run records on disk: one JSON file per run, written atomically, loaded into a tidy DataFrame.

A record is only ever read as a result when it parsed completely, validates against its schema
(typed fields, schema version, a run key that names its file and hashes its spec) and says
`status == "ok"`; a kill at any moment leaves either the old file, the new file, or a stray temporary
that is ignored. Invalid files are returned as `Invalid` (path, reason) for reports to list. A record
of a newer kdbench (a `schema` above `record.SCHEMA_VERSION`) is `Newer`: skipped with one warning,
counted nowhere, never listed as invalid and never rerun over (the file is left as it is).
"""
from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

import pandas as pd

from .config import LATE_FIELDS, RunSpec, run_key
from .errors import KdbenchError
from .fields import result_columns
from .record import READS, SCHEMA_VERSION, upgrade

RECORD_SUFFIX = ".json"
SUMMARY_FILE = "summary.json"  # the gate's baseline summary, kept beside its records: not a record
# spec fields promoted to DataFrame columns (one row per run): the field table's `column` fields
SPEC_COLUMNS = result_columns()


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


def record_path(out_dir: Path, key: str) -> Path:
    return Path(out_dir) / f"{key}{RECORD_SUFFIX}"


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


# --------------------------------------------------------------------------- reading and validating

@dataclass(frozen=True)
class Invalid:
    """A record file that is not a valid run record, and why: reports list it, nothing counts it,
    and a resumed sweep reruns its run."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path.name}: {self.reason}"


@dataclass(frozen=True)
class Newer(Invalid):
    """A record written by a newer kdbench (its `schema` is above `SCHEMA_VERSION`): this kdbench cannot
    read it, so it is skipped with one warning and left as it is: not listed, not counted, not rerun."""

    schema: int


def _newer_schema(rec: Any) -> int | None:
    """The record's schema when it is a newer one than this kdbench reads (None otherwise)."""
    schema = rec.get("schema") if isinstance(rec, dict) else None
    return schema if type(schema) is int and schema > SCHEMA_VERSION else None


class _Bad(Exception):
    """Why a record is invalid (internal: becomes an `Invalid`)."""


# field -> (types, what the message says); bool is never an integer here
_REQUIRED = {"run_key": (str, "a string"), "status": (str, "a string"), "spec": (dict, "an object"),
             "metrics": (dict, "an object"), "code_version": (str, "a string")}
_OPTIONAL = {"history": (list, "a list"), "deviations": (list, "a list"), "warnings": (list, "a list"), "env": (dict, "an object"),
             "data": (dict, "an object"), "teacher": ((dict, type(None)), "an object or null"),
             "error": (dict, "an object"), "started_at": (str, "a string"), "finished_at": (str, "a string")}
STATUSES = ("ok", "failed")
KEY_FIELDS = ("method", "dataset", "seed")  # spec fields the run key's readable prefix names
# metrics every ok run records as numbers (NaN is a number here: the gate refuses it, the schema does not)
NUMBER_METRICS = ("test_acc", "test_acc_valbest", "val_acc", "test_top5", "test_top5_valbest")


def _need(ok: bool, reason: str) -> None:
    if not ok:
        raise _Bad(reason)


def _typed(rec: dict[str, Any], name: str, types: Any, what: str) -> None:
    value = rec[name]
    _need(isinstance(value, types) and not isinstance(value, bool),
          f"field '{name}' must be {what}, got {type(value).__name__} {_short(value)}")


def is_number(value: Any) -> bool:
    """An int or float (NaN included), never a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def canonical_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The canonical spec a record's run key hashes: its `spec` without the derived `params_changed`."""
    return {k: v for k, v in spec.items() if k != "params_changed"}


def spec_key(spec: dict[str, Any], code_version: str, label_students: bool = False) -> str:
    """The run key a record with this `spec` and `code_version` must carry (`label_students`: a
    multi-student method's, whose prefix names the student count)."""
    return run_key(canonical_spec(spec), code_version, label_students)


def _check_fields(rec: dict[str, Any]) -> None:
    _need("schema" in rec, "no schema version (not a kdbench run record?)")
    schema = rec["schema"]
    _need(type(schema) is int and schema in READS,
          f"schema version {_short(schema)}, this kdbench reads versions {', '.join(map(str, READS))}")
    for name, (types, what) in _REQUIRED.items():
        _need(name in rec, f"field '{name}' is missing")
        _typed(rec, name, types, what)
    for name, (types, what) in _OPTIONAL.items():
        if name in rec:
            _typed(rec, name, types, what)
    _need(rec["status"] in STATUSES, f"status {rec['status']!r} is not one of {', '.join(STATUSES)}")
    _need(all(isinstance(d, str) for d in rec.get("deviations", [])), "field 'deviations' must list strings")
    _need(all(isinstance(w, str) for w in rec.get("warnings", [])), "field 'warnings' must list strings")
    _need(all(isinstance(h, dict) for h in rec.get("history", [])), "field 'history' must list objects")
    if rec["status"] == "failed":
        _need(isinstance(rec.get("error"), dict) and isinstance(rec["error"].get("message"), str),
              "a failed record needs an 'error' object with a 'message' string")
    for name in NUMBER_METRICS:
        value = rec["metrics"].get(name)
        _need(value is None or is_number(value), f"metric '{name}' must be a number, got {_short(value)}")


def _check_key(rec: dict[str, Any], path: Path) -> None:
    """The key names the file and is the hash of the spec: a copy, a rename or an edited spec is caught."""
    key = rec["run_key"]
    _need(path.name == f"{key}{RECORD_SUFFIX}", f"its run key '{key}' is not its file name (a copy or a renamed file?)")
    _need(isinstance(rec["spec"].get("params_changed", {}), dict), "field 'spec.params_changed' must be an object")
    for name in KEY_FIELDS:
        _need(name in rec["spec"], f"field 'spec.{name}' is missing")
    try:
        RunSpec.from_dict(canonical_spec(rec["spec"]))
    except (KdbenchError, TypeError, ValueError) as e:
        raise _Bad(f"spec: {e}") from None
    # the reader loads no method: the prefix may name the student count (multi-student methods) or not; the hash is checked
    keys = [spec_key(rec["spec"], rec["code_version"], label_students=n) for n in (False, True)
            if not n or "n_students" in rec["spec"]]
    expected = next((k for k in keys if k.rpartition("-")[0] == key.rpartition("-")[0]), keys[0])
    _need(key in keys, f"its run key does not match its spec (the spec hashes to '{expected}'; edited?)")


def check_record(rec: Any, path: Path) -> str | None:
    """Why `rec`, read from `path`, is not a valid run record (None when it is one)."""
    try:
        _need(isinstance(rec, dict), f"not a JSON object but a {type(rec).__name__}")
        _check_fields(rec)
        _check_key(rec, Path(path))
    except _Bad as bad:
        return str(bad)
    return None


def load_record(path: Path) -> dict[str, Any] | Invalid:
    """The validated record at `path`, or an `Invalid` saying why it is not one."""
    path = Path(path)
    try:
        rec = json.loads(path.read_bytes())
    except OSError as e:
        return Invalid(path, f"cannot be read ({e.strerror or e})")
    except (ValueError, RecursionError) as e:
        return Invalid(path, f"not valid JSON: truncated or corrupt ({str(e) or type(e).__name__})")
    schema = _newer_schema(rec)
    if schema is not None:
        reason = f"run record schema {schema} is newer than this kdbench reads ({SCHEMA_VERSION}): skipped, file left as it is"
        warnings.warn(f"{path}: {reason}", stacklevel=1)  # one place: shown once per file and process
        return Newer(path, reason, schema)
    reason = check_record(rec, path)
    return upgrade(rec) if reason is None else Invalid(path, reason)


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at `path`, or None when it is missing, unreadable or not a valid record."""
    rec = load_record(path)
    return None if isinstance(rec, Invalid) else rec


def record_files(out_dir: Path) -> list[Path]:
    """The record files of a results directory, sorted (temporaries and the baseline summary left out)."""
    return [p for p in sorted(Path(out_dir).glob(f"*{RECORD_SUFFIX}"))
            if not p.name.startswith(".") and p.name != SUMMARY_FILE]


def read_records(out_dir: Path) -> tuple[list[dict[str, Any]], list[Invalid]]:
    """The valid records of a directory (one per run key: a file holds the key it is named by) and the
    invalid files; reports and the gate show the second list instead of silently dropping it. A newer
    kdbench's record is in neither: `load_record` warned about it once."""
    valid: list[dict[str, Any]] = []
    invalid: list[Invalid] = []
    for path in record_files(out_dir):
        rec = load_record(path)
        if not isinstance(rec, Newer):
            (invalid if isinstance(rec, Invalid) else valid).append(rec)
    return valid, invalid


def iter_records(out_dir: Path) -> Iterator[dict[str, Any]]:
    """The valid records of a directory (see `read_records` for the invalid ones)."""
    yield from read_records(out_dir)[0]


def is_done(out_dir: Path, key: str) -> bool:
    """A valid ok record exists for run key `key` (an invalid one is rerun)."""
    rec = read_record(record_path(out_dir, key))
    return rec is not None and rec.get("status") == "ok"


def invalid_lines(invalid: Iterable[Invalid]) -> list[str]:
    """One `file: reason` line per invalid record file (the body of every warning block)."""
    return [str(i) for i in invalid]


def results_dir(path: str | Path, what: str = "results") -> Path:
    """`path` as a results directory, or one clear line saying that it is missing or a file."""
    path = Path(path)
    if not path.exists():
        raise KdbenchError(f"{what} directory '{path}' does not exist")
    if not path.is_dir():
        raise KdbenchError(f"{what} path '{path}' is a file, not a directory (give the folder that holds the "
                           f"run records)")
    return path


def variant_label(spec: dict[str, Any]) -> str:
    """Short label of the method parameters that differ from their defaults (e.g. `gan_variant=paper-intent`)."""
    changed = spec.get("params_changed") or {}
    return ",".join(f"{k}={changed[k]}" for k in sorted(changed)) or "default"


def record_to_row(rec: dict[str, Any]) -> dict[str, Any]:
    """Flatten one record to a tidy row: spec columns, status, scalar metrics, list metrics kept as
    lists; a mapping's entries as `name.key` columns (the method's own metrics: `tcn.feature_mse`)."""
    spec = rec.get("spec", {})
    row: dict[str, Any] = {"run_key": rec["run_key"], "status": rec["status"]}
    for col in SPEC_COLUMNS:
        row[col] = spec.get(col, LATE_FIELDS.get(col))  # a late field a record leaves out is at its default
    row["variant"] = variant_label(spec)
    row["error"] = (rec.get("error") or {}).get("message") if rec["status"] != "ok" else None
    method = spec.get("method")
    for name, value in (rec.get("metrics") or {}).items():
        if name in row and name != method:  # spec columns win over a metric of the same name
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


def records_frame(records: Iterable[dict[str, Any]], include_failed: bool = False) -> pd.DataFrame:
    """Records as one DataFrame, one row per run (failed runs optional)."""
    df = pd.DataFrame([record_to_row(r) for r in records])
    if df.empty:
        return pd.DataFrame(columns=["run_key", "status", *SPEC_COLUMNS, "variant"])
    if not include_failed:
        df = df[df["status"] == "ok"].reset_index(drop=True)
    return df


def load_results(out_dir: str | Path, include_failed: bool = False) -> pd.DataFrame:
    """All valid records of a results directory as one DataFrame, one row per run (failed runs optional);
    invalid record files are left out with one warning that lists them."""
    records, invalid = read_records(Path(out_dir))
    if invalid:
        warnings.warn(f"{len(invalid)} invalid record file(s) in '{out_dir}' left out: "
                      + "; ".join(invalid_lines(invalid)), stacklevel=2)
    return records_frame(records, include_failed)


# ------------------------------------------------------------------------------------- export
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def output_format(path: str | Path | None, fmt: str | None) -> str:
    """The format asked for, or the one the file name says; a contradiction is one line."""
    by_name = FORMATS.get(Path(path).suffix.lower()) if path else None
    if fmt and by_name and fmt != by_name:
        raise KdbenchError(f"--format {fmt} contradicts the output file name '{path}' (a {by_name} file)")
    return fmt or by_name or "parquet"


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """List and mapping cells (per-student metrics) as JSON text: one scalar per cell, as every
    table format and reader takes it."""
    def cell(v: Any) -> Any:
        return json.dumps(v, default=str) if isinstance(v, (list, tuple, dict)) else v

    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object and out[col].map(lambda v: isinstance(v, (list, tuple, dict))).any():
            out[col] = out[col].map(cell)
    return out.convert_dtypes()  # nullable types: integers stay integers, flags stay flags, with gaps


def export_results(records_dir: str | Path, output: str | Path | None = None, fmt: str | None = None,
                   include_failed: bool = False) -> tuple[Path, pd.DataFrame]:
    """Write the runs of `records_dir` as one tidy Parquet or CSV table (`fmt`, default from the name of
    `output`, else parquet; `output` defaults to RECORDS_DIR.parquet / .csv next to it); returns the
    file and the table written."""
    folder = results_dir(records_dir)
    fmt = output_format(output, fmt)
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise KdbenchError("--format parquet needs pyarrow: pip install pyarrow (or use --format csv)")
    if not read_records(folder)[0]:
        raise KdbenchError(f"no run records in '{folder}' (give the folder that holds the *.json records)")
    path = Path(output) if output else folder.absolute().with_name(f"{folder.absolute().name}.{fmt}")
    table = tidy(load_results(folder, include_failed=include_failed))
    if fmt == "parquet":
        atomic_write(path, lambda f: table.to_parquet(f, index=False))
    else:
        atomic_write(path, lambda f: f.write(table.to_csv(index=False).encode()))
    return path, table
