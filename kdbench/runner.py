"""runner.run(RunSpec): data -> teacher (cached) -> targets (cached) -> method.fit -> evaluate ->
measure -> RunRecord (JSON, atomic). A run that raises is recorded as failed; it never counts as done."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import store
from .augment import check_augmentation
from .config import CODE_VERSION, RunSpec, check_fields, method_identity, run_key
from .data.base import Splits
from .engine import accuracy, keep_freed_memory, predict, resolve_device, seed_everything
from .errors import KdbenchError
from .measure import LoadProbe, environment, latency_ms, peak_cuda_mb, peak_rss_mb
from .method import Context, FitResult, Method, Schedule, Targets, build_params, get_method, params_changed, params_dict
from .models.budget import student_size_warning
from .record import RunRecord, namespaced
from .resume import DEFAULT_EVERY_S, RunCheckpoints, run_folder
from .teachers import (FILE_PREFIX, Teacher, checkpoint_teacher, default_recipe, default_teacher, get_teacher,
                       module_teacher_for, teacher_targets)
from .tracking import Tracking
from .tracking import session as tracking_session


@dataclass(frozen=True)
class Resolved:
    """A validated spec with every default filled in, and its run key."""

    spec: RunSpec
    method: type[Method]
    params: Any
    schedule: Schedule
    canonical: dict[str, Any]
    key: str
    module_teacher: Any = None  # teachers.ModuleTeacher of a `module:` teacher: travels with the run to workers


def resolve(spec: RunSpec) -> Resolved:
    """Validate a spec (one clear KdbenchError if impossible) and fill in the defaults."""
    if spec.dataset is None:
        raise KdbenchError("no dataset given")
    check_fields(spec)  # wrong types (hand-edited record, API call) -> one line, not a traceback later
    cls = get_method(spec.method)
    params = build_params(cls, spec.params)
    from .data import DATASETS

    entry = DATASETS.get(spec.dataset)  # unknown dataset -> did-you-mean
    check_augmentation(spec.augment, entry.name, entry.modality)  # unknown, or images-only on text -> one line now
    check_speed_options(spec, resolve_device(spec.device))  # unknown device, no CUDA, --amp / --compile it cannot run
    teacher = spec.teacher
    if cls.needs_teacher and teacher == "auto":
        teacher = default_teacher(spec.dataset)
    recipe = spec.teacher_recipe or (default_recipe(spec.dataset) if cls.needs_teacher else None)
    if not cls.needs_teacher:
        teacher, recipe = "none", None
    val_fraction = spec.val_fraction if spec.val_fraction is not None else 0.1
    if not 0.0 < val_fraction < 1.0:
        raise KdbenchError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if spec.max_train is not None and spec.max_train < 1:
        raise KdbenchError(f"max_train must be >= 1, got {spec.max_train}")
    mode = spec.mode if spec.mode is not None or None in cls.modes else cls.modes[0]  # a moded method's first mode is its default
    full = spec.replace(teacher=teacher, teacher_recipe=recipe, params=params_dict(params), val_fraction=float(val_fraction),
                        mode=mode, data_options=entry.changed_options(spec.data_options))  # unknown option: one line now
    _check_models(full, entry, cls)
    cls.validate(full, params)
    default = cls.schedule(full, params)
    schedule = dataclasses.replace(
        default,
        epochs=spec.epochs if spec.epochs is not None else default.epochs,
        batch_size=spec.batch_size if spec.batch_size is not None else default.batch_size,
        lr=spec.lr if spec.lr is not None else default.lr,
    )
    if schedule.epochs < 1 or schedule.batch_size < 1 or not (math.isfinite(schedule.lr) and schedule.lr > 0):
        raise KdbenchError(f"epochs, batch size and lr must be positive (got {schedule.epochs}, {schedule.batch_size}, {schedule.lr})")
    # lr as a float: lr=1 and lr=1.0 are the same spec and must give the same key
    full = full.replace(epochs=schedule.epochs, batch_size=schedule.batch_size, lr=float(schedule.lr))
    canonical = full.to_dict()
    canonical["device"] = resolve_device(spec.device).type  # "auto" -> the device type that will run it
    canonical["optimizer"] = schedule.optimizer
    canonical.update(method_identity(cls.version))  # a bumped method version re-keys that method's runs only
    key = run_key(canonical, label_students=cls.multi_student)
    return Resolved(full, cls, params, schedule, canonical, key, module_teacher_for(full.teacher))


def speed_settings(spec: RunSpec, device: torch.device) -> dict[str, Any]:
    """The record's note of what may change floats beyond the spec: precision, compilation and, on
    CUDA, the determinism settings in force (kdbench leaves them at PyTorch's defaults)."""
    out: dict[str, Any] = {"amp": spec.amp, "compile": spec.compile}
    if device.type == "cuda":
        out["determinism"] = {"cudnn_deterministic": torch.backends.cudnn.deterministic,
                              "cudnn_benchmark": torch.backends.cudnn.benchmark,
                              "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                              "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                              "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
    return out


def check_speed_options(spec: RunSpec, device: torch.device) -> None:
    """--amp and --compile where the device or the installation cannot run them: one line, now."""
    if spec.amp == "fp16" and device.type != "cuda":
        raise KdbenchError(f"--amp fp16 needs a CUDA device (this run is on {device.type}); use --amp bf16 on CPU")
    if spec.amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise KdbenchError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; use --amp fp16")
    if spec.compile:
        import shutil

        from torch import _dynamo  # `import torch._dynamo` here would make `torch` local to the whole function

        if not _dynamo.is_dynamo_supported():
            raise KdbenchError("--compile: torch.compile is not supported by this Python / PyTorch build")
        if device.type == "cpu" and not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")):
            raise KdbenchError("--compile on CPU needs a C++ compiler (cc, gcc or clang) on PATH")


def _check_models(spec: RunSpec, entry: Any, method: type[Method]) -> None:
    """Unknown or mismatched student / teacher architectures, a teacher checkpoint that is not there
    and an auto student without a budget entry fail now, before anything trains or is written."""
    from .models import MODELS
    from .models.budget import budget_rule, budget_table, rule_table

    def arch(what: str, name: str) -> None:
        if name.startswith("timm/"):
            if entry.modality != "image":
                raise KdbenchError(f"{what} '{name}': timm models take images, dataset '{entry.name}' is {entry.modality}")
            return
        if name not in MODELS:
            raise KdbenchError(f"{what}: {MODELS.unknown_message(name)}")
        modality = getattr(MODELS.get(name), "modality", None)
        if modality is not None and modality != entry.modality:
            raise KdbenchError(f"{what} '{name}' needs {modality} input, but dataset '{entry.name}' is {entry.modality}")

    if spec.student == "auto":
        table = budget_table(spec.budget).get(rule_table(budget_rule(entry.name), entry.modality) or "", {})
        if method.multi_student and table and spec.n_students not in table:
            raise KdbenchError(f"no {spec.budget} budget student for n={spec.n_students} "
                               f"(budgets exist for n = {', '.join(map(str, sorted(table)))}); pass --student ARCH")
    else:
        arch("student", spec.student)
    if not method.needs_teacher:
        return
    from .teachers import MODULE_PREFIX, importable_class, is_importable, module_teacher

    if spec.teacher.startswith(MODULE_PREFIX):
        module_teacher(spec.teacher)  # a record rerun without its module (the CLI): one line
        _check_normalize(None, spec.teacher_normalize, entry)
        return
    if spec.teacher.startswith(FILE_PREFIX):
        teacher_arch, path = checkpoint_teacher(spec.teacher, spec.dataset)
        if not path.is_file():
            unset = " (an environment variable in it is not set)" if "$" in str(path) else ""
            raise KdbenchError(f"teacher checkpoint '{path}' does not exist{unset} (--teacher file:[ARCH=]PATH)")
        if is_importable(teacher_arch):
            importable_class(teacher_arch)  # no module, no class, not an nn.Module: one line
        else:
            arch("teacher", teacher_arch)
        st = Path(path).stat()
        problem = _checkpoint_problem(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, teacher_arch, entry.num_classes)
        if problem:
            raise KdbenchError(problem)
    else:
        teacher_arch = spec.teacher
        arch("teacher", teacher_arch)
    _check_normalize(teacher_arch, spec.teacher_normalize, entry)


def _check_normalize(arch: str | None, normalize: str | None, entry: Any) -> None:
    """A teacher normalisation must parse, the data must be images and the teacher's architecture must
    take one (importable classes and modules are wrapped: they all do)."""
    from .models import MODELS
    from .models.protocol import parse_normalize

    if normalize is None:
        return
    parse_normalize(normalize)
    if entry.modality != "image":
        raise KdbenchError(f"teacher_normalize={normalize!r} is for image inputs; dataset '{entry.name}' is {entry.modality}")
    factory = MODELS.get(arch) if arch in MODELS else None
    if factory is not None and "normalize" not in inspect.signature(factory).parameters:
        raise KdbenchError(f"teacher '{arch}' takes no input normalisation (teacher_normalize={normalize!r})")


@functools.lru_cache(maxsize=32)
def _checkpoint_problem(path: str, size: int, mtime_ns: int, arch: str, num_classes: int) -> str | None:
    """Why a teacher checkpoint cannot be read (unsafe pickle, not a checkpoint) or cannot be the
    architecture's weights (its parameter names differ), or None; read once per file version, so a
    sweep of many runs with one imported teacher reads it once. Shapes are checked on import, once
    the data's input shape is known."""
    from .models import MODELS, create_model
    from .models.weights import check_keys, read_state_dict
    from .teachers import build_importable, is_importable

    try:
        state = read_state_dict(path)
        if arch in MODELS:
            spec = dataclasses.replace(MODELS.get(arch).default_spec, num_classes=num_classes)
            check_keys(create_model(arch, spec).state_dict(), state, f"weights {path} do not fit teacher '{arch}'")
        elif is_importable(arch):
            check_keys(build_importable(arch, num_classes).state_dict(), state, f"weights {path} do not fit teacher class '{arch}'")
    except KdbenchError as e:
        return str(e)
    return None


def check_data(dataset: str, data_root: str | Path | None) -> None:
    """Missing data is bad input (one line saying how to get it), found before anything runs or is written."""
    from .data.catalogue import DATASETS, locate, missing_message, package_available

    entry = DATASETS.get(dataset)
    found = locate(entry, data_root) is not None if entry.needs_root else package_available(entry)
    if not found:
        raise KdbenchError(missing_message(entry, data_root))


def load_data(spec: RunSpec, data_root: str | Path | None) -> Splits:
    from .data import load_dataset

    return load_dataset(spec.dataset, data_root, val_fraction=spec.val_fraction, split_seed=spec.split_seed, max_train=spec.max_train,
                        **spec.data_options)


def build_context(r: Resolved, data: Splits, device: torch.device, teacher: Teacher | None, progress: bool | None, timings: dict[str, float]) -> Context:
    from .models import create_model, place
    from .models.budget import RELATIVE, auto_student, budget_rule

    spec = r.spec
    cache: dict[str, Targets] = {}
    notes: list[str] = []  # the context's deviations (an auto student's relative budget)

    def targets(split: str) -> Targets:
        if teacher is None:
            raise KdbenchError(f"method '{spec.method}' asked for teacher targets but has no teacher")
        if split not in cache:
            cache[split], seconds = teacher_targets(teacher, data, split, device)
            timings["targets_time_s"] = timings.get("targets_time_s", 0.0) + seconds
        return cache[split]

    def make_model(name: str, **kw: Any) -> nn.Module:
        return compiled(place(create_model(name, data.spec, **kw), device))

    def compiled(model: nn.Module) -> nn.Module:
        if spec.compile:
            model.compile()  # in place: the module and its state dict names stay the same
        return model

    def make_student(out_features: int | None = None, n_students: int | None = None, arch: str | None = None) -> nn.Module:
        arch = arch or spec.student
        n = n_students if n_students is not None else spec.n_students
        if arch == "auto":
            model, info = auto_student(data.spec, n, out_features or data.spec.num_classes, spec.budget,
                                       budget_rule(spec.dataset), default_teacher(spec.dataset),
                                       scale=spec.student_scale)
            if info.get("rule") == RELATIVE and info["deviation"] not in notes:
                notes.append(info["deviation"])
            return compiled(place(model, device))
        kw = {"out_features": out_features} if out_features is not None else {}
        return make_model(arch, **kw)

    return Context(spec=spec, data=data, device=device, schedule=r.schedule, teacher=teacher.model if teacher else None,
                   targets=targets, make_student=make_student, make_model=make_model, progress=progress, deviations=notes)


def evaluate(fit: FitResult, data: Splits) -> dict[str, Any]:
    """Test accuracy at the last and at the val-best epoch (selected on val, never on test)."""
    model = fit.predictor
    out: dict[str, Any] = {}
    k5 = data.spec.num_classes > 5
    for tag, state in (("", fit.last_state), ("_valbest", fit.valbest_state)):
        model.load_state_dict(state)
        logits = predict(model, data.test.x)
        out[f"test_acc{tag}"] = accuracy(logits, data.test.y)
        if k5:
            out[f"test_top5{tag}"] = accuracy(logits, data.test.y, k=5)
    out["val_acc"] = accuracy(predict(model, data.val.x), data.val.y)  # at the selected (val-best) state
    return out


def measure(fit: FitResult, data: Splits, teacher: Teacher | None, device: torch.device, latency: bool = True) -> dict[str, Any]:
    from .models import count_macs, count_params

    m: dict[str, Any] = {}
    spec_in = data.spec
    m["params"] = count_params(fit.predictor)
    m["macs"] = count_macs(fit.predictor, spec_in)
    m["flops"] = 2 * m["macs"]
    students = fit.students
    if students:
        m["params_per_student"] = [count_params(s) for s in students]
        m["macs_per_student"] = [count_macs(s, spec_in) for s in students]
        m["flops_per_student"] = [2 * v for v in m["macs_per_student"]]
    if teacher is not None:
        m["teacher_params"] = count_params(teacher.model)
        m["teacher_macs"] = count_macs(teacher.model, spec_in)
        m["teacher_flops"] = 2 * m["teacher_macs"]
        m["teacher_test_acc"] = teacher.info.get("metrics", {}).get("test_acc")
        m["teacher_val_acc"] = teacher.info.get("metrics", {}).get("val_acc")
    if latency:
        example = data.test.x[:1]
        m["latency_ms_b1"] = latency_ms(fit.predictor, example, 1, device)
        m["latency_ms_b256"] = latency_ms(fit.predictor, example, 256, device)
        extra = fit.latency_fn
        if extra is not None:  # method-specific variants (TCN: sequential / fused / parallel)
            m["latency"] = extra(example, device)
            if teacher is not None:
                for b in ("b1", "b256"):
                    m["latency"].setdefault(b, {})["teacher"] = latency_ms(teacher.model, example, int(b[1:]), device)
    return m


def run(spec: RunSpec, *, data_root: str | Path | None = None, progress: bool | None = None, latency: bool = True,
        resolved: Resolved | None = None, track: Tracking | None = None,
        checkpoints: RunCheckpoints | None = None) -> dict[str, Any]:
    """Execute one run and return its record (status ok). Raises on failure; `execute` records failures.
    `track`: trackers that also get the epochs and the record (kdbench.tracking); they change nothing.
    `checkpoints`: where its training loops save and resume epochs (kdbench.resume); None: nowhere."""
    r = resolved or resolve(spec)
    with tracking_session(track, r.key, record_spec(r)) as session:
        record = _run(r, data_root, progress, latency, session.epoch if session.trackers else None, checkpoints)
        session.finish(record)
    return record


def record_spec(r: Resolved) -> dict[str, Any]:
    """The spec as a record stores it: canonical, plus the parameters that differ from the defaults."""
    return {**r.canonical, "params_changed": params_changed(r.method, r.params)}


@dataclass
class _Prepared:
    """A run's data and teacher, loaded before its method trains (shared by a seed-fused group)."""

    device: torch.device
    data: Splits
    teacher: Teacher | None
    timings: dict[str, float]
    load: dict[str, Any]  # the machine's load during each timed phase (env.load; the report flags oversubscription)


def _prepare(r: Resolved, data_root: str | Path | None, progress: bool | None) -> _Prepared:
    keep_freed_memory()
    device = resolve_device(r.spec.device)
    timings: dict[str, float] = {}
    load: dict[str, Any] = {}
    data = load_data(r.spec, data_root).to(device)
    teacher = None
    if r.method.needs_teacher:
        t0 = time.perf_counter()
        probe = LoadProbe()
        teacher = resolve_teacher(r.spec, data, device, progress, r.module_teacher)
        load["teacher"] = probe.finish()
        timings["teacher_time_s"] = teacher.info.get("metrics", {}).get("train_time_s", 0.0)
        timings["teacher_load_s"] = time.perf_counter() - t0
    return _Prepared(device, data, teacher, timings, load)


def _run(r: Resolved, data_root: str | Path | None, progress: bool | None, latency: bool,
         on_epoch: Callable[[str, dict[str, float]], None] | None, checkpoints: RunCheckpoints | None) -> dict[str, Any]:
    prep = _prepare(r, data_root, progress)
    ctx = build_context(r, prep.data, prep.device, prep.teacher, progress, prep.timings)
    ctx.on_epoch = on_epoch
    ctx.checkpoints = checkpoints
    seed_everything(r.spec.seed)
    method = r.method(r.params)
    t0 = time.perf_counter()
    probe = LoadProbe()
    fit = method.fit(ctx)
    train_time = time.perf_counter() - t0 - prep.timings.get("targets_time_s", 0.0)
    load = {**prep.load, "train": probe.finish()}
    env = None
    if checkpoints is not None and checkpoints.resumed:  # the time of the epochs trained before is added back
        train_time += checkpoints.prior_train_s
        env = {"resumed": {"loops": checkpoints.resumed,
                           "note": "train_time_s includes the resumed epochs' time; env.load.train is this process's only"}}
    return _record(r, prep, ctx, fit, train_time, load, latency, env=env)


def _record(r: Resolved, prep: _Prepared, ctx: Context, fit: FitResult, train_time: float, load: dict[str, Any],
            latency: bool, env: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ok record of a trained run: test accuracies, timings, measurements, environment."""
    device, data, teacher, timings = prep.device, prep.data, prep.teacher, prep.timings
    deviations = list(data.info.get("deviations", []))
    metrics: dict[str, Any] = evaluate(fit, data)
    metrics["train_time_s"] = train_time
    metrics.update(timings)
    metrics.update(fit.metrics)
    if fit.history:
        metrics.setdefault("epochs_run", len(fit.history))
        metrics.setdefault("epoch_time_s", sum(h.get("time_s", 0.0) for h in fit.history) / len(fit.history))
    probe = LoadProbe()
    metrics.update(measure(fit, data, teacher, device, latency))
    if latency:
        load["latency"] = probe.finish()
    metrics["peak_rss_mb"] = peak_rss_mb()
    metrics["peak_cuda_mb"] = peak_cuda_mb()
    deviations += ctx.deviations
    warned = list(teacher.info.get("warnings", [])) if teacher else []
    if teacher is not None:  # once per run, in the record and on stderr
        warned += [w for w in [student_size_warning(metrics["params"], metrics["teacher_params"], teacher.arch)] if w]
    return RunRecord.ok(
        r.key, record_spec(r), namespaced(r.spec.method, metrics), history=fit.history, deviations=deviations,
        data={k: v for k, v in data.info.items() if k != "deviations"},
        teacher={"key": teacher.key, **{k: v for k, v in teacher.info.items() if k != "metrics"}} if teacher else None,
        warnings=warned,
        env={**environment(device), **speed_settings(r.spec, device), "load": load, **(env or {})}, code_version=CODE_VERSION,
    ).to_dict()


def execute_seeds(rs: list[Resolved], out_dir: str | Path, *, data_root: str | Path | None = None, progress: bool | None = None,
                  latency: bool = True, track: Tracking | None = None, note: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train the seed siblings `rs` (equal but for their seed) as one fused computation
    (kdbench.seed_fuse) and write each one's record as `execute` would. `train_time_s` of every
    record is its share of the group's time (group / copies: what a run cost, so time tables average
    like runs alone); `env.seed_fusion` says it was fused, with how many copies and the group's time
    (`note`: the decision). If the fused group fails, nothing of it is written and every seed runs alone (its
    record says why): a run's record is always what its run alone gives."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    note = {**(note or {}), "fused": True, "copies": len(rs)}
    try:
        finishers = _fit_seeds(rs, data_root, progress, latency, track, note)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - each seed then runs (and fails, or not) on its own
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        alone = {**note, "fused": False, "copies": 1,
                 "reason": f"the fused group of {len(rs)} seeds failed ({type(exc).__name__}: {first[:300]}); each seed ran alone"}
        return [execute(r.spec, out_dir, data_root=data_root, progress=progress, latency=latency, resolved=r, track=track,
                        env={"seed_fusion": alone}) for r in rs]
    return [execute(r.spec, out_dir, data_root=data_root, progress=progress, latency=latency, resolved=r, track=track,
                    compute=finish, started=started) for r, finish in zip(rs, finishers)]


def _fit_seeds(rs: list[Resolved], data_root: str | Path | None, progress: bool | None, latency: bool,
               track: Tracking | None, note: dict[str, Any]) -> list[Callable[[], dict[str, Any]]]:
    """Train the group; returns per seed the function that evaluates it and builds its record (and
    replays its epochs to its trackers, so they see what its run alone would show)."""
    from .seed_fuse import sibling_key

    if len({sibling_key(r) for r in rs}) != 1 or len({r.spec.seed for r in rs}) != len(rs):
        raise KdbenchError("a seed-fused group must hold runs that differ only in their seed")
    prep = _prepare(rs[0], data_root, progress)
    ctxs: list[Context] = []
    epochs: list[list[tuple[str, dict[str, float]]]] = []
    for r in rs:
        ctx = build_context(r, prep.data, prep.device, prep.teacher, progress, prep.timings)
        if ctxs:  # one cache of teacher targets for the group
            ctx = dataclasses.replace(ctx, targets=ctxs[0].targets)
        rows: list[tuple[str, dict[str, float]]] = []
        ctx.on_epoch = lambda stage, row, rows=rows: rows.append((stage, row))
        ctxs.append(ctx)
        epochs.append(rows)
    method = rs[0].method(rs[0].params)
    t0 = time.perf_counter()
    probe = LoadProbe()
    fits = method.fit_seeds(ctxs)
    train_time = time.perf_counter() - t0 - prep.timings.get("targets_time_s", 0.0)
    load = {**prep.load, "train": probe.finish()}
    if len(fits) != len(rs):
        raise KdbenchError(f"method '{rs[0].method.name}': fit_seeds returned {len(fits)} results for {len(rs)} seeds")
    note = {**note, "seeds": [r.spec.seed for r in rs], "group_train_time_s": train_time}

    def finisher(i: int) -> Callable[[], dict[str, Any]]:
        def finish() -> dict[str, Any]:
            r = rs[i]
            with tracking_session(track, r.key, record_spec(r)) as session:
                for stage, row in epochs[i]:
                    session.epoch(stage, row)
                record = _record(r, prep, ctxs[i], fits[i], train_time / len(rs), dict(load), latency,
                                 env={"seed_fusion": note})
                session.finish(record)
            return record
        return finish

    return [finisher(i) for i in range(len(rs))]


def resolve_teacher(spec: RunSpec, data: Splits, device: torch.device, progress: bool | None,
                    module: Any = None) -> Teacher:
    """The run's teacher: trained (cached), imported from a checkpoint, or the `module:` teacher passed
    in Python (`module`: its teachers.ModuleTeacher, sent with the run to worker processes)."""
    from .teachers import MODULE_PREFIX, adopt_module_teacher, build_teacher_model, import_teacher, module_teacher

    def build(arch: str, **kw: Any) -> nn.Module:
        return build_teacher_model(arch, data.spec, device, **kw)

    if spec.teacher.startswith(MODULE_PREFIX):
        return adopt_module_teacher(module or module_teacher(spec.teacher), data, device, spec.teacher_normalize)
    if spec.teacher.startswith(FILE_PREFIX):
        arch, path = checkpoint_teacher(spec.teacher, spec.dataset)
        return import_teacher(path, arch, data, device, build, spec.teacher_normalize)
    return get_teacher(spec.teacher, data, spec.teacher_recipe, device, build, progress, spec.teacher_normalize)


def execute(spec: RunSpec, out_dir: str | Path, *, data_root: str | Path | None = None, progress: bool | None = None,
            latency: bool = True, resolved: Resolved | None = None, track: Tracking | None = None,
            env: dict[str, Any] | None = None, compute: Callable[[], dict[str, Any]] | None = None,
            started: str | None = None, checkpoint_every: float | None = DEFAULT_EVERY_S) -> dict[str, Any]:
    """Run and write the record; failures are written as `status: failed` with the error. `env`:
    entries added to the record's env (a seed-fusion decision); `compute`: what makes the record
    instead of `run` (a member of a seed-fused group, `execute_seeds`), started at `started`.
    `checkpoint_every`: seconds between the epoch checkpoints of a run alone, kept under
    `out_dir/.partial/` until its record is written, from which a stopped run resumes (kdbench.resume);
    None: none."""
    r = resolved or resolve(spec)
    started = started or datetime.now(timezone.utc).isoformat(timespec="seconds")
    checkpoints = RunCheckpoints(run_folder(out_dir, r.key), checkpoint_every) \
        if checkpoint_every is not None and compute is None else None
    try:
        if compute is not None:
            record = compute()
        else:
            record = run(r.spec, data_root=data_root, progress=progress, latency=latency, resolved=r, track=track,
                         checkpoints=checkpoints)
            if env:
                record["env"] = {**record.get("env", {}), **env}
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a record
        record = RunRecord.failed(
            r.key, record_spec(r),
            {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc(limit=20),
             **({"epoch": exc.epoch} if hasattr(exc, "epoch") else {})},
            env={**environment(), **(env or {})}, code_version=CODE_VERSION,
        ).to_dict()
    record["started_at"] = started
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    store.write_record(Path(out_dir), record)
    if checkpoints is not None:  # the record holds the run now (a failed run trains again from the start)
        checkpoints.clear()
    return record


def spec_from_record(record: dict[str, Any]) -> RunSpec:
    """The RunSpec that reproduces a record (`kdbench run --from-record`)."""
    return RunSpec.from_dict(record["spec"])
