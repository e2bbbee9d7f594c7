"""Candidate branches of a DRNet edge (the DARTS operation space, without ``none``).

Every branch knows its own cost for an input size, so the routing trace can add up
exactly what ran. FLOPs follow ``torch.utils.flop_counter.FlopCounterMode``:
2 x multiply-accumulates of convolutions and linear layers; pooling, batch norm,
activations and additions count zero.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# Order matters: it is the last axis of every gate tensor [B, E, K].
PRIMITIVES: tuple[str, ...] = (
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
)


def conv_output_size(size: int, conv: nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d, axis: int = 0) -> int:
    """Spatial size after ``conv`` along one axis (PyTorch's floor formula)."""

    def pick(v: int | tuple[int, ...]) -> int:
        return v[axis] if isinstance(v, tuple) else v

    dilation = pick(getattr(conv, "dilation", 1))
    return output_size(size, pick(conv.kernel_size), pick(conv.stride), pick(conv.padding), dilation)


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """PyTorch's floor formula for one axis of a convolution or pool."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_flops(conv: nn.Conv2d, h_out: int, w_out: int) -> int:
    """FLOPs (2 x MACs) of one convolution producing an ``h_out x w_out`` map."""
    kh, kw = conv.kernel_size
    macs = h_out * w_out * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw
    return 2 * macs


def sequential_flops(layers: nn.Sequential, h: int, w: int) -> tuple[int, int, int]:
    """Walk a plain conv/pool stack; returns (flops, h_out, w_out)."""
    flops = 0
    for layer in layers:
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            h, w = conv_output_size(h, layer, 0), conv_output_size(w, layer, 1)
            if isinstance(layer, nn.Conv2d):
                flops += conv_flops(layer, h, w)
    return flops, h, w


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class Branch(nn.Module):
    """A candidate branch: a layer stack plus its analytic cost."""

    def __init__(self, layers: nn.Sequential):
        super().__init__()
        self.op = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)

    def flops(self, h: int, w: int) -> int:
        return sequential_flops(self.op, h, w)[0]

    def params(self) -> int:
        return param_count(self)


class ReLUConvBN(Branch):
    """ReLU -> conv -> BN: the preprocessing of each cell input (DARTS)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.Sequential(
                nn.ReLU(inplace=False),
                nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
                nn.BatchNorm2d(c_out, affine=affine),
            )
        )


class DilConv(Branch):
    """ReLU -> depthwise dilated conv -> pointwise conv -> BN (DARTS ``dil_conv``)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int, affine: bool = True
    ):
        super().__init__(
            nn.Sequential(
                nn.ReLU(inplace=False),
                nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
                nn.Conv2d(c_in, c_out, 1, bias=False),
                nn.BatchNorm2d(c_out, affine=affine),
            )
        )


class SepConv(Branch):
    """Two stacked dilation-1 ``DilConv``s; only the first one strides (DARTS ``sep_conv``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        first = DilConv(c_in, c_in, kernel, stride, padding, 1, affine).op
        second = DilConv(c_in, c_out, kernel, 1, padding, 1, affine).op
        super().__init__(nn.Sequential(*first, *second))


class Pool(Branch):
    """3x3 max or average pool; costs zero FLOPs under our convention."""

    def __init__(self, kind: str, stride: int):
        pool = nn.MaxPool2d(3, stride, 1) if kind == "max" else nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        super().__init__(nn.Sequential(pool))
        self.kind, self.stride = kind, stride


class Identity(Branch):
    def __init__(self) -> None:
        super().__init__(nn.Sequential())


class FactorizedReduce(Branch):
    """Halve the resolution with two offset stride-2 1x1 convs (DARTS); the stride-2 skip."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__(nn.Sequential(nn.ReLU(inplace=False)))
        # DARTS runs both at stride 2, conv_1 on the map and conv_2 on the map shifted by one
        # pixel: they read exactly the even and the odd pixels, which ``even_odd_pixels`` slices
        # out first, so both run at stride 1 (same weights, same outputs).
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        even, odd = even_odd_pixels(self.op(x))
        return self.bn(torch.cat([self.conv_1(even), pad_odd(self.conv_2(odd), x)], dim=1))

    def flops(self, h: int, w: int) -> int:
        """What runs: the odd-pixel path has no padded row/column to convolve at odd sizes."""
        return conv_flops(self.conv_1, (h + 1) // 2, (w + 1) // 2) + conv_flops(self.conv_2, h // 2, w // 2)


def even_odd_pixels(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixels a stride-2 1x1 conv reads, and those it reads on the map shifted by one pixel.

    Slicing the odd pixels copies a quarter of the map, where the shifted map DARTS convolves is a
    copy of nearly all of it. The even pixels are sliced too: with 2+ threads, PyTorch 2.13's CPU
    (oneDNN) gradient of a stride-2 1x1 conv on channels_last maps of <= 12 channels at odd batch
    sizes corrupts the heap (tests/test_ops.py), the stride-1 one does not.
    """
    return x[:, :, ::2, ::2], x[:, :, 1::2, 1::2]


def pad_odd(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """At an odd size of ``x`` the odd-pixel path has one row/column fewer, which DARTS pads with zeros."""
    h, w = x.shape[-2:]
    return nn.functional.pad(y, (0, w % 2, 0, h % 2)) if h % 2 or w % 2 else y


BranchFactory = Callable[[int, int, bool], Branch]

# name -> constructor (C, stride, affine); DARTS cnn/operations.py OPS, minus ``none``.
OPS: dict[str, BranchFactory] = {
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, c, 3, stride, 1, affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, c, 5, stride, 2, affine),
    "dil_conv_3x3": lambda c, stride, affine: DilConv(c, c, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda c, stride, affine: DilConv(c, c, 5, stride, 4, 2, affine),
    "max_pool_3x3": lambda c, stride, affine: Pool("max", stride),
    "avg_pool_3x3": lambda c, stride, affine: Pool("avg", stride),
    "skip_connect": lambda c, stride, affine: Identity() if stride == 1 else FactorizedReduce(c, c, affine),
}


def create_branch(name: str, channels: int, stride: int, affine: bool = True) -> Branch:
    """Build one candidate branch by name; unknown names fail with the list of known ones."""
    if name not in OPS:
        raise ValueError(f"unknown branch {name!r}; known branches: {', '.join(PRIMITIVES)}")
    return OPS[name](channels, stride, affine)
