"""Golden-value tests of the losses of student, kd, takd, kdgan and ft, and of the methods' parameter checks.

Expected values are computed independently in the test (plain Python floats / explicit formulas on
fixed inputs), never by calling the function under test. Each method's losses are module-level
functions (`student.ce_loss`, `kd.hinton_loss`, `ft.ft_loss`, kdgan's `Players`), called here
directly; how a method wires them into its steps (which stage reads which teacher, which step
updates which player, which lr steps apply) is reached by running `fit` on a context whose `train`
captures the steps instead of training.
"""
from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from kdbench.config import RunSpec
from kdbench.data.base import DataSpec, Split, Splits
from kdbench.engine import Batch, snapshot
from kdbench.errors import KdbenchError
from kdbench.losses import kd_loss
from kdbench.method import Context, Schedule, Targets, get_method, load_methods, param_ranges
from kdbench.models.protocol import StagedNet
from kdbench.runner import resolve

# ---------------------------------------------------------------- helpers


class Captured(Exception):
    pass


class Scaled(nn.Module):
    """Logits = scale * x (x holds logits in these tests); a dummy parameter keeps optimisers happy."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.scale * x + 0 * self.w


class Table(nn.Module):
    """Ignores x and returns a trainable table of logits (one row per sample of a fixed batch)."""

    def __init__(self, values):
        super().__init__()
        self.values = nn.Parameter(torch.as_tensor(values, dtype=torch.float32).clone())

    def forward(self, x):
        return self.values[: len(x)]


def make_context(x, y, teacher_logits=None, teacher=None, student=None, models=None, capture_at=0, epochs=2, batch=4):
    """A Context over tiny in-memory splits whose `train` runs for real until call `capture_at`, which it
    records and aborts with `Captured` (so the test can drive the captured steps by hand)."""
    calls: list[dict] = []

    class CaptureContext(Context):
        def train(self, steps, modules, **kw):
            calls.append({"steps": steps, "modules": modules, "kw": kw})
            if len(calls) - 1 == capture_at:
                raise Captured
            return super().train(steps, modules, **kw)

    split = Split(x, y)
    data = Splits("fixed", split, split, split, DataSpec(tuple(x.shape[1:]), int(y.max()) + 1))
    targets = {"train": Targets(teacher_logits, torch.zeros(len(x), 1))} if teacher_logits is not None else {}
    ctx = CaptureContext(
        spec=RunSpec(method="x", dataset="fixed"), data=data, device=torch.device("cpu"),
        schedule=Schedule(epochs=epochs, batch_size=batch, lr=1e-3), teacher=teacher,
        targets=lambda s: targets[s], make_student=lambda **kw: student,
        make_model=lambda name, **kw: models[name], progress=False)
    return ctx, calls


def capture(method: str, params, ctx) -> None:
    cls = get_method(method)
    with pytest.raises(Captured):
        cls(params).fit(ctx)


def softmax_list(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def hand_kl(t_logits, s_logits, T):
    """(1/N) sum_i KL(softmax(t_i/T) || softmax(s_i/T)) with plain floats."""
    total = 0.0
    for zt, zs in zip(t_logits, s_logits):
        pt = softmax_list([v / T for v in zt])
        ps = softmax_list([v / T for v in zs])
        total += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    return total / len(t_logits)


def hand_ce(logits, y):
    return sum(-math.log(softmax_list(z)[c]) for z, c in zip(logits, y)) / len(y)


def softplus(v):
    return math.log1p(math.exp(-abs(v))) + max(v, 0.0)


Z_S = [[1.0, -0.5, 0.3], [0.2, 0.9, -1.1], [-0.7, 0.0, 2.0], [0.5, 0.5, -0.2]]
Z_T = [[2.5, -1.0, 0.1], [-0.3, 3.0, 0.4], [0.0, -2.0, 4.0], [1.5, 0.2, -0.6]]
Y = [0, 1, 2, 1]

# ---------------------------------------------------------------- kd


def test_kd_loss_closed_form_with_t_squared():
    # teacher softmax (0.75, 0.25) vs student (0.5, 0.5): KL = 0.75 ln 1.5 + 0.25 ln 0.5, whatever T
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    for T in (1.0, 2.0, 4.0):
        t = torch.tensor([[T * math.log(3.0), 0.0], [1.0, 1.0]])
        s = torch.tensor([[0.0, 0.0], [5.0, 5.0]])  # second sample: both uniform, KL 0
        # batchmean: sum over the batch / N (per-sample average), times T^2
        assert float(kd_loss(s, t, T)) == pytest.approx(T * T * kl / 2, rel=1e-5)


def test_kd_loss_matches_hand_formula_on_fixed_logits():
    got = float(kd_loss(torch.tensor(Z_S), torch.tensor(Z_T), 4.0))
    assert got == pytest.approx(16.0 * hand_kl(Z_T, Z_S, 4.0), rel=1e-5)
    assert got != pytest.approx(hand_kl(Z_T, Z_S, 4.0), rel=1e-3)  # the T^2 factor is there


def test_student_method_loss_is_cross_entropy():
    from kdbench.methods.student import ce_loss

    losses = ce_loss(torch.tensor(Z_S), torch.tensor(Y))
    assert set(losses) == {"ce"}
    assert float(losses["ce"].detach()) == pytest.approx(hand_ce(Z_S, Y), rel=1e-5)


def test_kd_method_loss_golden():
    from kdbench.methods.kd import hinton_loss

    idx = torch.tensor([2, 0])
    x, y, t = torch.tensor(Z_S)[idx], torch.tensor(Y)[idx], torch.tensor(Z_T)[idx]
    losses = hinton_loss(x, y, t, alpha=0.7, temperature=2.0)
    zs, zt, yy = [Z_S[2], Z_S[0]], [Z_T[2], Z_T[0]], [Y[2], Y[0]]
    assert set(losses) == {"ce", "kd"}
    assert float(losses["ce"].detach()) == pytest.approx(0.3 * hand_ce(zs, yy), rel=1e-5)
    assert float(losses["kd"].detach()) == pytest.approx(0.7 * 4.0 * hand_kl(zt, zs, 2.0), rel=1e-5)
    div = len(Z_S[0])  # reduction 'mean' (TAKD's code-faithful KL): 1/K of batchmean
    got = hinton_loss(x, y, t, alpha=0.7, temperature=2.0, reduction="mean")["kd"]
    assert float(got) == pytest.approx(0.7 * 4.0 * hand_kl(zt, zs, 2.0) / div, rel=1e-5)


def test_kd_method_reads_the_batch_rows_of_the_teacher_logits():
    """The wiring: KD's step gives `hinton_loss` the teacher rows of the batch's indices."""
    x, y = torch.tensor(Z_S), torch.tensor(Y)
    ctx, calls = make_context(x, y, teacher_logits=torch.tensor(Z_T), student=Scaled())
    capture("kd", get_method("kd").Params(temperature=2.0, alpha=0.7), ctx)
    idx = torch.tensor([2, 0])
    losses = calls[0]["steps"][0].loss_fn(Batch(x[idx], y[idx], idx))
    zs, zt = [Z_S[2], Z_S[0]], [Z_T[2], Z_T[0]]
    assert float(losses["kd"].detach()) == pytest.approx(0.7 * 4.0 * hand_kl(zt, zs, 2.0), rel=1e-5)


# ---------------------------------------------------------------- takd


def test_code_faithful_kl_is_one_over_k_of_batchmean():
    s, t = torch.tensor(Z_S), torch.tensor(Z_T)
    K = s.shape[1]
    assert float(kd_loss(s, t, 4.0, "mean")) == pytest.approx(16.0 * hand_kl(Z_T, Z_S, 4.0) / K, rel=1e-5)


@pytest.mark.parametrize("code_faithful", [False, True])
def test_takd_stage_losses_use_previous_stage_logits(code_faithful):
    x, y = torch.tensor(Z_S), torch.tensor(Y)
    K = x.shape[1]
    P = get_method("takd").Params
    params = P(assistants=["ta"], temperatures=[2.0, 3.0], alphas=[0.6, 0.8], code_faithful=code_faithful)
    div = K if code_faithful else 1
    b = Batch(x, y, torch.arange(4))
    # stage 0: teacher -> assistant (logits 2x), with T=2, alpha=0.6
    ctx, calls = make_context(x, y, teacher_logits=torch.tensor(Z_T), student=Scaled(1.0), models={"ta": Scaled(2.0)}, capture_at=0)
    capture("takd", params, ctx)
    losses = calls[0]["steps"][0].loss_fn(b)
    za = [[2 * v for v in z] for z in Z_S]
    assert float(losses["ce"].detach()) == pytest.approx(0.4 * hand_ce(za, Y), rel=1e-5)
    assert float(losses["kd"].detach()) == pytest.approx(0.6 * 4.0 * hand_kl(Z_T, za, 2.0) / div, rel=1e-5)
    # stage 1: assistant's eval-mode logits (2x) -> student, with T=3, alpha=0.8
    ctx, calls = make_context(x, y, teacher_logits=torch.tensor(Z_T), student=Scaled(1.0), models={"ta": Scaled(2.0)}, capture_at=1)
    capture("takd", params, ctx)
    losses = calls[1]["steps"][0].loss_fn(b)
    assert float(losses["ce"].detach()) == pytest.approx(0.2 * hand_ce(Z_S, Y), rel=1e-5)
    assert float(losses["kd"].detach()) == pytest.approx(0.8 * 9.0 * hand_kl(za, Z_S, 3.0) / div, rel=1e-5)


def test_takd_recipes_and_lr_schedule():
    from kdbench.methods.takd import TAKD, default_assistants, lr_factor

    P = TAKD.Params
    plain = TAKD.schedule(RunSpec(method="takd", dataset="cifar10-jpeg", student="plain2"), P())
    assert (plain.optimizer, plain.lr, plain.weight_decay, plain.batch_size) == ("sgd", 0.01, 1e-4, 128)
    res = TAKD.schedule(RunSpec(method="takd", dataset="cifar10-jpeg", student="resnet8"), P())
    assert (res.optimizer, res.lr) == ("sgd", 0.1)
    assert TAKD.schedule(RunSpec(method="takd", dataset="cifar10-jpeg", student="resnet8"), P(code_faithful=True)).lr == 0.01
    assert TAKD.schedule(RunSpec(method="takd", dataset="mnist"), P()).optimizer == "adam"  # shared student schedule
    f = lr_factor("resnet", False, 160)
    assert [f(e) for e in (0, 79, 80, 119, 120, 159)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    g = lr_factor("resnet", True, 160)
    assert [g(e) for e in (0, 119, 120)] == pytest.approx([1, 1, 0.1])
    assert lr_factor("plain", False, 160)(150) == 1.0
    assert default_assistants(RunSpec(method="takd", dataset="cifar10-jpeg", student="plain2")) == ["plain4"]
    assert default_assistants(RunSpec(method="takd", dataset="cifar10-jpeg", student="resnet8")) == ["resnet14"]
    assert default_assistants(RunSpec(method="takd", dataset="cifar100", student="resnet8")) == ["resnet20"]
    assert default_assistants(RunSpec(method="takd", dataset="mnist")) == ["auto"]


@pytest.mark.parametrize("student", ["plain2", "resnet8", "auto"])
def test_takd_table1_baselines_share_the_takd_schedule(student):
    """NOKD / BLKD / TAKD differ only by the method: same optimiser, lr, weight decay, epochs and lr steps."""
    from kdbench.runner import resolve

    sched = {m: resolve(RunSpec(method=m, dataset="cifar10-jpeg", student=student, teacher="plain10" if student == "plain2"
                                 else "resnet110" if student == "resnet8" else "auto")).schedule
             for m in ("student", "kd", "takd")}
    assert sched["student"] == sched["kd"] == sched["takd"]
    assert sched["student"].optimizer == ("adam" if student == "auto" else "sgd")


@pytest.mark.parametrize("params,student", [
    ({"assistants": ["plain4"], "alphas": [0.9, 0.9, 0.9]}, "plain2"),
    ({}, "mystery-net"),
])
def test_takd_validate_rejects_impossible_inputs(params, student):
    """Context checks (values per stage, default assistant); each value's range: test_declared_ranges_*."""
    from kdbench.methods.takd import TAKD

    with pytest.raises(KdbenchError):
        TAKD.validate(RunSpec(method="takd", dataset="mnist", student=student), TAKD.Params(**params))


