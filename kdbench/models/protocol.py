"""The dense-representation protocol every zoo model implements, and the layers shared by the zoo.

`features(x)` is the vector the final classifier sees, `classifier` the final layer, and
`forward(x) == classifier(features(x))`; TCN regresses on features, KD on logits, FT on
`feature_map(x)`, so one contract serves every method.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..data.base import DataSpec
from ..errors import KdbenchError
from ..registry import Registry

# per-channel (mean, std) for inputs in [0, 1]; used by pretrained weights that expect them
NORMALIZATIONS: Registry[tuple[tuple[float, ...], tuple[float, ...]]] = Registry("normalization")
NORMALIZATIONS.add("imagenet", ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
NORMALIZATIONS.add("cifar10", ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)))


class Normalize(nn.Module):
    """(x - mean) / std inside the model, so kdbench inputs stay in [0, 1] for every model.
    The statistics are non-persistent buffers: they follow `.to(device)` but stay out of state dicts,
    so checkpoints of the original networks load unchanged."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


Stats = tuple[tuple[float, ...], tuple[float, ...]]
NORMALIZE_HELP = "imagenet, cifar10, none, or MEAN,STD (one value, or one per channel joined by '/': 0.5/0.5/0.5,0.25/0.25/0.25)"


def parse_normalize(text: str | None) -> Stats | None:
    """(mean, std) of a normalisation given by name, as MEAN,STD, or None for 'none' / None."""
    if text is None or text == "none":
        return None
    if text in NORMALIZATIONS:
        return NORMALIZATIONS.get(text)
    parts = text.split(",")
    try:
        mean, std = (tuple(float(v) for v in part.split("/")) for part in parts) if len(parts) == 2 else ((), ())
    except ValueError:
        mean = std = ()
    if not mean or len(mean) != len(std) or not all(math.isfinite(v) for v in mean) or not all(math.isfinite(v) and v > 0 for v in std):
        raise KdbenchError(f"normalize '{text}' is not {NORMALIZE_HELP}, with std > 0")
    return mean, std


def make_normalize(name: str | None, channels: int) -> nn.Module:
    """`Identity` for None / 'none', else the statistics (one value for every channel, or one per channel)."""
    stats = parse_normalize(name)
    if stats is None:
        return nn.Identity()
    mean, std = stats
    if len(mean) == 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels:
        raise KdbenchError(f"normalize='{name}' needs {len(mean)} input channels, the data has {channels}")
    return Normalize(mean, std)


class TokenEmbedding(nn.Module):
    """Embedding of int64 ids (N, L) returned channels-first (N, E, L) for Conv1d."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)

    def forward(self, ids: Tensor) -> Tensor:
        return self.embed(ids).transpose(1, 2)


class ZooModel(nn.Module):
    """Base of every zoo model: subclasses define `features`, `classifier` and `feature_dim`."""

    feature_dim: int

    def features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class StagedNet(ZooModel):
    """stem -> body (= `feature_map`) -> neck (= `features`) -> classifier.

    The stem is input handling (normalisation for images, token embedding for text), the body the
    conv stack up to its last conv activation, the neck pooling/flatten/hidden dense layers."""

    def __init__(self, stem: nn.Module, body: nn.Module, neck: nn.Module, classifier: nn.Module, feature_dim: int):
        super().__init__()
        self.stem, self.body, self.neck, self.classifier = stem, body, neck, classifier
        self.feature_dim = feature_dim

    def feature_map(self, x: Tensor) -> Tensor:
        """Last conv activation before pooling: (N, C, H, W) for images, (N, C, L) for text."""
        return self.body(self.stem(x))

    def features(self, x: Tensor) -> Tensor:
        return self.neck(self.feature_map(x))


def module_name(root: nn.Module, sub: nn.Module) -> str | None:
    """Qualified name of `sub` inside `root` ('' for `root` itself), None if absent."""
    return next((name for name, m in root.named_modules() if m is sub), None)


def replace_submodule(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put `new` where `old` sits inside `root` (e.g. a wrapped network's classifier)."""
    name = module_name(root, old)
    if not name:
        raise KdbenchError(f"{type(old).__name__} is not a submodule of {type(root).__name__}")
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def require_image(spec: DataSpec, model: str) -> tuple[int, int, int]:
    """(C, H, W) of an image spec, or a clear error."""
    if spec.modality != "image" or len(spec.input_shape) != 3:
        raise KdbenchError(f"model '{model}' needs images (C, H, W), got {spec.modality} {tuple(spec.input_shape)}")
    c, h, w = spec.input_shape
    return int(c), int(h), int(w)


def require_text(spec: DataSpec, model: str, vocab_size: int | None = None) -> tuple[int, int]:
    """(sequence length, vocabulary size) of a text spec, or a clear error."""
    if spec.modality != "text" or len(spec.input_shape) != 1:
        raise KdbenchError(f"model '{model}' needs token sequences (L,), got {spec.modality} {tuple(spec.input_shape)}")
    vocab = vocab_size or spec.vocab_size
    if not vocab:
        raise KdbenchError(f"model '{model}' needs a vocabulary size; the dataset spec has none (pass vocab_size=)")
    return int(spec.input_shape[0]), int(vocab)


def conv_out(size: int, kernel: int, padding: int = 0, stride: int = 1) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def pool_out(size: int, kernel: int, ceil: bool = False) -> int:
    return -(-size // kernel) if ceil else size // kernel


def check_positive(model: str, spec: DataSpec, *sizes: int) -> None:
    if min(sizes) < 1:
        raise KdbenchError(f"model '{model}': input {tuple(spec.input_shape)} is too small for its conv/pool stack")
