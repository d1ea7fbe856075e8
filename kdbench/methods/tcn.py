"""`tcn`: Teacher-Class Network (Malik et al., BMVC 2021), modes `ff` and `gan`.

The teacher's dense representation is split into n contiguous chunks; student j learns chunk j
on its own (`ff`: MSE regression; `gan`: adversarially against a discriminator D_j); the deployed
predictor concatenates the students' outputs in chunk order and feeds them to a copy of the
teacher's classifier, optionally fine-tuned with the students frozen. Identical students train
fused (one batched computation, `kdbench.tcn_fuse`), with the same result as one after another
(within float tolerance; for `gan` under Adam only statistically: D's first Dense bias has an
exactly-zero gradient for units that stay on one side of the LeakyReLU over a batch, and Adam
turns the float noise of that zero into +-lr steps, so the two paths drift apart like two BLAS
builds would).

Mode: `--mode ff` or `--mode gan`; no mode means `ff` (the run record's metrics say `mode`).

Seed fusion (kdbench.seed_fuse, `ff` only): the runs of several seeds train each group of students
once for all seeds, every seed's copies reading that seed's batches; each seed's students, head
fine-tuning and metrics are then those of its run alone, within float tolerance.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from kdbench import seed_fuse
from kdbench.config import RunSpec
from kdbench.data.base import DataSpec
from kdbench.engine import Step, accuracy, predict, train
from kdbench.errors import KdbenchError
from kdbench.measure import latency_ms, parallel_latency_ms
from kdbench.method import Context, FitResult, Method, Range, Schedule, register_method
from kdbench.tcn_fuse import FusedConcat, Grouped, Single, grouped_plan, load_tensors, stack, structure_key

MNIST_FF_EPOCHS = {1: 20, 2: 10, 4: 10, 8: 20}  # the official notebooks, per n
# `fused=auto` on CPU fuses students up to this forward cost per image: the MNIST n = 8 students
# (59 kMAC) train 1.8x faster fused, the n = 4 ones (1.6 MMAC) gain nothing (0.98x; `fused` rows of
# results/bench/bench.md), as each of their convolutions already keeps a core busy.
FUSE_MAX_MACS_CPU = 500_000
MNIST_FAMILY = ("mnist", "mnist-5k")
OFFICIAL_VAL_FRACTION = 0.2


# ------------------------------------------------------------------------------------------ chunks

def chunk_sizes(width: int, n: int) -> list[int]:
    """Widths of n contiguous, disjoint chunks of a `width`-d vector: equal when n divides width,
    else `numpy.array_split` sizes (the first width % n chunks one wider)."""
    if n > width:
        raise KdbenchError(f"--students {n} exceeds the teacher's dense width {width}: each student needs at least one feature")
    return [len(a) for a in np.array_split(np.arange(width), n)]


def chunk_bounds(sizes: Sequence[int]) -> list[tuple[int, int]]:
    ends = np.cumsum(sizes).tolist()
    return [(e - s, e) for s, e in zip(sizes, ends)]


class TCNPredictor(nn.Module):
    """concat(S_1(x), ..., S_n(x)) in chunk order -> head (the teacher's classifier)."""

    def __init__(self, students: Sequence[nn.Module], head: nn.Module):
        super().__init__()
        self.students = nn.ModuleList(students)
        self.head = head

    def concat(self, x: Tensor) -> Tensor:
        return torch.cat([s(x) for s in self.students], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.concat(x))


# ------------------------------------------------------------------------------------ GAN pieces

class Discriminator(nn.Module):
    """D_j of the official code: Dense64 -> LReLU(0.2) -> [Dense 128, 256, 512, 1024 -> BN -> LReLU]
    -> heads `valid` (a logit; sigmoid is applied in the loss) and `recon` (chunk width).
    BatchNorm in Keras' convention (`momentum` weights the old moving average) and Keras' glorot
    uniform / zero-bias initialisation of the Dense layers; the Dense layers before a BN carry no
    bias (the same function: BN subtracts it again)."""

    def __init__(self, width: int, bn_momentum: float = 0.99, bn_eps: float = 1e-3):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(width, 64), nn.LeakyReLU(0.2)]
        prev = 64
        for h in (128, 256, 512, 1024):
            # no bias before BN: BN cancels it, so its exact gradient is 0 (under Adam, float noise
            # in that zero gradient would move it by ~lr per step and make runs differ bitwise)
            layers += [nn.Linear(prev, h, bias=False), nn.BatchNorm1d(h, momentum=1.0 - bn_momentum, eps=bn_eps), nn.LeakyReLU(0.2)]
            prev = h
        self.trunk = nn.Sequential(*layers)
        self.valid = nn.Linear(prev, 1)
        self.recon = nn.Linear(prev, width)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(t)
        return self.valid(h), self.recon(h)


