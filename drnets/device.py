"""Where models run: the GPU when there is one, the CPU otherwise."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def pick_device(preferred: str | None = None) -> torch.device:
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    n = torch.get_num_threads()
    return f"CPU ({n} thread{'' if n == 1 else 's'})"


def cudnn_suits_training(model: nn.Module, device: torch.device, execution: str = "sparse") -> bool:
    """Whether cuDNN should run this model's convolutions in training (``--cudnn`` left unset).

    Not for a routed DRNet run sparse on a GPU: routing hands each branch a new sub-batch size in
    nearly every step, and cuDNN builds an execution plan per new shape, seconds per step on an H100
    (docs/BENCHMARKS.md "GPU path"). Fixed shapes keep it: the dense supernet, MobileNetV2, and a
    DRNet trained with ``execution="masked"``.
    """
    dynamic = getattr(getattr(model, "config", None), "dynamic", False)
    return not (device.type == "cuda" and dynamic and execution == "sparse")


@contextlib.contextmanager
def cudnn_enabled(enabled: bool) -> Iterator[None]:
    """Switch cuDNN (a process-wide flag) for the block only."""
    previous = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = previous
