"""The CI accuracy gate: compare a fresh run of a fixed protocol with a committed baseline.

A cell is `stats.CELL_KEYS` (dataset, method, mode, n_students, variant); its seeds are the
observations. A cell regresses only when BOTH hold: a one-sided Welch t-test
(`stats.welch_one_sided`) says the new mean is below the baseline's (p < alpha) AND the drop is larger than a minimum effect in accuracy points. The test alone would
flag tiny, real-but-irrelevant shifts once the spread is small (a deterministic CPU rerun has
none); the effect size alone would flag seed noise. With fewer than two seeds on a side there is
no spread, so only the minimum-effect rule applies, and the report says so.

Data that cannot be trusted fails the gate instead of being averaged away: a new run of a cell
without a finite value of the metric (failed, NaN, missing) makes the cell INCOMPLETE (never
"improved"), and record files that fail validation are listed in one warning block, counted by no
cell, and fail the check; a baseline holding one is refused.

A baseline directory holds the run records of the protocol plus `summary.json` (per cell: seeds,
values, mean, std, n, the metric, the git commit and date it was made at). The records are the
source of truth; the summary is checked against them so a hand-edited or stale baseline is caught.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from . import __version__, store
from .stats import CELL_KEYS, welch_one_sided
from .config import CODE_VERSION
from .errors import KdbenchError

DEFAULT_METRIC = "test_acc_valbest"
SUMMARY_METRICS = ("test_acc_valbest", "test_acc")  # written to summary.json, so either can be gated
DEFAULT_ALPHA = 0.05
DEFAULT_MIN_EFFECT = 0.5  # accuracy points
SUMMARY_FILE = store.SUMMARY_FILE  # "summary.json": never read as a record
SUMMARY_SCHEMA = 1
CELL_FIELDS = CELL_KEYS  # the one definition of a cell (stats.py); the committed baseline is keyed by it
IDENTICAL_NOTE = "identical to the baseline (deterministic CPU rerun)"
# spec fields that may differ between baseline and rerun without making the protocol a different one
_PROTOCOL_IGNORED = {"seed", "params_changed"}
# environment fields that change floating-point results (thread count and memory format change reduction order)
ENV_FIELDS = ("torch", "device", "gpu", "cpu", "threads", "memory_format")

Cell = tuple  # (dataset, method, mode, n_students, variant)

# verdicts; INCOMPLETE: a new run of the cell has no finite value (failed, NaN, missing): never an improvement
OK, REGRESSION, IMPROVED, MISSING, EXTRA, INCOMPLETE = "ok", "REGRESSION", "improved", "missing", "extra", "INCOMPLETE"
FAILING = {REGRESSION, MISSING, INCOMPLETE}


def cell_label(cell: Cell) -> str:
    """Readable cell name, e.g. `tcn ff n=4 mnist` or `kd n=1 mnist [temperature=2.0]`."""
    dataset, method, mode, n, variant = cell
    parts = [str(method)] + ([str(mode)] if mode else []) + [f"n={n}", str(dataset)]
    if variant and variant != "default":
        parts.append(f"[{variant}]")
    return " ".join(parts)


def _cell_dict(cell: Cell) -> dict[str, Any]:
    return dict(zip(CELL_FIELDS, cell))


@dataclass
class CellData:
    """The observations of one cell in one results directory."""

    values: dict[int, float] = field(default_factory=dict)  # seed -> metric value
    protocols: list[dict[str, Any]] = field(default_factory=list)
    envs: list[dict[str, Any]] = field(default_factory=list)
    lacking: list[tuple[int, str]] = field(default_factory=list)  # (seed, why) of runs without a finite value

    def lacking_note(self) -> str:
        """`2 run(s) without a usable value: seed 1: failed run; seed 3: test_acc is NaN` ('' when none)."""
        if not self.lacking:
            return ""
        whys = "; ".join(f"seed {seed}: {why}" for seed, why in sorted(self.lacking))
        return f"{len(self.lacking)} run(s) without a usable value: {whys}"

    def array(self) -> np.ndarray:
        return np.asarray([self.values[s] for s in sorted(self.values)], dtype=float)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(self.array().mean()) if self.n else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof=1); NaN with fewer than two seeds."""
        return float(self.array().std(ddof=1)) if self.n >= 2 else math.nan


