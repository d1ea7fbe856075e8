"""The networks of the papers kdbench reproduces: the Teacher-Class Network teachers (Malik et al.,
BMVC 2021) and the KDGAN MNIST student and teacher (Wang et al., NeurIPS 2018), as in docs/methods.md#paper-networks."""
from __future__ import annotations

from torch import nn

from ..data.base import DataSpec
from .protocol import (
    StagedNet,
    TokenEmbedding,
    check_positive,
    conv_out,
    make_normalize,
    pool_out,
    require_image,
    require_text,
)
from .zoo import CIFAR_SPEC, register_model

DENSE_WIDTH = 256  # the dense representation of every paper teacher
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@register_model("paper-mnist-teacher")
def paper_mnist_teacher(spec: DataSpec, normalize: str | None = None) -> StagedNet:
    """TCN MNIST/Fashion-MNIST teacher: 2 convs, dense 256 (2,380,938 params at 1x28x28, K=10)."""
    c, h, w = require_image(spec, "paper-mnist-teacher")
    fh, fw = pool_out(conv_out(conv_out(h, 3), 3), 2), pool_out(conv_out(conv_out(w, 3), 3), 2)
    check_positive("paper-mnist-teacher", spec, fh, fw)
    body = nn.Sequential(nn.Conv2d(c, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU())
    neck = nn.Sequential(
        nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(), nn.Linear(64 * fh * fw, DENSE_WIDTH), nn.ReLU()
    )
    # the ReLU is a no-op on the teacher's own features but not on TCN students' concatenated outputs
    classifier = nn.Sequential(nn.ReLU(), nn.Dropout(0.5), nn.Linear(DENSE_WIDTH, spec.num_classes))
    return StagedNet(make_normalize(normalize, c), body, neck, classifier, DENSE_WIDTH)


@register_model("paper-imdb-teacher", modality="text")
def paper_imdb_teacher(
    spec: DataSpec, single_logit: bool = False, embed_dim: int = 32, vocab_size: int | None = None
) -> StagedNet:
    """TCN IMDB teacher: Embedding 32, Conv1d 32, dense 256 (2,211,617 params with single_logit)."""
    length, vocab = require_text(spec, "paper-imdb-teacher", vocab_size)
    pooled = pool_out(length, 2)
    check_positive("paper-imdb-teacher", spec, pooled)
    body = nn.Sequential(nn.Conv1d(embed_dim, 32, 3, padding=1), nn.ReLU())
    neck = nn.Sequential(nn.MaxPool1d(2), nn.Flatten(), nn.Linear(32 * pooled, DENSE_WIDTH), nn.ReLU())
    classifier = nn.Linear(DENSE_WIDTH, 1 if single_logit else spec.num_classes)
    return StagedNet(TokenEmbedding(vocab, embed_dim), body, neck, classifier, DENSE_WIDTH)


def vgg_body(in_channels: int, cfg: tuple[int | str, ...], ceil_pool: bool = True) -> tuple[nn.Sequential, int]:
    """Conv3x3(pad 1)+BN+ReLU / MaxPool stack; ceil-mode pooling keeps 28x28 inputs valid down to 1x1."""
    layers: list[nn.Module] = []
    ch = in_channels
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=ceil_pool))
        else:
            layers += [nn.Conv2d(ch, int(item), 3, padding=1), nn.BatchNorm2d(int(item)), nn.ReLU()]
            ch = int(item)
    return nn.Sequential(*layers), ch


@register_model("paper-cifar-teacher", default_spec=CIFAR_SPEC)
def paper_cifar_teacher(spec: DataSpec, normalize: str | None = None) -> StagedNet:
    """TCN CIFAR-10 teacher: VGG-16 with BN, Linear 512->256 (pre-activation = dense), ReLU-BN-Dropout-Linear."""
    c, _, _ = require_image(spec, "paper-cifar-teacher")
    body, ch = vgg_body(c, VGG16_CFG[:-1])  # feature_map = last conv activation, before the last pool
    neck = nn.Sequential(
        nn.MaxPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, DENSE_WIDTH)
    )
    classifier = nn.Sequential(
        nn.ReLU(), nn.BatchNorm1d(DENSE_WIDTH), nn.Dropout(0.5), nn.Linear(DENSE_WIDTH, spec.num_classes)
    )
    return StagedNet(make_normalize(normalize, c), body, neck, classifier, DENSE_WIDTH)


# The networks of the KDGAN paper's MNIST table (Wang et al., NeurIPS 2018; docs/methods.md#kdgan-networks).
KDGAN_DENSE = 1024


@register_model("kdgan-mlp")
def kdgan_mlp(spec: DataSpec, normalize: str | None = None, hidden: int = 800, keep: float = 0.88) -> StagedNet:
    """KDGAN MNIST student: MLP 784-800-800-10, ReLU, dropout keep 0.88 (1,276,810 params at 1x28x28).
    It has no conv stack: its `feature_map` is its (normalised) input."""
    c, h, w = require_image(spec, "kdgan-mlp")
    neck = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Dropout(1 - keep),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(1 - keep))
    return StagedNet(make_normalize(normalize, c), nn.Identity(), neck, nn.Linear(hidden, spec.num_classes), hidden)


@register_model("kdgan-lenet")
def kdgan_lenet(spec: DataSpec, normalize: str | None = None) -> StagedNet:
    """KDGAN MNIST teacher LeNet: conv32 5x5, pool, conv64 5x5, pool ('same' padding), fc1024, dropout 0.5,
    fc10 (3,274,634 params at 1x28x28)."""
    c, h, w = require_image(spec, "kdgan-lenet")
    fh, fw = pool_out(pool_out(h, 2), 2), pool_out(pool_out(w, 2), 2)
    check_positive("kdgan-lenet", spec, fh, fw)
    body = nn.Sequential(nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 5, padding=2), nn.ReLU())
    neck = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * fh * fw, KDGAN_DENSE), nn.ReLU(), nn.Dropout(0.5))
    return StagedNet(make_normalize(normalize, c), body, neck, nn.Linear(KDGAN_DENSE, spec.num_classes), KDGAN_DENSE)
