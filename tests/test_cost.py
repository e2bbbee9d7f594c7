"""Per-sample cost accounting: every sample pays exactly for its own route, and the formulas match FlopCounterMode."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from drnets.cost import measure_flops
from drnets.router import RoutingPolicy


def trace_of(model, x, policy: RoutingPolicy | None = None):
    with torch.no_grad():
        return model(x, policy)[1]


def test_threshold_zero_runs_every_branch_at_dense_cost(tiny_model, mixed_batch) -> None:
    model = tiny_model()
    trace = trace_of(model, mixed_batch(), RoutingPolicy(0.0))
    assert trace.ran.all()
    assert torch.all(trace.flops == trace.dense_flops) and torch.all(trace.params == trace.dense_params)


@pytest.fixture(scope="module")
def routed(tiny_model, mixed_batch):
    return tiny_model(), mixed_batch()


def cell_inputs(model, x) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (s0, s1) each cell received in one forward pass."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = [cell.register_forward_pre_hook(lambda m, args: seen.append(args[:2])) for cell in model.cells]
    try:
        trace_of(model, x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@settings(max_examples=15, deadline=None)
@given(thresholds=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4).map(sorted), seed=st.integers(0, 5))
def test_raising_the_threshold_never_raises_a_samples_cost(tiny_model, mixed_batch, thresholds, seed) -> None:
    """The default routers read the stem output, so no route depends on another cell's route:
    a higher threshold never switches a branch on, and never raises any sample's FLOPs."""
    model = tiny_model(seed=seed)
    assert model.config.router_input == "stem"
    x = mixed_batch(seed=seed)
    traces = [trace_of(model, x, RoutingPolicy(t)) for t in thresholds]
    for low, high in itertools.pairwise(traces):
        assert not torch.any(high.ran & ~low.ran)
        assert torch.all(high.flops <= low.flops)


@settings(max_examples=15, deadline=None)
@given(thresholds=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3).map(sorted))
def test_cell_routing_is_monotone_cell_by_cell(tiny_model, mixed_batch, thresholds) -> None:
    """With ``router_input="cell"`` the guarantee holds per cell, for the inputs it receives.

    Whole-network FLOPs are not monotone per sample then: a later cell's router sees the
    earlier cells' outputs, which change with the threshold, so it may pick another
    (possibly dearer) branch. The first cell's inputs never change, so it holds exactly there.
    """
    model, x = tiny_model(router_input="cell"), mixed_batch()
    table = model.cost_table(28, 28)
    inputs = cell_inputs(model, x)
    with torch.no_grad():
        for layer, (cell, (s0, s1)) in enumerate(zip(model.cells, inputs, strict=True)):
            s0, s1 = cell.preprocess0(s0), cell.preprocess1(s1)
            logits = cell.router(s0, s1)
            routes = [cell.route(logits, RoutingPolicy(t))[1] for t in thresholds]
            costs = [(route.long() * table.branch_flops[layer]).sum(dim=(1, 2)) for route in routes]
            for low, high, low_cost, high_cost in zip(routes, routes[1:], costs, costs[1:], strict=False):
                assert not torch.any(high & ~low), f"cell {layer}: a higher threshold switched a branch on"
                assert torch.all(high_cost <= low_cost)
    first_cell = [trace_of(model, x, RoutingPolicy(t)).ran[:, 0] for t in thresholds]
    for low, high in itertools.pairwise(first_cell):
        assert not torch.any(high & ~low)


def test_stem_routed_drnet_routes_differ_per_sample(tiny_model, mixed_batch) -> None:
    """Guard for the monotonicity property: the stem-routed model really gives samples different routes."""
    trace = trace_of(tiny_model(), mixed_batch(), RoutingPolicy(0.15))
    assert len({tuple(r.flatten().tolist()) for r in trace.ran}) > 1


def test_a_smaller_top_k_never_raises_a_samples_cost(routed) -> None:
    model, x = routed
    flops = [trace_of(model, x, RoutingPolicy(0.0, top_k=k)).flops for k in range(7, 0, -1)]
    for more, fewer in itertools.pairwise(flops):
        assert torch.all(fewer <= more)
    assert torch.all(flops[-1] < flops[0])


def test_each_sample_pays_exactly_its_own_route(routed) -> None:
    model, x = routed
    batch = trace_of(model, x, RoutingPolicy(0.15))
    # Two samples whose routes differ, and whose costs therefore differ.
    i, j = next((i, j) for i in range(len(x)) for j in range(i + 1, len(x)) if batch.flops[i] != batch.flops[j])
    pair = trace_of(model, x[[i, j]])
    assert not torch.equal(pair.ran[0], pair.ran[1])
    table = model.cost_table(28, 28)
    for row, sample in enumerate((i, j)):
        alone = trace_of(model, x[sample : sample + 1])
        assert torch.equal(alone.ran[0], pair.ran[row])
        # Independent sum over the cost table: stem + head, every cell's fixed part, and each branch that ran.
        used = pair.ran[row]
        by_hand = table.base_flops + int(table.cell_flops.sum()) + int(table.branch_flops[used].sum())
        params_by_hand = table.base_params + int(table.cell_params.sum()) + int(table.branch_params[used].sum())
        assert int(pair.flops[row]) == int(alone.flops[0]) == by_hand
        assert int(pair.params[row]) == int(alone.params[0]) == params_by_hand
        assert torch.equal(pair.cell_flops[row], alone.cell_flops[0])
        # And what really ran for that image alone, counted by PyTorch.
        assert measure_flops(model, x[sample : sample + 1]) == by_hand


