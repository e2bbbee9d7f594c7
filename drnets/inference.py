"""The inference fast path: every speed trick of drnets, in one place, behind one call.

``for_inference(model)`` builds an eval-only twin of a DRNet, dense supernet or MobileNetV2, in the
spirit of torchvision's ``fuse_conv_bn_eval``: same ``forward(x, policy, forced_route) -> (logits,
trace)``, same answers and routes as the plain model (tests/test_inference.py checks it on real test
images), less time. The plain model in ``drnets.model`` stays what trains and what Captum explains;
this module is the only library code that knows how the fast version runs:

- batch norm folded into the convolution before it (one pass over the map instead of two);
- ReLUs in place wherever no one else can hold the map (a stem or cell output every reader rectifies
  first, a sub-batch gathered for one branch, the inside of a branch);
- the routers of stem-reading DRNets stacked into one matrix product per layer for every cell;
- large pools on a CPU as a separable max / a depthwise convolution (``python -m bench.pooling``);
- ungrouped DRNet convolutions as matrix products on a GPU (cuDNN plans every new sub-batch shape);
- ``keep_freed_memory``: the process allocator keeps freed activation memory (glibc only).

Folded weights and stacked routers are derived from the weights when the twin is built: build it
after loading or training, and again after any change to the weights. Hooks on the plain model's
modules do not run in the twin: attribution uses the plain model.
"""

from __future__ import annotations

import ctypes
import platform

import torch
import torch.nn.functional as F
from torch import nn

from .cell import Cell, run_sparse
from .model import DRNet, InvertedResidual, MobileNetV2
from .ops import Branch, FactorizedReduce, even_odd_pixels, output_size, pad_odd
from .router import Router, RoutingPolicy, branch_scale, budget_logit, gate_values, pool_maps, select
from .trace import RoutingTrace

SEPARABLE_MIN_PIXELS = 784  # batch x height x width from which the separable max pool wins (one 28x28 map)
# Average pool as a depthwise conv wins from this many output pixels (batch x height x width: 16
# 28x28 maps) at every width measured, 12 to 144 channels, stride 1 and 2; below it ATen's kernel is faster.
DEPTHWISE_MIN_PIXELS = 12544


def for_inference(model: nn.Module) -> nn.Module:
    """An eval-only twin of ``model`` (DRNet, dense supernet or MobileNetV2) that runs the fast path.

    Example:
        >>> fast = for_inference(model)  # doctest: +SKIP
        >>> logits, trace = fast(x, policy=RoutingPolicy(threshold=0.2))  # doctest: +SKIP
    """
    if isinstance(model, DRNet):
        return FastDRNet(model)
    if isinstance(model, MobileNetV2):
        return FastMobileNetV2(model)
    raise TypeError(f"no inference fast path for {type(model).__name__}")


# ---- convolutions ----


class FoldedConv(nn.Module):
    """A convolution followed by the channels ``first_channel:`` of a batch norm, as one convolution."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, first_channel: int = 0, matmul: bool = False):
        super().__init__()
        weight, bias = fold_conv_bn(conv, bn, first_channel) if bn is not None else (conv.weight, conv.bias)
        self.register_buffer("weight", weight.detach(), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach(), persistent=False)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.matmul = matmul and conv.groups == 1

    def uses_matmul(self, x: torch.Tensor) -> bool:
        return self.matmul and x.is_cuda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_matmul(x):
            return conv_matmul(x, self.weight, self.stride, self.padding, self.dilation, self.bias)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, first_channel: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` restricted to ``conv``'s channels of ``bn`` (BN with its running
    statistics is a per-channel affine map; a BN over several convolutions' outputs folds piecewise)."""
    channels = slice(first_channel, first_channel + conv.out_channels)
    scale = torch.rsqrt(bn.running_var[channels] + bn.eps)
    shift = -bn.running_mean[channels] * scale
    if bn.weight is not None:
        scale = scale * bn.weight[channels]
        shift = shift * bn.weight[channels] + bn.bias[channels]
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    return conv.weight * scale.view(-1, 1, 1, 1), shift


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
            return F.linear(x.permute(0, 2, 3, 1), w, bias).permute(0, 3, 1, 2)  # NHWC rows x [C, O]
        out = (w @ x.reshape(n, x.shape[1], h * wd)).view(n, -1, h, wd)
    else:
        h_out = output_size(h, kh, stride[0], padding[0], dilation[0])
        w_out = output_size(wd, kw, stride[1], padding[1], dilation[1])
        columns = F.unfold(x, (kh, kw), dilation, padding, stride)  # [N, C*kh*kw, h_out*w_out]
        out = (w @ columns).view(n, -1, h_out, w_out)
    return out if bias is None else out + bias.to(out.dtype).view(1, -1, 1, 1)  # autocast: stay in half precision


