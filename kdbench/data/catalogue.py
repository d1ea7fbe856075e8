"""The dataset registry: what each dataset is, where it is looked for, and how it is decoded.

A dataset is one registered *decode* function (expensive, run once, its arrays cached) plus an
*assemble* step (cheap, run on every load, turns cached arrays and options into a `Pool`).
Adding a dataset is one `@register_dataset(...)` function in a module by format, or, for data
already in memory, `register_image_dataset` / `register_text_dataset` (kdbench.data.readers).
A dataset also declares the defaults of its family: the teacher and teacher recipe `auto`
resolves to, how its `auto` students are sized (`student_budget`, see kdbench.models.budget), the
epochs of the shared student schedule, and the paper dataset it is or stands in for (reports match
it to that paper's rows). Generic code reads these fields, never a dataset's name.
"""
from __future__ import annotations

import errno
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..config import TeacherRecipe
from ..errors import KdbenchError
from ..registry import Registry
from .base import DataSpec

MODALITIES = ("image", "text")
# The teacher of a dataset that declares none: the paper teacher of its modality.
MODALITY_TEACHERS = {"image": "paper-mnist-teacher", "text": "paper-imdb-teacher"}
# The papers' datasets (what a built-in dataset `stands_for`), in the order reports list them.
PAPER_DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100", "imdb")


@dataclass
class Decoded:
    """What a decoder returns: named numpy arrays (cached as .npy) and JSON-able metadata."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Pool:
    """A dataset before the val carve: the original train pool and the test set, as numpy arrays.

    Images stay uint8 here (cheap to cache and index); `scale` turns them into float32 in [0, 1]
    only for the rows a split keeps. Text is already int64 token ids (`scale` None).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    spec: DataSpec
    scale: float | None = 255.0
    info: dict[str, Any] = field(default_factory=dict)


DecodeFn = Callable[[Path | None], Decoded]
AssembleFn = Callable[["DatasetEntry", Decoded, Mapping[str, Any]], Pool]


@dataclass(frozen=True)
class DatasetEntry:
    """One catalogue entry. `paths` are tried in order under every data root; an entry with no
    paths ships with a package and needs no root."""

    name: str
    description: str
    modality: str
    how_to_get: str
    paths: tuple[str, ...]
    decode: DecodeFn
    assemble: AssembleFn
    num_classes: int
    options: Mapping[str, Any] = field(default_factory=dict)  # defaults of load_dataset(**options)
    accepts: Callable[[Path], bool] | None = None  # is this existing path a usable copy?
    header_sizes: Callable[[Path | None], dict[str, int] | None] | None = None  # cheap sizes for the table
    downloader: Callable[[Path], None] | None = None
    sources: Callable[[Path], list[Path]] | None = None  # files whose size/mtime key the cache (default: the path)
    package: str | None = None  # for entries without paths: the Python package the data ships in
    deviations: tuple[str, ...] = ()
    cache: bool = True
    # family defaults (None: kdbench's built-in table for its own datasets, else the modality's)
    default_teacher: str | None = None  # what `--teacher auto` means on this dataset
    teacher_recipe: TeacherRecipe | None = None  # how that teacher is trained
    student_budget: str | None = None  # a paper budget table ("mnist", "imdb") or "relative" (to the teacher)
    student_epochs: int | None = None  # epochs of the shared student schedule (None: kdbench's default)
    stands_for: str | None = None  # the paper dataset this is, or substitutes for (None: kdbench's own)
    substitute: str | None = None  # why it only stands in for `stands_for` (None: the paper's own data)
    check_options: Callable[..., None] | None = None  # validates resolved options (raises KdbenchError)
    origin: str | None = None  # where data without paths comes from (default: the package)

    @property
    def needs_root(self) -> bool:
        return bool(self.paths)

    @property
    def source(self) -> str:
        """Where data without paths comes from, for the catalogue table and the record."""
        return self.origin or f"package {self.package}"

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with `given`; an unknown option (or a value `check_options` refuses) is a user error."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "none"
            raise KdbenchError(f"dataset '{self.name}' has no option {', '.join(map(repr, unknown))} (options: {allowed})")
        options = {**self.options, **given}
        if self.check_options is not None:
            try:
                self.check_options(**options)
            except KdbenchError as e:
                raise KdbenchError(f"dataset '{self.name}': {e}") from None
        return options

    def changed_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The options of `given` that differ from the defaults, checked: a run's `data_options`
        (an option given at its default value is the same data, so the same run key)."""
        return {k: v for k, v in self.resolve_options(given).items() if k in given and v != self.options[k]}


DATASETS: Registry[DatasetEntry] = Registry("dataset", plugins="kdbench.datasets")  # + installed dataset plugins


def family_default(dataset: str, name: str) -> Any:
    """What dataset `dataset` declares as `name` (default_teacher, teacher_recipe, student_budget);
    None when it declares nothing or is unknown (`resolve` names an unknown dataset itself)."""
    return getattr(DATASETS.get(dataset), name) if dataset in DATASETS else None


def paper_of(dataset: str) -> str:
    """The paper dataset `dataset` stands for, else its own name: what a paper's recipe keys on."""
    return family_default(dataset, "stands_for") or dataset