# ---------------------------------------------------------------- kdgan

G_TABLE = [[1.0, -2.0, 0.5], [0.3, 0.7, -1.2], [-0.4, 1.5, 2.2], [2.0, 0.1, -0.3]]
BIG_S = [[50.0, 0.0, 0.0], [0.0, 0.0, 50.0], [0.0, 50.0, 0.0], [0.0, 50.0, 0.0]]  # Gumbel can't flip these
BIG_T = [[0.0, 50.0, 0.0], [0.0, 50.0, 0.0], [0.0, 0.0, 50.0], [50.0, 0.0, 0.0]]


def argmax(row):
    return max(range(len(row)), key=lambda k: row[k])


def test_kdgan_discriminator_loss_golden():
    from kdbench.methods.kdgan import Players

    x, y = torch.zeros(4, 3), torch.tensor(Y)
    pl = Players(Table(BIG_S), Table(G_TABLE), None, torch.tensor(BIG_T), a=0.3, b=1.0, g=0.0, tau=0.5)
    losses = pl.d_loss(Batch(x, y, torch.arange(4)))
    real = sum(softplus(-G_TABLE[i][Y[i]]) for i in range(4)) / 4  # -log sigmoid(<g, y_true>)
    fake_s = sum(softplus(G_TABLE[i][argmax(BIG_S[i])]) for i in range(4)) / 4  # -log(1 - sigmoid)
    fake_t = sum(softplus(G_TABLE[i][argmax(BIG_T[i])]) for i in range(4)) / 4
    assert float(losses["real"].detach()) == pytest.approx(real, rel=1e-5)
    assert float(losses["fake_s"].detach()) == pytest.approx(0.3 * fake_s, rel=1e-5)
    assert float(losses["fake_t"].detach()) == pytest.approx(0.7 * fake_t, rel=1e-5)


