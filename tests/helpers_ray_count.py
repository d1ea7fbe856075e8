"""A test plugin that counts, in the process that imports it, teacher trainings and the cache entries
built there (not those installed from a copy): one line each in a counter file, with the process's
KDBENCH_CACHE, so that a test tells which node (each has a cache of its own) did the work.

Ray workers import it through $KDBENCH_IMPORT; it patches only where $KDBENCH_TEST_COUNTER names
the counter file (the test cluster's nodes). The test's own process uses `patches` instead, undone
after the test."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

COUNTER_ENV = "KDBENCH_TEST_COUNTER"


def patches(counter: Path) -> list[tuple[Any, str, Callable[..., Any]]]:
    """(owner, attribute, counting replacement) for the teacher trainer and CacheEntry.build."""
    from kdbench import cache, teachers

    def note(what: str) -> None:
        with open(counter, "a") as f:
            f.write(f"{what} {os.environ.get('KDBENCH_CACHE')}\n")

    real_train, real_build = teachers.train_teacher_model, cache.CacheEntry.build

    def train_teacher_model(*args: Any, **kwargs: Any) -> Any:
        note("train")
        return real_train(*args, **kwargs)

    def build(self: Any, writer: Any) -> Any:
        note(f"build:{self.kind}")
        return real_build(self, writer)

    return [(teachers, "train_teacher_model", train_teacher_model), (cache.CacheEntry, "build", build)]


def counted(counter: Path) -> list[tuple[str, str]]:
    """(what, cache) per counted event."""
    if not counter.exists():
        return []
    return [tuple(line.split(" ", 1)) for line in counter.read_text().splitlines()]  # type: ignore[misc]


if os.environ.get(COUNTER_ENV):
    for owner, name, fn in patches(Path(os.environ[COUNTER_ENV])):
        setattr(owner, name, fn)
