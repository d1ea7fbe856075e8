"""Hot paths timed with pytest-benchmark (tiny sizes: package-shipped digits, no data root)."""
from __future__ import annotations

import torch

from kdbench.bench import fit_once, teacher_in_loop_targets


def _batch(n: int, size: int = 128) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:size]


def test_cached_target_lookup(benchmark, session):
    setup = session.setup("tcn", n_students=4, mode="ff")
    feats = session.context(setup).targets("train").features
    idx = _batch(len(feats))
    out = benchmark(lambda: feats[idx])
    assert out.shape == (len(idx), feats.shape[1])


def test_teacher_in_loop_lookup(benchmark, session):
    setup = session.setup("tcn", n_students=4, mode="ff")
    lazy = teacher_in_loop_targets(setup.teacher.model, setup.data)("train").features
    cached = session.context(setup).targets("train").features
    idx = _batch(len(lazy))
    out = benchmark(lambda: lazy[idx])
    torch.testing.assert_close(out, cached[idx], rtol=0, atol=1e-5)


def _tcn_epoch(session, fused: bool):
    setup = session.setup("tcn", n_students=8, mode="ff", epochs=1, params={"fused": fused, "finetune": False})
    return lambda: fit_once(setup, session.context(setup, 512)).fit


def test_tcn_epoch_sequential(benchmark, session):
    fit = benchmark.pedantic(_tcn_epoch(session, False), rounds=3, iterations=1)
    assert fit.metrics["fused_groups"] == [[j] for j in range(8)]


def test_tcn_epoch_fused(benchmark, session):
    fit = benchmark.pedantic(_tcn_epoch(session, True), rounds=3, iterations=1)
    assert fit.metrics["fused_groups"] == [list(range(8))] and fit.metrics["fusion"] == ["grouped"]