def mse_per_student(a: Tensor, b: Tensor) -> Tensor:
    """(k, B, ...) -> (k,): each student's mean squared error."""
    return (a - b).pow(2).flatten(1).mean(1)


def bce_per_student(logits: Tensor, target: float) -> Tensor:
    """(k, B, 1) valid logits -> (k,): each student's mean BCE against a constant label."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction="none").flatten(1).mean(1)


def d_loss(valid_logit: Tensor, recon: Tensor, t: Tensor, real: bool) -> dict[str, Tensor]:
    """D step: BCE(valid, 1 if real else 0) + MSE(recon, t); summed over students (exact when fused)."""
    return {"bce": bce_per_student(valid_logit, 1.0 if real else 0.0).sum(), "mse": mse_per_student(recon, t).sum()}


def g_loss(valid_logit: Tensor, recon: Tensor, out: Tensor, t: Tensor, variant: str, lam: float) -> dict[str, Tensor]:
    """G step with D frozen. code-faithful: BCE(valid(S), 1) + MSE(recon(S), t) (S never regressed
    on t directly); paper-intent: BCE(valid(S), 1) + lam * MSE(S, t)."""
    adv = bce_per_student(valid_logit, 1.0).sum()
    if variant == "paper-intent":
        return {"bce": adv, "mse": lam * mse_per_student(out, t).sum()}
    return {"bce": adv, "mse": mse_per_student(recon, t).sum()}


def gan_steps(s: nn.Module, d: nn.Module, opt_s: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
              target: Callable[[Any], Tensor], variant: str, lam: float, g_step_bn: str) -> list[Step]:
    """Per batch, in order: D on real, D on fake, G with D frozen (its BN per `g_step_bn`).

    The fake batch comes from the student in inference mode without gradient (Keras' `predict`)."""

    def real(b):
        t = target(b)
        v, r = d(t)
        return d_loss(v, r, t, real=True)

    def fake(b):
        t = target(b)
        with torch.no_grad():
            f = s(b.x, bn_train=False)
        v, r = d(f)
        return d_loss(v, r, t, real=False)

    def gen(b):
        t = target(b)
        out = s(b.x)
        v, r = d(out, frozen=True, bn_train=(g_step_bn == "batch"))
        return g_loss(v, r, out, t, variant, lam)

    return [Step("d_real", opt_d, real), Step("d_fake", opt_d, fake), Step("g", opt_s, gen)]


def ff_steps(s: nn.Module, opt_s: torch.optim.Optimizer, target: Callable[[Any], Tensor]) -> list[Step]:
    return [Step("s", opt_s, lambda b: {"mse": mse_per_student(s(b.x), target(b)).sum()})]


def fuse_students(students: Sequence[nn.Module], fused: bool | str, spec: DataSpec, device: torch.device) -> bool:
    """Whether identical students train fused: as asked, or for `auto` always on an accelerator and
    on CPU while a student costs at most FUSE_MAX_MACS_CPU per sample."""
    if fused != "auto":
        return bool(fused)
    if device.type != "cpu":
        return True
    from kdbench.models import count_macs

    return count_macs(students[0], spec) <= FUSE_MAX_MACS_CPU


# ------------------------------------------------------------------------------------- the method

@dataclass
class _Trained:
    """Per-student outcome of the student stage."""

    last: dict[str, Tensor]
    best: dict[str, Tensor]
    best_d: dict[str, Tensor] | None
    best_epoch: int
    best_mse: float
    time_s: float


@register_method
class TCN(Method):
    name = "tcn"
    description = "Teacher-Class Network: n students each learn a chunk of the teacher's dense vector (ff or gan)"
    modes = ("ff", "gan")
    multi_student = True

    @dataclass
    class Params:
        gan_variant: Literal["code-faithful", "paper-intent"] = "code-faithful"
        lam: Annotated[float, Range(ge=0)] = 1.0  # paper-intent weight of MSE(S(x), t) in the G step
        g_step_bn: Literal["inference", "batch"] = "inference"  # D's BN in the G step (Keras: inference)
        d_bn_momentum: Annotated[float, Range(ge=0, lt=1)] = 0.99  # Keras convention (torch momentum = 1 - this)
        d_bn_eps: Annotated[float, Range(gt=0)] = 1e-3  # Keras default
        finetune: bool = True
        finetune_epochs: Annotated[int, Range(ge=0)] = 5  # >= 1 when finetune (validate)
        fused: Literal["auto"] | bool = "auto"  # auto: fuse where it is faster (see fuse_students)

    @classmethod
    def fresh_predictor(cls, ctx: Context, teacher: Callable[[], nn.Module]) -> tuple[nn.Module, dict[str, Any]]:
        """The students of the teacher's dense chunks, concatenated into the teacher's classifier, with
        TCN's own latency variants (the latency pass times this again)."""
        from kdbench.models import dense_view

        view = dense_view(teacher())
        n = ctx.spec.n_students
        students = [ctx.make_student(out_features=w, n_students=n) for w in chunk_sizes(view.dim, n)]
        predictor = TCNPredictor(students, copy.deepcopy(view.classifier)).to(ctx.device).eval()
        return predictor, {"latency_fn": latency_fn(predictor)}

    @classmethod
    def schedule(cls, spec: RunSpec, params) -> Schedule:
        cifar = (spec.dataset or "").startswith("cifar")
        batch = 256 if cifar else 128
        if (spec.mode or "ff") == "gan":
            return Schedule(epochs=40, batch_size=batch, lr=2e-4)
        epochs = MNIST_FF_EPOCHS.get(spec.n_students, 10) if spec.dataset in MNIST_FAMILY else 10
        return Schedule(epochs=epochs, batch_size=batch, lr=2e-4 if cifar else 1e-3)

    @classmethod
    def validate(cls, spec: RunSpec, params) -> None:
        super().validate(spec if spec.mode is not None else spec.replace(mode="ff"), params)
        if params.finetune and params.finetune_epochs < 1:
            raise KdbenchError(f"tcn: finetune_epochs must be >= 1 when finetune=true, got {params.finetune_epochs}")
        width = teacher_width_hint(spec)
        if width is not None:
            chunk_sizes(width, spec.n_students)

    # -- fit ------------------------------------------------------------------------------------

    def _setup(self, ctx: Context) -> dict[str, Any]:
        """Checks, deviations, chunking and the val targets of one run, and its students (and
        discriminators), each seeded by the run's seed and its index."""
        from kdbench.models import dense_view

        p, spec = self.params, ctx.spec
        mode = spec.mode or "ff"
        n = spec.n_students
        if ctx.teacher is None:
            raise KdbenchError("tcn needs a teacher")
        view = dense_view(ctx.teacher)  # KdbenchError when the teacher has no dense layer
        sizes = chunk_sizes(view.dim, n)
        bounds = chunk_bounds(sizes)
        if len(set(sizes)) > 1:
            ctx.deviations.append(f"tcn: {n} does not divide the dense width {view.dim}; numpy.array_split chunks {sizes}")
        if spec.val_fraction is not None and abs(spec.val_fraction - OFFICIAL_VAL_FRACTION) > 1e-9:
            ctx.deviations.append(f"tcn: val fraction {spec.val_fraction} (the official code uses an 80/20 split)")
        feats_val = ctx.targets("val").features  # training batches read theirs through ctx.teacher_outputs
        if feats_val.shape[1] != view.dim:
            raise KdbenchError(f"cached teacher features are {feats_val.shape[1]}-d, the teacher's dense width is {view.dim}")
        if ctx.augmented and p.finetune:
            ctx.deviations.append("tcn: the head is fine-tuned on the students' outputs on clean (not augmented) train images")

        students, discs = [], []
        for j, w in enumerate(sizes):  # seeded per student: the fused and sequential paths start equal
            torch.manual_seed(ctx.seed * 1000 + j)
            students.append(ctx.make_student(out_features=w, n_students=n))
            discs.append(Discriminator(w, p.d_bn_momentum, p.d_bn_eps).to(ctx.device) if mode == "gan" else None)
        groups = self._groups(students, fuse_students(students, p.fused, ctx.data.spec, ctx.device))
        return {"mode": mode, "n": n, "view": view, "sizes": sizes, "bounds": bounds, "feats_val": feats_val,
                "students": students, "discs": discs, "groups": groups}

    def fit(self, ctx: Context) -> FitResult:
        run = self._setup(ctx)
        trained: dict[int, _Trained] = {}
        history: list[dict[str, Any]] = []
        fusion: list[str] = []
        for members in run["groups"]:
            res, rows, kind = self._train_group(ctx, run["mode"], members, run["students"], run["discs"], run["bounds"], run["feats_val"])
            trained.update(res)
            history += rows
            fusion.append(kind)
        split = "fused groups: wall time split evenly among a group's students" if any(len(g) > 1 for g in run["groups"]) \
            else "measured per student"
        return self._result(ctx, run, trained, history, fusion, split)

    def fit_seeds(self, ctxs: list[Context]) -> list[FitResult]:
        """The `ff` runs of several seeds at once (kdbench.seed_fuse): each group of students (as
        its runs alone would group them) trains once for all seeds, then each seed is assembled
        and fine-tuned as its run alone."""
        runs = [self._setup(c) for c in ctxs]
        if runs[0]["mode"] != "ff":
            raise KdbenchError("tcn: seed fusion trains mode ff only")
        trained: list[dict[int, _Trained]] = [{} for _ in ctxs]
        history: list[list[dict[str, Any]]] = [[] for _ in ctxs]
        fusion: list[str] = []
        for members in runs[0]["groups"]:
            per_seed = self._train_group_seeds(ctxs, members, [r["students"] for r in runs], runs[0]["bounds"], runs[0]["feats_val"])
            for i, (res, rows) in enumerate(per_seed):
                trained[i].update(res)
                history[i] += rows
            fusion.append("single" if len(members) == 1 else "grouped" if grouped_plan(runs[0]["students"][members[0]]) else "vmap")
        split = f"seed-fused: the group's wall time split evenly among the students of its {len(ctxs)} seeds"
        return [self._result(c, r, t, h, list(fusion), split) for c, r, t, h in zip(ctxs, runs, trained, history)]

    def seed_fusion_unit(self, ctx: Context) -> list[nn.Module] | str:
        """What one seed trains as one computation: its largest group of students (all n when they
        train fused, else one), or why its runs cannot train fused."""
        if (ctx.spec.mode or "ff") != "ff":
            return "tcn gan: its discriminators' BatchNorm and Adam agree with the runs alone only statistically"
        n = ctx.spec.n_students
        width = teacher_width_hint(ctx.spec)
        sizes = chunk_sizes(width, n) if width is not None else [None] * n
        students = [ctx.make_student(out_features=w, n_students=n) for w in sizes]
        groups = self._groups(students, fuse_students(students, self.params.fused, ctx.data.spec, ctx.device))
        return [students[j] for j in max(groups, key=len)]

    def _result(self, ctx: Context, run: dict[str, Any], trained: dict[int, _Trained], history: list[dict[str, Any]],
                fusion: list[str], time_split: str) -> FitResult:
        """The deployed predictor of one run, its fine-tuning, metrics and states."""
        p = self.params
        mode, n, view, sizes, bounds = run["mode"], run["n"], run["view"], run["sizes"], run["bounds"]
        students, discs, groups, feats_val = run["students"], run["discs"], run["groups"], run["feats_val"]
        head = copy.deepcopy(view.classifier)
        head.requires_grad_(True)
        predictor = TCNPredictor(students, head).to(ctx.device).eval()
        metrics, states, ft_rows = self._assemble(ctx, predictor, trained, sizes, bounds, feats_val, discs)
        history += ft_rows
        times = [trained[j].time_s for j in range(n)]
        metrics.update({
            "mode": mode, "chunk_sizes": sizes, "gan_variant": p.gan_variant if mode == "gan" else None,
            "g_step_bn": p.g_step_bn if mode == "gan" else None, "fused": any(len(g) > 1 for g in groups), "fused_groups": groups, "fusion": fusion,
            "train_time_per_student_s": times,
            "train_time_split": time_split,
            "epochs_per_student": [ctx.schedule.epochs] * n, "epochs_run": ctx.schedule.epochs,
            "epoch_time_s": sum(times) / (n * ctx.schedule.epochs),
            "best_epoch_per_student": [trained[j].best_epoch for j in range(n)],
            "teacher_dense_width": view.dim,
        })
        if mode == "gan":
            metrics["d_bn"] = {"momentum_keras": p.d_bn_momentum, "eps": p.d_bn_eps, "init": "glorot_uniform, zero bias"}
        predictor.load_state_dict(states["valbest"])
        return FitResult(predictor, states["last"], states["valbest"], history,
                         parts={"students": list(predictor.students), "latency_fn": latency_fn(predictor), "chunk_sizes": sizes},
                         metrics=metrics)

    @staticmethod
    def _groups(students: Sequence[nn.Module], fused: bool) -> list[list[int]]:
        """Students of identical architecture train together when fused; else one by one."""
        if not fused:
            return [[j] for j in range(len(students))]
        by_key: dict[tuple, list[int]] = {}
        for j, s in enumerate(students):
            by_key.setdefault(structure_key(s), []).append(j)
        return list(by_key.values())

    def _train_group(self, ctx: Context, mode: str, members: list[int], students, discs, bounds, feats_val):
        """Train the students `members` (one, or several fused) with the shared loop; per-student
        val-best. Returns their outcomes, history rows and how they ran (single / grouped / vmap)."""
        p = self.params
        k = len(members)
        wrap = stack if k > 1 else (lambda ms, bi: Single(ms[0], bi))
        s = wrap([students[j] for j in members], False).to(ctx.device)
        d = wrap([discs[j] for j in members], True).to(ctx.device) if mode == "gan" else None
        cols = torch.stack([torch.arange(*bounds[j]) for j in members]).to(feats_val.device)  # (k, w)
        tgt_val = feats_val[:, cols].transpose(0, 1)  # (k, Nv, w)
        target = lambda b: ctx.teacher_outputs(b).features[:, cols].transpose(0, 1)  # noqa: E731  (k, B, w)

        opt_s = ctx.optimizer(s.parameters())
        if d is not None:
            steps = gan_steps(s, d, opt_s, ctx.optimizer(d.parameters()), target, p.gan_variant, p.lam, p.g_step_bn)
        else:
            steps = ff_steps(s, opt_s, target)
        best: dict[int, dict[str, Any]] = {}
        epoch = [0]
        x_val = ctx.split("val")[0]

        def evaluate() -> dict[str, float]:
            epoch[0] += 1
            out = _batched(s, x_val)
            mse = mse_per_student(out, tgt_val)
            row = {"val_mse": float(mse.mean())}
            if d is not None:
                real = torch.sigmoid(_batched(d, tgt_val, dim=1)[0]).flatten(1).mean(1)
                fake = torch.sigmoid(_batched(d, out, dim=1)[0]).flatten(1).mean(1)
                row.update({"d_valid_real": float(real.mean()), "d_valid_fake": float(fake.mean())})
            for i, j in enumerate(members):
                row[f"val_mse_s{j}"] = float(mse[i])
                if j not in best or float(mse[i]) < best[j]["mse"]:
                    best[j] = {"mse": float(mse[i]), "epoch": epoch[0], "s": s.member_tensors(i),
                               "d": d.member_tensors(i) if d is not None else None}
            return row

        modules = {"students": s, **({"discs": d} if d is not None else {})}
        desc = f"tcn {mode} s{members[0]}" if k == 1 else f"tcn {mode} fused x{k}"
        res = ctx.train(steps, modules, evaluate=evaluate, score_key="val_mse", higher_is_better=False, desc=desc)
        out: dict[int, _Trained] = {}
        for i, j in enumerate(members):
            out[j] = _Trained(s.member_tensors(i), best[j]["s"], best[j]["d"], best[j]["epoch"], best[j]["mse"], res.train_time_s / k)
        if d is not None:  # discriminators keep their last state; the val-best one is in best_d
            d.unstack_into([discs[j] for j in members])
        rows = [{**r, "stage": "students", "students": list(members)} for r in res.history]
        kind = "grouped" if isinstance(s, Grouped) else "vmap" if k > 1 else "single"
        return out, rows, kind

    def _train_group_seeds(self, ctxs: list[Context], members: list[int], students: list[list[nn.Module]], bounds, feats_val):
        """`_train_group` (ff) for the students `members` of every seed at once: copies ordered seed
        by seed, the copies of seed i reading seed i's batches. Returns per seed its outcomes and rows."""
        s, m = len(ctxs), len(members)
        k = s * m
        ctx = ctxs[0]
        st = stack([students[i][j] for i in range(s) for j in members], batched_input=True, share=m).to(ctx.device)
        cols = torch.stack([torch.arange(*bounds[j]) for j in members]).to(feats_val.device)  # (m, w)
        tgt_val = feats_val[:, cols].transpose(0, 1).repeat(s, 1, 1)  # (k, Nv, w)

        def target(b) -> Tensor:  # (k, B, w): seed i's batch rows, student j's columns
            t = seed_fuse.teacher_outputs(ctx, b).features[:, :, cols]  # (s, B, m, w)
            return t.transpose(1, 2).reshape(k, t.shape[1], -1)

        opt = ctx.optimizer(st.parameters())
        steps = [Step("s", opt, lambda b: {"mse": mse_per_student(st(b.x), target(b)).view(s, m).sum(1)})]
        best: dict[tuple[int, int], dict[str, Any]] = {}
        epoch = [0]
        x_val = ctx.split("val")[0]

        def evaluate() -> list[dict[str, float]]:
            epoch[0] += 1
            mse = mse_per_student(seed_fuse.predict_copies(st, x_val, s), tgt_val).view(s, m)
            rows = []
            for i in range(s):
                row = {"val_mse": float(mse[i].mean())}
                for a, j in enumerate(members):
                    v = float(mse[i, a])
                    row[f"val_mse_s{j}"] = v
                    if (i, j) not in best or v < best[(i, j)]["mse"]:
                        best[(i, j)] = {"mse": v, "epoch": epoch[0], "s": st.member_tensors(i * m + a)}
                rows.append(row)
            return rows

        desc = f"tcn ff s{members[0]} x{s} seeds" if m == 1 else f"tcn ff fused x{m} x{s} seeds"
        results = seed_fuse.train(ctxs, steps, {"students": st}, evaluate=evaluate, score_key="val_mse", higher_is_better=False,
                                  desc=desc, stage=f"tcn ff s{members[0]}" if m == 1 else f"tcn ff fused x{m}",  # as alone
                                  member_state=lambda i: {})
        out = []
        for i, res in enumerate(results):
            trained = {j: _Trained(st.member_tensors(i * m + a), best[(i, j)]["s"], None, best[(i, j)]["epoch"], best[(i, j)]["mse"],
                                   res.train_time_s / k) for a, j in enumerate(members)}
            out.append((trained, [{**r, "stage": "students", "students": list(members)} for r in res.history]))
        return out

    def _assemble(self, ctx: Context, predictor: TCNPredictor, trained: dict[int, _Trained], sizes, bounds, feats_val, discs):
        """Accuracy without and with fine-tuning, feature MSE, and the last / val-best states.

        The students are frozen from here on, so their concatenated outputs are computed once per
        split and state (and reused when every student's val-best epoch is its last)."""
        p = self.params
        data = ctx.data
        metrics: dict[str, Any] = {}
        states: dict[str, dict[str, Tensor]] = {}
        rows: list[dict[str, Any]] = []
        teacher_head = copy.deepcopy(predictor.head.state_dict())
        same = all(all(torch.equal(t.last[k], t.best[k]) for k in t.last) for t in trained.values())
        z: dict[str, Tensor] = {}
        for tag, pick in (("last", lambda t: t.last), ("valbest", lambda t: t.best)):
            for j, s in enumerate(predictor.students):
                load_tensors(s, pick(trained[j]))
            predictor.eval()
            if not (same and z):
                z = {split: predict(predictor.concat, getattr(data, split).x) for split in ("val", "test")}
                if p.finetune:
                    z["train"] = predict(predictor.concat, data.train.x)
            predictor.head.load_state_dict(teacher_head)
            suffix = "" if tag == "last" else "_valbest"
            metrics[f"test_acc{suffix}_no_finetune"] = accuracy(predict(predictor.head, z["test"]), data.test.y)
            metrics[f"val_acc{suffix}_no_finetune"] = accuracy(predict(predictor.head, z["val"]), data.val.y)
            per = [float(mse_per_student(z["val"][None, :, a:b], feats_val[None, :, a:b])[0]) for a, b in bounds]
            metrics[f"feature_mse{'_last' if tag == 'last' else ''}"] = float(np.dot(per, sizes) / sum(sizes))
            metrics[f"feature_mse_per_student{'_last' if tag == 'last' else ''}"] = per
            if p.finetune:
                ft_rows, ft_time = self._finetune(ctx, predictor.head, z, tag)
                rows += ft_rows
                metrics[f"finetune_time_s_{tag}"] = ft_time
                metrics[f"val_acc{suffix}_finetune"] = accuracy(predict(predictor.head, z["val"]), data.val.y)
            states[tag] = {k: v.detach().clone() for k, v in predictor.state_dict().items()}
        metrics["finetuned"] = bool(p.finetune)
        if discs[0] is not None:
            self._gan_metrics(ctx, predictor, trained, bounds, feats_val, discs, metrics)
        return metrics, states, rows

    def _finetune(self, ctx: Context, head: nn.Module, z: dict[str, Tensor], tag: str):
        """Train only the head with CE on the frozen students' outputs `z` (eval mode, so computed
        once); the head ends at its last epoch for `last`, at its val-best epoch for `valbest`."""
        y_tr, y_val = ctx.split("train")[1], ctx.split("val")[1]
        opt = ctx.optimizer(head.parameters())
        loss = lambda b: {"ce": _head_loss(head(b.x), b.y)}  # noqa: E731
        res = train([Step("finetune", opt, loss)], {"head": head}, z["train"], y_tr, epochs=self.params.finetune_epochs,
                    batch_size=ctx.schedule.batch_size, seed=ctx.seed, progress=ctx.progress, desc=f"tcn finetune {tag}",
                    evaluate=lambda: {"val_acc": accuracy(predict(head, z["val"]), y_val)})
        if tag == "valbest":
            res.restore_best({"head": head})
        head.eval()
        return [{**r, "stage": f"finetune_{tag}"} for r in res.history], res.train_time_s

    def _gan_metrics(self, ctx, predictor, trained, bounds, feats_val, discs, metrics) -> None:
        """Mean D valid probability on val real chunks and on student outputs (val-best states)."""
        real, fake = [], []
        x_val = ctx.split("val")[0]
        for j, ((a, b), s) in enumerate(zip(bounds, predictor.students)):
            d = copy.deepcopy(discs[j])
            load_tensors(d, trained[j].best_d)
            d.eval()
            with torch.inference_mode():
                real.append(float(torch.sigmoid(predict(lambda t: d(t)[0], feats_val[:, a:b])).mean()))
                fake.append(float(torch.sigmoid(predict(lambda t: d(t)[0], predict(s, x_val))).mean()))
        metrics.update({"d_valid_real": float(np.mean(real)), "d_valid_fake": float(np.mean(fake)),
                        "d_valid_real_per_student": real, "d_valid_fake_per_student": fake})


def _head_loss(z: Tensor, y: Tensor) -> Tensor:
    if z.shape[1] == 1:  # a single-logit (sigmoid) teacher head
        return F.binary_cross_entropy_with_logits(z[:, 0], y.float())
    return F.cross_entropy(z, y)


@torch.inference_mode()
def _batched(model: nn.Module, x: Tensor, dim: int = 0, batch_size: int = 1024) -> Any:
    """Outputs of a `Single`/`Stacked` on all of x; x is batched along `dim` (1 when it carries the
    student axis first); outputs are concatenated along the sample axis (1)."""
    n = x.shape[dim]
    outs = [model(x.narrow(dim, i, min(batch_size, n - i))) for i in range(0, n, batch_size)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*outs))
    return torch.cat(outs, dim=1)


