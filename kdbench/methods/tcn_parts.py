"""TCN's shared pieces (kdbench/methods/tcn.py): the chunking of the teacher's dense vector, the
deployed predictor, the per-student MSE and `ff` step, which students train fused, the per-student
outcome of the student stage, the latency variants and the teacher-width hint."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from kdbench.config import RunSpec
from kdbench.data.base import DataSpec
from kdbench.engine import Step, accuracy
from kdbench.errors import KdbenchError
from kdbench.measure import latency_ms, parallel_latency_ms
from kdbench.method import LatencyFn
from kdbench.tcn_fuse import FusedConcat, structure_key

# `fused=auto` on CPU fuses students up to this forward cost per image: the MNIST n = 8 students
# (59 kMAC) train 1.8x faster fused, the n = 4 ones (1.6 MMAC) gain nothing (0.98x; `fused` rows of
# results/bench/bench.md), as each of their convolutions already keeps a core busy.
FUSE_MAX_MACS_CPU = 500_000

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


def mse_per_student(a: Tensor, b: Tensor) -> Tensor:
    """(k, B, ...) -> (k,): each student's mean squared error."""
    return (a - b).pow(2).flatten(1).mean(1)


@torch.no_grad()
def swapped_accuracy(head: nn.Module, feats: Tensor, cols: Tensor | Sequence[Tensor], out: Tensor | Sequence[Tensor],
                     y: Tensor, batch_size: int = 4096) -> list[float]:
    """Per student i, the val accuracy (%) of the teacher's head on the teacher's own dense features
    with chunk `cols[i]` replaced by the student's output `out[i]` (k, N, w): a per-epoch accuracy of
    each student while it trains, before the others exist and before any fine-tuning."""
    accs = []
    for c, o in zip(cols, out):
        f = feats.clone()
        f[:, c] = o.to(f.dtype)
        logits = torch.cat([head(part) for part in f.split(batch_size)])
        accs.append(accuracy(logits, y.to(logits.device)))
    return accs


def zeroed_accuracy(head: nn.Module, feats: Tensor, bounds: Sequence[tuple[int, int]], y: Tensor) -> list[float]:
    """`swapped_accuracy` of a student that outputs zeros, per chunk: the floor of its curve (with
    n > 1 the other chunks are the teacher's, and a head that does not need chunk j scores high
    without it)."""
    cols = [torch.arange(a, b, device=feats.device) for a, b in bounds]
    return swapped_accuracy(head, feats, cols, [feats.new_zeros(len(feats), len(c)) for c in cols], y)


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


def student_groups(students: Sequence[nn.Module], fused: bool) -> list[list[int]]:
    """Students of identical architecture train together when fused; else one by one."""
    if not fused:
        return [[j] for j in range(len(students))]
    by_key: dict[tuple, list[int]] = {}
    for j, s in enumerate(students):
        by_key.setdefault(structure_key(s), []).append(j)
    return list(by_key.values())


@dataclass
class Trained:
    """Per-student outcome of the student stage."""

    last: dict[str, Tensor]
    best: dict[str, Tensor]
    best_d: dict[str, Tensor] | None
    best_epoch: int
    best_mse: float
    time_s: float


def head_loss(z: Tensor, y: Tensor) -> Tensor:
    if z.shape[1] == 1:  # a single-logit (sigmoid) teacher head
        return F.binary_cross_entropy_with_logits(z[:, 0], y.float())
    return F.cross_entropy(z, y)


@torch.inference_mode()
def batched(model: nn.Module, x: Tensor, dim: int = 0, batch_size: int = 1024) -> Any:
    """Outputs of a `Single`/`Stacked` on all of x; x is batched along `dim` (1 when it carries the
    student axis first); outputs are concatenated along the sample axis (1)."""
    n = x.shape[dim]
    outs = [model(x.narrow(dim, i, min(batch_size, n - i))) for i in range(0, n, batch_size)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*outs))
    return torch.cat(outs, dim=1)


def latency_fn(predictor: TCNPredictor) -> LatencyFn:
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