# ---- pools and activations ----


class FastPool(nn.Module):
    """3x3 max or average pool; on a CPU, large maps take faster routes to the same values."""

    def __init__(self, pool: nn.MaxPool2d | nn.AvgPool2d):
        super().__init__()
        self.kind = "max" if isinstance(pool, nn.MaxPool2d) else "avg"
        self.stride = pool.stride if isinstance(pool.stride, int) else pool.stride[0]

    def takes_fast_form(self, x: torch.Tensor) -> bool:
        """The separable max / depthwise average form for ``x``: large maps on a CPU only (on a GPU
        ATen's kernel is one launch against several)."""
        if x.device.type != "cpu":
            return False
        pixels = x.shape[0] * x.shape[-2] * x.shape[-1]
        if self.kind == "max":
            return self.stride == 1 and pixels >= SEPARABLE_MIN_PIXELS
        return pixels >= DEPTHWISE_MIN_PIXELS * self.stride**2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.takes_fast_form(x):
            return max_pool_3x3_separable(x) if self.kind == "max" else avg_pool_3x3_depthwise(x, self.stride)
        if self.kind == "max":
            return F.max_pool2d(x, 3, self.stride, 1)
        return F.avg_pool2d(x, 3, self.stride, 1, count_include_pad=False)


def max_pool_3x3_separable(x: torch.Tensor) -> torch.Tensor:
    """``max_pool2d(x, 3, stride=1, padding=1)`` as a row max then a column max (exactly equal)."""
    padded = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    rows = torch.maximum(padded[..., :, :-2], padded[..., :, 1:-1])
    torch.maximum(rows, padded[..., :, 2:], out=rows)
    out = torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :])
    return torch.maximum(out, rows[..., 2:, :], out=out)


def avg_pool_3x3_depthwise(x: torch.Tensor, stride: int) -> torch.Tensor:
    """``avg_pool2d(x, 3, stride, padding=1, count_include_pad=False)`` as a depthwise convolution of
    1/9s (equal up to rounding). Only windows on the border hold fewer than 3 x 3 real pixels: their
    first/last output rows and columns are rescaled in place, a few percent of the map where dividing
    every value by its window's count is a full pass."""
    channels = x.shape[1]
    out = F.conv2d(x, x.new_full((channels, 1, 3, 3), 1 / 9), None, stride, 1, 1, channels)
    for axis, size in ((-2, x.shape[-2]), (-1, x.shape[-1])):
        windows = out.shape[axis]
        for i in {0, windows - 1}:
            real = min(i * stride + 1, size - 1) - max(i * stride - 1, 0) + 1  # pixels of window i inside the map
            if real < 3:
                out.narrow(axis, i, 1).mul_(3 / real)
    return out


class InPlaceReLU(nn.Module):
    """ReLU (or ReLU6) on a map only this layer's caller holds."""

    def __init__(self, upper: float | None = None):
        super().__init__()
        self.upper = upper

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.relu_() if self.upper is None else F.hardtanh_(x, 0.0, self.upper)


