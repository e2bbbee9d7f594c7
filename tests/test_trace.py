"""The routing trace: tidy frames mirror the tensors; select and concat keep samples intact."""

from __future__ import annotations

import pytest
import torch

from drnets.router import RoutingPolicy
from drnets.trace import RoutingTrace

TENSORS = ("logits", "gates", "ran", "cell_flops", "cell_params", "flops", "params")


@pytest.fixture(scope="module")
def trace(tiny_model, mixed_batch) -> RoutingTrace:
    model = tiny_model()
    with torch.no_grad():
        return model(mixed_batch(n=4), RoutingPolicy(0.15))[1]


def assert_same(a: RoutingTrace, b: RoutingTrace) -> None:
    for name in TENSORS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.dense_flops, a.dense_params, a.branch_names, a.edges, a.reduction) == (
        b.dense_flops, b.dense_params, b.branch_names, b.edges, b.reduction)  # fmt: skip


def test_samples_frame(trace: RoutingTrace) -> None:
    names = [f"class {i}" for i in range(10)]
    frame = trace.samples_frame(names, sample_ids=["a", "b", "c", "d"])
    assert len(frame) == 4
    assert {"sample", "pred", "probability", "flops", "params", "dense_flops", "flops_fraction", "pred_name"} <= set(
        frame
    )
    assert frame["sample"].tolist() == ["a", "b", "c", "d"]
    assert frame["pred"].tolist() == trace.logits.argmax(-1).tolist()
    assert frame["pred_name"].tolist() == [names[i] for i in trace.preds.tolist()]
    torch.testing.assert_close(torch.tensor(frame["probability"].values), trace.probs.max(-1).values.double())
    assert frame["flops"].tolist() == trace.flops.tolist()
    assert frame["flops_fraction"].tolist() == pytest.approx((trace.flops / trace.dense_flops).tolist())


def test_cells_frame(trace: RoutingTrace) -> None:
    frame = trace.cells_frame()
    b, cells = trace.cell_flops.shape
    assert len(frame) == b * cells
    assert {"sample", "cell", "reduction", "flops", "params", "branches_ran"} <= set(frame)
    for row in frame.itertuples():
        assert row.flops == trace.cell_flops[row.sample, row.cell]
        assert row.params == trace.cell_params[row.sample, row.cell]
        assert row.branches_ran == trace.ran[row.sample, row.cell].sum()
        assert row.reduction == trace.reduction[row.cell]
    # Cells add up to the sample's total once the stem and the head are added back.
    base = trace.flops - trace.cell_flops.sum(1)
    assert torch.all(base == base[0]) and 0 < base[0] < trace.flops.min()
    assert frame.groupby("sample")["flops"].sum().tolist() == (trace.flops - base).tolist()


def test_branches_frame(trace: RoutingTrace) -> None:
    frame = trace.branches_frame(sample_ids=["a", "b", "c", "d"])
    b, cells, edges, branches = trace.ran.shape
    assert len(frame) == b * cells * edges * branches
    assert {"sample", "cell", "edge", "src", "dst", "branch", "gate", "ran"} <= set(frame)
    ids = ["a", "b", "c", "d"]
    for row in frame.itertuples():
        s, k = ids.index(row.sample), trace.branch_names.index(row.branch)
        assert (row.src, row.dst) == trace.edges[row.edge]
        assert row.ran == trace.ran[s, row.cell, row.edge, k]
        assert row.gate == pytest.approx(float(trace.gates[s, row.cell, row.edge, k]), abs=1e-7)
    # Tidy means groupby works: gates of each (sample, cell, edge) sum to 1.
    sums = frame.groupby(["sample", "cell", "edge"])["gate"].sum()
    assert sums.to_numpy() == pytest.approx(1.0, abs=1e-5)


def test_select_and_concat_round_trip(trace: RoutingTrace) -> None:
    parts = [trace.select(slice(0, 1)), trace.select([1, 2]), trace.select(torch.tensor([3]))]
    assert [len(p) for p in parts] == [1, 2, 1]
    assert_same(RoutingTrace.concat(parts), trace)
    picked = trace.select([3, 0])
    assert torch.equal(picked.flops, trace.flops[[3, 0]]) and torch.equal(picked.ran[0], trace.ran[3])


def test_static_model_trace_has_empty_route_frames(tiny_model, mixed_batch) -> None:
    with torch.no_grad():
        _, trace = tiny_model("mobilenetv2")(mixed_batch(n=2))
    assert len(trace.samples_frame()) == 2
    assert trace.cells_frame().empty and trace.branches_frame().empty
    assert_same(RoutingTrace.concat([trace.select([0]), trace.select([1])]), trace)
