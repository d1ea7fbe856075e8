"""Data augmentation (RunSpec.augment) with the teacher in the loop (docs/design.md §2).

- the augmented batches are a function of the seed alone (same seed, same batches; another seed, others);
- crop-flip is a 4-pixel zero-padded random crop plus a random horizontal flip, batched, checked
  against a per-sample reference built from the same random draws;
- with augmentation KD's soft targets are the teacher's output on the augmented batch, not the cached
  clean targets; without it they are the cached rows of the batch (as before);
- every teacher-reading method runs end to end with crop-flip, and the record and run key say so;
- an unknown augmentation, or one asked for on text, is one line and exit code 2 at plan time.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from helpers_sweep import quiet_env  # noqa: F401  (fixture)

from kdbench.augment import batch_transform, crop_flip
from kdbench.cli import main
from kdbench.config import RunSpec, TeacherRecipe
from kdbench.data.base import DataSpec, Split, Splits
from kdbench.engine import Batch, Step, torch_threads, train
from kdbench.errors import KdbenchError
from kdbench.method import Context, Schedule, Targets, get_method
from kdbench.runner import resolve, run

# a valid quick run on 8x8 digits (sklearn, no data root); each bad case breaks one thing
OK = "--dataset digits --max-train 60 --epochs 1 --teacher plain2 --teacher-epochs 1 --no-latency"


@pytest.fixture(autouse=True)
def quiet(quiet_env):
    """No progress bars, one thread, and one cache for the session (the tiny teacher trains once)."""
    with torch_threads(1):
        yield


def images(n: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 2, 6, 5, generator=torch.Generator().manual_seed(seed)) + 0.5  # > 0: padding is visible


# ------------------------------------------------------------------------- determinism, values
def seen_batches(seed: int, epochs: int = 2) -> list[torch.Tensor]:
    """The training batches the shared loop hands to the steps with crop-flip, for a given seed."""
    x, y = images(), torch.zeros(12, dtype=torch.long)
    w = nn.Parameter(torch.zeros(()))
    seen: list[torch.Tensor] = []

    def loss(b):
        seen.append(b.x.clone())
        return {"zero": 0 * w}

    train([Step("s", torch.optim.SGD([w], lr=0.1), loss)], {}, x, y, epochs=epochs, batch_size=5, seed=seed,
          transform=batch_transform("crop-flip"), progress=False)
    return seen


def test_same_seed_same_augmented_batches_other_seed_others() -> None:
    a, b, c = seen_batches(0), seen_batches(0), seen_batches(1)
    assert len(a) == len(b) == 6
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))
    assert not torch.equal(a[0], a[3][: len(a[0])])  # epochs draw fresh crops


def test_crop_flip_matches_a_per_sample_reference() -> None:
    """Output = window of the 4-pixel zero-padded image at the drawn offsets, mirrored when drawn so."""
    x = images(16)
    out = crop_flip(x, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same draws, in the documented order: rows, columns, flips
    dy, dx = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    padded = F.pad(x, (4, 4, 4, 4))
    assert out.shape == x.shape and out.dtype == x.dtype
    for i in range(16):
        ref = padded[i, :, dy[i] : dy[i] + 6, dx[i] : dx[i] + 5]
        assert torch.equal(out[i], ref.flip(-1) if flip[i] else ref), i
    assert 0 < int(flip.sum()) < 16 and bool((out == 0).any())  # some flipped, some not; padding shows


def test_crop_flip_known_tensor() -> None:
    """Without padding a crop is the image itself: each sample comes back as it was or mirrored."""
    x = torch.arange(8 * 3 * 4, dtype=torch.float32).reshape(8, 1, 3, 4)
    out = crop_flip(x, torch.Generator().manual_seed(0), pad=0)
    kept = [torch.equal(out[i], x[i]) for i in range(8)]
    mirrored = [torch.equal(out[i], x[i].flip(-1)) for i in range(8)]
    assert all(k or m for k, m in zip(kept, mirrored)) and any(kept) and any(mirrored)
    i = mirrored.index(True)
    assert torch.equal(out[i, 0, 0], 12 * i + torch.tensor([3.0, 2.0, 1.0, 0.0]))  # first row read right to left
    one = torch.ones(1, 1, 2, 2)  # pad 1: a 2x2 window of the 4x4 padded image keeps 1 to 4 ones
    for seed in range(10):
        assert 1 <= int(crop_flip(one, torch.Generator().manual_seed(seed), pad=1).sum()) <= 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_crop_flip_on_cuda_equals_cpu() -> None:
    x = images(32)
    cpu = crop_flip(x, torch.Generator().manual_seed(5))
    gpu = crop_flip(x.cuda(), torch.Generator().manual_seed(5))
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)


# -------------------------------------------------------------- KD sees the teacher in the loop
class Recorder(nn.Module):
    """A tiny classifier that remembers the input of its last training-mode forward."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 6 * 5, 3))
        self.last: torch.Tensor | None = None

    def forward(self, x):
        if self.training:
            self.last = x.detach().clone()
        return self.net(x)


