"""Students sized to the TCN paper's budgets (Table 6): width chosen so params land within 5%.

Among the widths that meet the parameter budget, the one whose MACs are closest (in ratio) to the
paper's FLOPs / 2 wins, so compute stays comparable too. Both counts are reported.

Which budget a dataset's `auto` students get is its `student_budget` rule: a paper table ("mnist",
"imdb"; kdbench's built-in datasets declare their modality's), or "relative" (the default for any
other dataset): the paper's student / teacher ratio of parameters and FLOPs for n students, applied to
the dataset's default teacher built on its inputs. A new dataset's students are then as much
smaller than its teacher as the paper's were, whatever its input size or vocabulary."""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..data.base import DataSpec
from ..errors import KdbenchError
from ..registry import Registry
from .complexity import count_macs, count_params
from .students import Cost, image_student, image_student_cost, text_student, text_student_cost

TOLERANCE = 0.05
MIN_HIDDEN = 8


@dataclass(frozen=True)
class Budget:
    """Per-student parameters and FLOPs (the paper's FLOPs = 2 x MACs)."""

    params: int
    flops: int

    @property
    def macs(self) -> int:
        return self.flops // 2


# Table 6 of Malik et al. 2021 (params / FLOPs of EACH student), mirrored in reference/tcn_table6_params_flops.csv
PAPER_BUDGETS: dict[str, dict[int, Budget]] = {
    "mnist": {
        1: Budget(94_650, 11_670_000),
        2: Budget(46_360, 6_260_000),
        4: Budget(22_170, 3_140_000),
        6: Budget(10_900, 1_570_000),
        8: Budget(5_000, 149_120),
    },
    "imdb": {
        1: Budget(673_800, 2_570_000),
        2: Budget(330_880, 1_110_000),
        4: Budget(165_450, 562_110),
        6: Budget(106_800, 249_200),
        8: Budget(88_130, 114_060),
    },
}
# which paper table applies to a dataset's modality
MODALITY_TABLE = {"image": "mnist", "text": "imdb"}
# Table 6's teachers (params / FLOPs), the denominators of the "relative" rule's ratios
PAPER_TEACHERS: dict[str, Budget] = {"mnist": Budget(2_380_000, 26_460_000), "imdb": Budget(2_210_000, 7_200_000)}
RELATIVE = "relative"


class StudentSizeWarning(UserWarning):
    """A run's student is not smaller than its teacher (distillation is meant to compress)."""


def check_budget_rule(rule: str | None) -> None:
    """A dataset's declared `student_budget`: None, "relative" or a paper table name (a programming
    error otherwise, raised when the dataset registers)."""
    if rule is not None and rule != RELATIVE and rule not in PAPER_BUDGETS:
        raise ValueError(f"student_budget must be {RELATIVE!r} or a paper table ({', '.join(PAPER_BUDGETS)}), got {rule!r}")


def budget_rule(dataset: str) -> str:
    """How `dataset`'s auto students are sized: its declared rule, else "relative"."""
    from ..data.catalogue import family_default

    return family_default(dataset, "student_budget") or RELATIVE


def rule_table(rule: str, modality: str) -> str | None:
    """The paper table whose n = 1, 2, 4, ... entries the rule uses (the relative rule: its modality's ratios)."""
    return MODALITY_TABLE.get(modality) if rule == RELATIVE else rule


@dataclass(frozen=True)
class _Family:
    """How to enumerate and build one student family for the search."""

    model: str
    candidates: Callable[[DataSpec, int, int], Iterator[tuple[dict[str, Any], Cost]]]
    build: Callable[..., nn.Module]


def _solve_hidden(target: int, cost_at: Callable[[int], Cost]) -> int:
    """Hidden width whose params are closest to `target` (params are affine in hidden)."""
    c1, c2 = cost_at(1), cost_at(2)
    slope = c2.params - c1.params
    return max(1, round(1 + (target - c1.params) / slope))


def _image_candidates(spec: DataSpec, target: int, out: int) -> Iterator[tuple[dict[str, Any], Cost]]:
    for width in range(1, 65):
        try:
            hidden = _solve_hidden(target, lambda h: image_student_cost(spec, width, h, out))
        except KdbenchError:  # input too small for this trunk
            return
        cfg = {"width": width, "hidden": hidden, "pool": 4}
        yield cfg, image_student_cost(spec, width, hidden, out)


