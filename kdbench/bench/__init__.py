"""Performance benchmarks (`kdbench bench`): every claim is a ratio A / B measured in ONE process,
the two arms interleaved (A, B, A, B, ...; medians), with the torch thread count fixed and
recorded and the load average written next to each number (the machine may be shared).

One module per benchmark, each registering into `BENCHES` (`kdbench bench --only NAME`):

- `targets`     teacher in the loop vs cached teacher targets (TCN ff, n = 4, one epoch)
- `layout`      contiguous vs channels-last conv weights (kdbench's CPU default)
- `parallel`    a sweep of independent runs with `--workers 1` vs `--workers 2`
- `memory`      peak RSS of a TCN run and of a `--workers 2` sweep; mmap sharing of cached targets
- `profile`     where the time of a TCN ff epoch and a kd epoch goes (torch.profiler, top ops)
- `overhead`    one KD epoch in kdbench vs a minimal hand-written PyTorch loop
- `seeds`       seed fusion: the seeds of one cell as one computation vs one run per seed

and, from the method files (kdbench/methods/tcn_bench*.py, loaded through the method registry): `fused`,
`efficiency`, `inference` and `alternative` (the teacher-in-the-loop workflow vs kdbench's sweep).

Goals are reported, never asserted; equality checks (same losses, same records) are, as `checks`.
"""
from __future__ import annotations

from . import layout, memory, overhead, parallel, profile, seeds, targets  # noqa: F401 - they register
from .base import BENCHES, FULL, ORDER, QUICK, Bench, BenchConfig, BenchRegistry, BenchReport, BenchRow, Goal, Sizes
from .compare import comparable, is_timing, max_abs_diff, max_rel_diff, off_fraction
from .inloop import TeacherRows, teacher_in_loop_targets
from .memory import mapped_file, mmap_sharing, run_polled
from .output import markdown, one_line, table_rows, write_report
from .session import Session, Setup, Timed, fit_once, loop_seconds, loss_history
from .suite import environment, run_benches, select
from .timing import forward_ms, interleave, load_average, matmul_peak_gflops, median, sync

__all__ = [
    "BENCHES", "FULL", "ORDER", "QUICK", "Bench", "BenchConfig", "BenchRegistry", "BenchReport", "BenchRow", "Goal", "Sizes",
    "comparable", "is_timing", "max_abs_diff", "max_rel_diff", "off_fraction", "TeacherRows", "teacher_in_loop_targets",
    "mapped_file", "mmap_sharing", "run_polled", "markdown", "one_line", "table_rows", "write_report", "Session", "Setup",
    "Timed", "fit_once", "loop_seconds", "loss_history", "environment", "run_benches", "select", "forward_ms", "interleave",
    "load_average", "matmul_peak_gflops", "median", "sync",
]