def kd_context(aug: str, cached: torch.Tensor, teacher: nn.Module) -> tuple[Context, Recorder, torch.Tensor]:
    x, y = images(10), torch.arange(10) % 3
    split = Split(x, y)
    data = Splits("fixed", split, split, split, DataSpec((2, 6, 5), 3))
    student = Recorder()
    ctx = Context(spec=RunSpec(method="kd", dataset="fixed", augment=aug), data=data, device=torch.device("cpu"),
                  schedule=Schedule(epochs=2, batch_size=4, lr=1e-3), teacher=teacher,
                  targets=lambda s: Targets(cached, torch.zeros(10, 1)), make_student=lambda **kw: student,
                  make_model=None, progress=False)
    return ctx, student, x


def spy_kd(monkeypatch, student: Recorder) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(student input, soft targets) of every kd_loss call of the kd method."""
    import kdbench.methods.kd as kd_module

    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = kd_module.kd_loss

    def spy(z, teacher_logits, temperature, reduction="batchmean"):
        calls.append((student.last, teacher_logits.detach().clone()))
        return real(z, teacher_logits, temperature, reduction)

    monkeypatch.setattr(kd_module, "kd_loss", spy)
    return calls


def conv_teacher() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 5, 3)).eval()


def test_kd_soft_targets_are_the_teacher_on_the_augmented_batch(monkeypatch) -> None:
    teacher = conv_teacher()
    cached = torch.full((10, 3), 7.0)  # never what the teacher says: reading the cache would show
    ctx, student, x = kd_context("crop-flip", cached, teacher)
    calls = spy_kd(monkeypatch, student)
    get_method("kd")(get_method("kd").Params()).fit(ctx)
    assert len(calls) == 6  # 2 epochs x 3 batches
    clean_rows = {tuple(r.flatten().tolist()) for r in x}
    for x_seen, soft in calls:
        with torch.no_grad():
            assert torch.allclose(soft, teacher(x_seen), atol=1e-6)
        assert not torch.equal(soft, torch.full_like(soft, 7.0))
    assert any(tuple(r.flatten().tolist()) not in clean_rows for xs, _ in calls for r in xs)  # batches were augmented


def test_kd_without_augmentation_reads_the_cached_rows(monkeypatch) -> None:
    cached = torch.randn(10, 3, generator=torch.Generator().manual_seed(1))
    ctx, student, x = kd_context("none", cached, teacher=None)  # no teacher at all: only the cache can answer
    calls = spy_kd(monkeypatch, student)
    get_method("kd")(get_method("kd").Params()).fit(ctx)
    assert len(calls) == 6
    for x_seen, soft in calls:
        idx = [int((x.flatten(1) == r.flatten()).all(1).nonzero()) for r in x_seen]  # clean rows: find them
        assert torch.equal(soft, cached[idx])


def test_teacher_runs_once_per_batch_however_often_it_is_asked() -> None:
    """GAN-style methods ask for the teacher in several steps of one batch: it runs once."""
    calls = []
    teacher = conv_teacher()
    teacher.register_forward_hook(lambda *a: calls.append(1))
    ctx, _, x = kd_context("crop-flip", torch.zeros(10, 3), teacher)
    b = Batch(x[:4], torch.zeros(4, dtype=torch.long), torch.arange(4))
    teacher.train()  # even a teacher left in train mode runs in eval mode, its BatchNorm untouched
    stats = teacher[1].running_mean.clone()
    first, again = ctx.teacher_outputs(b).logits, ctx.teacher_outputs(b).logits
    assert first is again and len(calls) == 1 and not first.is_inference() and teacher.training
    assert torch.equal(teacher[1].running_mean, stats)
    with torch.no_grad():
        assert torch.equal(first, teacher.eval()(b.x))


# ---------------------------------------------------------------------------------- end to end
def quick_spec(method: str, **kw) -> RunSpec:
    base = dict(method=method, dataset="digits", max_train=60, epochs=2, batch_size=32, teacher="plain2", student="plain2",
                teacher_recipe=TeacherRecipe(epochs=1, batch_size=64), device="cpu", augment="crop-flip")
    return RunSpec(**{**base, **kw})


@pytest.mark.parametrize("method,kw", [
    ("kd", {}), ("takd", {"params": {"assistants": ["plain4"]}}), ("ft", {"params": {"paraphraser_epochs": 1}}),
    ("kdgan", {}), ("tcn", {"student": "auto", "n_students": 2, "params": {"finetune_epochs": 1}}),
    ("tcn", {"student": "auto", "n_students": 2, "mode": "gan", "params": {"finetune": False}}),
])
def test_methods_run_with_crop_flip(method: str, kw: dict) -> None:
    record = run(quick_spec(method, **kw), latency=False)
    assert record["status"] == "ok" and record["spec"]["augment"] == "crop-flip"
    assert record["metrics"]["test_acc"] >= 0
    if method == "tcn" and kw.get("params", {}).get("finetune", True):
        assert any("clean (not augmented)" in d for d in record["deviations"])


def test_augmented_run_is_reproducible() -> None:
    from helpers_sweep import comparable

    spec = quick_spec("kd")
    assert comparable(run(spec, latency=False)) == comparable(run(spec, latency=False))


def test_kd_run_with_augmentation_through_the_cli(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(shlex.split(f"run --method kd {OK} --augment crop-flip --out {out}")) == 0, capsys.readouterr().err
    (path,) = out.glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["spec"]["augment"] == "crop-flip"
    spec = RunSpec.from_dict(record["spec"])
    assert resolve(spec).key == record["run_key"]
    clean = resolve(spec.replace(augment="none"))
    assert "augment" not in clean.canonical  # the default stays out of the spec: run keys made before it hold
    assert clean.key != record["run_key"] and {**clean.canonical, "augment": "crop-flip"} == resolve(spec).canonical


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv,pattern", [
    (f"run --method kd {OK} --augment blur", r"unknown augmentation 'blur'.*known: crop-flip, none"),
    (f"run --method kd {OK} --augment crop-flp", r"did you mean 'crop-flip'"),
    ("run --method kd --dataset imdb --augment crop-flip --epochs 1", r"augmentation 'crop-flip' is for image data; dataset 'imdb' is text"),
    ("run --method student --dataset sst2 --augment crop-flip", r"dataset 'sst2' is text"),
    (f"sweep --method kd {OK} --augment blur", r"augment"),
])
def test_bad_augmentation_is_one_line_exit_2(argv: str, pattern: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(shlex.split(argv) + ["--out", str(out)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("kdbench: error: "), err
    assert re.search(pattern, lines[0]) and "Traceback" not in err, lines[0]
    assert not out.exists()


def test_api_rejects_a_non_string_augmentation() -> None:
    with pytest.raises(KdbenchError, match="run field 'augment' must be a name"):
        resolve(RunSpec(method="kd", dataset="digits", augment=3))  # type: ignore[arg-type]