def _text_candidates(spec: DataSpec, target: int, out: int) -> Iterator[tuple[dict[str, Any], Cost]]:
    for embed_dim in range(8, 129, 8):
        for width in range(1, 65):
            hidden = _solve_hidden(target, lambda h: text_student_cost(spec, width, h, out, embed_dim))
            cfg = {"width": width, "hidden": hidden, "embed_dim": embed_dim, "pool": 2}
            yield cfg, text_student_cost(spec, width, hidden, out, embed_dim)


FAMILIES = {
    "image": _Family("image-student", _image_candidates, image_student),
    "text": _Family("text-student", _text_candidates, text_student),
}
BUDGET_TABLES: Registry[dict[str, dict[int, Budget]]] = Registry("student budget family")
BUDGET_TABLES.add("paper", PAPER_BUDGETS)
# Families that are named in docs/methods.md#tcn-student-budgets but cannot be built from what is published: the official
# notebooks' students are not described in the paper, and the notebooks are not available here.
UNAVAILABLE_FAMILIES = {"repo": "budget family 'repo' (the official notebooks' students) is not available: the paper "
                                "gives only the Table 6 budgets, and the notebooks' student layers are not published "
                                "with it; use --budget paper or --student ARCH"}


def budget_table(family: str) -> dict[str, dict[int, Budget]]:
    """The budgets of a student family by modality table; one clear error for a family kdbench cannot build."""
    if family in UNAVAILABLE_FAMILIES:
        raise KdbenchError(UNAVAILABLE_FAMILIES[family])
    return BUDGET_TABLES.get(family)


def table_budget(family: str, table_name: str, n_students: int) -> Budget:
    """The family's per-student budget for n students in one table; one clear error when it has none."""
    table = budget_table(family)[table_name]
    if n_students not in table:
        raise KdbenchError(
            f"the {family} budget table has no entry for n={n_students} students "
            f"(it has n = {', '.join(map(str, sorted(table)))}); pass budget= explicitly"
        )
    return table[n_students]


def relative_budget(teacher: Budget, n_students: int, table_name: str, family: str = "paper") -> Budget:
    """The paper's student / teacher ratios (params and FLOPs, for n students) applied to `teacher`."""
    paper, ref = table_budget(family, table_name, n_students), PAPER_TEACHERS[table_name]
    return Budget(max(1, round(teacher.params * paper.params / ref.params)), max(2, round(teacher.flops * paper.flops / ref.flops)))


@functools.lru_cache(maxsize=16)
def model_cost(arch: str, spec: DataSpec) -> Budget:
    """Params and FLOPs of zoo model `arch` built on `spec` (the global RNG is left as it was)."""
    from .zoo import create_model

    with torch.random.fork_rng(devices=[]):
        model = create_model(arch, spec)
    return Budget(count_params(model), 2 * count_macs(model, spec))


def scaled(budget: Budget, scale: float) -> Budget:
    """`budget` times `scale` (params and FLOPs alike): the student-size axis of a sweep."""
    if not (math.isfinite(scale) and scale > 0):
        raise KdbenchError(f"student_scale must be a finite number > 0, got {scale!r}")
    if scale == 1:
        return budget
    return Budget(max(1, round(budget.params * scale)), max(2, round(budget.flops * scale)))


def auto_budget(spec: DataSpec, n_students: int, family: str, rule: str, teacher: str | None = None,
                scale: float = 1.0) -> tuple[Budget, str | None]:
    """The per-student budget of a dataset's `auto` students: a paper table's (`rule`), or ("relative")
    the paper's ratios applied to `teacher` (the dataset's default teacher) on `spec`; times `scale`
    (1: the paper's size). Also the table name when the budget is relative (None otherwise)."""
    if rule != RELATIVE:
        return scaled(table_budget(family, rule, n_students), scale), None
    table_name = rule_table(rule, spec.modality)
    if table_name is None or teacher is None:
        raise KdbenchError(f"no relative student budget for modality '{spec.modality}' without a teacher; pass --student ARCH")
    return scaled(relative_budget(model_cost(teacher, spec), n_students, table_name, family), scale), table_name


def auto_student(spec: DataSpec, n_students: int, out_features: int, family: str, rule: str,
                 teacher: str | None = None, scale: float = 1.0) -> tuple[nn.Module, dict[str, Any]]:
    """The `auto` student of a dataset whose budget rule is `rule` (see `auto_budget`)."""
    if rule != RELATIVE:
        return budget_student(spec, n_students, out_features, family, table=rule, scale=scale)
    budget, table_name = auto_budget(spec, n_students, family, rule, teacher, scale)
    model, info = budget_student(spec, n_students, out_features, family, budget=budget)
    ref = model_cost(teacher, spec)
    ratio = table_budget(family, table_name, n_students).params / PAPER_TEACHERS[table_name].params
    times = f" x {scale:g}" if scale != 1 else ""
    info.update(family=family, table=table_name, rule=RELATIVE, reference_teacher=teacher, reference_params=ref.params,
                scale=scale,
                deviation=f"no paper budget for this dataset: students sized to the {family} table {table_name}'s student / "
                          f"teacher ratio for n={n_students} ({ratio:.2%} of the params{times}) of teacher {teacher} "
                          f"({ref.params:,} params here)")
    return model, info


