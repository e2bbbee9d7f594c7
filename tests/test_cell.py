"""The dynamic cell: sparse execution equals the masked reference, and skipped branches are never called."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from drnets.cell import Cell, cell_edges
from drnets.ops import PRIMITIVES
from drnets.router import RoutingPolicy

POLICIES = [RoutingPolicy(0.15), RoutingPolicy(0.3), RoutingPolicy(0.05, top_k=2)]


def run(model, x, execution="sparse", policy=None, **kwargs):
    with torch.no_grad():
        return model(x, policy, execution=execution, **kwargs)


def assert_mixed(ran: torch.Tensor) -> None:
    """The test batch is only meaningful if samples disagree about what to run."""
    assert (ran != ran[:1]).any(), "all samples took the same route; the test would prove nothing"


@pytest.mark.parametrize("policy", POLICIES, ids=str)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_sparse_execution_equals_masked_reference(tiny_model, mixed_batch, policy, shape) -> None:
    model = tiny_model(in_channels=shape[0])
    x = mixed_batch(shape)
    logits, trace = run(model, x, "sparse", policy)
    ref_logits, ref_trace = run(model, x, "masked", policy)
    assert_mixed(trace.ran)
    assert torch.equal(trace.ran, ref_trace.ran)
    torch.testing.assert_close(trace.gates, ref_trace.gates, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    with torch.no_grad():
        features = model.forward_features(x, policy)[0]
        masked = model.forward_features(x, policy, execution="masked")[0]
    torch.testing.assert_close(features, masked, atol=1e-5, rtol=0)


@contextmanager
def branch_inputs(model) -> Iterator[dict[tuple[int, int, int], list[torch.Tensor]]]:
    """Record the input of every call of every branch, keyed by (cell, edge, branch)."""
    calls: dict[tuple[int, int, int], list[torch.Tensor]] = {}
    handles = []
    for layer, cell in enumerate(model.cells):
        for e, edge in enumerate(cell.branches):
            for k, branch in enumerate(edge):
                calls[(layer, e, k)] = []

                def record(module, args, key=(layer, e, k)) -> None:
                    calls[key].append(args[0].detach().clone())

                handles.append(branch.register_forward_pre_hook(record))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def test_skipped_branch_is_never_called_at_batch_one(tiny_model, mixed_batch) -> None:
    model = tiny_model()
    with branch_inputs(model) as calls:
        _, trace = run(model, mixed_batch()[:1], policy=RoutingPolicy(0.15))
    ran = trace.ran[0]
    assert ran.any() and not ran.all()
    for (layer, e, k), inputs in calls.items():
        assert len(inputs) == int(ran[layer, e, k]), (
            f"cell {layer} edge {e} {PRIMITIVES[k]}: called {len(inputs)} times"
        )


def test_each_branch_runs_once_on_exactly_the_samples_that_selected_it(tiny_model, mixed_batch) -> None:
    model, policy = tiny_model(), RoutingPolicy(0.15)
    x = mixed_batch()
    with branch_inputs(model) as reference:  # masked: every branch sees the whole batch
        run(model, x, "masked", policy)
    with branch_inputs(model) as calls:
        _, trace = run(model, x, "sparse", policy)
    assert_mixed(trace.ran)
    users = trace.ran.sum(0)  # [L, E, K] samples that selected each branch
    assert (users == 0).any() and ((users > 0) & (users < len(x))).any() and (users == len(x)).any()
    for key, inputs in calls.items():
        selected = trace.ran[(slice(None), *key)].nonzero().squeeze(1)
        if len(selected) == 0:
            assert inputs == [], f"branch {key} ran although no sample selected it"
            continue
        assert len(inputs) == 1, f"branch {key} called {len(inputs)} times"
        rows, (whole_batch,) = inputs[0], reference[key]
        assert rows.shape[0] == len(selected)
        # The rows it saw are exactly the selected samples' inputs (as the reference computed them).
        torch.testing.assert_close(rows, whole_batch[selected], atol=1e-5, rtol=0)


def test_forced_route_is_obeyed(tiny_model, mixed_batch) -> None:
    model = tiny_model()
    x = mixed_batch(n=3)
    _, natural = run(model, x)
    generator = torch.Generator().manual_seed(1)
    route = torch.rand(natural.ran.shape, generator=generator) < 0.3  # per sample
    assert not torch.equal(route, natural.ran)
    with branch_inputs(model) as calls:
        logits, trace = run(model, x, forced_route=route)
    assert torch.equal(trace.ran, route)
    # The router still reports its weights; later cells see other inputs, so only cell 0's must match.
    torch.testing.assert_close(trace.gates[:, 0], natural.gates[:, 0])
    for key, inputs in calls.items():
        assert sum(len(rows) for rows in inputs) == int(route[(slice(None), *key)].sum())
    ref_logits, _ = run(model, x, "masked", forced_route=route)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    flops = model.cost_table(28, 28).route_cost(route)[2]
    assert torch.equal(trace.flops, flops)


def test_one_forced_route_applies_to_the_whole_batch(tiny_model, mixed_batch) -> None:
    model = tiny_model()
    x = mixed_batch(n=4)
    _, own = run(model, x[:1])
    route = own.ran  # sample 0's own route, [1, L, E, K]
    _, trace = run(model, x, forced_route=route)
    assert torch.equal(trace.ran, route.expand_as(trace.ran))
    assert torch.all(trace.flops == trace.flops[0])


@pytest.mark.parametrize(
    "route",
    [
        torch.ones(1, 3, 5, 6, dtype=torch.bool),  # one branch short
        torch.ones(1, 2, 5, 7, dtype=torch.bool),  # one cell short
        torch.ones(2, 3, 5, 7, dtype=torch.bool),  # batch 2 for a batch of 4
        torch.ones(1, 3, 5, 7),  # float, not bool
    ],
)
def test_malformed_forced_route_is_refused(tiny_model, mixed_batch, route) -> None:
    with pytest.raises(ValueError, match="forced_route must be a bool tensor"):
        run(tiny_model(), mixed_batch(n=4), forced_route=route)


def test_bypassed_edges_contribute_nothing() -> None:
    """All branches off: the cell still returns a well-formed (zero) map instead of failing."""
    torch.manual_seed(0)
    cell = Cell(8, 8, 4, reduction=True, reduction_prev=False, num_nodes=2, branches=PRIMITIVES, router_hidden=8).eval()
    s = torch.randn(2, 8, 9, 9)
    off = torch.zeros(1, len(cell.edges), len(PRIMITIVES), dtype=torch.bool)
    with torch.no_grad():
        out, _gates, ran = cell(s, s, RoutingPolicy(0.0), forced_ran=off)
    assert out.shape == (2, 8, 5, 5) and not ran.any()
    assert torch.equal(out, torch.zeros_like(out))


def test_cell_edges_enumerate_every_earlier_state() -> None:
    assert cell_edges(2) == [(0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    assert len(cell_edges(4)) == 14  # DARTS: 2 + 3 + 4 + 5
