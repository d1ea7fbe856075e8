"""`takd`: teacher-assistant KD (Mirzadeh et al., AAAI 2020): teacher -> assistant(s) -> student,
every stage plain Hinton KD from the previous stage's val-best model (eval-mode logits, cached once;
with augmentation the previous stage runs on each augmented batch).

Default assistant: the paper's where it has one (student plain2 -> plain4; resnet8 -> resnet14 on
CIFAR-10, resnet20 on CIFAR-100). The MNIST family and the budget students have no paper TA, so the
default there is `auto`: the student's own budget family (`image-student` / `text-student`) sized by
`budget_student` to the geometric mean of the teacher's and the student's parameters and MACs (the
middle of the gap on a log scale); the record's deviations name the configuration used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Callable

import torch
from torch import nn

from kdbench.config import RunSpec
from kdbench.data.catalogue import paper_of
from kdbench.engine import Batch, Step, TrainResult, accuracy, predict
from kdbench.errors import KdbenchError
from kdbench.method import BatchTargets, Context, FitResult, Method, Range, Schedule, register_method
from kdbench.recipes import default_schedule, lr_factor, paper_family, schedule_note

from .kd import hinton_loss

AUTO = "auto"


def default_assistants(spec: RunSpec) -> list[str]:
    family = paper_family(spec.student)
    if family == "plain":
        return ["plain4"]
    if family == "resnet":
        suffix = "b" if spec.student.endswith("b") else ""  # the assistant keeps the student's shortcut type
        return [("resnet20" if paper_of(spec.dataset).startswith("cifar100") else "resnet14") + suffix]
    if spec.student == "auto":
        return [AUTO]
    raise KdbenchError(f"takd has no default assistant for student '{spec.student}'; pass --param assistants=NAME[,NAME]")


def note_option_a(ctx: Context, model: nn.Module | None, label: str) -> None:
    """TAKD's CIFAR ResNets have option-B shortcuts: a run on option-A nets says so in its deviations."""
    if getattr(model, "shortcut_type", None) == "A":
        ctx.deviations.append(f"takd: {label} has option-A (zero-padding) shortcuts; TAKD's ResNets use option B "
                              "(1x1 conv + BN: the resnet<d>b models)")


def per_stage(values: list[float] | None, default: float, n: int, name: str) -> list[float]:
    if not values:
        return [default] * n
    if len(values) == 1:
        return list(values) * n
    if len(values) != n:
        raise KdbenchError(f"takd: {name} has {len(values)} values for {n} stages (give 1 or {n})")
    return list(values)