def latency_fn(predictor: TCNPredictor) -> Callable[[Tensor, torch.device], dict[str, dict[str, float]]]:
    """TCN's inference variants: students one after another (+ head), fused (one batched computation
    per group of identical students, + head), and parallel (students concurrently, head excluded)."""

    def fn(example: Tensor, device: torch.device) -> dict[str, dict[str, float]]:
        fused = nn.Sequential(FusedConcat(list(predictor.students)), predictor.head).to(device).eval()
        out = {}
        for b in (1, 256):
            out[f"b{b}"] = {"sequential": latency_ms(predictor, example, b, device),
                            "fused": latency_ms(fused, example, b, device),
                            "parallel": parallel_latency_ms(list(predictor.students), example, b, device)}
        return out

    return fn


def teacher_width_hint(spec: RunSpec) -> int | None:
    """The teacher's dense width without training it (built on the meta device), so impossible
    chunkings fail before any training; None when it cannot be known cheaply."""
    from kdbench.data import DATASETS
    from kdbench.models import MODELS, dense_view
    from kdbench.teachers import default_teacher

    arch = spec.teacher
    if arch == "auto":
        arch = default_teacher(spec.dataset)
    if arch.startswith("file:"):
        rest = arch[5:]
        arch = rest.partition("=")[0] if "=" in rest else default_teacher(spec.dataset)
    if arch.startswith("timm/") or arch not in MODELS:
        return None
    factory = MODELS.get(arch)
    base = getattr(factory, "default_spec", None)
    if spec.dataset not in DATASETS or base is None:
        return None
    entry = DATASETS.get(spec.dataset)
    if entry.modality != base.modality:
        return None
    try:
        with torch.device("meta"):
            model = factory(dataclasses.replace(base, num_classes=entry.num_classes))
    except Exception:  # noqa: BLE001 - a hint only; the real check runs in fit
        return None
    return dense_view(model).dim  # KdbenchError: a teacher without a dense layer
