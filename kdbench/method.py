"""The method seam: a method is a small class that declares its hyperparameters and, given a
`Context`, trains its students with the shared loop and returns a predictor.

Method files live in the subpackage `kdbench/methods/` and register themselves with
`@register_method`; nothing else is edited to add one.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import math
import pkgutil
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from .config import DEFAULT_METHOD_VERSION, RunSpec, check_method_version
from .data.base import Splits
from .engine import Batch, Step, TrainResult, accuracy, predict, train
from .errors import KdbenchError
from .registry import Registry, load_plugins
from .resume import RunCheckpoints
from .targets import Targets  # noqa: F401 - part of the method seam (methods and Context use it)

METHODS: Registry[type["Method"]] = Registry("method")


def register_method(cls: type["Method"]) -> type["Method"]:
    check_method_version(cls.name, cls.version)
    METHODS.add(cls.name, cls)
    return cls


class BatchTargets:
    """A frozen teacher's outputs on one training batch, each computed on first use: the batch's rows
    of outputs cached on the clean train split where there are some (`rows`: name -> full-split
    tensor), else the teacher run on the batch itself in inference mode, as for augmented batches
    (docs/design.md §2). The results are plain tensors (usable as loss targets)."""

    def __init__(self, teacher: nn.Module | None, batch: Batch, rows: Callable[[], dict[str, Any]] | None):
        self._teacher, self._batch, self._rows = teacher, batch, rows
        self._done: dict[str, torch.Tensor] = {}

    @property
    def logits(self) -> torch.Tensor:
        return self._get("logits", lambda x: self._teacher(x))

    @property
    def features(self) -> torch.Tensor:
        """The dense vector before the classifier (the models' `features` protocol)."""
        from .models import dense_view

        return self._get("features", lambda x: dense_view(self._teacher).features(x))

    @property
    def feature_map(self) -> torch.Tensor:
        """A conv teacher's last feature map (never cached: computed on the batch)."""
        return self._get("feature_map", lambda x: self._teacher.feature_map(x), cacheable=False)

    def _get(self, name: str, compute: Callable[[torch.Tensor], torch.Tensor], cacheable: bool = True) -> torch.Tensor:
        if name not in self._done:
            cached = self._rows().get(name) if cacheable and self._rows is not None else None
            if cached is not None:
                self._done[name] = cached[self._batch.idx]
            else:
                self._done[name] = self._run(name, compute)
        return self._done[name]

    def _run(self, name: str, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The teacher on the batch in eval mode (BatchNorm statistics untouched), without autograd."""
        if self._teacher is None:
            raise KdbenchError(f"teacher {name} asked for on a training batch, but the run has no teacher")
        was_training = self._teacher.training
        self._teacher.eval()
        try:
            with torch.inference_mode():
                out = compute(self._batch.x).float()
        finally:
            if was_training:
                self._teacher.train()
        return out.clone()  # a plain tensor outside inference mode: autograd may save it


@dataclass
class Schedule:
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    weight_decay: float = 0.0


LatencyFn = Callable[[torch.Tensor, torch.device], dict[str, dict[str, float]]]


@dataclass
class FitResult:
    """What a method hands back: the deployed predictor (input -> logits), its parameters at the last
    and at the val-best epoch, and what the measurements need besides: the students a multi-student
    predictor is made of (per-student counts) and a `latency_fn` timing its extra deployment
    variants ((example, device) -> {batch: {variant: ms}}, e.g. TCN's sequential / fused / parallel)."""

    predictor: nn.Module
    last_state: dict[str, torch.Tensor]
    valbest_state: dict[str, torch.Tensor]
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    students: list[nn.Module] | None = None
    latency_fn: LatencyFn | None = None

    @classmethod
    def from_train(cls, predictor: nn.Module, res: TrainResult, key: str = "model", **kw: Any) -> "FitResult":
        """The FitResult of a predictor trained as module `key` of one `train` call: its last and
        val-best states from `res`, the predictor left at the val-best state (as it is deployed) and
        the loop's history unless `history=` is given."""
        predictor.load_state_dict(res.best_state[key])
        kw.setdefault("history", res.history)
        return cls(predictor, res.last_state[key], res.best_state[key], **kw)


@dataclass
class Context:
    """Everything a method may use; methods see no globals."""

    spec: RunSpec
    data: Splits
    device: torch.device
    schedule: Schedule
    teacher: nn.Module | None
    targets: Callable[[str], Targets]  # split name -> cached teacher targets, on device
    make_student: Callable[..., nn.Module]  # (out_features=None, n_students=None, arch=None) -> student on device
    make_model: Callable[..., nn.Module]  # zoo: (name, **kw) -> model on device
    progress: bool | None = None
    deviations: list[str] = field(default_factory=list)
    on_epoch: Callable[[str, dict[str, float]], None] | None = None  # (stage, history row) after each epoch: tracking
    checkpoints: RunCheckpoints | None = None  # epoch checkpoints of the run's loops (kdbench.resume); None: none

    def epoch_hook(self, stage: str) -> Callable[[dict[str, float]], None] | None:
        """The `on_epoch_end` callback for a training loop of stage `stage` (None when nothing listens);
        a method calling `engine.train` itself passes it on to be tracked too."""
        return functools.partial(self.on_epoch, stage) if self.on_epoch is not None else None

    @property
    def seed(self) -> int:
        return self.spec.seed

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        s = getattr(self.data, name)
        return s.x, s.y

    def val_accuracy(self, model: nn.Module | Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        x, y = self.split("val")
        return {"val_acc": accuracy(predict(model, x), y)}

    @property
    def augmented(self) -> bool:
        """Whether training batches are augmented (then no cached teacher output matches a batch)."""
        return self.spec.augment != "none"

    def teacher_outputs(self, batch: Batch) -> BatchTargets:
        """The run's teacher on a training batch (.logits, .features, .feature_map): rows of its cached
        targets for clean batches, the teacher run on the batch when augmented; methods read their
        teacher through this and never branch on the augmentation."""
        return self._outputs(batch, self.teacher, self._teacher_rows)

    def stage_teacher(self, model: nn.Module) -> Callable[[Batch], BatchTargets]:
        """A trained model as the teacher of a later stage (TAKD's assistants): its logits on the clean
        train split are computed once now, unless batches are augmented (then it runs on each batch)."""
        model.eval()
        rows = {} if self.augmented else {"logits": predict(model, self.split("train")[0]).clone()}
        return lambda batch: self._outputs(batch, model, lambda: rows)

    def _outputs(self, batch: Batch, model: nn.Module | None, rows: Callable[[], dict[str, Any]]) -> BatchTargets:
        key = ("teacher_outputs", id(model))  # once per batch and model (GAN steps ask several times)
        if key not in batch.memo:
            batch.memo[key] = BatchTargets(model, batch, None if self.augmented else rows)
        return batch.memo[key]

    @functools.cached_property
    def _train_targets(self) -> Targets:
        return self.targets("train")

    def _teacher_rows(self) -> dict[str, Any]:
        return {"logits": self._train_targets.logits, "features": self._train_targets.features}

    def train(self, steps: list[Step], modules: dict[str, nn.Module], inputs: tuple[torch.Tensor, torch.Tensor] | None = None,
              **kw: Any) -> TrainResult:
        """The shared loop on the train split with this run's schedule and seed (override via kw);
        training batches get the run's augmentation. `inputs`: (x, y) to train on instead of the
        train split (features computed from it, which get no augmentation)."""
        from .augment import batch_transform

        x, y = self.split("train") if inputs is None else inputs
        kw.setdefault("transform", batch_transform(self.spec.augment) if inputs is None else None)
        kw.setdefault("epochs", self.schedule.epochs)
        kw.setdefault("batch_size", self.schedule.batch_size)
        kw.setdefault("seed", self.seed)
        kw.setdefault("progress", self.progress)
        kw.setdefault("amp", self.spec.amp)
        kw.setdefault("desc", self.spec.method)
        kw.setdefault("on_epoch_end", self.epoch_hook(kw["desc"]))
        if self.checkpoints is not None:
            kw.setdefault("checkpoint", self.checkpoints.loop(kw["desc"]))
        return train(steps, modules, x, y, **kw)

    def optimizer(self, params, lr: float | None = None, name: str | None = None, **kw: Any) -> torch.optim.Optimizer:
        from .engine import make_optimizer

        s = self.schedule
        return make_optimizer(name or s.optimizer, params, lr if lr is not None else s.lr, kw.pop("weight_decay", s.weight_decay), **kw)


class Method:
    """Base class: subclasses set `name`, `Params` (a dataclass of hyperparameters with defaults) and `fit`."""

    name: ClassVar[str]
    Params: ClassVar[type] = type("Params", (), {})
    needs_teacher: ClassVar[bool] = True
    modes: ClassVar[tuple[str | None, ...]] = (None,)
    multi_student: ClassVar[bool] = False  # accepts n_students > 1; its run keys name the student count
    description: ClassVar[str] = ""
    # Bump when a change to this method changes its numbers for unchanged specs: its runs (and only
    # they) get new run keys and rerun; the default enters no key (docs/adding-a-method.md).
    version: ClassVar[int] = DEFAULT_METHOD_VERSION

    def __init__(self, params: Any):
        self.params = params

    @classmethod
    def schedule(cls, spec: RunSpec, params: Any) -> Schedule:
        """Default schedule (epochs, batch, lr) for this method on spec.dataset; spec fields override it."""
        return Schedule(epochs=10, batch_size=128, lr=1e-3)

    def fit(self, ctx: Context) -> FitResult:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def fresh_predictor(cls, ctx: Context, teacher: Callable[[], nn.Module]) -> tuple[nn.Module, LatencyFn | None]:
        """The deployed predictor with fresh weights and its `FitResult.latency_fn` (extra latency
        variants, or None), for the latency pass that times a recorded run again (kdbench.latency):
        by default the one student; a method deploying something else overrides it."""
        return ctx.make_student(), None

    @classmethod
    def validate(cls, spec: RunSpec, params: Any) -> None:
        """Reject impossible specs early (one clear line). Subclasses extend."""
        if spec.mode not in cls.modes:
            allowed = ", ".join(str(m) for m in cls.modes if m) or "none"
            raise KdbenchError(f"method '{cls.name}' does not take --mode {spec.mode} (modes: {allowed})")
        if spec.n_students < 1:
            raise KdbenchError(f"--students must be >= 1, got {spec.n_students}")
        if spec.n_students > 1 and not cls.multi_student:
            multi = ", ".join(sorted(n for n, c in METHODS.items() if c.multi_student)) or "none loaded"
            raise KdbenchError(f"method '{cls.name}' trains one student; --students {spec.n_students} is for the "
                               f"methods that train several ({multi})")


@dataclass(frozen=True)
class Range:
    """The declared bounds of a numeric hyperparameter (of each item, for a list), checked for every
    method when a spec is resolved (plan time), before anything trains:

        temperature: Annotated[float, Range(gt=0)] = 4.0
        alpha: Annotated[float, Range(ge=0, le=1)] = 0.9
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __contains__(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        lower = ("[", self.ge) if self.ge is not None else ("(", self.gt) if self.gt is not None else None
        upper = ("]", self.le) if self.le is not None else (")", self.lt) if self.lt is not None else None
        if lower and upper:
            return f"in {lower[0]}{lower[1]:g}, {upper[1]:g}{upper[0]}"
        if lower:
            return f"{'>=' if lower[0] == '[' else '>'} {lower[1]:g}"
        if upper:
            return f"{'<=' if upper[0] == ']' else '<'} {upper[1]:g}"
        return "a number"


def param_fields(cls: type[Method]) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls.Params)) if dataclasses.is_dataclass(cls.Params) else []


def param_ranges(cls: type[Method]) -> dict[str, Range]:
    """Parameter name -> its declared Range (`Annotated[..., Range(...)]` in the method's Params)."""
    if not param_fields(cls):
        return {}
    hints = typing.get_type_hints(cls.Params, include_extras=True)
    return {name: meta for name, hint in hints.items() if typing.get_origin(hint) is typing.Annotated
            for meta in hint.__metadata__ if isinstance(meta, Range)}


def build_params(cls: type[Method], given: dict[str, Any]) -> Any:
    """Validate `--param` values against the method's Params dataclass: unknown keys, wrong types and
    values outside a declared Range fail clearly."""
    fields = {f.name: f for f in param_fields(cls)}
    hints = typing.get_type_hints(cls.Params) if fields else {}
    values: dict[str, Any] = {}
    for key, value in given.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=2)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            known = ", ".join(sorted(fields)) or "none"
            raise KdbenchError(f"method '{cls.name}' has no parameter '{key}'{hint} (parameters: {known})")
        values[key] = _coerce(cls.name, key, value, hints[key])
    params = cls.Params(**values)
    check_ranges(cls, params)
    return params


def check_ranges(cls: type[Method], params: Any) -> None:
    """Every parameter with a declared Range (each item of a list one) lies in it; None means the default."""
    for key, bounds in param_ranges(cls).items():
        value = getattr(params, key)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, (int, float)) and not isinstance(item, bool) and item not in bounds:
                got = f"{value!r}" if item is value else f"{item!r} in {value!r}"
                raise KdbenchError(f"parameter '{key}' of '{cls.name}' must be {bounds}, got {got}")


def _coerce(method: str, key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(method, key, value, a)
            except KdbenchError as e:
                errors.append(str(e).partition(" must be ")[2].rpartition(", got ")[0])
        raise KdbenchError(f"parameter '{key}' of '{method}' must be {' or '.join(errors)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise KdbenchError(f"parameter '{key}' of '{method}' must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (list, tuple):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise KdbenchError(f"parameter '{key}' of '{method}' must be a list, got {value!r}")
        inner = args[0] if args else str
        return tuple(_coerce(method, key, v, inner) for v in items) if origin is tuple else [_coerce(method, key, v, inner) for v in items]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise KdbenchError(f"parameter '{key}' of '{method}' must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise KdbenchError(f"parameter '{key}' of '{method}' must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                raise KdbenchError(f"parameter '{key}' of '{method}' must be a finite number, got {value!r}")
            return number
        raise KdbenchError(f"parameter '{key}' of '{method}' must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise KdbenchError(f"parameter '{key}' of '{method}' must be a string, got {value!r}")
    return value


def params_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {}


def params_changed(cls: type[Method], params: Any) -> dict[str, Any]:
    default = params_dict(cls.Params())
    return {k: v for k, v in params_dict(params).items() if default.get(k) != v}


_loaded = False


def load_methods() -> Registry[type[Method]]:
    """Import every module of `kdbench.methods` (the kdbench/methods/ folder) and any
    third-party method registered under the `kdbench.methods` entry-point group."""
    global _loaded
    if not _loaded:
        pkg = importlib.import_module("kdbench.methods")
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"kdbench.methods.{info.name}")
        load_plugins("kdbench.methods")  # a broken plugin: one warning, the others still load
        _loaded = True
    return METHODS


def get_method(name: str) -> type[Method]:
    return load_methods().get(name)