def modality_teacher(dataset: str) -> str | None:
    """The paper teacher of the dataset's modality (None for an unknown dataset)."""
    return MODALITY_TEACHERS.get(DATASETS.get(dataset).modality) if dataset in DATASETS else None


def image_assemble(entry: DatasetEntry, decoded: Decoded, options: Mapping[str, Any]) -> Pool:
    """Default assembly for image datasets: arrays train_x/train_y/test_x/test_y, uint8 (N, C, H, W)."""
    a = decoded.arrays
    spec = DataSpec(input_shape=tuple(int(s) for s in a["train_x"].shape[1:]), num_classes=entry.num_classes,
                    modality="image")
    info = {"test_split": decoded.meta["test_split"]} if "test_split" in decoded.meta else {}
    return Pool(a["train_x"], a["train_y"], a["test_x"], a["test_y"], spec,
                scale=float(decoded.meta.get("scale", 255.0)), info=info)


def register_dataset(
    name: str,
    *,
    modality: str,
    description: str,
    how_to_get: str,
    num_classes: int,
    paths: Sequence[str] = (),
    assemble: AssembleFn | None = None,
    options: Mapping[str, Any] | None = None,
    accepts: Callable[[Path], bool] | None = None,
    header_sizes: Callable[[Path | None], dict[str, int] | None] | None = None,
    downloader: Callable[[Path], None] | None = None,
    sources: Callable[[Path], list[Path]] | None = None,
    package: str | None = None,
    deviations: Sequence[str] = (),
    cache: bool = True,
    default_teacher: str | None = None,
    teacher_recipe: TeacherRecipe | None = None,
    student_budget: str | None = None,
    student_epochs: int | None = None,
    stands_for: str | None = None,
    substitute: str | None = None,
    check_options: Callable[..., None] | None = None,
    origin: str | None = None,
) -> Callable[[DecodeFn], DecodeFn]:
    """Decorator: register `fn(location) -> Decoded` as the decoder of dataset `name`.

    `default_teacher` / `teacher_recipe`: what `--teacher auto` trains on it (default: the paper
    teacher of its modality, kdbench's default recipe); `student_budget`: how `auto` students are
    sized, a paper table name or "relative" (the paper's student / teacher parameter ratio applied
    to the default teacher; the default for datasets outside kdbench's paper families);
    `student_epochs`: the shared student schedule's epochs on it; `stands_for` / `substitute`: the
    paper dataset it is (or replaces, and why), for the paper-vs-kdbench tables."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if teacher_recipe is not None and not isinstance(teacher_recipe, TeacherRecipe):
        raise ValueError(f"teacher_recipe must be a kdbench.config.TeacherRecipe, got {type(teacher_recipe).__name__}")
    if student_budget is not None:
        from ..models.budget import check_budget_rule

        check_budget_rule(student_budget)

    def deco(fn: DecodeFn) -> DecodeFn:
        DATASETS.add(name, DatasetEntry(
            name=name, description=description, modality=modality, how_to_get=how_to_get,
            paths=tuple(paths), decode=fn, assemble=assemble or image_assemble, num_classes=num_classes,
            options=dict(options or {}), accepts=accepts, header_sizes=header_sizes, downloader=downloader,
            sources=sources, package=package, deviations=tuple(deviations), cache=cache,
            default_teacher=default_teacher, teacher_recipe=teacher_recipe, student_budget=student_budget,
            student_epochs=student_epochs, stands_for=stands_for, substitute=substitute,
            check_options=check_options, origin=origin,
        ))
        return fn

    return deco


# ---------------------------------------------------------------------------------------------
# where data lives
# ---------------------------------------------------------------------------------------------

SYSTEM_DATA_ROOT = Path("/usr/share/datasets")  # Debian's dataset-* packages install here


def explicit_root(data_root: str | Path | None) -> Path | None:
    """The root the user named (--data-root), which must be a directory: a typo, a dangling link or
    a symlink loop is an error, never silently replaced by another root's copy of the data."""
    if data_root is None or str(data_root) == "":
        return None
    path = Path(data_root).expanduser()
    try:
        path.stat()
    except OSError as e:  # ENOENT, ELOOP (symlink loop), EACCES, ENOTDIR ...
        why = "is a symlink loop" if e.errno == errno.ELOOP else (
            "does not exist" if e.errno in (errno.ENOENT, errno.ENOTDIR) else f"cannot be read ({e.strerror})")
        raise KdbenchError(f"--data-root '{data_root}' {why}") from None
    if not path.is_dir():
        raise KdbenchError(f"--data-root '{data_root}' is not a directory")
    return path


