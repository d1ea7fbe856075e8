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
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal

from torch import nn

from kdbench.config import RunSpec
from kdbench.data.catalogue import paper_of
from kdbench.errors import KdbenchError
from kdbench.method import Context, FitResult, LatencyFn, Method, Range, Schedule, register_method
from kdbench.tcn_fuse import grouped_plan

from .tcn_parts import (TCNPredictor, Trained, chunk_sizes, fuse_students, latency_fn, student_groups, teacher_width_hint,
                        zeroed_accuracy)
from .tcn_train import assemble, setup, train_group, train_group_seeds

MNIST_FF_EPOCHS = {1: 20, 2: 10, 4: 10, 8: 20}  # the official notebooks, per n


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
    def fresh_predictor(cls, ctx: Context, teacher: Callable[[], nn.Module]) -> tuple[nn.Module, LatencyFn]:
        """The students of the teacher's dense chunks, concatenated into the teacher's classifier, with
        TCN's own latency variants (the latency pass times this again)."""
        from kdbench.models import dense_view

        view = dense_view(teacher())
        n = ctx.spec.n_students
        students = [ctx.make_student(out_features=w, n_students=n) for w in chunk_sizes(view.dim, n)]
        predictor = TCNPredictor(students, copy.deepcopy(view.classifier)).to(ctx.device).eval()
        return predictor, latency_fn(predictor)

    @classmethod
    def schedule(cls, spec: RunSpec, params) -> Schedule:
        paper = paper_of(spec.dataset)  # the official code's recipe per paper dataset
        cifar = paper.startswith("cifar")
        batch = 256 if cifar else 128
        if (spec.mode or "ff") == "gan":
            return Schedule(epochs=40, batch_size=batch, lr=2e-4)
        epochs = MNIST_FF_EPOCHS.get(spec.n_students, 10) if paper == "mnist" else 10
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

    def fit(self, ctx: Context) -> FitResult:
        run = setup(ctx, self.params)
        trained: dict[int, Trained] = {}
        history: list[dict[str, Any]] = []
        fusion: list[str] = []
        for members in run["groups"]:
            res, rows, kind = train_group(ctx, self.params, run["mode"], members, run["students"], run["discs"], run["bounds"], run["feats_val"],
                                          run["view"].classifier)
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
        runs = [setup(c, self.params) for c in ctxs]
        if runs[0]["mode"] != "ff":
            raise KdbenchError("tcn: seed fusion trains mode ff only")
        trained: list[dict[int, Trained]] = [{} for _ in ctxs]
        history: list[list[dict[str, Any]]] = [[] for _ in ctxs]
        fusion: list[str] = []
        for members in runs[0]["groups"]:
            per_seed = train_group_seeds(ctxs, members, [r["students"] for r in runs], runs[0]["bounds"], runs[0]["feats_val"],
                                         runs[0]["view"].classifier)
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
        groups = student_groups(students, fuse_students(students, self.params.fused, ctx.data.spec, ctx.device))
        return [students[j] for j in max(groups, key=len)]

    def _result(self, ctx: Context, run: dict[str, Any], trained: dict[int, Trained], history: list[dict[str, Any]],
                fusion: list[str], time_split: str) -> FitResult:
        """The deployed predictor of one run, its fine-tuning, metrics and states."""
        p = self.params
        mode, n, view, sizes, bounds = run["mode"], run["n"], run["view"], run["sizes"], run["bounds"]
        students, discs, groups, feats_val = run["students"], run["discs"], run["groups"], run["feats_val"]
        head = copy.deepcopy(view.classifier)
        head.requires_grad_(True)
        predictor = TCNPredictor(students, head).to(ctx.device).eval()
        metrics, states, ft_rows = assemble(ctx, p, predictor, trained, sizes, bounds, feats_val, discs)
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
            "val_acc_zeroed_per_student": zeroed_accuracy(view.classifier, feats_val, bounds, ctx.split("val")[1]),
        })
        if mode == "gan":
            metrics["d_bn"] = {"momentum_keras": p.d_bn_momentum, "eps": p.d_bn_eps, "init": "glorot_uniform, zero bias"}
        predictor.load_state_dict(states["valbest"])
        return FitResult(predictor, states["last"], states["valbest"], history,
                         metrics=metrics, students=list(predictor.students), latency_fn=latency_fn(predictor))
