"""RouterNet, recalibration and the selection rules."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from drnets.router import Router, RoutingPolicy, StaticRouter, recalibrate, select

FAST = settings(max_examples=40, deadline=None)


def random_logits(seed: int, batch: int, edges: int, branches: int, scale: float) -> torch.Tensor:
    return torch.randn(batch, edges, branches, generator=torch.Generator().manual_seed(seed)) * scale


logit_args = {
    "seed": st.integers(0, 2**31 - 1),
    "batch": st.integers(1, 5),
    "edges": st.integers(1, 6),
    "branches": st.integers(1, 8),
    "scale": st.floats(0.01, 30.0),
}


@FAST
@given(**logit_args, temperature=st.floats(0.05, 5.0), training=st.booleans())
def test_gates_are_a_distribution_over_each_edges_branches(seed, batch, edges, branches, scale, temperature, training):
    gates = recalibrate(random_logits(seed, batch, edges, branches, scale), temperature, training)
    assert gates.shape == (batch, edges, branches)
    assert torch.all(gates >= 0) and torch.all(gates <= 1)
    torch.testing.assert_close(gates.sum(dim=-1), torch.ones(batch, edges), atol=1e-5, rtol=0)


def test_inference_gates_are_deterministic_softmax_and_training_gates_are_sampled() -> None:
    logits = random_logits(0, 4, 5, 7, 1.0)
    torch.testing.assert_close(recalibrate(logits, 0.5, training=False), logits.softmax(-1))
    torch.testing.assert_close(recalibrate(logits, 0.5, training=False), recalibrate(logits, 0.5, training=False))
    torch.manual_seed(0)
    first, second = recalibrate(logits, 1.0, training=True), recalibrate(logits, 1.0, training=True)
    assert not torch.allclose(first, second), "Gumbel noise should make two training draws differ"


@FAST
@given(**logit_args, k=st.integers(1, 9), threshold=st.floats(0.0, 1.0))
def test_top_k_keeps_at_most_k_of_the_heaviest_branches(seed, batch, edges, branches, scale, k, threshold):
    weights = recalibrate(random_logits(seed, batch, edges, branches, scale), 1.0, training=False)
    keep = select(weights, RoutingPolicy(threshold, top_k=k))
    assert torch.all(keep.sum(-1) <= k)
    assert torch.all(weights[keep] >= threshold)
    # Every dropped branch is at most as heavy as every kept one: the k kept are the heaviest above t.
    heaviest_dropped = torch.where(keep, torch.zeros_like(weights), weights).amax(-1)
    lightest_kept = torch.where(keep, weights, torch.ones_like(weights)).amin(-1)
    has_kept = keep.any(-1)
    assert torch.all(heaviest_dropped[has_kept] <= lightest_kept[has_kept])
    # With no threshold, exactly min(k, K) survive.
    assert torch.all(select(weights, RoutingPolicy(0.0, top_k=k)).sum(-1) == min(k, branches))


@FAST
@given(**logit_args, thresholds=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2).map(sorted))
def test_a_higher_threshold_keeps_a_subset(seed, batch, edges, branches, scale, thresholds):
    weights = recalibrate(random_logits(seed, batch, edges, branches, scale), 1.0, training=False)
    low, high = (select(weights, RoutingPolicy(t)) for t in thresholds)
    assert not torch.any(high & ~low)
    assert torch.all(select(weights, RoutingPolicy(0.0)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threshold": -0.01}, "threshold"),
        ({"threshold": 1.01}, "threshold"),
        ({"threshold": math.nan}, "threshold"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": -2}, "top_k"),
    ],
)
def test_out_of_range_policy_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RoutingPolicy(**kwargs)


def test_policy_bounds_are_accepted() -> None:
    assert RoutingPolicy(0.0).threshold == 0.0
    assert RoutingPolicy(1.0, top_k=1).top_k == 1


@pytest.mark.parametrize("grid", [1, 2, 4])
def test_router_shape_and_flops_match_flop_counter(grid: int) -> None:
    router = Router(in_channels=2 * 6, hidden=10, num_edges=5, num_branches=7, grid=grid)
    s0, s1 = torch.randn(3, 6, 9, 9), torch.randn(3, 6, 9, 9)
    assert router(s0, s1).shape == (3, 5, 7)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        router(s0[:1], s1[:1])
    assert router.flops() == counter.get_total_flops()


def test_router_depends_on_the_input_and_the_static_router_does_not() -> None:
    torch.manual_seed(0)
    s0, s1 = torch.randn(2, 6, 9, 9), torch.randn(2, 6, 9, 9) * torch.tensor([1.0, 5.0]).view(2, 1, 1, 1)
    logits = Router(12, 10, 5, 7)(s0, s1)
    assert not torch.allclose(logits[0], logits[1])
    static = StaticRouter(5, 7)
    with torch.no_grad():
        static.alpha.normal_()
    out = static(s0, s1)
    assert out.shape == (2, 5, 7) and torch.equal(out[0], out[1])
    assert static.flops() == 0


def test_grid_router_sees_where_things_are() -> None:
    """Two maps with the same global average but mirrored layouts: only a grid router tells them apart."""
    torch.manual_seed(0)
    left = torch.zeros(1, 3, 8, 8)
    left[..., :4] = 1.0
    right = left.flip(-1)
    flat = Router(3, 10, 5, 7, grid=1)
    assert torch.allclose(flat(left), flat(right))
    gridded = Router(3, 10, 5, 7, grid=2)
    assert not torch.allclose(gridded(left), gridded(right))


def test_relu_router_sees_texture_that_averages_out() -> None:
    """A flat map and a +-1 checkerboard both average to 0: only a router that rectifies first tells them apart."""
    torch.manual_seed(0)
    flat = torch.zeros(1, 3, 8, 8)
    checker = (
        (torch.arange(8)[:, None] + torch.arange(8)[None, :]).remainder(2).float().mul(2).sub(1).expand(1, 3, 8, 8)
    )
    plain = Router(3, 10, 5, 7, grid=2)
    assert torch.allclose(plain(flat), plain(checker))
    rectifying = Router(3, 10, 5, 7, grid=2, relu=True)
    assert not torch.allclose(rectifying(flat), rectifying(checker))