@dataclass
class CellResult:
    cell: Cell
    baseline: CellData | None
    new: CellData | None
    diff: float  # new mean - baseline mean, accuracy points
    p: float  # one-sided Welch p-value for new < baseline (NaN when not computable)
    verdict: str
    notes: list[str] = field(default_factory=list)


@dataclass
class CheckResult:
    metric: str
    alpha: float
    min_effect: float
    cells: list[CellResult]
    baseline_info: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    invalid: list[store.Invalid] = field(default_factory=list)  # invalid record files of the results, excluded

    def by_verdict(self, verdict: str) -> list[CellResult]:
        return [c for c in self.cells if c.verdict == verdict]

    @property
    def passed(self) -> bool:
        """No failing cell and no invalid record (a damaged result is not evidence of no regression)."""
        return not self.invalid and not any(c.verdict in FAILING for c in self.cells)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    @property
    def identical(self) -> bool:
        compared = [c for c in self.cells if c.verdict not in (MISSING, EXTRA)]
        return bool(compared) and all(IDENTICAL_NOTE in c.notes for c in compared)


# --------------------------------------------------------------------------- reading records

def collect(results_dir: str | Path, metric: str,
            what: str = "results") -> tuple[dict[Cell, CellData], list[store.Invalid]]:
    """Per-cell, per-seed values of `metric` from the valid records of a directory (runs without a finite
    value are kept as `lacking`), and the invalid record files, which no cell counts."""
    path = store.results_dir(results_dir, what)
    records, invalid = store.read_records(path)
    if not records:
        extra = f" ({len(invalid)} invalid: {'; '.join(store.invalid_lines(invalid))})" if invalid else ""
        raise KdbenchError(f"{what} directory '{path}' holds no valid run records (*.json){extra}")
    cells: dict[Cell, CellData] = {}
    known_metrics: set[str] = set()
    for rec in records:
        row = store.record_to_row(rec)
        cell = tuple(row.get(f) for f in CELL_FIELDS)
        data = cells.setdefault(cell, CellData())
        seed = int(row.get("seed") or 0)
        why = _unusable(rec, row.get(metric), metric)
        if rec["status"] == "ok":
            known_metrics.update(k for k, v in rec["metrics"].items() if store.is_number(v))
        if why:
            data.lacking.append((seed, why))
            continue
        if seed in data.values:
            raise KdbenchError(f"{what} '{path}' holds two ok runs of cell '{cell_label(cell)}' seed {seed} "
                               f"(two protocols in one directory?); keep one protocol per directory")
        data.values[seed] = float(row[metric])
        spec = {k: v for k, v in rec["spec"].items() if k not in _PROTOCOL_IGNORED}
        data.protocols.append({**spec, "code_version": rec.get("code_version")})
        env = rec.get("env") or {}
        data.envs.append({k: env.get(k) for k in ENV_FIELDS})
    if not any(d.values for d in cells.values()):
        known = ", ".join(sorted(known_metrics)) or "none"
        raise KdbenchError(f"no ok run in {what} '{path}' has metric '{metric}' (metrics there: {known})")
    return cells, invalid


def _unusable(rec: dict[str, Any], value: Any, metric: str) -> str:
    """Why a run gives no value of `metric` ('' when it gives a finite one)."""
    if rec["status"] != "ok":
        return "failed run"
    if value is None:
        return f"no {metric}"
    if not store.is_number(value):
        return f"{metric} is not a number ({value!r})"
    return "" if math.isfinite(value) else f"{metric} is {value}"


def refuse_invalid(invalid: list[store.Invalid], baseline_dir: Path) -> None:
    """A baseline with invalid record files is damaged: one line, no comparison against half of it."""
    if invalid:
        raise KdbenchError(f"baseline '{baseline_dir}' holds {len(invalid)} invalid record file(s) "
                           f"({'; '.join(store.invalid_lines(invalid))}); restore them or rerun "
                           f"`kdbench baseline update`")


# --------------------------------------------------------------------------- statistics

