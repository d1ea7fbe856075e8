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
    keys: frozenset[str] = frozenset()  # the report's run keys in the grid


def _cell(spec) -> str:
    parts = [spec.method, spec.mode or "", f"n={spec.n_students}" if spec.n_students != 1 else ""]
    return " ".join(p for p in parts if p)


def _datasets(raw: dict) -> set[str]:
    """The datasets a preset's YAML names (top level and groups): only those presets are planned."""
    found = {raw.get("dataset")} | {g.get("dataset") for g in raw.get("groups") or [] if isinstance(g, dict)}
    return {d for d in found if isinstance(d, str)}


def _grids(datasets: set[str]) -> dict[str, dict]:
    """Run key -> spec of every shipped preset on one of `datasets` that can be planned here."""
    from ..sweep import SweepSpec, list_presets, plan, preset_path, read_yaml

    grids = {}
    for row in list_presets():
        try:
            if not _datasets(read_yaml(preset_path(row["name"]))) & datasets:
                continue
            planned = plan(SweepSpec.build(preset=row["name"]), "/nonexistent-kdbench-report", limit=None)
        except KdbenchError:
            continue
        grids[row["name"]] = {p.key: p.spec for p in planned}
    return grids


def match_presets(keys: Iterable[str], datasets: Iterable[str], most: int = 3) -> list[PresetMatch]:
    """The presets that made `keys`, best first: the one whose grid holds most of them (ties: fewer
    runs outside, then fewer of its own runs missing, then name), then the one holding most of the
    rest, and so on (a folder may hold the records of several presets, e.g. a table's ff cells and its
    GAN cells). Only presets on one of `datasets` are planned; one that cannot be planned here (its
    teacher file is absent) is skipped."""
    keys = set(keys)
    grids = _grids(set(datasets))
    left, found = set(keys), []
    while left and len(found) < most:
        best, best_rank = None, None
        for name, grid in grids.items():
            if not left & grid.keys():
                continue
            here = frozenset(keys & grid.keys())
            missing = Counter(_cell(spec) for k, spec in grid.items() if k not in keys)
            m = PresetMatch(name, len(grid), len(here), len(keys - grid.keys()),
                            tuple(f"{cell} x{n}" for cell, n in missing.items()), here)
            rank = (len(left & here), -m.outside, m.here - m.planned, m.name)
            if best_rank is None or rank > best_rank:
                best, best_rank = m, rank
        if best is None:
            break
        found.append(best)
        left -= best.keys
        del grids[best.name]
    return found


def match_preset(keys: Iterable[str], datasets: Iterable[str]) -> PresetMatch | None:
    """The preset whose grid holds most of `keys`, or None when none holds any (`match_presets`)."""
    found = match_presets(keys, datasets, most=1)
    return found[0] if found else None


def preset_lines(matches: list[PresetMatch], source: str, total: int) -> list[str]:
    """The protocol lines naming each preset and its command (nothing when no preset matches);
    `total`: the report's runs."""
    lines = [line for m in matches for line in preset_line(m, source, alone=len(matches) == 1)]
    if len(matches) > 1:
        outside = total - len(frozenset().union(*(m.keys for m in matches)))
        if outside:
            lines.append(f"{outside} runs here are in none of these presets.")
    return lines


def preset_line(match: PresetMatch | None, source: str, alone: bool = True) -> list[str]:
    """The protocol line naming the preset and its command (nothing when no preset matches)."""
    if match is None:
        return []
    command = f"`kdbench sweep --preset {match.name} --out results/{source}`"
    if match.here == match.planned:
        line = f"Preset: these runs are the whole grid of preset `{match.name}` ({match.planned} runs); {command} reruns it."
        if not alone:
            line = f"Preset: {match.here} runs here are the whole grid of preset `{match.name}`; {command} reruns it."
    else:
        line = (f"Preset: {match.here} of the {match.planned} runs of preset `{match.name}`; {command} runs the other "
                f"{match.planned - match.here} (not run here: {', '.join(match.missing)}).")
    if match.outside and alone:
        line += f" {match.outside} runs here are not in that preset."
    return [line]
