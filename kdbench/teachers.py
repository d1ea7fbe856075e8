"""Teachers are trained once per (architecture, dataset, split, recipe, seed) and cached as
safetensors + a JSON sidecar; their targets (logits and dense features per split) are cached too."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import inspect
import json
import os
import pickle
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from .cache import CacheEntry, key_hash, load_array, save_array, sha256_file
from .config import CODE_VERSION, TEACHER_VERSION, TeacherRecipe
from .data.base import DataSpec, Splits
from .engine import Step, accuracy, keep_freed_memory, make_optimizer, predict, seed_everything, torch_threads, train
from .errors import KdbenchError
from .targets import Targets


# Teachers train and compute their targets with this many torch threads, whatever the executor or
# --threads: on a CPU the thread count changes the floats, and a teacher's cache key holds none, so
# it must not vary (one key, one teacher). The sidecars record it.
TEACHER_THREADS = 1


def default_teacher(dataset: str) -> str:
    """The teacher the dataset declares, else its modality's paper teacher."""
    from .data.catalogue import family_default, modality_teacher

    name = family_default(dataset, "default_teacher") or modality_teacher(dataset)
    if name is None:
        raise KdbenchError(f"no default teacher for dataset '{dataset}'; pass --teacher NAME")
    return name


FILE_PREFIX = "file:"


def checkpoint_teacher(teacher: str, dataset: str) -> tuple[str, Path]:
    """`file:[ARCH=]PATH` -> (architecture, checkpoint path). PATH may name environment variables
    (`$KDBENCH_WEIGHTS/resnet56.th`): they are expanded here, at load time, so the run key (which
    holds the teacher string as written) is the same on every machine."""
    rest = teacher[len(FILE_PREFIX):]
    arch, _, path = rest.partition("=") if "=" in rest else ("", "", rest)
    return arch or default_teacher(dataset), Path(os.path.expandvars(path)) if path else Path()


def default_recipe(dataset: str) -> TeacherRecipe:
    """The recipe the dataset declares, else kdbench's default recipe."""
    from .data.catalogue import family_default

    return family_default(dataset, "teacher_recipe") or TeacherRecipe()


@dataclass
class Teacher:
    model: nn.Module
    arch: str
    key: str
    info: dict[str, Any]  # recipe, metrics (val/test acc), train time, source


def _split_identity(data: Splits) -> dict[str, Any]:
    info = data.info
    options = {"data_options": info["data_options"]} if info.get("data_options") else {}  # only when set: old keys hold
    return {k: info.get(k) for k in ("val_fraction", "split_seed", "max_train")} | {"dataset": data.name, "sizes": data.sizes()} | options


def model_options(normalize: str | None) -> dict[str, Any]:
    """Options of a teacher's `build_model(arch, **options)`: its input normalisation, when set."""
    return {"normalize": normalize} if normalize is not None else {}


def teacher_cache_key(arch: str, data: Splits, recipe: TeacherRecipe, normalize: str | None = None,
                      architecture: str | None = None) -> str:
    """`architecture`: the model's `architecture_checksum`, for models whose code TEACHER_VERSION does not
    version (plugins, timm); None for kdbench's own zoo, whose keys stay those of the cached teachers."""
    ident = {"arch": arch, "split": _split_identity(data), "recipe": dataclasses.asdict(recipe), "code": TEACHER_VERSION,
             **model_options(normalize), **({"architecture": architecture} if architecture else {})}
    return f"{arch}-{data.name}-s{recipe.seed}-{key_hash(ident)}"


def versioned_by_kdbench(arch: str) -> bool:
    """A zoo architecture defined in kdbench itself: its code changes with TEACHER_VERSION."""
    from .models import MODELS

    if arch.startswith("timm/") or arch not in MODELS:
        return False
    return str(getattr(MODELS.get(arch), "__module__", "")).startswith("kdbench.")