def compare_cell(cell: Cell, base: CellData, new: CellData, alpha: float, min_effect: float) -> CellResult:
    """Verdict of one cell present on both sides (see the module docstring for the rule)."""
    notes: list[str] = []
    diff = new.mean - base.mean
    if new.n >= 2 and base.n >= 2:
        p_less, p_greater = welch_one_sided(new.array(), base.array())
        regressed = p_less < alpha and -diff > min_effect
        improved = p_greater < alpha and diff > min_effect
    else:
        p_less = math.nan
        sides = [s for s, d in (("baseline", base), ("new", new)) if d.n < 2]
        notes.append(f"n < 2 on the {' and '.join(sides)} side: min-effect rule only (no spread to test)")
        regressed = -diff > min_effect
        improved = diff > min_effect
    verdict = INCOMPLETE if new.lacking else REGRESSION if regressed else IMPROVED if improved else OK
    if new.values == base.values:
        notes.append(IDENTICAL_NOTE)
    else:
        lost = sorted(set(base.values) - set(new.values) - {seed for seed, _ in new.lacking})  # lacking: said below
        if lost:
            notes.append(f"seed(s) {', '.join(map(str, lost))} of the baseline not in the new results")
        env = _differences(base.envs, new.envs)
        if env:
            notes.append(f"environment differs from the baseline (bit-identical values not expected): {env}")
    if new.lacking:
        notes.append(f"{new.lacking_note()} in the new results")
    notes.extend(_protocol_notes(base.protocols, new.protocols))
    return CellResult(cell, base, new, diff, p_less, verdict, notes)


def _protocol_notes(base: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    """Fields of the run spec that differ between baseline and new runs (the comparison is then suspect)."""
    differing = _differences(base, new)
    return [f"protocol differs from the baseline: {differing}"] if differing else []


def _differences(base: list[dict[str, Any]], new: list[dict[str, Any]]) -> str:
    """`key old -> new; ...` for the keys whose values differ between two lists of mappings ('' if none)."""
    if not base or not new:
        return ""
    out = []
    for key in sorted(set().union(*base, *new)):
        b = {json.dumps(p.get(key), sort_keys=True, default=str) for p in base}
        n = {json.dumps(p.get(key), sort_keys=True, default=str) for p in new}
        if b != n:
            out.append(f"{key} {'/'.join(sorted(b))} -> {'/'.join(sorted(n))}")
    return "; ".join(out)


# --------------------------------------------------------------------------- the check

def load_summary(baseline_dir: str | Path) -> dict[str, Any]:
    path = Path(baseline_dir) / SUMMARY_FILE
    if not Path(baseline_dir).exists():
        raise KdbenchError(f"baseline directory '{baseline_dir}' does not exist (make one with `kdbench baseline update`)")
    store.results_dir(baseline_dir, "baseline")  # a file: says so
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise KdbenchError(f"baseline '{baseline_dir}' has no {SUMMARY_FILE} (make one with `kdbench baseline update`)") from None
    except (OSError, ValueError) as e:
        raise KdbenchError(f"cannot read baseline summary '{path}': {e}") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("cells"), list):
        raise KdbenchError(f"baseline summary '{path}' is malformed (no 'cells' list)")
    return summary


def _verify_summary(summary: dict[str, Any], cells: dict[Cell, CellData], metric: str, baseline_dir: Path) -> None:
    """The summary must describe exactly the records beside it (for the gated metric, when it lists it)."""
    listed = [c for c in summary["cells"] if isinstance(c, dict) and c.get("metric") == metric]
    if not listed:
        return
    rerun = "; rerun `kdbench baseline update`"
    summarised: dict[Cell, dict[int, float]] = {}
    for entry in listed:
        try:
            cell = tuple(entry[f] for f in CELL_FIELDS)
            summarised[cell] = {int(s): float(v) for s, v in zip(entry["seeds"], entry["values"], strict=True)}
        except (KeyError, TypeError, ValueError):
            raise KdbenchError(f"baseline summary in '{baseline_dir}' has a malformed cell entry: {entry}") from None
    recorded = {c: d.values for c, d in cells.items() if d.values}
    for cell in sorted(set(summarised) | set(recorded), key=_sort_key):
        if summarised.get(cell) != recorded.get(cell):
            raise KdbenchError(f"baseline '{baseline_dir}': {SUMMARY_FILE} does not match its records for cell "
                               f"'{cell_label(cell)}' ({metric}){rerun}")