def fast_layers(layers: list[nn.Module], matmul: bool) -> nn.Sequential:
    """A plain layer stack with each conv -> BN pair folded, pools replaced and activations in place.

    Every activation here follows a layer that made a new map, so running it in place is safe."""
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        layer, after = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, nn.Conv2d):
            bn = after if isinstance(after, nn.BatchNorm2d) else None
            out.append(FoldedConv(layer, bn, matmul=matmul))
            i += 2 if bn is not None else 1
            continue
        if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            out.append(FastPool(layer))
        elif isinstance(layer, (nn.ReLU, nn.ReLU6)):
            out.append(InPlaceReLU(6.0 if isinstance(layer, nn.ReLU6) else None))
        else:
            raise TypeError(f"no fast form for layer {type(layer).__name__}")
        i += 1
    return nn.Sequential(*out)


# ---- branches ----


class FastBranch(nn.Module):
    """A branch's layers with its leading ReLU (if any) split off, so callers holding a private or
    already rectified map can skip the copy it would make."""

    def __init__(self, branch: Branch, matmul: bool):
        super().__init__()
        layers = list(branch.op)
        self.leading_relu = bool(layers) and isinstance(layers[0], nn.ReLU)
        self.body = fast_layers(layers[1:] if self.leading_relu else layers, matmul)

    def forward(self, x: torch.Tensor, private: bool = False) -> torch.Tensor:
        """``private``: no one else reads x, so its ReLU runs in place."""
        if self.leading_relu:
            x = x.relu_() if private else F.relu(x)
        return self.body(x)

    def rectified(self, x: torch.Tensor) -> torch.Tensor:
        """The branch on an input that already went through its leading ReLU."""
        return self.body(x)


class FastFactorizedReduce(nn.Module):
    """``FactorizedReduce`` with both convolutions folded into their halves of the BN (even sizes;
    at odd sizes the zero padding between convolution and BN does not fold)."""

    def __init__(self, branch: FactorizedReduce, matmul: bool):
        super().__init__()
        self.plain = (branch.conv_1, branch.conv_2, branch.bn)
        self.conv_1 = FoldedConv(branch.conv_1, branch.bn, matmul=matmul)
        self.conv_2 = FoldedConv(branch.conv_2, branch.bn, branch.conv_1.out_channels, matmul=matmul)

    def forward(self, x: torch.Tensor, private: bool = False) -> torch.Tensor:
        return self.rectified(x.relu_() if private else F.relu(x))

    def rectified(self, x: torch.Tensor) -> torch.Tensor:
        even, odd = even_odd_pixels(x)
        h, w = x.shape[-2:]
        if h % 2 == 0 and w % 2 == 0:
            return torch.cat([self.conv_1(even), self.conv_2(odd)], dim=1)
        conv_1, conv_2, bn = self.plain
        y = torch.cat([conv_1(even), pad_odd(conv_2(odd), x)], dim=1)
        return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def fast_branch(branch: Branch, matmul: bool) -> FastBranch | FastFactorizedReduce:
    return FastFactorizedReduce(branch, matmul) if isinstance(branch, FactorizedReduce) else FastBranch(branch, matmul)


# ---- DRNet ----


