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

from .fold import LayerStack, folded_conv, folds

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

    def __init__(self, layers: LayerStack):
        super().__init__()
        self.op = layers

    @property
    def rectifies_input(self) -> bool:
        """The branch begins with a ReLU (unhooked: ``rectified=True`` skips it), so a caller holding a map
        nobody else reads can rectify it in place."""
        first = self.op[0] if len(self.op) else None
        return isinstance(first, nn.ReLU) and not (first._forward_pre_hooks or first._forward_hooks)

    def forward(self, x: torch.Tensor, rectified: bool = False) -> torch.Tensor:
        """``rectified`` (only where ``rectifies_input``): x already went through the leading ReLU."""
        return self.op(x, start=1) if rectified else self.op(x)

    def flops(self, h: int, w: int) -> int:
        return sequential_flops(self.op, h, w)[0]

    def params(self) -> int:
        return param_count(self)


class MatmulConv2d(nn.Conv2d):
    """A bias-free, ungrouped convolution that runs as a matrix product on a GPU.

    A routed branch sees a new sub-batch size in nearly every training step, and cuDNN builds an
    execution plan per new shape: seconds per DRNet step on an H100, so DRNet training runs without
    cuDNN there, where PyTorch's fallback convolution loops over the samples (docs/BENCHMARKS.md
    "GPU path"). cuBLAS needs neither. The CPU keeps oneDNN; the weights are ``nn.Conv2d``'s.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, padding: int = 0, dilation: int = 1):
        super().__init__(c_in, c_out, kernel, stride, padding, dilation, bias=False)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # nn.Conv2d.forward's one call into the convolution; drnets.fold calls it with folded weights too.
        if not x.is_cuda:
            return super()._conv_forward(x, weight, bias)
        return conv_matmul(x, weight, self.stride, self.padding, self.dilation, bias)


def conv_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``conv2d(x, weight, bias, stride, padding, dilation)`` for an ungrouped ``weight`` [O, C, kh, kw]
    as one batched matrix product (im2col by ``unfold`` unless 1x1); a channels_last 1x1 stays channels_last."""
    w = weight.flatten(1)  # [O, C*kh*kw]
    n, _, h, wd = x.shape
    kh, kw = weight.shape[-2:]
    if (kh, kw, *stride, *padding) == (1, 1, 1, 1, 0, 0):
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return nn.functional.linear(x.permute(0, 2, 3, 1), w, bias).permute(0, 3, 1, 2)  # NHWC rows x [C, O]
        out = (w @ x.reshape(n, x.shape[1], h * wd)).view(n, -1, h, wd)
    else:
        h_out = output_size(h, kh, stride[0], padding[0], dilation[0])
        w_out = output_size(wd, kw, stride[1], padding[1], dilation[1])
        columns = nn.functional.unfold(x, (kh, kw), dilation, padding, stride)  # [N, C*kh*kw, h_out*w_out]
        out = (w @ columns).view(n, -1, h_out, w_out)
    return out if bias is None else out + bias.to(out.dtype).view(1, -1, 1, 1)  # autocast: stay in half precision


class ReLUConvBN(Branch):
    """ReLU -> conv -> BN: the preprocessing of each cell input (DARTS)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            LayerStack(
                nn.ReLU(inplace=False),
                MatmulConv2d(c_in, c_out, kernel, stride, padding),
                nn.BatchNorm2d(c_out, affine=affine),
            )
        )


class DilConv(Branch):
    """ReLU -> depthwise dilated conv -> pointwise conv -> BN (DARTS ``dil_conv``)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int, affine: bool = True
    ):
        super().__init__(
            LayerStack(
                nn.ReLU(inplace=False),
                nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
                MatmulConv2d(c_in, c_out),
                nn.BatchNorm2d(c_out, affine=affine),
            )
        )