def test_kdgan_student_and_teacher_losses_golden():
    from kdbench.methods.kdgan import Players

    x, y = torch.zeros(4, 3), torch.tensor(Y)
    b = Batch(x, y, torch.arange(4))
    pl = Players(Table(BIG_S), Table(G_TABLE), Table(BIG_T), None, a=0.3, b=2.0, g=0.05, tau=0.5)
    dist = sum(sum((s - t) ** 2 for s, t in zip(BIG_S[i], BIG_T[i])) for i in range(4)) / 4 / 2
    s = pl.s_loss(b)
    adv_s = sum(-softplus(G_TABLE[i][argmax(BIG_S[i])]) for i in range(4)) / 4  # mean log(1 - D)
    assert float(s["adv"].detach()) == pytest.approx(0.3 * adv_s, rel=1e-5)
    assert float(s["dist"].detach()) == pytest.approx(2.0 * dist, rel=1e-5)
    t = pl.t_loss(b)
    adv_t = sum(-softplus(G_TABLE[i][argmax(BIG_T[i])]) for i in range(4)) / 4
    assert float(t["adv"].detach()) == pytest.approx(0.7 * adv_t, rel=1e-5)
    assert float(t["dist"].detach()) == pytest.approx(0.05 * dist, rel=1e-5)


