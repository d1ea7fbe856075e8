"""Teachers are trained once per (architecture, dataset, split, recipe, seed) and cached as
safetensors + a JSON sidecar; their targets (logits and dense features per split) are cached too."""
from __future__ import annotations

import dataclasses
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from .cache import CacheEntry, key_hash, load_array, save_array, sha256_file
from .config import CODE_VERSION, TeacherRecipe
from .data.base import Splits
from .engine import Step, accuracy, keep_freed_memory, make_optimizer, predict, seed_everything, train
from .errors import KdbenchError
from .method import Targets

# The paper teacher of each dataset family (METHODS.md) and the recipe that trains it here.
DEFAULT_TEACHERS = {
    "mnist": "paper-mnist-teacher",
    "fashion-mnist": "paper-mnist-teacher",
    "mnist-5k": "paper-mnist-teacher",
    "digits": "paper-mnist-teacher",
    "imdb": "paper-imdb-teacher",
    "imdb-5k": "paper-imdb-teacher",
    "sst2": "paper-imdb-teacher",
    "movie-reviews": "paper-imdb-teacher",
    "cifar10": "paper-cifar-teacher",
    "cifar10-jpeg": "paper-cifar-teacher",
}
DEFAULT_RECIPES = {
    "mnist": TeacherRecipe(epochs=6),
    "fashion-mnist": TeacherRecipe(epochs=10),
    "mnist-5k": TeacherRecipe(epochs=15),
    "digits": TeacherRecipe(epochs=30, batch_size=64),
    "imdb": TeacherRecipe(epochs=3),
    "imdb-5k": TeacherRecipe(epochs=5, batch_size=64),
    "sst2": TeacherRecipe(epochs=3),
    "movie-reviews": TeacherRecipe(epochs=10, batch_size=32),
}


# Teachers train and compute their targets with this many torch threads, whatever the executor or
# --threads: on a CPU the thread count changes the floats, and a teacher's cache key holds none, so
# it must not vary (one key, one teacher). The sidecars record it.
TEACHER_THREADS = 1