class StackedRouters(nn.Module):
    """Every cell's router at once, where they all read the same pooled stem: one matrix product per
    layer for all cells instead of two small ones per cell. Same logits as the routers one by one."""

    def __init__(self, routers: list[Router]):
        super().__init__()
        first = routers[0]
        self.num_routers, self.hidden = len(routers), first.fc1.out_features
        self.num_edges, self.num_branches = first.num_edges, first.num_branches
        with torch.no_grad():
            self.register_buffer("w1", torch.cat([r.fc1.weight for r in routers]), persistent=False)  # [L*hidden, in]
            self.register_buffer("b1", torch.cat([r.fc1.bias for r in routers]), persistent=False)
            w2 = torch.stack([r.fc2.weight.t() for r in routers])  # [L, hidden, E*K]
            self.register_buffer("w2", w2, persistent=False)
            b2 = torch.stack([r.fc2.bias for r in routers]).unsqueeze(1)  # [L, 1, E*K]
            self.register_buffer("b2", b2, persistent=False)
            budgeted = first.budget_scale is not None
            scales = torch.stack([r.budget_scale for r in routers]).unsqueeze(1) if budgeted else None  # [L, 1, E*K]
            self.register_buffer("budget_scale", scales, persistent=False)

    def forward(self, pooled: torch.Tensor, budget: float | None = None) -> torch.Tensor:
        """Logits [L, B, E, K] of the L routers from the maps they read, pooled once by ``pool_maps``."""
        b2 = self.b2
        if self.budget_scale is not None and budget is not None:
            b2 = b2 + self.budget_scale * budget_logit(budget)  # the same shift as Router.logits, folded in the bias
        h = torch.addmm(self.b1, pooled, self.w1.t()).relu_()  # [B, L * hidden]
        logits = torch.baddbmm(b2, h.view(-1, self.num_routers, self.hidden).transpose(0, 1), self.w2)
        return logits.view(self.num_routers, -1, self.num_edges, self.num_branches)