@register_method
class TAKD(Method):
    name = "takd"
    description = "teacher -> assistant(s) -> student, each stage Hinton KD from the previous val-best model"

    @dataclass
    class Params:
        assistants: list[str] | None = None  # zoo names or "auto"; None = the paper's TA / auto (see module doc)
        temperatures: Annotated[list[float] | None, Range(gt=0)] = None  # per stage (1 value = every stage); None = 4.0
        alphas: Annotated[list[float] | None, Range(ge=0, le=1)] = None  # per stage; None = 0.9
        code_faithful: bool = False  # KL 'mean' (1/K of batchmean) and the official ResNet lr schedule

    @classmethod
    def schedule(cls, spec: RunSpec, params) -> Schedule:
        return default_schedule(spec, params.code_faithful)

    @classmethod
    def validate(cls, spec: RunSpec, params) -> None:
        super().validate(spec, params)
        assistants = params.assistants if params.assistants else default_assistants(spec)
        if AUTO in assistants and spec.student != "auto":
            raise KdbenchError("takd: assistant 'auto' sizes the budget student family; with --student NAME pass zoo names")
        n = len(assistants) + 1
        for name, values in (("temperatures", params.temperatures), ("alphas", params.alphas)):
            per_stage(values, 1.0, n, name)  # one value or one per stage; each value's range is declared in Params

    def fit(self, ctx: Context) -> FitResult:
        p = self.params
        assistants = list(p.assistants) if p.assistants else default_assistants(ctx.spec)
        n = len(assistants) + 1
        temps = per_stage(p.temperatures, 4.0, n, "temperatures")
        alphas = per_stage(p.alphas, 0.9, n, "alphas")
        reduction = "mean" if p.code_faithful else "batchmean"
        family = paper_family(ctx.spec.student)
        ctx.deviations.append(f"takd {schedule_note(family, p.code_faithful)}")
        ctx.deviations.append("takd: stages select their val-best epoch (the official code reported best-over-epochs on test)")

        note_option_a(ctx, ctx.teacher, "the teacher")
        teach = ctx.teacher_outputs  # stage 0: the run's teacher; later stages: the previous val-best assistant
        student = ctx.make_student()
        stages: list[dict] = []
        for i, arch in enumerate(assistants + ["student"]):
            last_stage = i == n - 1
            if last_stage:
                model, label = student, ctx.spec.student
            elif arch == AUTO:
                model, sized = auto_assistant(ctx, student)
                label = f"{sized['model']}({', '.join(f'{k}={v}' for k, v in sized['config'].items())})"
                ctx.deviations.append(f"takd: no paper assistant for this student; assistant = {label}, "
                                      f"{sized['params']} params (geometric mean of teacher and student)")
            else:
                model, label = ctx.make_model(arch), arch
            note_option_a(ctx, model, label)
            result = train_stage(ctx, model, teach, temps[i], alphas[i], reduction, family, p.code_faithful, f"takd[{i}] {label}")
            info = {"stage": i, "arch": label, "temperature": temps[i], "alpha": alphas[i], "params": count(model),
                    "val_acc": result.best_score, "best_epoch": result.best_epoch, "train_time_s": result.train_time_s}
            if not last_stage:  # assistant: its val-best logits (eval mode) teach the next stage
                x_test, y_test = ctx.split("test")
                info["test_acc"] = accuracy(predict(model, x_test), y_test)  # reported only, never selected on
                teach = ctx.stage_teacher(model)
            stages.append(info)
        metrics = {"takd_stages": stages, "reduction": reduction, "code_faithful": p.code_faithful,
                   "best_epoch": stages[-1]["best_epoch"]}
        for s in stages[:-1]:
            metrics[f"assistant{s['stage']}_val_acc"] = s["val_acc"]
            metrics[f"assistant{s['stage']}_test_acc"] = s["test_acc"]
        return FitResult.from_train(student, result, metrics=metrics)


def train_stage(ctx: Context, model: nn.Module, teach: Callable[[Batch], BatchTargets], temperature: float, alpha: float,
                reduction: str, family: str | None, code_faithful: bool, desc: str) -> TrainResult:
    """One KD stage from `teach(batch).logits`; returns the train result and leaves `model` at its
    val-best state."""

    def loss(b):
        return hinton_loss(model(b.x), b.y, teach(b).logits, alpha, temperature, reduction)

    opt = ctx.optimizer(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(family, code_faithful, ctx.schedule.epochs))
    res = ctx.train([Step("takd", opt, loss)], {"model": model}, evaluate=lambda: ctx.val_accuracy(model),
                    schedulers=[sched], desc=desc)
    res.restore_best({"model": model})
    return res


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def auto_assistant(ctx: Context, student: nn.Module) -> tuple[nn.Module, dict]:
    """The budget student family sized to the geometric mean of teacher and student (params and MACs)."""
    from kdbench.models import Budget, budget_student, count_macs, place

    spec = ctx.data.spec
    params = math.sqrt(count(ctx.teacher) * count(student))
    macs = math.sqrt(count_macs(ctx.teacher, spec) * count_macs(student, spec))
    model, info = budget_student(spec, 1, spec.num_classes, budget=Budget(round(params), 2 * round(macs)))
    return place(model, ctx.device), info
