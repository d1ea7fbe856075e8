"""A report names the preset its runs come from, matched by run key against the preset's grid."""
from __future__ import annotations

import json
from pathlib import Path

from kdbench.report.provenance import match_preset, preset_line

RESULTS = Path(__file__).resolve().parents[1] / "results" / "tcn-table3-mnist"


def _keys() -> list[str]:
    """The committed runs of preset `tcn-table3-mnist` (the folder also holds its GAN preset's runs)."""
    from kdbench.sweep import SweepSpec, plan

    ours = {p.key for p in plan(SweepSpec.build(preset="tcn-table3-mnist"), "/nonexistent")}
    here = (json.loads(p.read_text())["run_key"] for p in RESULTS.glob("*.json"))
    return sorted(k for k in here if k in ours)


def test_committed_runs_are_matched_to_their_preset_with_what_is_missing(data_root):
    keys = _keys()
    m = match_preset(keys, ["mnist"])
    assert (m.name, m.planned, m.here, m.outside) == ("tcn-table3-mnist", 30, len(keys), 0)
    assert set(m.missing) == {"tcn gan x3", "tcn gan n=2 x3", "tcn gan n=4 x3", "tcn gan n=8 x3"}
    line = preset_line(m, "tcn-table3-mnist")[0]
    assert "`kdbench sweep --preset tcn-table3-mnist --out results/tcn-table3-mnist` runs the other 12" in line


def test_a_run_outside_the_grid_is_counted_and_unknown_runs_match_nothing(data_root):
    keys = _keys()
    m = match_preset([*keys[1:], "kd-mnist-s0-0000000000000000"], ["mnist"])
    assert (m.name, m.here, m.outside) == ("tcn-table3-mnist", len(keys) - 1, 1)
    assert preset_line(m, "x")[0].endswith("1 runs here are not in that preset.")
    assert match_preset(["kd-mnist-s0-0000000000000000"], ["mnist"]) is None
    assert match_preset(keys, ["digits"]) is None  # presets on other datasets are not even planned
    assert preset_line(None, "x") == []


def test_a_folder_of_two_presets_names_both(data_root):
    """A table's ff cells and its GAN cells are two presets sweeping into one folder: the report names
    each, with its command, and counts what neither holds."""
    from kdbench.report.provenance import match_presets, preset_lines
    from kdbench.sweep import SweepSpec, plan

    gan = [p.key for p in plan(SweepSpec.build(preset="tcn-table3-mnist-gan-cpu"), "/nonexistent")][:3]
    keys = [*_keys(), *gan, "kd-mnist-s0-0000000000000000"]
    found = match_presets(keys, ["mnist"])
    assert [(m.name, m.here) for m in found] == [("tcn-table3-mnist", len(_keys())), ("tcn-table3-mnist-gan-cpu", 3)]
    lines = preset_lines(found, "tcn-table3-mnist", len(keys))
    assert len(lines) == 3 and "--preset tcn-table3-mnist-gan-cpu --out results/tcn-table3-mnist` runs the other 9" in lines[1]
    assert lines[2] == "1 runs here are in none of these presets."
    assert "not in that preset" not in lines[0]


def test_of_two_presets_holding_the_same_rest_the_more_complete_is_named(data_root, monkeypatch):
    """A teacher-size folder also holds the plain row's TAKD runs: both `takd-size-ta` and
    `takd-table1-cpu` hold those; the one with fewer of its runs missing here is named."""
    import pytest

    from kdbench.report.provenance import match_presets
    from kdbench.sweep import SweepSpec, plan

    weights = Path(__file__).resolve().parents[2] / "shared" / "weights"
    if not (weights / "cifar10-resnet-akamaster").is_dir():
        pytest.skip("the shared pretrained CIFAR ResNets (for takd-table1-cpu's grid) are not here")
    monkeypatch.setenv("KDBENCH_WEIGHTS", str(weights))
    sizes = [p.key for p in plan(SweepSpec.build(preset="takd-size-teacher"), "/nonexistent")]
    chain = [p.key for p in plan(SweepSpec.build(preset="takd-size-ta"), "/nonexistent")
             if p.key.startswith("takd-") and p.resolved.spec.params.get("assistants") in (["plain4"], ("plain4",))]
    assert len(chain) == 3
    found = match_presets([*sizes, *chain], ["cifar10-jpeg"])
    assert [(m.name, m.here) for m in found] == [("takd-size-teacher", 15), ("takd-size-ta", 9)]
