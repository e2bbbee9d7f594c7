"""Batch norm folded into the convolution before it, at inference.

With its running statistics, a batch norm is a per-channel affine map, so ``bn(conv(x))`` equals one
convolution with scaled weights and a bias: one pass over the feature map instead of two. PyTorch's
``torch.nn.utils.fusion.fuse_conv_bn_eval`` does the same by building new modules; here the modules
stay as they are (checkpoints, parameter counts, hooks and training are untouched) and the folded
weights are computed on first use and cached until any of the tensors they come from changes (PyTorch's
version counter: optimiser steps, ``load_state_dict``, in-place ops under ``torch.no_grad()``; an in-place
edit through ``.data`` is the one change it cannot see). Folding applies only where the result cannot
differ: BN in eval mode, autograd off (attribution methods need gradients, and Grad-CAM hooks a BN), and
no hooks on either module. Measured: docs/BENCHMARKS.md "Fifth round". ``relu_output`` is the same kind of
shortcut for a ReLU: in place when no one else can hold the map it rectifies ("Sixth round").
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
from torch import nn
from torch.nn.modules import module as module_hooks

T = TypeVar("T")
_enabled = contextvars.ContextVar("drnets_fold_batch_norms", default=True)


@contextlib.contextmanager
def folding(enabled: bool) -> Iterator[None]:
    """Folding on (the default) or off for the code run inside, in this thread only: benchmarks time both."""
    token = _enabled.set(enabled)
    try:
        yield
    finally:
        _enabled.reset(token)


def folds(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> bool:
    """Whether ``bn(conv(x))`` runs as one convolution right now: BN in eval mode, autograd off, and
    nothing that expects the two modules' own forwards (hooks, a pruned or parametrized weight)."""
    return (
        _enabled.get()
        and not bn.training
        and bn.track_running_stats
        and not torch.is_grad_enabled()
        and conv.padding_mode == "zeros"
        and "weight" in conv._parameters  # torch.nn.utils.prune and parametrize move it out
        and not (conv._forward_pre_hooks or conv._forward_hooks or bn._forward_pre_hooks or bn._forward_hooks)
        and not (module_hooks._global_forward_pre_hooks or module_hooks._global_forward_hooks)
    )


def relu_output(x: torch.Tensor, *seen_by: nn.Module) -> torch.Tensor:
    """``relu(x)`` for a map the modules ``seen_by`` just returned (the ones whose forward hooks could
    hold it): in place when nothing else can hold it (autograd off, no such hook), which skips writing
    a new map (about twice as fast on a 2-core CPU; docs/BENCHMARKS.md "Sixth round")."""
    if torch.is_grad_enabled() or module_hooks._global_forward_hooks or any(m._forward_hooks for m in seen_by):
        return nn.functional.relu(x)
    return x.relu_()


def conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))``; one convolution at inference."""
    return folded_conv(conv, bn, x) if folds(conv, bn) else bn(conv(x))


def folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor, first_channel: int = 0) -> torch.Tensor:
    """``conv`` followed by channels ``first_channel : first_channel + conv.out_channels`` of ``bn``, as one
    convolution (``bn`` in eval mode; a BN over several convolutions' concatenated outputs folds piecewise)."""
    weight, bias = _folded_weights(conv, bn, first_channel)
    return conv._conv_forward(x, weight, bias)  # what conv.forward runs, with other weights


def _folded_weights(conv: nn.Conv2d, bn: nn.BatchNorm2d, first_channel: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Read through the modules' own dicts: nn.Module.__getattr__ would cost more than the BN pass saves at batch 1.
    sources = (
        conv._parameters["weight"],
        conv._parameters["bias"],
        bn._parameters["weight"],
        bn._parameters["bias"],
        bn._buffers["running_mean"],
        bn._buffers["running_var"],
    )

    def fold() -> tuple[torch.Tensor, torch.Tensor]:
        channels = slice(first_channel, first_channel + conv.out_channels)
        scale = torch.rsqrt(bn.running_var[channels] + bn.eps)
        shift = -bn.running_mean[channels] * scale
        if bn.weight is not None:
            scale = scale * bn.weight[channels]
            shift = shift * bn.weight[channels] + bn.bias[channels]
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        return conv.weight * scale.view(-1, 1, 1, 1), shift

    return derived_tensors(conv, "_folded_bn", sources, fold, first_channel)


def derived_tensors(
    holder: nn.Module, name: str, sources: Sequence[torch.Tensor | None], build: Callable[[], T], tag: object = None
) -> T:
    """``build()``'s tensors, made from ``sources`` without autograd and cached on ``holder`` until one of the
    sources changes: an optimiser step or ``load_state_dict`` changes a tensor in place (its version),
    ``.to()`` replaces it (its data pointer). Tensors made under inference mode keep no version: what is
    built from them is never cached. ``tag`` tells apart several values cached under one name."""
    try:
        key = (tag, *((t._version, t.data_ptr()) for t in sources if t is not None))
    except RuntimeError:
        key = None
    cached = holder.__dict__.get(name)
    if key is not None and cached is not None and cached[0] == key:
        return cached[1]
    with torch.inference_mode(False), torch.no_grad():  # plain tensors: usable outside inference mode too
        value = build()
    holder.__dict__[name] = (key, value)
    return value


class LayerStack(nn.Sequential):
    """``nn.Sequential`` whose conv -> BN pairs run as one convolution at inference (same modules, same keys)."""

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``start``: skip the first layers (a caller that already applied them, see ``Branch.forward``)."""
        layers = list(self._modules.values())
        i = start
        while i < len(layers):
            layer = layers[i]
            after = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, nn.Conv2d) and isinstance(after, nn.BatchNorm2d):
                x = conv_bn(layer, after, x)
                i += 2
            else:
                x = layer(x)
                i += 1
        return x