class SepConv(Branch):
    """Two stacked dilation-1 ``DilConv``s; only the first one strides (DARTS ``sep_conv``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        first = DilConv(c_in, c_in, kernel, stride, padding, 1, affine).op
        second = DilConv(c_in, c_out, kernel, 1, padding, 1, affine).op
        super().__init__(LayerStack(*first, *second))


SEPARABLE_MIN_PIXELS = 784  # batch x height x width from which the separable max pool wins (one 28x28 map)
# Average pool as a depthwise conv wins from this many output pixels (batch x height x width: 16
# 28x28 maps) at every width measured, 12 to 144 channels, stride 1 and 2 (1.0-2.7x there, more on
# larger batches; docs/BENCHMARKS.md "Fourth round"); below it ATen's kernel is faster.
DEPTHWISE_MIN_PIXELS = 12544


class Pool(Branch):
    """3x3 max or average pool; costs zero FLOPs under our convention."""

    def __init__(self, kind: str, stride: int):
        pool = nn.MaxPool2d(3, stride, 1) if kind == "max" else nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        super().__init__(LayerStack(pool))
        self.kind, self.stride = kind, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # At inference on a CPU, large maps take faster routes to the same values: a stride-1 max
        # pool as two 1-D passes, an average pool as a depthwise convolution. ATen's kernels win on
        # small batches (`python -m bench.pooling`, docs/BENCHMARKS.md); on a GPU they are one
        # launch against several, and are kept.
        if not torch.is_grad_enabled() and x.device.type == "cpu":
            pixels = x.shape[0] * x.shape[-2] * x.shape[-1]
            if self.kind == "max" and self.stride == 1 and pixels >= SEPARABLE_MIN_PIXELS:
                return max_pool_3x3_separable(x)
            if self.kind == "avg" and pixels >= DEPTHWISE_MIN_PIXELS * self.stride**2:
                return avg_pool_3x3_depthwise(x, self.stride)
        return self.op(x)


def max_pool_3x3_separable(x: torch.Tensor) -> torch.Tensor:
    """``max_pool2d(x, 3, stride=1, padding=1)`` as a row max then a column max (exactly equal)."""
    padded = nn.functional.pad(x, (1, 1, 1, 1), value=float("-inf"))
    rows = torch.maximum(padded[..., :, :-2], padded[..., :, 1:-1])
    torch.maximum(rows, padded[..., :, 2:], out=rows)
    out = torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :])
    return torch.maximum(out, rows[..., 2:, :], out=out)


def avg_pool_3x3_depthwise(x: torch.Tensor, stride: int) -> torch.Tensor:
    """``avg_pool2d(x, 3, stride, padding=1, count_include_pad=False)`` as a depthwise convolution of
    1/9s (equal up to rounding). Only windows on the border hold fewer than 3 x 3 real pixels: their
    first/last output rows and columns are rescaled in place, which touches a few percent of the map
    where dividing every value by its window's count was a full pass (1.5x faster at 12x28x28)."""
    channels = x.shape[1]
    out = nn.functional.conv2d(x, x.new_full((channels, 1, 3, 3), 1 / 9), None, stride, 1, 1, channels)
    for axis, size in ((-2, x.shape[-2]), (-1, x.shape[-1])):
        windows = out.shape[axis]
        for i in {0, windows - 1}:
            real = min(i * stride + 1, size - 1) - max(i * stride - 1, 0) + 1  # pixels of window i inside the map
            if real < 3:
                out.narrow(axis, i, 1).mul_(3 / real)
    return out


class Identity(Branch):
    def __init__(self) -> None:
        super().__init__(LayerStack())


class FactorizedReduce(Branch):
    """Halve the resolution with two offset stride-2 1x1 convs (DARTS); the stride-2 skip."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__(LayerStack(nn.ReLU(inplace=False)))
        # DARTS runs both at stride 2, conv_1 on the map and conv_2 on the map shifted by one
        # pixel: they read exactly the even and the odd pixels, which ``forward`` slices out
        # first, so both run at stride 1 (same weights, same outputs).
        self.conv_1 = MatmulConv2d(c_in, c_out // 2)
        self.conv_2 = MatmulConv2d(c_in, c_out - c_out // 2)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor, rectified: bool = False) -> torch.Tensor:
        """``rectified``: x already went through the ReLU (see ``DRNet.forward_features``), so it is not applied again."""
        x = x if rectified else self.op(x)
        # The convolution copies a strided input first: slicing the odd pixels copies a quarter
        # of the map, where the shifted map DARTS convolves was a copy of nearly all of it. An odd
        # size gives the shifted path one row/column fewer, which DARTS pads with zeros.
        # The even pixels are sliced too: with 2+ threads, PyTorch 2.13's CPU (oneDNN) gradient of
        # a stride-2 1x1 conv on channels_last maps of <= 12 channels at odd batch sizes corrupts
        # the heap (a crash training 4-channel DRNets; tests/test_ops.py), the stride-1 one does not.
        h, w = x.shape[-2:]
        even, odd = x[:, :, ::2, ::2], x[:, :, 1::2, 1::2]
        even_size = h % 2 == 0 and w % 2 == 0  # no zero padding for the BN to shift
        if even_size and folds(self.conv_1, self.bn) and folds(self.conv_2, self.bn):
            return torch.cat(
                [
                    folded_conv(self.conv_1, self.bn, even),
                    folded_conv(self.conv_2, self.bn, odd, self.conv_1.out_channels),
                ],
                dim=1,
            )
        odd = self.conv_2(odd)
        if h % 2 or w % 2:
            odd = nn.functional.pad(odd, (0, w % 2, 0, h % 2))
        return self.bn(torch.cat([self.conv_1(even), odd], dim=1))

    def flops(self, h: int, w: int) -> int:
        """What runs: the odd-pixel path has no padded row/column to convolve at odd sizes."""
        return conv_flops(self.conv_1, (h + 1) // 2, (w + 1) // 2) + conv_flops(self.conv_2, h // 2, w // 2)


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