def _architecture_of(build_model, arch: str, options: Mapping[str, Any]) -> str:
    """The architecture checksum of a freshly built `arch` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        return architecture_checksum(build_model(arch, **options))


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
    options = model_options(normalize)
    architecture = None if versioned_by_kdbench(arch) else _architecture_of(build_model, arch, options)
    key = teacher_cache_key(arch, data, recipe, normalize, architecture)
    entry = CacheEntry("teachers", key)

    def writer(tmp: Path) -> dict[str, Any]:
        seed_everything(recipe.seed)
        model = build_model(arch, **options)
        with torch_threads(TEACHER_THREADS):
            metrics = train_teacher_model(model, data, recipe, device, progress)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        return {"arch": arch, "dataset": data.name, "recipe": dataclasses.asdict(recipe), "split": _split_identity(data),
                "metrics": metrics, "source": "trained", "code_version": CODE_VERSION, "threads": TEACHER_THREADS, **options,
                **({"architecture_sha256": architecture} if architecture else {})}

    meta, _ = entry.get_or_build(writer)
    model = build_model(arch, **options)
    state = load_file(str(entry.dir / "model.safetensors"), device=str(device))
    model.load_state_dict(state)
    return Teacher(_freeze(model), arch, key, _described(meta))


def _described(meta: dict[str, Any]) -> dict[str, Any]:
    """The entry's info plus the sha256 of its weights (the targets cache is keyed by it, so targets
    computed from other weights, a rebuilt or replaced teacher, are never reused) and its warnings."""
    info = {**meta["info"], "weights_sha256": meta.get("files", {}).get("model.safetensors")}
    warning = val_test_warning(info)
    return {**info, "warnings": [warning]} if warning else info


def import_teacher(path: Path, arch: str, data: Splits, device: torch.device, build_model, normalize: str | None = None) -> Teacher:
    """Import a checkpoint (safetensors, or torch with weights_only=True: no pickle code runs) into the cache.

    `arch` is a zoo name or an importable class `pkg.module:Class` (see `build_teacher_model`).
    `normalize` is the input normalisation the weights were trained with (the model applies it to
    kdbench's [0, 1] inputs). The cache key holds the file's checksum, the architecture's checksum
    (its code changed under the same name: another teacher), the split and the normalisation."""
    from .models import load_weights
    from .models.dense import check_dense, unwrapped

    path = Path(path)
    if not path.is_file():
        raise KdbenchError(f"teacher checkpoint '{path}' does not exist")
    options = model_options(normalize)
    model = build_model(arch, **options)
    load_weights(model, path)  # raises KdbenchError on unsafe pickles, wrong keys or shapes
    _freeze(model)
    check_dense(model, data.val.x[:2])
    checksum = sha256_file(path)
    architecture = architecture_checksum(unwrapped(model))
    ident = {"file_sha256": checksum, "split": _split_identity(data), **options, "architecture": architecture}
    key = f"{_key_name(arch)}-{data.name}-import-{key_hash(ident)}"
    info = {"arch": arch, "source": f"imported from {path}", "checkpoint_sha256": checksum, "normalize": normalize,
            "class": qualified_name(type(unwrapped(model))), "architecture_sha256": architecture}
    return _adopt(model, key, data, info)


def _key_name(arch: str) -> str:
    """`arch` as a cache-folder name prefix (an importable class's dots and colon made safe)."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", arch.rsplit(".", 1)[-1] if ":" in arch else arch)


def _adopt(model: nn.Module, key: str, data: Splits, info: dict[str, Any]) -> Teacher:
    """A teacher whose weights kdbench did not train (imported, or a module passed in): evaluated on
    val and test once, its weights and accuracies cached under `key`."""
    entry = CacheEntry("teachers", key)

    def writer(tmp: Path) -> dict[str, Any]:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        test_acc = accuracy(predict(model, data.test.x), data.test.y)
        val_acc = accuracy(predict(model, data.val.x), data.val.y)
        return {**info, "dataset": data.name, "split": _split_identity(data),
                "metrics": {"test_acc": test_acc, "val_acc": val_acc, "train_time_s": 0.0}, "code_version": CODE_VERSION}

    meta, _ = entry.get_or_build(writer)
    return Teacher(_freeze(model), str(info["arch"]), key, _described(meta))


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
        with torch.inference_mode(), torch_threads(TEACHER_THREADS):
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


# --------------------------------------------------------------------------------------------- checksums
def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def weights_checksum(model: nn.Module) -> str:
    """sha256 of the state dict: every tensor's name, dtype, shape and bytes (buffers included)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


def _class_source(cls: type) -> str:
    """A class's source (its forward code), or its name where there is none to read (built-ins, notebooks)."""
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        return qualified_name(cls)


def architecture_checksum(model: nn.Module) -> str:
    """sha256 of what makes the network what it is apart from its weights: its class's qualified name,
    the parameter / buffer layout (names, shapes, dtypes), the module tree (`repr`: layer types and
    settings such as strides or activations, which change no shape) and the source of every module
    class outside torch (a changed `forward`). A model fixed under the same name changes it."""
    classes = sorted({type(m) for m in model.modules()}, key=qualified_name)
    ident = {
        "class": qualified_name(type(model)),
        "layout": [[k, list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()],
        "modules": _ADDRESS.sub("0x", repr(model)),
        "code": {qualified_name(c): hashlib.sha256(_class_source(c).encode()).hexdigest()
                 for c in classes if not c.__module__.startswith("torch.")},
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------- importable classes
def is_importable(arch: str) -> bool:
    """`pkg.module:Class` (a class to import) rather than a zoo name."""
    return ":" in arch


def importable_class(ref: str) -> type:
    """The nn.Module class named by `pkg.module:Class`; one clear line when it cannot be imported or is no module class."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise KdbenchError(f"teacher class '{ref}' must be given as pkg.module:Class")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - the user's module may fail in any way
        first = (str(e).splitlines() or [""])[0]
        raise KdbenchError(f"cannot import module '{module_name}' of teacher class '{ref}': {type(e).__name__}: {first}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise KdbenchError(f"module '{module_name}' has no '{attr}' (teacher class '{ref}')")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise KdbenchError(f"teacher class '{ref}' is not an nn.Module class (it is {type(obj).__name__} {obj!r:.60})")
    return obj


def build_importable(ref: str, num_classes: int) -> nn.Module:
    """`Class()`, or `Class(num_classes=K)` when it takes `num_classes`."""
    cls = importable_class(ref)
    try:
        takes = "num_classes" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        takes = False
    kw = {"num_classes": num_classes} if takes else {}
    try:
        return cls(**kw)
    except Exception as e:  # noqa: BLE001
        first = (str(e).splitlines() or [""])[0]
        call = f"{ref}({', '.join(f'{k}={v}' for k, v in kw.items())})"
        raise KdbenchError(f"cannot build teacher {call}: {type(e).__name__}: {first}") from None


def build_teacher_model(arch: str, spec: DataSpec, device: torch.device, **options: Any) -> nn.Module:
    """A fresh teacher network on `device`: a zoo model, or an importable class wrapped (hooks only) in
    `ExternalModel` with its input normalisation (`normalize=`) in front."""
    from .models import create_model, place
    from .models.dense import ExternalModel

    if not is_importable(arch):
        return place(create_model(arch, spec, **options), device)
    net = build_importable(arch, spec.num_classes)
    return place(ExternalModel(net, None, input_normalization(options.get("normalize"), spec)), device)


def input_normalization(normalize: str | None, spec: DataSpec) -> nn.Module:
    """`protocol.make_normalize` for the data's channels (non-persistent buffers: no state-dict entry)."""
    from .models.protocol import make_normalize

    return make_normalize(normalize, int(spec.input_shape[0]) if normalize is not None else 1)


# --------------------------------------------------------------------------------------------- nn.Module teachers
MODULE_PREFIX = "module:"
MODULE_RERUN = ("was an nn.Module passed to kdbench.run / kdbench.sweep in Python; it cannot be rebuilt here: "
                "rerun it from Python with teacher=<that module> (same weights, same run key)")


@dataclass(frozen=True, eq=False)
class ModuleTeacher:
    """A teacher given as a module: its weights are the teacher (never trained), identified by checksums."""

    module: nn.Module
    dense: Any  # layer name, function dense(model, x), or None
    qualname: str
    weights_sha256: str
    architecture_sha256: str

    @property
    def name(self) -> str:
        """The run spec's `teacher`: stable for these weights, this architecture and this dense choice."""
        from .models.dense import dense_label

        label = dense_label(self.dense)
        return f"{MODULE_PREFIX}{self.qualname}@{self.weights_sha256[:16]}/{self.architecture_sha256[:8]}" + (
            f"#{label}" if label else "")


_MODULE_TEACHERS: dict[str, ModuleTeacher] = {}


def register_module_teacher(module: nn.Module, dense: Any = None) -> str:
    """Make `module` usable as a teacher in this process; returns its spec name (`module:...`)."""
    from .models.dense import check_dense_choice

    if not isinstance(module, nn.Module):
        raise KdbenchError(f"teacher must be a name or an nn.Module, got {type(module).__name__}")
    check_dense_choice(module, dense)
    mt = ModuleTeacher(module, dense, qualified_name(type(module)), weights_checksum(module), architecture_checksum(module))
    _MODULE_TEACHERS[mt.name] = mt
    return mt.name


def module_teacher(name: str) -> ModuleTeacher:
    """The module teacher registered under `name` in this process, else one line saying why not."""
    try:
        return _MODULE_TEACHERS[name]
    except KeyError:
        raise KdbenchError(f"teacher '{name}' {MODULE_RERUN}") from None


def module_teacher_for(teacher: str) -> ModuleTeacher | None:
    """What a run needs to rebuild its module teacher in a worker process (None for other teachers)."""
    return _MODULE_TEACHERS.get(teacher) if teacher.startswith(MODULE_PREFIX) else None


def adopt_module_teacher(mt: ModuleTeacher, data: Splits, device: torch.device, normalize: str | None = None) -> Teacher:
    """The teacher of a module passed in: a copy (the caller's module is not touched), with its
    normalisation in front, evaluated once. Its cache key holds the weights' and the architecture's
    checksums, the dense choice, the split and the normalisation."""
    from .models import place
    from .models.dense import ExternalModel, check_dense, dense_label

    if weights_checksum(mt.module) != mt.weights_sha256:
        raise KdbenchError(f"teacher {mt.qualname} changed since it was passed in (its weights checksum differs); pass it again")
    model = place(ExternalModel(copy.deepcopy(mt.module), mt.dense, input_normalization(normalize, data.spec)), device)
    _freeze(model)
    check_dense(model, data.val.x[:2])
    ident = {"class": mt.qualname, "weights": mt.weights_sha256, "architecture": mt.architecture_sha256,
             "dense": dense_label(mt.dense), "split": _split_identity(data), **model_options(normalize)}
    key = f"module-{_key_name(type(mt.module).__name__)}-{data.name}-{key_hash(ident)}"
    info = {"arch": mt.qualname, "class": mt.qualname, "source": "nn.Module passed in Python", "spec_name": mt.name,
            "module_weights_sha256": mt.weights_sha256, "architecture_sha256": mt.architecture_sha256,
            "dense": dense_label(mt.dense), "dense_width": model.dim(), "normalize": normalize}
    return _adopt(model, key, data, info)


def check_sendable(module_teachers: Iterable[ModuleTeacher | None]) -> None:
    """Module teachers must pickle to reach worker processes (a lambda `dense=` does not)."""
    for mt in {id(m): m for m in module_teachers if m is not None}.values():
        try:
            pickle.dumps(mt)
        except Exception as e:  # noqa: BLE001 - pickling fails in many ways
            raise KdbenchError(f"teacher {mt.name} cannot be sent to worker processes ({type(e).__name__}: "
                               f"{(str(e).splitlines() or [''])[0]}); use workers=1, or dense='LAYER' instead of a local function") from None


# --------------------------------------------------------------------------------------------- the Python API's teacher fields
def normalize_text(value: Any) -> str | None:
    """A normalisation given by name (`imagenet`), as MEAN,STD text, or as numbers: (mean, std) with
    one value each or one per channel, e.g. (0.1307, 0.3081) or ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))."""
    from .models.protocol import NORMALIZE_HELP, parse_normalize

    if value is None or isinstance(value, str):
        text = value
    else:
        def part(v: Any) -> str:
            items = v if isinstance(v, (list, tuple)) else [v]
            if not items or not all(isinstance(i, (int, float)) and not isinstance(i, bool) for i in items):
                raise KdbenchError(f"normalize={value!r} is not {NORMALIZE_HELP}")
            return "/".join(repr(float(i)) for i in items)

        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise KdbenchError(f"normalize={value!r} is not {NORMALIZE_HELP}, nor a (mean, std) pair")
        text = f"{part(value[0])},{part(value[1])}"
    parse_normalize(text)  # malformed -> one line
    return text


def api_teacher_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """`kdbench.run` / `kdbench.sweep` keyword arguments with `teacher=<nn.Module>`, `dense=` and
    `normalize=` (an alias of `teacher_normalize`, a name or numbers) turned into run fields."""
    out = dict(fields)
    dense = out.pop("dense", None)
    if "normalize" in out:
        value = out.pop("normalize")
        if out.get("teacher_normalize") is not None and value is not None and out["teacher_normalize"] != value:
            raise KdbenchError(f"normalize={value!r} and teacher_normalize={out['teacher_normalize']!r} contradict (give one)")
        out["teacher_normalize"] = value if value is not None else out.get("teacher_normalize")
    if out.get("teacher_normalize") is not None:
        out["teacher_normalize"] = normalize_text(out["teacher_normalize"])
    teacher = out.get("teacher")
    if isinstance(teacher, nn.Module):
        out["teacher"] = register_module_teacher(teacher, dense)
    elif dense is not None:
        raise KdbenchError(f"dense= names the dense layer of a teacher nn.Module (teacher=<module>), but teacher is {teacher!r}")
    return out


def check_teacher_inputs(runs: Iterable[Any], data_root: str | Path | None) -> None:
    """Per-channel normalisation statistics must have one value per input channel of the data:
    checked once per (dataset, normalisation) before any work (the data is decoded for it)."""
    from .models.protocol import parse_normalize

    seen: set[tuple[str, str]] = set()
    for r in runs:
        spec = r.spec
        stats = parse_normalize(spec.teacher_normalize) if r.method.needs_teacher else None
        if stats is None or len(stats[0]) == 1 or (spec.dataset, spec.teacher_normalize) in seen:
            continue
        seen.add((spec.dataset, spec.teacher_normalize))
        channels = input_channels(spec.dataset, data_root)
        if len(stats[0]) != channels:
            raise KdbenchError(f"teacher_normalize '{spec.teacher_normalize}' gives {len(stats[0])} channels, "
                               f"dataset '{spec.dataset}' has {channels}")


def input_channels(dataset: str, data_root: str | Path | None) -> int:
    from .data import dataset_spec

    return int(dataset_spec(dataset, data_root).input_shape[0])


# --------------------------------------------------------------------------------------------- val vs test
LEAK_P = 0.025  # one-sided: the upper tail of a two-sided 95% interval


def val_test_warning(info: Mapping[str, Any]) -> str | None:
    """A warning when a teacher's val accuracy is higher than its test accuracy by more than chance allows.

    Both splits are held out from the teacher's training, so their accuracies should differ by binomial
    noise only. With k_val = round(val_acc * n_val) and k_test = round(test_acc * n_test) correct
    predictions, Fisher's exact test of the 2x2 table (val / test x correct / wrong), one-sided (val
    better), flags p < 0.025: val lies above what the 95% binomial interval allows given n_val and
    n_test. The usual cause is a val split that overlaps the data the weights were trained or selected
    on (a checkpoint trained on part of kdbench's val split); val-best epoch selection adds a little."""
    from scipy.stats import fisher_exact

    metrics, sizes = info.get("metrics") or {}, (info.get("split") or {}).get("sizes") or {}
    val, test, n_val, n_test = metrics.get("val_acc"), metrics.get("test_acc"), sizes.get("val"), sizes.get("test")
    if not all(isinstance(v, (int, float)) for v in (val, test, n_val, n_test)) or not (n_val and n_test) or val <= test:
        return None
    k_val, k_test = round(val / 100 * n_val), round(test / 100 * n_test)
    p = float(fisher_exact([[k_val, n_val - k_val], [k_test, n_test - k_test]], alternative="greater")[1])
    if p >= LEAK_P:
        return None
    return (f"teacher {info.get('arch')}: val accuracy {val:.2f}% exceeds test accuracy {test:.2f}% by more than the "
            f"95% binomial interval allows (n_val={n_val}, n_test={n_test}, one-sided Fisher exact p={p:.2g}); its "
            f"val split may overlap the data it was trained or selected on")