def test_kdgan_gradient_flows_through_straight_through_samples():
    from kdbench.methods.kdgan import Players

    torch.manual_seed(0)
    student, disc = Table(Z_S), Table(G_TABLE)
    pl = Players(student, disc, None, torch.tensor(Z_T), a=0.5, b=0.0, g=0.0, tau=1.0)
    loss = pl.s_loss(Batch(torch.zeros(4, 3), torch.tensor(Y), torch.arange(4)))
    loss["adv"].backward()
    grad = student.values.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert disc.values.grad is None  # the S step never touches D's parameters
    # S minimises log(1 - D): the descent direction raises the logit of the class D scores highest
    for i in range(4):
        assert float(grad[i, argmax(G_TABLE[i])]) < 0


def test_gumbel_temperature_decays_exponentially():
    from kdbench.methods.kdgan import gumbel_tau

    assert gumbel_tau(0, 5, 1.0, 0.1) == pytest.approx(1.0)
    assert gumbel_tau(2, 5, 1.0, 0.1) == pytest.approx(math.sqrt(0.1))
    assert gumbel_tau(4, 5, 1.0, 0.1) == pytest.approx(0.1)
    assert gumbel_tau(1, 5, 1.0, 0.1) / gumbel_tau(0, 5, 1.0, 0.1) == pytest.approx(gumbel_tau(3, 5, 1.0, 0.1) / gumbel_tau(2, 5, 1.0, 0.1))


