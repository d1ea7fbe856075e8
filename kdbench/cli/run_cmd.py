"""`kdbench run`: one run of one method, written as a RunRecord JSON."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import RunSpec
from ..errors import KdbenchError
from .common import GRID_OPTIONS, add_field_options, add_run_options, given_options, make_out_dir, out_dir, spec_fields


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run one method once and write its record")
    add_field_options(p, "run", only=GRID_OPTIONS)
    p.add_argument("--out", default="results/runs", help="directory for the record (default results/runs)")
    p.add_argument("--from-record", metavar="FILE", help="rerun exactly the spec stored in a record")
    add_run_options(p, "run")
    p.set_defaults(func=run)


def read_record_spec(path: Path) -> RunSpec:
    """The spec stored in a record file; anything that is not a readable record is one clear line."""
    try:
        text = path.read_text()
    except OSError as e:
        raise KdbenchError(f"cannot read record '{path}': {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise KdbenchError(f"record '{path}' is not a text (JSON) file") from None
    if not text.strip():
        raise KdbenchError(f"record '{path}' is empty")
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise KdbenchError(f"record '{path}' is not valid JSON: {e}") from None
    if not isinstance(record, dict) or not isinstance(record.get("spec"), dict):
        raise KdbenchError(f"'{path}' is not a kdbench run record (no 'spec' mapping)")
    from ..runner import spec_from_record

    try:
        return spec_from_record(record)
    except KdbenchError as e:
        raise KdbenchError(f"record '{path}': {e}") from None
    except (TypeError, ValueError) as e:
        raise KdbenchError(f"record '{path}' has a bad spec: {e}") from None


def run(args: argparse.Namespace) -> int:
    from ..api import preflight
    from ..resume import every_seconds
    from ..runner import execute, resolve
    from ..tracking import setup

    every = every_seconds(args.checkpoint_every)
    out = out_dir(args.out)
    track = setup(args.log, out)  # unknown or missing trackers: one line, before anything runs
    if args.from_record:
        given = [g for g in given_options(args) if g != "--device"]  # --device may move a rerun to other hardware
        if given:
            raise KdbenchError(f"--from-record reruns the stored spec exactly; it contradicts {', '.join(sorted(given))}")
        spec = read_record_spec(Path(args.from_record))
        if args.device:
            spec = spec.replace(device=args.device)
    else:
        if not args.method:
            raise KdbenchError("--method is required (see `kdbench list methods`)")
        spec = RunSpec(method=args.method, **spec_fields(args))
    r = resolve(spec)
    preflight([r.spec.dataset], out, args.data_root, runs=[r])
    make_out_dir(out)
    record = execute(r.spec, out, data_root=args.data_root, latency=not args.no_latency, resolved=r, track=track,
                     checkpoint_every=every)
    path = out / f"{record['run_key']}.json"
    if record["status"] != "ok":
        print(f"run {record['run_key']} FAILED: {record['error']['type']}: {record['error']['message']} (record: {path})")
        return 1
    m = record["metrics"]
    summary = ", ".join(f"{k}={m[k]:.2f}" for k in ("test_acc", "test_acc_valbest", "val_acc", "train_time_s") if isinstance(m.get(k), (int, float)))
    print(f"run {record['run_key']} ok: {summary}\nrecord: {path}")
    return 0
