"""Shared pytest fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def data_root() -> Path:
    """The real data root from $KDBENCH_DATA; skipped when unset, a failure when unset under CI=true."""
    root = os.environ.get("KDBENCH_DATA", "")
    if not root:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("KDBENCH_DATA is not set but CI=true: real-data tests must run in CI")
        pytest.skip("KDBENCH_DATA not set (real-data test)")
    path = Path(root.split(os.pathsep)[0])
    if not path.is_dir():
        pytest.fail(f"KDBENCH_DATA={root} is not a directory")
    return path


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch) -> Path:
    """A test of its own: an empty cache under tmp_path and no progress bars; returns tmp_path."""
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KDBENCH_PROGRESS", "0")
    return tmp_path