def data_roots(data_root: str | Path | None = None) -> list[Path]:
    """Roots searched, in order: the argument, $KDBENCH_DATA (os.pathsep-separated), ./data,
    ~/.cache/kdbench/data, /usr/share/datasets. Duplicates are dropped; existence is not required
    (the missing-data message lists them all; `locate` refuses an argument that does not exist)."""
    cands: list[Path] = []
    if data_root is not None and str(data_root) != "":
        cands.append(Path(data_root))
    env = os.environ.get("KDBENCH_DATA", "")
    cands.extend(Path(p) for p in env.split(os.pathsep) if p)
    cands += [Path.cwd() / "data", Path.home() / ".cache" / "kdbench" / "data", SYSTEM_DATA_ROOT]
    out: list[Path] = []
    seen: set[str] = set()
    for c in cands:
        c = c.expanduser().absolute()
        if str(c) not in seen:
            seen.add(str(c))
            out.append(c)
    return out


def default_download_root(data_root: str | Path | None = None) -> Path:
    """Where `download` writes: the argument, else the first $KDBENCH_DATA entry, else ~/.cache/kdbench/data."""
    if data_root is not None and str(data_root) != "":
        return Path(data_root).expanduser().absolute()
    env = [p for p in os.environ.get("KDBENCH_DATA", "").split(os.pathsep) if p]
    if env:
        return Path(env[0]).expanduser().absolute()
    return Path.home() / ".cache" / "kdbench" / "data"


def package_available(entry: DatasetEntry) -> bool:
    """For an entry without paths: is the package that ships its data importable?"""
    return entry.package is None or importlib.util.find_spec(entry.package) is not None


def locate(entry: DatasetEntry, data_root: str | Path | None = None) -> tuple[Path, Path] | None:
    """(root, path) of the first usable copy of `entry`, or None (always None for entries without paths).
    An explicit `data_root` that is not a directory is a KdbenchError, never passed over."""
    explicit_root(data_root)
    for root in data_roots(data_root):
        for rel in entry.paths:
            p = root / rel
            try:
                if not p.exists():
                    continue
                if entry.accepts is not None and not entry.accepts(p):
                    continue
            except OSError:
                continue
            return root, p
    return None


def missing_message(entry: DatasetEntry, data_root: str | Path | None = None) -> str:
    """One line: what was looked for, where, and the exact way to get it."""
    if not entry.needs_root:
        return f"dataset '{entry.name}' needs the Python package {entry.package!r}: {entry.how_to_get}"
    roots = ", ".join(str(r) for r in data_roots(data_root))
    looked = " or ".join(entry.paths)
    return (f"dataset '{entry.name}' not found: looked for {looked} under {roots}; "
            f"to get it: {entry.how_to_get}")
