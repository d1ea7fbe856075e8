"""Method conformance: every registered method, in every mode it declares, builds, trains two short
epochs on a tiny real dataset through `runner.execute`, and writes a valid record.

The parameter list comes from the registry, so a new file in kdbench/methods/ is checked with no new test code.
"""
from __future__ import annotations

import json
import math
import os

import pytest

from kdbench.config import RunSpec
from kdbench.method import load_methods
from kdbench.runner import execute

DATASET = "digits"  # sklearn's 8x8 digits: ships with the package, no data root needed
MAX_TRAIN = 300


def _cases() -> list[tuple[str, str | None]]:
    return [(name, mode) for name, cls in load_methods().items() for mode in cls.modes]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One private cache for the module, so the digits teacher is trained once and no stale entry leaks in."""
    old = os.environ.get("KDBENCH_CACHE")
    os.environ["KDBENCH_CACHE"] = str(tmp_path_factory.mktemp("kdbench-cache"))
    yield
    if old is None:
        os.environ.pop("KDBENCH_CACHE", None)
    else:
        os.environ["KDBENCH_CACHE"] = old


@pytest.mark.parametrize("method,mode", _cases(), ids=lambda v: str(v))
def test_method_runs_and_writes_valid_record(method, mode, shared_cache, tmp_path):
    spec = RunSpec(method=method, dataset=DATASET, mode=mode, epochs=2, max_train=MAX_TRAIN, seed=0)
    record = execute(spec, tmp_path, progress=False, latency=False)
    assert record["status"] == "ok", record.get("error", {}).get("traceback")
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    on_disk = json.loads(files[0].read_text())
    assert on_disk["run_key"] == record["run_key"] and on_disk["status"] == "ok"
    m = on_disk["metrics"]
    for key in ("test_acc", "test_acc_valbest", "val_acc"):
        assert math.isfinite(m[key]) and 0.0 <= m[key] <= 100.0, key
    assert m["params"] > 0 and m["macs"] > 0
    assert m["train_time_s"] > 0
    assert on_disk["spec"]["method"] == method and on_disk["spec"]["mode"] == mode
    assert on_disk["spec"]["epochs"] == 2
    assert on_disk["history"], "a run must record its per-epoch history"


def test_the_documented_example_method_registers_and_passes(shared_cache, tmp_path):
    """docs/adding-a-method.md's example, executed as written: it registers and passes the same check."""
    import re
    from pathlib import Path

    from kdbench.method import METHODS

    doc = (Path(__file__).parents[1] / "docs" / "adding-a-method.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    import sys
    import types

    module = types.ModuleType("kdbench_doc_example")  # a real module: dataclasses resolve annotations through it
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, "adding-a-method.md", "exec"), module.__dict__)
        assert "kd-mse" in load_methods()
        test_method_runs_and_writes_valid_record("kd-mse", None, shared_cache, tmp_path)
    finally:
        METHODS._entries.pop("kd-mse", None)
        sys.modules.pop(module.__name__, None)
