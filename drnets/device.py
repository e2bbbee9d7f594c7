"""Where models run: the GPU when there is one, the CPU otherwise."""

from __future__ import annotations

import contextlib
import ctypes
import platform
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


def cudnn_suits_training(model: nn.Module, device: torch.device) -> bool:
    """Whether cuDNN should run this model's convolutions in training (``--cudnn`` left unset).

    Not for a routed DRNet on a GPU: routing hands each branch a new sub-batch size in nearly
    every step, and cuDNN builds an execution plan per new shape, seconds per step on an H100
    (docs/BENCHMARKS.md "GPU path"). Fixed-shape models (the dense supernet, MobileNetV2) keep it.
    """
    return not (device.type == "cuda" and getattr(getattr(model, "config", None), "dynamic", False))


@contextlib.contextmanager
def cudnn_enabled(enabled: bool) -> Iterator[None]:
    """Switch cuDNN (a process-wide flag) for the block only."""
    previous = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = previous


# glibc <malloc.h>: mallopt parameter numbers.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEPT_MEMORY_BYTES = 256 << 20


def has_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Serve large tensors from memory the process already has, not from fresh pages each time.

    glibc hands every block above its mmap threshold (128 KiB to 32 MiB, adjusted as it goes)
    to the kernel on free and trims the heap's free top, so each new activation map of a
    batched forward page-faults its memory in again: a fifth of a batch-64 DRNet forward on
    a 2-core CPU (docs/BENCHMARKS.md "Allocator"). PyTorch's CPU tuning guide swaps in
    jemalloc or tcmalloc for the same reason; two ``mallopt`` calls do it in-process. The cost
    is that up to 256 MiB of freed memory stays with the process. Returns whether it applied
    (glibc only; elsewhere the allocator is left as it is).
    """
    if not has_glibc():
        return False
    libc = ctypes.CDLL(None)
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, KEPT_MEMORY_BYTES) and libc.mallopt(_M_TRIM_THRESHOLD, KEPT_MEMORY_BYTES)
    )
