"""Candidate branches: shapes, and analytic cost checked against FlopCounterMode and a hand count."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from drnets.cost import measure_flops
from drnets.ops import (
    PRIMITIVES,
    FactorizedReduce,
    ReLUConvBN,
    create_branch,
)

C = 4  # channels of the test branches


def hand_params(name: str, stride: int, c: int = C) -> int:
    """Parameters written out from the layer lists (conv weights, BN weight + bias), independent of the code."""
    bn = 2 * c
    kernel = {"3x3": 3, "5x5": 5}.get(name[-3:], 0)
    if name.startswith("sep_conv"):  # two (depthwise k x k, pointwise 1x1, BN) stacks
        return 2 * (c * kernel * kernel + c * c + bn)
    if name.startswith("dil_conv"):  # one (depthwise k x k, pointwise 1x1, BN) stack
        return c * kernel * kernel + c * c + bn
    if name == "skip_connect" and stride == 2:  # FactorizedReduce: two 1x1 convs to c/2 each + BN
        return c * (c // 2) * 2 + bn
    return 0  # pools, identity


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("size", [(8, 8), (9, 10)])
def test_branch_shape_flops_and_params(name: str, stride: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    branch = create_branch(name, C, stride).eval()
    h, w = size
    out = branch(torch.randn(2, C, h, w))
    # Every branch of an edge must land on the same grid, or the node sum would fail.
    assert out.shape == (2, C, (h - 1) // stride + 1, (w - 1) // stride + 1)
    assert branch.flops(h, w) == measure_flops(branch, torch.randn(1, C, h, w))
    assert branch.params() == hand_params(name, stride) == sum(p.numel() for p in branch.parameters())


def test_conv_branches_cost_something_and_pools_cost_nothing() -> None:
    costs = {name: create_branch(name, C, 1).flops(8, 8) for name in PRIMITIVES}
    assert costs["max_pool_3x3"] == costs["avg_pool_3x3"] == costs["skip_connect"] == 0
    assert costs["sep_conv_5x5"] > costs["sep_conv_3x3"] > costs["dil_conv_3x3"] > 0
    assert costs["dil_conv_5x5"] > costs["dil_conv_3x3"]


@pytest.mark.parametrize("size", [(14, 14), (7, 7), (15, 8)])
@pytest.mark.parametrize(
    "module, stride",
    [(ReLUConvBN(6, C, 1, 1, 0), 1), (FactorizedReduce(6, C), 2), (FactorizedReduce(5, 5), 2)],
    ids=["relu_conv_bn", "factorized_reduce", "factorized_reduce_odd_channels"],
)
def test_preprocessing_shape_and_flops(module: torch.nn.Module, stride: int, size: tuple[int, int]) -> None:
    """Cell preprocessing is paid by every sample; odd sizes check FactorizedReduce's shifted path."""
    h, w = size
    x = torch.randn(1, _in_channels(module), h, w)
    out = module.eval()(x)
    assert out.shape[-2:] == ((h - 1) // stride + 1, (w - 1) // stride + 1)
    assert module.flops(h, w) == measure_flops(module, x)


def _in_channels(module: torch.nn.Module) -> int:
    return next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d)).in_channels


def test_unknown_branch_name_is_refused_with_the_known_list() -> None:
    with pytest.raises(ValueError, match=r"unknown branch 'conv_7x7'.*sep_conv_3x3"):
        create_branch("conv_7x7", C, 1)


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (28, 28), (5, 4)])
def test_factorized_reduce_equals_darts_shifted_stride_2_conv(size: tuple[int, int]) -> None:
    """Slicing the even and odd pixels then stride-1 convs is DARTS's two stride-2 convs, on the map
    and on the shifted, zero-padded map."""
    torch.manual_seed(0)
    fr = FactorizedReduce(6, 10).eval()
    x = torch.randn(3, 6, *size)
    h, w = size
    shifted = torch.nn.functional.pad(x.relu()[:, :, 1:, 1:], (0, w % 2, 0, h % 2))
    darts = torch.cat(
        [
            torch.nn.functional.conv2d(x.relu(), fr.conv_1.weight, stride=2),
            torch.nn.functional.conv2d(shifted, fr.conv_2.weight, stride=2),
        ],
        dim=1,
    )
    with torch.no_grad():
        assert torch.allclose(fr(x), fr.bn(darts), atol=1e-6)


def test_factorized_reduce_trains_on_narrow_channels_last_maps_with_two_threads() -> None:
    """PyTorch 2.13's CPU gradient of a stride-2 1x1 conv on an odd batch of narrow channels_last
    maps corrupts the heap with 2+ threads; FactorizedReduce must not run one (run in a child
    process, where a crash is a failed assertion rather than a dead test run)."""
    code = (
        "import torch; from drnets.ops import FactorizedReduce\n"
        "torch.set_num_threads(2); torch.manual_seed(0)\n"
        "for c_in in (4, 8, 12):\n"
        "    fr = FactorizedReduce(c_in, c_in).train()\n"
        "    for batch in (13, 15, 7):\n"
        "        for _ in range(5):\n"
        "            x = torch.randn(batch, c_in, 28, 28).contiguous(memory_format=torch.channels_last)\n"
        "            fr(x.requires_grad_()).square().sum().backward()\n"
        "print('trained')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "trained" in done.stdout, done.stderr[-2000:]