class FastCell(nn.Module):
    """A cell's preprocessing and branches on the fast path; routing and sparse execution are the plain
    cell's (``drnets.cell.run_sparse``), handed these branches."""

    def __init__(self, cell: Cell):
        super().__init__()
        self.plain = (cell,)  # a tuple: not registered, so no second copy of its parameters
        self.preprocess0 = fast_branch(cell.preprocess0, matmul=True)
        self.preprocess1 = fast_branch(cell.preprocess1, matmul=True)
        self.branches = nn.ModuleList(nn.ModuleList(fast_branch(b, True) for b in edge) for edge in cell.branches)

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        policy: RoutingPolicy,
        context: torch.Tensor | None,
        routed: tuple[torch.Tensor, torch.Tensor] | None,
        forced_ran: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like ``Cell.forward`` on inputs already rectified; ``routed``: gate weights and run mask
        computed for every cell at once."""
        cell = self.plain[0]
        s0, s1 = self.preprocess0.rectified(s0), self.preprocess1.rectified(s1)
        if routed is None:
            if context is not None:
                logits = cell.router.logits(context, policy.budget)
            else:
                logits = cell.router(s0, s1, budget=policy.budget)
            gates = gate_values(logits, cell.gate, policy.temperature, training=False)
            routed = gates, select(gates, policy)
        gates, ran = routed
        if forced_ran is not None:
            ran = forced_ran.to(ran.device).expand_as(ran)
        scale = branch_scale(gates, ran, cell.gate)
        return run_sparse(cell, [s0, s1], scale, ran, self._call), gates, ran

    def _call(self, edge: int, k: int, x: torch.Tensor, private: bool) -> torch.Tensor:
        return self.branches[edge][k](x, private)


class FastDRNet(nn.Module):
    """A DRNet (or dense supernet) on the fast path; see the module docstring."""

    def __init__(self, model: DRNet):
        super().__init__()
        self.plain = model
        self.config = model.config
        stem_conv, stem_bn = model.stem
        self.stem = FoldedConv(stem_conv, stem_bn, matmul=True)
        self.cells = nn.ModuleList(FastCell(cell) for cell in model.cells)
        routers = [cell.router for cell in model.cells]
        stacked = model.config.router_input == "stem" and all(isinstance(r, Router) for r in routers)
        self.routers = StackedRouters(routers) if stacked else None

    @property
    def default_policy(self) -> RoutingPolicy:
        return self.plain.default_policy

    def forward(
        self, x: torch.Tensor, policy: RoutingPolicy | None = None, forced_route: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, RoutingTrace]:
        """Same as ``DRNet.forward`` (sparse execution), without autograd."""
        logits, trace, _ = self.forward_with_features(x, policy, forced_route)
        return logits, trace

    @torch.inference_mode()
    def forward_with_features(
        self, x: torch.Tensor, policy: RoutingPolicy | None = None, forced_route: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, RoutingTrace, torch.Tensor]:
        """``forward``, plus the pooled features [B, D] the classifier reads (``drnets.ood``'s detector
        reads them too): one pass for the answer and its out-of-distribution score."""
        model = self.plain
        model.check_input(x, forced_route)
        policy = model.resolve_policy(policy)
        stem = self.stem(x)
        context = None
        if self.config.router_input == "stem" and not self.config.router_relu:
            context = pool_maps((stem,), self.config.router_grid)  # before the ReLU below, which runs in place
        s0 = s1 = stem.relu_()  # every reader of a cell input begins with a ReLU: rectify each state once
        if self.config.router_input == "stem" and self.config.router_relu:
            context = pool_maps((s1,), self.config.router_grid)
        routes = None
        if self.routers is not None:
            gates = gate_values(self.routers(context, policy.budget), self.config.gate, policy.temperature, False)
            routes = gates, select(gates, policy)
        gates, ran = [], []
        last = len(self.cells) - 1
        for i, cell in enumerate(self.cells):
            forced = forced_route[:, i] if forced_route is not None else None
            routed = (routes[0][i], routes[1][i]) if routes is not None else None
            out, w, r = cell(s0, s1, policy, context, routed, forced)
            s0, s1 = s1, (out.relu_() if i < last else out)
            gates.append(w)
            ran.append(r)
        pooled = model.global_pool(s1).flatten(1)
        logits = model.classifier(pooled)
        trace = model.trace(logits, torch.stack(gates, dim=1), torch.stack(ran, dim=1), *x.shape[-2:])
        return logits, trace, pooled


# ---- MobileNetV2 ----


class FastInvertedResidual(nn.Module):
    def __init__(self, block: InvertedResidual):
        super().__init__()
        self.conv = fast_layers(list(block.conv), matmul=False)
        self.use_residual = block.use_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class FastMobileNetV2(nn.Module):
    """MobileNetV2 with every conv -> BN pair folded and its ReLU6s in place."""

    def __init__(self, model: MobileNetV2):
        super().__init__()
        self.plain = model
        self.config = model.config
        self.features = nn.Sequential(
            *(
                FastInvertedResidual(b) if isinstance(b, InvertedResidual) else fast_layers(list(b), matmul=False)
                for b in model.features
            )
        )

    def forward(
        self, x: torch.Tensor, policy: RoutingPolicy | None = None, forced_route: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, RoutingTrace]:
        """Same as ``MobileNetV2.forward``, without autograd."""
        logits, trace, _ = self.forward_with_features(x)
        return logits, trace

    @torch.inference_mode()
    def forward_with_features(
        self, x: torch.Tensor, policy: RoutingPolicy | None = None, forced_route: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, RoutingTrace, torch.Tensor]:
        """``forward``, plus the last block's pooled output [B, D] (before the final 1x1 expansion), which
        ``drnets.ood``'s detector reads: one pass for the answer and its out-of-distribution score."""
        model = self.plain
        model.check_input(x)
        block = self.features[:-1](x)  # the last layer's convolution makes a new map: block stays as it is
        logits = model.forward_head(self.features[-1](block))
        return logits, model.trace(logits, *x.shape[-2:]), model.global_pool(block).flatten(1)


# ---- the process allocator ----

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
    a 2-core CPU. PyTorch's CPU tuning guide swaps in jemalloc or tcmalloc for the same reason;
    two ``mallopt`` calls do it in-process. The cost is that up to 256 MiB of freed memory stays
    with the process. Returns whether it applied (glibc only; elsewhere nothing changes).
    """
    if not has_glibc():
        return False
    libc = ctypes.CDLL(None)
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, KEPT_MEMORY_BYTES) and libc.mallopt(_M_TRIM_THRESHOLD, KEPT_MEMORY_BYTES)
    )