def _changed(before, module):
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize("variant", ["frozen-teacher", "three-player"])
def test_kdgan_each_step_updates_only_its_player(variant):
    torch.manual_seed(0)
    x, y = torch.tensor(Z_S), torch.tensor(Y)
    teacher = nn.Linear(3, 3).requires_grad_(False).eval()
    ctx, calls = make_context(x, y, teacher_logits=torch.tensor(Z_T), teacher=teacher, student=Table(Z_S),
                              models={"disc-net": Table(G_TABLE)}, capture_at=1)
    ctx.spec = RunSpec(method="kdgan", dataset="fixed", teacher="disc-net")
    capture("kdgan", get_method("kdgan").Params(variant=variant, k_d=2), ctx)
    pre, adv = calls
    assert [s.name for s in pre["steps"]] == ["pre_student", "pre_disc"] + ([] if variant == "frozen-teacher" else ["pre_teacher"])
    steps, modules = adv["steps"], adv["modules"]
    owner = {"D": "disc", "T": "teacher", "S": "student"}
    assert [s.name for s in steps] == (["D", "S"] if variant == "frozen-teacher" else ["D", "T", "S"])
    assert steps[0].repeat == 2
    b = Batch(x, y, torch.arange(4))
    teacher_before = snapshot(teacher)
    for step in steps:
        before = {n: snapshot(m) for n, m in modules.items()}
        losses = step.loss_fn(b)
        step.optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        step.optimizer.step()
        changed = {n for n, m in modules.items() if _changed(before[n], m)}
        assert changed == {owner[step.name]}, step.name
    assert not _changed(teacher_before, teacher)  # the cached teacher itself is never trained
    if variant == "three-player":
        assert modules["teacher"] is not teacher


def test_kdgan_runs_and_reaches_final_temperature():
    torch.manual_seed(0)
    x = torch.randn(12, 3)
    y = x.argmax(1)
    ctx, _ = make_context(x, y, teacher_logits=3 * x, student=nn.Linear(3, 3), models={"g": nn.Linear(3, 3)}, capture_at=99, epochs=3)
    ctx.spec = RunSpec(method="kdgan", dataset="fixed", teacher="g")
    fit = get_method("kdgan")(get_method("kdgan").Params(pretrain_epochs=1)).fit(ctx)
    assert fit.metrics["gumbel_tau_final"] == pytest.approx(0.1)
    assert [h["phase"] for h in fit.history] == ["pretrain", "adversarial", "adversarial"]
    assert [h["epoch"] for h in fit.history] == [1, 2, 3]
    assert fit.metrics["adversarial_epochs"] == 2


def test_kdgan_validate():
    """Cross-field checks; `a` out of [0, 1] and the other ranges: test_declared_ranges_*."""
    K = get_method("kdgan")
    with pytest.raises(KdbenchError, match="no adversarial epoch"):
        K.validate(RunSpec(method="kdgan", dataset="mnist", epochs=1), K.Params(pretrain_epochs=1))
    with pytest.raises(KdbenchError, match=r"need tau_end <= tau_start, got 0\.1 -> 0\.5"):
        K.validate(RunSpec(method="kdgan", dataset="mnist"), K.Params(tau_start=0.1, tau_end=0.5))
    K.validate(RunSpec(method="kdgan", dataset="mnist"), K.Params(tau_start=0.5, tau_end=0.5))  # constant is fine


# ---------------------------------------------------------------- ft