@contextmanager
def teacher_threads() -> Iterator[None]:
    """TEACHER_THREADS torch threads while the body runs, then the caller's again."""
    previous = torch.get_num_threads()
    torch.set_num_threads(TEACHER_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def default_teacher(dataset: str) -> str:
    try:
        return DEFAULT_TEACHERS[dataset]
    except KeyError:
        raise KdbenchError(f"no default teacher for dataset '{dataset}'; pass --teacher NAME") from None


def default_recipe(dataset: str) -> TeacherRecipe:
    return DEFAULT_RECIPES.get(dataset, TeacherRecipe())


@dataclass
class Teacher:
    model: nn.Module
    arch: str
    key: str
    info: dict[str, Any]  # recipe, metrics (val/test acc), train time, source


def _split_identity(data: Splits) -> dict[str, Any]:
    info = data.info
    return {k: info.get(k) for k in ("val_fraction", "split_seed", "max_train")} | {"dataset": data.name, "sizes": data.sizes()}


def model_options(normalize: str | None) -> dict[str, Any]:
    """Options of a teacher's `build_model(arch, **options)`: its input normalisation, when set."""
    return {"normalize": normalize} if normalize is not None else {}


def teacher_cache_key(arch: str, data: Splits, recipe: TeacherRecipe, normalize: str | None = None) -> str:
    ident = {"arch": arch, "split": _split_identity(data), "recipe": dataclasses.asdict(recipe), "code": CODE_VERSION,
             **model_options(normalize)}
    return f"{arch}-{data.name}-s{recipe.seed}-{key_hash(ident)}"


def train_teacher_model(model: nn.Module, data: Splits, recipe: TeacherRecipe, device: torch.device, progress: bool | None = None) -> dict[str, Any]:
    """Train with cross-entropy under `recipe`, keep the val-best epoch; returns metrics."""
    keep_freed_memory()
    opt = make_optimizer(recipe.optimizer, model.parameters(), recipe.lr, recipe.weight_decay)

    def ce(batch):
        return {"ce": F.cross_entropy(model(batch.x), batch.y)}

    xv, yv = data.val.x, data.val.y
    result = train(
        [Step("teacher", opt, ce)], {"teacher": model}, data.train.x, data.train.y,
        epochs=recipe.epochs, batch_size=recipe.batch_size, seed=recipe.seed, progress=progress,
        evaluate=lambda: {"val_acc": accuracy(predict(model, xv), yv)}, desc=f"teacher {data.name}",
    )
    last_test = accuracy(predict(model, data.test.x), data.test.y)
    result.restore_best({"teacher": model})
    return {
        "val_acc": result.best_score, "best_epoch": result.best_epoch, "test_acc_last": last_test,
        "test_acc": accuracy(predict(model, data.test.x), data.test.y), "train_time_s": result.train_time_s,
        "history": result.history,
    }


def get_teacher(
    arch: str, data: Splits, recipe: TeacherRecipe, device: torch.device, build_model, progress: bool | None = None,
    normalize: str | None = None,
) -> Teacher:
    """The cached teacher for (arch, data split, recipe, normalisation), training it (once, under a lock) if needed.

    `build_model(arch, **options)` returns a fresh model on `device`.
    """
    key = teacher_cache_key(arch, data, recipe, normalize)
    entry = CacheEntry("teachers", key)
    options = model_options(normalize)

    def writer(tmp: Path) -> dict[str, Any]:
        seed_everything(recipe.seed)
        model = build_model(arch, **options)
        with teacher_threads():
            metrics = train_teacher_model(model, data, recipe, device, progress)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        return {"arch": arch, "dataset": data.name, "recipe": dataclasses.asdict(recipe), "split": _split_identity(data),
                "metrics": metrics, "source": "trained", "code_version": CODE_VERSION, "threads": TEACHER_THREADS, **options}

    meta, _ = entry.get_or_build(writer)
    model = build_model(arch, **options)
    state = load_file(str(entry.dir / "model.safetensors"), device=str(device))
    model.load_state_dict(state)
    return Teacher(_freeze(model), arch, key, _with_checksum(meta))


def _with_checksum(meta: dict[str, Any]) -> dict[str, Any]:
    """The entry's info plus the sha256 of its weights: the targets cache is keyed by it, so targets
    computed from other weights (a rebuilt or replaced teacher) are never reused."""
    return {**meta["info"], "weights_sha256": meta.get("files", {}).get("model.safetensors")}


def import_teacher(path: Path, arch: str, data: Splits, device: torch.device, build_model, normalize: str | None = None) -> Teacher:
    """Import a checkpoint (safetensors, or torch with weights_only=True: no pickle code runs) into the cache.

    `normalize` is the input normalisation the weights were trained with (the model applies it to
    kdbench's [0, 1] inputs); the cache key holds it, the file's checksum and the split."""
    from .models import load_weights

    path = Path(path)
    if not path.is_file():
        raise KdbenchError(f"teacher checkpoint '{path}' does not exist")
    options = model_options(normalize)
    model = build_model(arch, **options)
    load_weights(model, path)  # raises KdbenchError on unsafe pickles, wrong keys or shapes
    checksum = sha256_file(path)
    ident = {"file_sha256": checksum, "split": _split_identity(data), **options}
    key = f"{arch}-{data.name}-import-{key_hash(ident)}"
    entry = CacheEntry("teachers", key)

    def writer(tmp: Path) -> dict[str, Any]:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        test_acc = accuracy(predict(model, data.test.x), data.test.y)
        val_acc = accuracy(predict(model, data.val.x), data.val.y)
        return {"arch": arch, "dataset": data.name, "source": f"imported from {path}", "split": _split_identity(data),
                "metrics": {"test_acc": test_acc, "val_acc": val_acc, "train_time_s": 0.0}, "code_version": CODE_VERSION,
                "checkpoint_sha256": checksum, "normalize": normalize}

    meta, _ = entry.get_or_build(writer)
    return Teacher(_freeze(model), arch, key, _with_checksum(meta))


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def list_teachers(root: Path | None = None) -> list[dict[str, Any]]:
    from .cache import cache_root

    base = (root or cache_root()) / "teachers"
    rows = []
    for meta_path in sorted(base.glob("*/meta.json")):
        try:
            info = json.loads(meta_path.read_text())["info"]
        except (OSError, ValueError, KeyError):
            continue
        m = info.get("metrics", {})
        rows.append({"key": meta_path.parent.name, "arch": info.get("arch"), "dataset": info.get("dataset"),
                     "source": info.get("source"), "val_acc": m.get("val_acc"), "test_acc": m.get("test_acc"),
                     "train_time_s": m.get("train_time_s")})
    return rows


def teacher_targets(teacher: Teacher, data: Splits, split: str, device: torch.device, batch_size: int = 1000) -> tuple[Targets, float]:
    """Logits and dense features of the teacher (eval mode) on one split, computed once and cached
    (memory-mapped .npy); returns (targets on device, seconds spent computing them, 0 if cached)."""
    from .models import dense_view

    ident = {**_split_identity(data), "weights": teacher.info.get("weights_sha256")}
    entry = CacheEntry("targets", f"{teacher.key}-{split}-{key_hash(ident)}")
    t0 = time.perf_counter()

    def writer(tmp: Path) -> dict[str, Any]:
        view = dense_view(teacher.model)
        x = getattr(data, split).x
        feats, logits = [], []
        with torch.inference_mode(), teacher_threads():
            for i in range(0, len(x), batch_size):
                f = view.features(x[i : i + batch_size])
                feats.append(f.float().cpu())
                logits.append(view.classifier(f).float().cpu())
        save_array(tmp, "features", torch.cat(feats).numpy())
        save_array(tmp, "logits", torch.cat(logits).numpy())
        return {"teacher": teacher.key, "split": split, "n": len(x), "threads": TEACHER_THREADS}

    _, built = entry.get_or_build(writer)
    seconds = time.perf_counter() - t0 if built else 0.0
    feats = _tensor(load_array(entry.dir, "features"), device)
    logits = _tensor(load_array(entry.dir, "logits"), device)
    if len(feats) != len(getattr(data, split)):
        raise KdbenchError(f"cached targets {entry.dir} do not match split '{split}' ({len(feats)} rows)")
    return Targets(logits=logits, features=feats), seconds


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only memory map: we never write to it
        t = torch.from_numpy(array)
    return t if device.type == "cpu" else t.to(device)
