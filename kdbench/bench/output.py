"""The bench's table: one line per row on the terminal, a Markdown table and bench.json on disk."""
from __future__ import annotations

import json
from pathlib import Path

from .base import BenchReport, BenchRow


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "n/a"
    return f"{v:.3g}{(' ' + unit) if unit else ''}"


def table_rows(report: BenchReport) -> list[dict[str, str]]:
    out = []
    for r in report.rows:
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        checks = "" if not r.checks else ("checks ok" if all(r.checks.values()) else
                                          "CHECK FAILED: " + "; ".join(k for k, v in r.checks.items() if not v))
        notes = "; ".join(x for x in (r.error and f"ERROR {r.error}", checks, r.notes,
                                      r.load_avg and f"load {r.load_avg[0]}->{r.load_avg[1]}") if x)
        out.append({"name": r.name, "A": f"{_fmt(r.a, r.unit)} ({r.a_label})" if r.a_label else "n/a",
                    "B": f"{_fmt(r.b, r.unit)} ({r.b_label})" if r.b_label else "n/a",
                    "ratio A/B": _fmt(r.ratio), "goal": str(r.goal), "met?": met, "notes": notes})
    return out


def one_line(r: BenchRow) -> str:
    return f"{r.name}: A={_fmt(r.a, r.unit)} B={_fmt(r.b, r.unit)} ratio={_fmt(r.ratio)} goal {r.goal}" + (
        f" ERROR {r.error}" if r.error else "") + ("" if all(r.checks.values()) else " CHECK FAILED")


def markdown(report: BenchReport) -> str:
    import pandas as pd

    env = report.env
    head = [
        "# kdbench bench", "",
        f"{env.get('date')}, kdbench {env.get('kdbench_version')} @ {env.get('git_commit')}, torch {env.get('torch')}, "
        f"device {env.get('device')}, CPU {env.get('cpu')} ({env.get('cpu_count')} cores), "
        f"torch threads {report.config['threads']}, rounds {report.config['rounds']} "
        f"(targets, parallel, alternative: {report.config['long_rounds']}), {'quick' if report.config['quick'] else 'full'} sizes.",
        f"Load average (1/5/15 min) at start {env.get('load_avg_1_5_15')}, at end {env.get('load_avg_end_1_5_15')}; "
        "per-benchmark 1-min load at its start -> end in the notes. Ratio = A / B; goals are reported, not asserted; "
        "equality checks are asserted.", "",
        pd.DataFrame(table_rows(report)).to_markdown(index=False), "",
    ]
    for r in report.rows:
        if r.name.startswith("profile") and r.details.get("categories"):
            head += [f"## {r.name}", "", "| category | self s | % of wall |", "|---|---|---|"]
            head += [f"| {k} | {v['self_s']:.3g} | {v['pct_of_wall']:.1f} |" for k, v in r.details["categories"].items()]
            head += ["", "| top op | self s | % of wall | calls |", "|---|---|---|---|"]
            head += [f"| {o['op']} | {o['self_s']:.3g} | {o['pct_of_wall']:.1f} | {o['calls']} |" for o in r.details["top_ops"]]
            head += ["", f"Time outside aten ops (Python, loop, allocator): "
                          f"{r.details['wall_s'] - r.details['ops_s']:.3g} s of {r.details['wall_s']:.3g} s.", ""]
    return "\n".join(head) + "\n"


def write_report(report: BenchReport, out_dir: str | Path) -> list[Path]:
    """bench.json + bench.md (+ profile tables) in `out_dir`, each written atomically."""
    from ..store import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench.json", out / "bench.md"]
    atomic_write_text(paths[0], json.dumps(report.to_dict(), indent=1, default=str) + "\n")
    atomic_write_text(paths[1], markdown(report))
    for name, text in report.artifacts.items():
        paths.append(out / name)
        atomic_write_text(paths[-1], text + "\n")
    return paths