def test_ft_factor_loss_golden():
    from kdbench.methods.ft import factor_loss

    s = torch.tensor([[3.0, 4.0], [1.0, 0.0]]).view(2, 1, 1, 2)  # normalised: (0.6, 0.8), (1, 0)
    t = torch.tensor([[0.0, 1.0], [0.0, 2.0]]).view(2, 1, 2, 1)  # normalised: (0, 1), (0, 1)
    # elementwise mean of |diff|: (0.6 + 0.2 + 1 + 1) / 4
    assert float(factor_loss(s, t)) == pytest.approx(0.7, rel=1e-5)
    assert float(factor_loss(5 * s, t)) == pytest.approx(0.7, rel=1e-5)  # scale-free per sample


def test_ft_paraphraser_and_translator_shapes():
    from kdbench.methods.ft import Paraphraser, match_spatial, translator

    para = Paraphraser(8, 0.5)
    convs = [m for m in para.encoder if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(8, 8, (3, 3)), (8, 4, (3, 3)), (4, 4, (3, 3))]
    deconvs = [m for m in para.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in deconvs] == [(4, 4), (4, 8), (8, 8)]
    acts = [m for m in para.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 6 and all(a.negative_slope == 0.1 for a in acts)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in para.modules())
    f = torch.randn(2, 8, 5, 5)
    assert para(f).shape == f.shape and para.encoder(f).shape == (2, 4, 5, 5)
    tr = translator(3, 8, 0.5)
    assert tr(torch.randn(2, 3, 7, 7)).shape == (2, 4, 7, 7)
    a, b = match_spatial(torch.ones(2, 4, 6, 6), torch.ones(2, 4, 3, 3))
    assert a.shape == b.shape == (2, 4, 3, 3)
    big = torch.arange(16.0).view(1, 1, 4, 4)
    _, pooled = match_spatial(torch.zeros(1, 1, 2, 2), big)
    assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]  # 2x2 block means


class ConvTeacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def feature_map(self, x):
        return torch.relu(self.conv(x))

    def forward(self, x):
        return self.fc(self.feature_map(x).mean((2, 3)))


def tiny_student():
    body = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())  # 6x6 -> 4x4: smaller than the teacher's 6x6
    neck = nn.Sequential(nn.Flatten(), nn.Linear(32, 5), nn.ReLU())
    return StagedNet(nn.Identity(), body, neck, nn.Linear(5, 3), 5)