def _sort_key(cell: Cell) -> tuple:
    return tuple("" if v is None else str(v).zfill(6) if isinstance(v, int) else str(v) for v in cell)


def check(results_dir: str | Path, baseline_dir: str | Path, metric: str | None = None,
          alpha: float = DEFAULT_ALPHA, min_effect: float = DEFAULT_MIN_EFFECT) -> CheckResult:
    """Compare the records in `results_dir` with the baseline, cell by cell. Raises KdbenchError on bad input."""
    if not 0.0 < alpha < 1.0:
        raise KdbenchError(f"--alpha must be in (0, 1), got {alpha}")
    if not min_effect >= 0.0:
        raise KdbenchError(f"--min-effect must be >= 0 accuracy points, got {min_effect}")
    baseline_dir = Path(baseline_dir)
    summary = load_summary(baseline_dir)
    metric = metric or summary.get("metric") or DEFAULT_METRIC
    base_cells, base_invalid = collect(baseline_dir, metric, what="baseline")
    refuse_invalid(base_invalid, baseline_dir)
    _verify_summary(summary, base_cells, metric, baseline_dir)
    new_cells, invalid = collect(results_dir, metric, what="results")
    results: list[CellResult] = []
    for cell in sorted(set(base_cells) | set(new_cells), key=_sort_key):
        base, new = base_cells.get(cell), new_cells.get(cell)
        base_ok = base is not None and base.n > 0
        new_ok = new is not None and new.n > 0
        if base_ok and new_ok:
            results.append(compare_cell(cell, base, new, alpha, min_effect))
        elif base_ok:
            why = f"no usable run: {new.lacking_note()}" if new is not None and new.lacking else "no run of this cell"
            results.append(CellResult(cell, base, new, math.nan, math.nan, MISSING, [why]))
        elif new_ok:
            results.append(CellResult(cell, base, new, math.nan, math.nan, EXTRA, ["not in the baseline"]))
    info = {k: summary.get(k) for k in ("preset", "git_commit", "git_dirty", "date", "code_version", "command")}
    info["dir"] = str(baseline_dir)
    return CheckResult(metric, alpha, min_effect, results, info, invalid=invalid)


# --------------------------------------------------------------------------- report

def _fmt_stats(d: CellData | None) -> str:
    if d is None or d.n == 0:
        return "-"
    std = "n/a" if d.n < 2 else f"{d.std:.2f}"
    return f"{d.mean:.2f} ± {std} ({d.n})"


def _fmt_num(x: float, spec: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, spec)


def format_report(result: CheckResult) -> str:
    """The readable diff CI prints: one table row per cell, then notes and a one-line verdict."""
    import pandas as pd

    rows = [{
        "cell": cell_label(c.cell), "baseline mean ± std (n)": _fmt_stats(c.baseline),
        "new mean ± std (n)": _fmt_stats(c.new), "diff": _fmt_num(c.diff, "+.2f"),
        "p": _fmt_num(c.p, ".3g"), "verdict": c.verdict,
    } for c in result.cells]
    info = result.baseline_info
    lines = [
        f"accuracy gate: {result.metric} (%), one-sided Welch t-test (new < baseline) at alpha={result.alpha:g} "
        f"AND a drop of more than {result.min_effect:g} points",
        f"baseline: {info.get('dir')} (preset {info.get('preset') or '?'}, commit {str(info.get('git_commit') or '?')[:12]}"
        f"{' + local changes' if info.get('git_dirty') else ''}, {info.get('date') or '?'})",
        *([f"baseline made by: {info['command']}"] if info.get("command") else []),
        *_warning_block(result),
        "",
        pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True, colalign=("left",) * 6),
    ]
    notes = [f"- {cell_label(c.cell)}: {n}" for c in result.cells for n in c.notes
             if not (result.identical and n == IDENTICAL_NOTE)]
    if result.identical:
        notes.insert(0, f"- every cell: {IDENTICAL_NOTE}")
    if notes:
        lines += ["", "notes:", *notes]
    lines.append("")
    extra = result.by_verdict(EXTRA)
    if extra:
        lines.append(f"extra cell(s), not gated: {', '.join(cell_label(c.cell) for c in extra)}")
    lines.append(_verdict_line(result, len(extra)))
    return "\n".join(lines)


