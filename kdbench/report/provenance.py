"""Which shipped preset made a report's runs, so the report names the one command that reruns (or
completes) them: the runs are matched by run key against each preset's planned grid, never by name."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from ..errors import KdbenchError


@dataclass(frozen=True)
class PresetMatch:
    name: str
    planned: int  # runs in the preset's grid
    here: int  # of them, with a record in the report
    outside: int  # report records that are not in the grid
    missing: tuple[str, ...]  # cells of the grid with no record here ("tcn gan n=4 x3")


def _cell(spec) -> str:
    parts = [spec.method, spec.mode or "", f"n={spec.n_students}" if spec.n_students != 1 else ""]
    return " ".join(p for p in parts if p)


def _datasets(raw: dict) -> set[str]:
    """The datasets a preset's YAML names (top level and groups): only those presets are planned."""
    found = {raw.get("dataset")} | {g.get("dataset") for g in raw.get("groups") or [] if isinstance(g, dict)}
    return {d for d in found if isinstance(d, str)}


def match_preset(keys: Iterable[str], datasets: Iterable[str]) -> PresetMatch | None:
    """The preset whose grid holds most of `keys` (ties: fewer runs outside, then name), or None when
    none holds any. Only presets on one of `datasets` are planned; one that cannot be planned here
    (e.g. its teacher file is absent) is skipped."""
    from ..sweep import SweepSpec, list_presets, plan, preset_path, read_yaml

    keys, datasets = set(keys), set(datasets)
    best: PresetMatch | None = None
    for row in list_presets():
        try:
            if not _datasets(read_yaml(preset_path(row["name"]))) & datasets:
                continue
            planned = plan(SweepSpec.build(preset=row["name"]), "/nonexistent-kdbench-report", limit=None)
        except KdbenchError:
            continue
        grid = {p.key: p.spec for p in planned}
        here = keys & grid.keys()
        if not here:
            continue
        missing = Counter(_cell(spec) for k, spec in grid.items() if k not in keys)
        m = PresetMatch(row["name"], len(grid), len(here), len(keys - grid.keys()),
                        tuple(f"{cell} x{n}" for cell, n in missing.items()))
        if best is None or (m.here, -m.outside, m.name) > (best.here, -best.outside, best.name):
            best = m
    return best


def preset_line(match: PresetMatch | None, source: str) -> list[str]:
    """The protocol line naming the preset and its command (nothing when no preset matches)."""
    if match is None:
        return []
    command = f"`kdbench sweep --preset {match.name} --out results/{source}`"
    if match.here == match.planned:
        line = f"Preset: these runs are the whole grid of preset `{match.name}` ({match.planned} runs); {command} reruns it."
    else:
        line = (f"Preset: {match.here} of the {match.planned} runs of preset `{match.name}`; {command} runs the other "
                f"{match.planned - match.here} (not run here: {', '.join(match.missing)}).")
    if match.outside:
        line += f" {match.outside} runs here are not in that preset."
    return [line]