def test_ft_method_loss_golden():
    from kdbench.methods.ft import Paraphraser, ft_loss, translator

    torch.manual_seed(0)
    x = torch.rand(4, 1, 6, 6)
    y = torch.tensor(Y)
    teacher = ConvTeacher().requires_grad_(False).eval()
    student = tiny_student()
    para, trans = Paraphraser(4, 0.5), translator(2, 4, 0.5)
    losses = ft_loss(student, student.feature_map, trans, para.encoder, teacher.feature_map(x), x, y, 300.0)
    assert set(losses) == {"ce", "ft"}
    with torch.no_grad():
        ft = trans(student.feature_map(x)).flatten(1)  # (4, 2*4*4)
        fp = para.encoder(teacher.feature_map(x))  # (4, 2, 6, 6) -> pooled to 4x4 by hand below
        pooled = torch.stack([torch.stack([fp[:, :, i * 3 // 2 : -(-(i + 1) * 6 // 4), j * 3 // 2 : -(-(j + 1) * 6 // 4)].mean((2, 3))
                                           for j in range(4)], -1) for i in range(4)], -2).flatten(1)
        ns = ft / ft.pow(2).sum(1, keepdim=True).sqrt()
        nt = pooled / pooled.pow(2).sum(1, keepdim=True).sqrt()
        expected = 300.0 * (ns - nt).abs().mean()
        logits = student(x)
    assert float(losses["ft"].detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(losses["ce"].detach()) == pytest.approx(hand_ce(logits.tolist(), Y), rel=1e-5)


def test_ft_student_training_takes_the_shared_resnet_lr_steps():
    """A ResNet student under ft gets the same x0.1 steps at 50% / 75% as under student / kd."""
    import dataclasses

    torch.manual_seed(0)
    x, y = torch.rand(4, 1, 6, 6), torch.tensor(Y)
    ctx, calls = make_context(x, y, teacher=ConvTeacher().requires_grad_(False).eval(), student=tiny_student(),
                              capture_at=1, epochs=4)
    ctx = dataclasses.replace(ctx, spec=RunSpec(method="ft", dataset="fixed", student="resnet8b"))
    capture("ft", get_method("ft").Params(paraphraser_epochs=1), ctx)
    (sched,) = calls[1]["kw"]["schedulers"]
    factors = [sched.lr_lambda(e) for e in range(4)] if hasattr(sched, "lr_lambda") else \
        [sched.lr_lambdas[0](e) for e in range(4)]
    assert factors == pytest.approx([1.0, 1.0, 0.1, 0.01])
    assert any("lr x1/x0.1/x0.01 at 0/50/75%" in d for d in ctx.deviations)
    assert any("pooled" in d for d in ctx.deviations)  # the 6x6 teacher factor is pooled to the student's 4x4
    assert not calls[0]["kw"].get("schedulers")  # the paraphraser keeps a fixed lr


def test_ft_refuses_text_datasets():
    FT = get_method("ft")
    with pytest.raises(KdbenchError, match="text"):
        FT.validate(RunSpec(method="ft", dataset="imdb-5k"), FT.Params())


# ---------------------------------------------------------------- parameter ranges

# The bounds the methods' validate() used to check by hand, now declared as Range in their Params:
# (method, parameter, values refused, edge values accepted). Refused at plan time (resolve), one line.
DECLARED_RANGES = [
    ("ft", "beta", [-1.0], [0.0]),
    ("ft", "k", [0.0, 1.5], [1.0, 1e-6]),
    ("ft", "paraphraser_epochs", [0], [1]),
    ("kdgan", "a", [-0.1, 2.0], [0.0, 1.0]),
    ("kdgan", "k_d", [0], [1]),
    ("kdgan", "k_t", [0], [1]),
    ("kdgan", "k_s", [0], [1]),
    ("kdgan", "tau_start", [0.0, -1.0], [5.0]),
    ("kdgan", "tau_end", [0.0, -0.1], [1e-6]),
    ("kdgan", "pretrain_epochs", [-1], [0]),
    ("takd", "temperatures", [[0.0], [4.0, -1.0]], [[1e-6]]),
    ("takd", "alphas", [[1.5], [0.9, -0.1]], [[0.0], [1.0]]),
    ("tcn", "lam", [-1.0], [0.0]),
    ("tcn", "d_bn_momentum", [-0.1, 1.0], [0.0, 0.999]),
    ("tcn", "d_bn_eps", [0.0, -1e-3], [1e-9]),
]


@pytest.mark.parametrize("method,key,bad,edge", DECLARED_RANGES, ids=[f"{m}-{k}" for m, k, _, _ in DECLARED_RANGES])
def test_declared_ranges_are_refused_at_plan_time_with_the_old_bounds(method, key, bad, edge):
    """Each range check removed from a validate() is declared with the same bounds: resolving a spec
    (before anything trains) refuses a value outside in one line naming the parameter, and accepts the edge."""
    assert key in param_ranges(get_method(method))
    for value in bad:
        with pytest.raises(KdbenchError) as err:
            resolve(RunSpec(method=method, dataset="digits", params={key: value}))
        assert f"parameter '{key}' of '{method}' must be " in str(err.value) and "\n" not in str(err.value)
    for value in edge:
        assert getattr(resolve(RunSpec(method=method, dataset="digits", params={key: value})).params, key) == value


def test_list_methods_shows_each_range_next_to_its_default(capsys):
    from kdbench.cli import main

    assert main(["list", "methods"]) == 0
    cells = {row[1].strip(): row[4].strip() for row in (line.split("|") for line in capsys.readouterr().out.splitlines()[2:])}
    assert cells["kd"] == "temperature=4.0 (> 0), alpha=0.9 (in [0, 1]), reduction=batchmean"
    assert "temperatures=None (each > 0), alphas=None (each in [0, 1])" in cells["takd"]
    assert "d_bn_momentum=0.99 (in [0, 1)), d_bn_eps=0.001 (> 0), finetune=True," in cells["tcn"]
    for name, cls in load_methods().items():  # every declared range is listed next to its parameter
        for key, bounds in param_ranges(cls).items():
            assert re.search(rf"(^|, ){key}=\S+ \((each )?{re.escape(str(bounds))}\)(, |$)", cells[name]), (name, key)