def _warning_block(result: CheckResult) -> list[str]:
    """The one block listing the results' invalid record files ([] when there are none)."""
    if not result.invalid:
        return []
    return ["", f"WARNING: {len(result.invalid)} invalid record file(s) in the results, excluded from every cell "
                "(a resumed sweep reruns them):", *[f"  - {line}" for line in store.invalid_lines(result.invalid)]]


def _verdict_line(result: CheckResult, n_extra: int) -> str:
    if result.passed:
        return (f"check passed: {len(result.cells) - n_extra} cell(s), no regression"
                + (f"; {IDENTICAL_NOTE}" if result.identical else ""))
    parts = []
    for verdict, what in ((REGRESSION, "regression(s)"), (INCOMPLETE, f"incomplete cell(s) (a run without a usable {result.metric})"),
                          (MISSING, "missing cell(s)")):
        cells = result.by_verdict(verdict)
        if cells:
            parts.append(f"{len(cells)} {what}: {', '.join(cell_label(c.cell) for c in cells)}")
    if result.invalid:
        parts.append(f"{len(result.invalid)} invalid record file(s) (listed above)")
    return "check FAILED: " + "; ".join(parts)


# --------------------------------------------------------------------------- baseline summary / update

def git_info(cwd: str | Path | None = None) -> dict[str, Any]:
    """Commit (`git rev-parse HEAD`) and whether the working tree has local changes; None outside git."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def summarize(results_dir: str | Path, metrics: Iterable[str] = SUMMARY_METRICS, preset: str | None = None,
              protocol: dict[str, Any] | None = None, git: dict[str, Any] | None = None,
              date: str | None = None, command: str | None = None) -> dict[str, Any]:
    """The summary.json content of a baseline directory: per cell and metric, seeds, values, mean, std, n."""
    if git is None:  # the checkout the code ran from; else the current directory (a non-editable install)
        git = git_info(Path(__file__).resolve().parent)
        if git["git_commit"] is None:
            git = git_info()
    date = date or datetime.now(timezone.utc).isoformat(timespec="seconds")
    entries = []
    for metric in metrics:
        cells, invalid = collect(results_dir, metric, what="baseline")
        refuse_invalid(invalid, Path(results_dir))
        for cell, d in sorted(cells.items(), key=lambda kv: _sort_key(kv[0])):
            if not d.n:
                continue
            seeds = sorted(d.values)
            entries.append({**_cell_dict(cell), "metric": metric, "seeds": seeds, "values": [d.values[s] for s in seeds],
                            "mean": d.mean, "std": None if d.n < 2 else d.std, "n": d.n,
                            "git_commit": git.get("git_commit"), "date": date})
    return {"schema": SUMMARY_SCHEMA, "preset": preset, "metric": DEFAULT_METRIC, "metrics": list(metrics),
            "date": date, **git, "kdbench_version": __version__, "code_version": CODE_VERSION,
            "protocol": protocol, "command": command, "cells": entries}


def write_summary(baseline_dir: str | Path, **kw: Any) -> Path:
    summary = summarize(baseline_dir, **kw)
    path = Path(baseline_dir) / SUMMARY_FILE
    store.atomic_write_text(path, json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return path


def replace_dir(new: Path, target: Path) -> None:
    """Swap `new` into place of `target` (old content removed only once the new one is complete)."""
    target = Path(target)
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        target.rename(old / target.name)
        new.rename(target)
        shutil.rmtree(old)
    else:
        new.rename(target)


def preset_protocol(name: str) -> dict[str, Any]:
    """The fields of sweep preset `name`, validated (unknown name -> did-you-mean), recorded as the protocol."""
    from .sweep import SweepSpec, preset_path, read_yaml

    SweepSpec.build(preset=name)  # parses every field: a broken preset fails before any work
    return read_yaml(preset_path(name))