CASES = [("drnet", t, i) for i, t in enumerate((0.0, 0.05, 0.15, 0.3, 1.0))] + [
    ("dense", None, 0),
    ("mobilenetv2", None, 0),
]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 27, 30)])
@pytest.mark.parametrize("name, threshold, index", CASES)
def test_accounting_matches_flop_counter(tiny_model, mixed_batch, name, threshold, index, shape) -> None:
    """Analytic per-image FLOPs vs what PyTorch counts on that single image (odd sizes included)."""
    model = tiny_model(name, in_channels=shape[0])
    policy = RoutingPolicy(threshold) if threshold is not None else None
    x = mixed_batch(shape)[index : index + 1]
    predicted = int(trace_of(model, x, policy).flops[0])
    measured = measure_flops(lambda images: model(images, policy), x)
    assert abs(predicted - measured) <= 0.01 * measured, f"{name} t={threshold}: {predicted} vs {measured}"


def test_skipped_branches_cost_no_compute(routed) -> None:
    """The masked reference multiplies skipped branches by zero and so pays for them; sparse execution does not."""
    model, x = routed
    single = x[:1]
    policy = RoutingPolicy(0.3)
    sparse = measure_flops(lambda images: model(images, policy), single)
    masked = measure_flops(lambda images: model(images, policy, execution="masked"), single)
    assert masked == trace_of(model, single, policy).dense_flops
    assert sparse == int(trace_of(model, single, policy).flops[0]) < 0.6 * masked


@pytest.mark.parametrize("name", ["drnet", "dense", "mobilenetv2"])
def test_dense_params_count_every_parameter(tiny_model, name) -> None:
    model = tiny_model(name)
    assert model.cost_table(28, 28).dense_params == sum(p.numel() for p in model.parameters())


def test_expected_cost_is_the_gate_weighted_branch_flops(routed) -> None:
    model, x = routed
    trace = trace_of(model, x, RoutingPolicy(0.15))
    table = model.cost_table(28, 28)
    hard = table.expected_flops_fraction(trace.ran.float())
    branch_flops = trace.flops - table.base_flops - int(table.cell_flops.sum())
    torch.testing.assert_close(hard, branch_flops.float() / int(table.branch_flops.sum()))
    gates = trace.gates.clone().requires_grad_(True)
    soft = table.expected_flops_fraction(gates)
    soft.sum().backward()  # the training loss needs this gradient to reach the router
    assert torch.all((soft > 0) & (soft < 1)) and gates.grad.abs().sum() > 0


def test_pool_price_charges_each_pooling_branch_like_a_depthwise_conv(routed) -> None:
    """Price p adds p x 18 x (values of the pool's output map) per unit of a pooling branch's gate, nothing else."""
    from drnets.ops import Pool

    model, x = routed
    table = model.cost_table(28, 28)
    gates = trace_of(model, x, RoutingPolicy(0.15)).gates
    extra = torch.zeros(table.branch_flops.shape)
    h = w = 28
    for layer, cell in enumerate(model.cells):
        if cell.reduction:
            h, w = (h + 1) // 2, (w + 1) // 2
        for e, edge in enumerate(cell.branches):
            for k, branch in enumerate(edge):
                if isinstance(branch, Pool):
                    extra[layer, e, k] = 18 * cell.channels * h * w
    assert extra.sum() > 0
    priced = table.expected_flops_fraction(gates, pool_price=2.5)
    expected = table.expected_flops_fraction(gates) + 2.5 * (gates * extra).sum(dim=(1, 2, 3)) / int(
        table.branch_flops.sum()
    )
    torch.testing.assert_close(priced, expected)


def test_shipped_drnet_spends_more_on_average_at_a_higher_budget() -> None:
    """The budget on the trained model people use, over 1,000 real test images: its routers read their
    own cell's inputs, so one image may cost more at a lower budget (README, Known limits), but the
    mean follows the budget, and the sweep spans several times its cheapest cost."""
    from drnets.checkpoint import load_checkpoint
    from drnets.data import load_dataset, normalization, to_input

    loaded = load_checkpoint(Path(__file__).resolve().parents[1] / "assets" / "models" / "drnet")
    assert loaded.model.config.budgeted
    data = load_dataset("fashion-mnist", "test").subset(1000)
    x = to_input(data.images, *normalization("fashion-mnist", 1))
    threshold = loaded.model.default_policy.threshold
    means = [float(trace_of(loaded.model, x, RoutingPolicy(threshold, budget=c)).flops.float().mean())
             for c in (0.03, 0.1, 0.3, 0.6)]  # fmt: skip
    assert means == sorted(means) and means[-1] > 2 * means[0], means
