"""Routing statistics on hand-made ``ran`` tensors whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch

from drnets.routing_stats import (
    EDGE_VARY_MIN_SHARE,
    edge_mode_shares,
    entropy_bits,
    flops_spread,
    mutual_information_bits,
    route_ids,
    routing_stats,
)

CELLS, EDGES, K = 2, 3, 4


def routes(*patterns: torch.Tensor, repeat: int = 1) -> torch.Tensor:
    """Stack per-image [L, E, K] patterns into [N, L, E, K], each one ``repeat`` times in a row."""
    return torch.stack([p for p in patterns for _ in range(repeat)])


def base() -> torch.Tensor:
    ran = torch.zeros(CELLS, EDGES, K, dtype=torch.bool)
    ran[..., 0] = True  # every edge runs branch 0
    return ran


def with_branch(cell: int, edge: int, branch: int) -> torch.Tensor:
    ran = base()
    ran[cell, edge, branch] = True
    return ran


def test_two_routes_split_by_class_carry_one_bit() -> None:
    ran = routes(base(), with_branch(1, 2, 3), repeat=50)
    labels = torch.tensor([0] * 50 + [1] * 50)
    stats = routing_stats(ran, torch.full((100,), 10.0), labels)
    assert stats["distinct_routes"] == 2 and stats["top_route_share"] == 0.5
    assert stats["route_class_information_bits"] == pytest.approx(1.0)
    assert stats["class_entropy_bits"] == pytest.approx(1.0)
    assert stats["route_class_information_share"] == pytest.approx(1.0)
    assert (stats["edges"], stats["edges_varying"]) == (CELLS * EDGES, 1)
    assert stats["edges_varying_share"] == pytest.approx(1 / 6)


def test_routes_that_ignore_the_class_carry_no_information() -> None:
    # Each class splits 50/50 over the two routes: knowing the route says nothing about the class.
    ran = routes(base(), with_branch(0, 0, 1), base(), with_branch(0, 0, 1), repeat=25)
    labels = torch.tensor([0] * 50 + [1] * 50)
    assert mutual_information_bits(route_ids(ran)[0], labels) == pytest.approx(0.0, abs=1e-12)


def test_one_route_per_class_gives_the_class_entropy() -> None:
    # Four classes, four routes, uneven class sizes: I(route; class) = H(class).
    patterns = [base(), with_branch(0, 1, 2), with_branch(1, 0, 1), with_branch(1, 1, 3)]
    sizes = [40, 30, 20, 10]
    ran = torch.stack([p for p, n in zip(patterns, sizes, strict=True) for _ in range(n)])
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    expected = -sum(n / 100 * math.log2(n / 100) for n in sizes)
    stats = routing_stats(ran, torch.ones(100), labels)
    assert stats["distinct_routes"] == 4 and stats["top_route_share"] == 0.4
    assert stats["route_class_information_bits"] == pytest.approx(expected)
    assert stats["route_class_information_share"] == pytest.approx(1.0)
    assert stats["edges_varying"] == 3  # three edges leave branch 0 alone, each for >= 10% of images


def test_route_ids_number_identical_patterns_alike() -> None:
    ran = routes(base(), with_branch(0, 0, 1), base(), base())
    ids, counts = route_ids(ran)
    assert ids[0] == ids[2] == ids[3] != ids[1]
    assert sorted(counts.tolist()) == [1, 3]


def test_an_edge_varies_only_from_five_percent_of_images() -> None:
    # Edge (0, 0) leaves its usual set for 4 of 100 images, edge (1, 1) for 5 of 100.
    ran = routes(base(), repeat=100).clone()
    ran[:4, 0, 0, 2] = True
    ran[10:15, 1, 1, 0] = False
    shares = edge_mode_shares(ran)
    assert shares.shape == (CELLS, EDGES)
    assert shares[0, 0] == pytest.approx(0.96) and shares[1, 1] == pytest.approx(0.95)
    assert (shares[0, 1:] == 1).all() and shares[1, 0] == 1 and shares[1, 2] == 1
    stats = routing_stats(ran, torch.ones(100), torch.zeros(100, dtype=torch.long))
    assert EDGE_VARY_MIN_SHARE == 0.05 and stats["edges_varying"] == 1
    assert stats["distinct_routes"] == 3
    # A single class: no class entropy, so no normalised information.
    assert stats["class_entropy_bits"] == 0 and stats["route_class_information_share"] is None


def test_flops_spread_uses_linear_percentiles() -> None:
    flops = torch.arange(1, 101, dtype=torch.float64)  # 1 .. 100
    spread = flops_spread(flops)
    assert spread["flops_p10"] == pytest.approx(10.9) and spread["flops_p50"] == pytest.approx(50.5)
    assert spread["flops_p90"] == pytest.approx(90.1)
    assert spread["flops_p90_p10"] == pytest.approx(90.1 / 10.9)
    assert flops_spread(torch.zeros(5))["flops_p90_p10"] is None


def test_entropy_of_uniform_counts() -> None:
    assert entropy_bits(torch.tensor([5, 5, 5, 5, 0])) == pytest.approx(2.0)
    assert entropy_bits(torch.tensor([7])) == 0


def test_no_images_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        routing_stats(torch.zeros(0, CELLS, EDGES, K, dtype=torch.bool), torch.zeros(0), torch.zeros(0))