def check_auto_student(spec: DataSpec, n_students: int, out_features: int, family: str, rule: str,
                       teacher: str | None = None, scale: float = 1.0) -> None:
    """Raise the KdbenchError `auto_student` would raise for this budget, without building the model:
    a preflight check, so that a `--student-scale` no student can meet fails before any training."""
    budget, _ = auto_budget(spec, n_students, family, rule, teacher, scale)
    if spec.modality not in FAMILIES:
        raise KdbenchError(f"no student family for modality '{spec.modality}'")
    if _best_config(spec, budget, out_features) is None:
        raise _no_fit(spec, budget, out_features, family, scale)


def student_size_warning(student_params: int, teacher_params: int, teacher: str) -> str | None:
    """The warning for a student not smaller than its teacher (None when it is smaller); also warned on stderr."""
    if student_params < teacher_params:
        return None
    text = (f"the student ({student_params:,} params) is not smaller than its teacher {teacher} ({teacher_params:,} params); "
            "pass a smaller --student, or declare the dataset's student_budget")
    warnings.warn(text, StudentSizeWarning, stacklevel=2)
    return text


def _best_config(spec: DataSpec, budget: Budget, out_features: int) -> tuple[dict[str, Any], Cost] | None:
    """The family's candidate within TOLERANCE of the budget's params whose MACs are closest (by
    ratio) to the budget's, or None when no width fits."""
    best: tuple[float, dict[str, Any], Cost] | None = None
    for cfg, cost in FAMILIES[spec.modality].candidates(spec, budget.params, out_features):
        rel = cost.params / budget.params - 1
        if abs(rel) > TOLERANCE or cfg["hidden"] < MIN_HIDDEN:
            continue
        score = abs(math.log(cost.macs / budget.macs)) + abs(rel)
        if best is None or score < best[0]:
            best = (score, cfg, cost)
    return None if best is None else best[1:]


def _no_fit(spec: DataSpec, budget: Budget, out_features: int, family: str, scale: float) -> KdbenchError:
    at = f" ({scale:g} x the {family} budget: try another --student-scale)" if scale != 1 else ""
    return KdbenchError(f"no {FAMILIES[spec.modality].model} for {tuple(spec.input_shape)} fits {budget.params:,} params "
                        f"within {TOLERANCE:.0%} with out_features={out_features}{at}")


def budget_student(
    spec: DataSpec, n_students: int, out_features: int, family: str = "paper", *, budget: Budget | None = None,
    table: str | None = None, scale: float = 1.0,
) -> tuple[nn.Module, dict[str, Any]]:
    """A student for one of `n_students` under the family's per-student budget times `scale` (or an
    explicit `budget`, taken as it is) in `table` (default: the modality's paper table).

    Returns the model and an info dict: config, target and actual params / MACs / FLOPs, relative error."""
    explicit = budget is not None
    table_name = table or MODALITY_TABLE.get(spec.modality)
    if spec.modality not in FAMILIES or table_name is None:
        raise KdbenchError(f"no student family for modality '{spec.modality}'")
    if budget is None:
        budget = scaled(table_budget(family, table_name, n_students), scale)
    fam = FAMILIES[spec.modality]
    best = _best_config(spec, budget, out_features)
    if best is None:
        raise _no_fit(spec, budget, out_features, family, 1.0 if explicit else scale)
    cfg, _ = best
    model = fam.build(spec, out_features=out_features, **cfg)
    params, macs = count_params(model), count_macs(model, spec)
    info = {
        "family": "explicit" if explicit else family,
        "table": None if explicit else table_name,
        "model": fam.model,
        "config": dict(cfg, out_features=out_features),
        "n_students": n_students,
        "scale": 1.0 if explicit else scale,
        "target_params": budget.params,
        "params": params,
        "params_rel_err": params / budget.params - 1,
        "target_macs": budget.macs,
        "macs": macs,
        "target_flops": budget.flops,
        "flops": 2 * macs,
        "macs_ratio": macs / budget.macs,
        "deviation": "the paper gives no student layers; kdbench's parametric family sized to "
                     + (f"{scale:g} x " if scale != 1 and not explicit else "") + "its Table 6 budget",
    }
    return model, info
