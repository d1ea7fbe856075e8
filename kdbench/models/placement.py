"""Where a model's tensors live: its device, and on CPU the memory format of its convolutions."""
from __future__ import annotations

import os

import torch
from torch import nn


def channels_last_enabled(device: torch.device) -> bool:
    """Channels-last 2-d convolutions on CPU, unless KDBENCH_CHANNELS_LAST=0. oneDNN runs kdbench's
    small convnets 1.2-2.4x faster in this format (docs/performance.md); the function is the same,
    the floats differ from the default format by summation order only."""
    return device.type == "cpu" and os.environ.get("KDBENCH_CHANNELS_LAST", "1") not in ("0", "false", "no")


def memory_format_name(device: torch.device) -> str:
    """The memory format `place` gives conv weights on `device` (recorded with every run)."""
    return "channels_last" if channels_last_enabled(device) else "contiguous"


def place(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` on `device`, its 4-d weights channels-last where that is faster (see above)."""
    model = model.to(device)
    if channels_last_enabled(device) and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    return model
