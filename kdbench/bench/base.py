"""What every benchmark shares: the problem sizes of a bench profile, the run configuration, one
row of the result table (a ratio A / B with its goal and equality checks), the report, and the
registry the benchmarks register into."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..config import TeacherRecipe
from ..registry import Registry

if TYPE_CHECKING:
    from .session import Session

# ---------------------------------------------------------------------------------------------
# Sizes: the full benchmark (issue 8's protocol) and the tiny one of `--quick` (the smoke test)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one bench profile; `None` train sizes mean the whole training split."""

    dataset: str
    recipe: TeacherRecipe | None  # teacher recipe (None: the dataset's default, i.e. the cached paper teacher)
    targets_train: int | None  # `targets`: samples of the TCN epoch
    fused_train: int  # `fused`: samples of the epoch
    sweep_dataset: str
    sweep_max_train: int
    sweep_teacher_epochs: int
    sweep_runs: int  # tiny students
    sweep_runs_paper: int  # paper-size students (each run is ~10x longer)
    sweep_epochs: int
    eff_train: int  # `efficiency`: samples of the timed loop
    eff_eval: int  # `efficiency`: val samples (validation is not counted as work)
    peak_size: int  # `efficiency`: n of the n x n x n matmul
    latency_repeats: int
    profile_train: int
    profile_eval: int  # `profile`: val / test samples (so validation does not dominate the epoch)
    memory_sweep_runs: int
    overhead_train: int | None  # `overhead`: samples of the KD epoch (None: the whole training split)
    overhead_eval: int | None  # `overhead`: val samples of that epoch (None: the whole val split)
    grid_dataset: str | None  # `alternative`: the grid's dataset (None: the preset's own)
    grid_train: int  # `alternative`: training samples per epoch of the one-seed slice (the cut)
    grid_teacher_epochs: int | None  # `alternative`: teacher epochs (None: the dataset's default recipe)
    grid_epochs: int | None  # `alternative`: epochs of every run (None: each method's recipe, unchanged)


FULL = Sizes(dataset="mnist", recipe=None, targets_train=None, fused_train=6400, sweep_dataset="mnist",
             sweep_max_train=1000, sweep_teacher_epochs=1, sweep_runs=8, sweep_runs_paper=4, sweep_epochs=1, eff_train=3200, eff_eval=256,
             peak_size=2048, latency_repeats=20, profile_train=4096, profile_eval=512, memory_sweep_runs=2,
             overhead_train=None, overhead_eval=None, grid_dataset=None, grid_train=2048, grid_teacher_epochs=None, grid_epochs=None)
QUICK = Sizes(dataset="digits", recipe=TeacherRecipe(epochs=2, batch_size=64), targets_train=256, fused_train=256,
              sweep_dataset="digits", sweep_max_train=200, sweep_teacher_epochs=1, sweep_runs=2, sweep_runs_paper=2, sweep_epochs=1,
              eff_train=256, eff_eval=64, peak_size=256, latency_repeats=3, profile_train=256, profile_eval=64, memory_sweep_runs=2,
              overhead_train=512, overhead_eval=64, grid_dataset="digits", grid_train=128, grid_teacher_epochs=1, grid_epochs=1)


@dataclass(frozen=True)
class BenchConfig:
    """How to run the benchmarks. `rounds` = A/B repetitions of each interleaved pair; the pairs
    whose arms take minutes each (`targets`, `parallel`, `alternative`) use `long_rounds`."""

    quick: bool = False
    threads: int = 1
    rounds: int | None = None  # default: 2 full, 1 quick
    long_rounds: int | None = None  # default: `rounds` when given, else 1
    device: str = "auto"
    data_root: str | None = None

    @property
    def sizes(self) -> Sizes:
        return QUICK if self.quick else FULL

    @property
    def n_rounds(self) -> int:
        return self.rounds if self.rounds is not None else (1 if self.quick else 2)

    @property
    def n_long_rounds(self) -> int:
        return self.long_rounds if self.long_rounds is not None else (self.rounds or 1)


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """`ratio >= value` or `ratio <= value`; None value = report only."""

    op: str = ""
    value: float | None = None

    def met(self, ratio: float | None) -> bool | None:
        if self.value is None or ratio is None or not math.isfinite(ratio):
            return None
        return ratio >= self.value if self.op == ">=" else ratio <= self.value

    def __str__(self) -> str:
        return "-" if self.value is None else f"{self.op} {self.value:g}"


@dataclass
class BenchRow:
    """One line of the table: ratio = A / B (A is the baseline or the measured quantity)."""

    name: str
    a_label: str
    a: float | None
    b_label: str
    b: float | None
    unit: str
    goal: Goal = field(default_factory=Goal)
    notes: str = ""
    checks: dict[str, bool] = field(default_factory=dict)  # equality assertions (must all hold)
    details: dict[str, Any] = field(default_factory=dict)
    load_avg: tuple[float, float] | None = None  # 1-min load average at start / end of its bench
    seconds: float = 0.0
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.a is None or self.b is None or self.b == 0:
            return None
        return self.a / self.b

    @property
    def met(self) -> bool | None:
        return self.goal.met(self.ratio)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["goal"] = str(self.goal)
        d["ratio"] = self.ratio
        d["met"] = self.met
        return d


@dataclass
class BenchReport:
    rows: list[BenchRow]
    env: dict[str, Any]
    config: dict[str, Any]
    artifacts: dict[str, str] = field(default_factory=dict)  # extra files (profile tables): name -> text

    @property
    def checks_ok(self) -> bool:
        return all(all(r.checks.values()) and r.error is None for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"env": self.env, "config": self.config, "checks_ok": self.checks_ok,
                "rows": [r.to_dict() for r in self.rows]}


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------
Bench = Callable[["Session"], list[BenchRow]]


class BenchRegistry(Registry[Bench]):
    """The benchmarks: kdbench's own (this package) and those a method file registers (a method's
    benchmarks live next to it, e.g. `kdbench/methods/tcn_bench.py`; core code never imports a method).
    The method files are loaded, through the method registry, on the first read."""

    def _read(self) -> dict[str, Bench]:
        if not self._loaded:
            from ..method import load_methods

            load_methods()
        return super()._read()


BENCHES: BenchRegistry = BenchRegistry("benchmark", plugins="kdbench.benches")

# the order of the table (benchmarks registered by plugins and not listed here come last)
ORDER = ["targets", "fused", "layout", "parallel", "efficiency", "inference", "memory", "profile",
         "overhead", "alternative", "seeds"]
