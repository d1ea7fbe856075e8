"""`seeds`: seed fusion (the runs of one cell that differ only in seed, trained as one computation)
vs one run per seed. The measurement and its goals (>= 1.5x for the TCN n = 8 budget students on
CPU; `auto` never below 0.95x on any zoo student) live in `kdbench.bench_fuse`, next to the
seed-fusion code; this module registers it in the bench."""
from __future__ import annotations

from .base import BENCHES, BenchRow
from .session import Session


@BENCHES.register("seeds")
def bench_seeds(s: Session) -> list[BenchRow]:
    """3 seeds fused (or as `auto` decides) vs three separate runs: `bench_fuse.bench_seed_fusion`."""
    from .. import bench_fuse  # imported here: it imports this package

    return bench_fuse.bench_seed_fusion(s)
