"""The network diagram: every cell node, every edge and every branch of a real route is drawn, and each
highlight brings its part forward; the teaching page that steps through it runs.

The route comes from a real DRNet (random init, router weights spread so routes differ) on a real
Fashion-MNIST test image, at a threshold that runs some branches and skips the others.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import appkit
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.figures import common, network
from drnets.data import load_dataset, normalization, to_input
from drnets.model import create_model
from drnets.ops import PRIMITIVES
from drnets.router import RoutingPolicy

THRESHOLD = 0.15  # spread random-init gates: this runs some branches of most edges and skips others
NUM_NODES = 2
STATES = NUM_NODES + 3  # in0, in1, n0, n1, out
app_models = appkit.app_models  # session fixture: the shipped models or stand-ins


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = create_model("drnet", channels=8, num_nodes=NUM_NODES).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for cell in model.cells:
            for p in cell.router.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def branches(model) -> pd.DataFrame:
    data = load_dataset("fashion-mnist", "test").subset(1)
    x = to_input(data.images, *normalization("fashion-mnist", 1))
    with torch.no_grad():
        _, trace = model(x, RoutingPolicy(THRESHOLD, None))
    frame = trace.branches_frame()
    assert 0 < frame["ran"].sum() < len(frame), "the route must run some branches and skip others"
    return frame


def arcs(fig: go.Figure) -> list:
    """The branch traces: one per (branch, ran[, width]), meta {"branch", "ran"}."""
    return [t for t in fig.data if isinstance(t.meta, dict) and "branch" in t.meta]


def trace(fig: go.Figure, name: str):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, f"{len(found)} traces named {name!r}: {[t.name for t in fig.data]}"
    return found[0]


def drawn(fig: go.Figure) -> dict[tuple[int, int, str], object]:
    """(cell, edge, branch) -> the trace its arc is in; each arc must be drawn with all its points."""
    where, points = {}, Counter()
    for t in arcs(fig):
        for cell, edge in (p for p in t.customdata if p[0] is not None):
            key = (int(cell), int(edge), t.meta["branch"])
            points[key] += 1
            where[key] = t
    assert set(points.values()) == {network.ARC_POINTS}, "an arc drawn twice or cut short"
    return where


def test_one_node_marker_per_cell_node(model, branches):
    nodes = trace(network.network_diagram(branches, THRESHOLD), "nodes")
    assert len(nodes.x) == len(model.cells) * STATES
    assert list(nodes.text) == ["in0", "in1", "n0", "n1", "out"] * len(model.cells)
    assert len(set(zip(nodes.x, nodes.y, strict=True))) == len(nodes.x), "two nodes drawn on one spot"


def test_every_branch_of_every_edge_is_drawn_between_its_nodes(model, branches):
    fig = network.network_diagram(branches, THRESHOLD)
    where = drawn(fig)
    expected = {(int(r.cell), int(r.edge), r.branch) for r in branches.itertuples()}
    assert set(where) == expected and len(expected) == len(model.cells) * len(model.cells[0].edges) * 7
    nodes = trace(fig, "nodes")
    spot = {(i // STATES, i % STATES): (x, y) for i, (x, y) in enumerate(zip(nodes.x, nodes.y, strict=True))}
    for t in arcs(fig):  # every arc starts on its edge's source node and ends on its destination node
        starts = [
            i for i, p in enumerate(t.customdata) if p[0] is not None and (i == 0 or t.customdata[i - 1][0] is None)
        ]
        for i in starts:
            cell, edge = (int(v) for v in t.customdata[i])
            src, dst = model.cells[cell].edges[edge]
            end = i + network.ARC_POINTS - 1
            assert (t.x[i], t.y[i]) == pytest.approx(spot[(cell, src)])
            assert (t.x[end], t.y[end]) == pytest.approx(spot[(cell, dst)])


def test_ran_branches_are_opaque_and_skipped_ones_faded(branches):
    where = drawn(network.network_diagram(branches, THRESHOLD))
    for r in branches.itertuples():
        t = where[(int(r.cell), int(r.edge), r.branch)]
        assert t.meta["ran"] == bool(r.ran)
        assert t.line.color == common.branch_color(r.branch)
        if r.ran:
            assert t.opacity == 1.0 and t.line.width >= 2
        else:
            assert t.opacity <= 0.2 and t.line.width < 2
    ran_on_top = [t.meta["ran"] for t in arcs(network.network_diagram(branches, THRESHOLD))]
    assert ran_on_top == sorted(ran_on_top), "skipped arcs are drawn first, so no faded arc covers one that ran"


def test_hover_names_each_branch_its_weight_and_whether_it_ran(branches):
    details = trace(network.network_diagram(branches, THRESHOLD), "branch details")
    assert len(details.hovertext) == len(branches)
    for text, r in zip(details.hovertext, branches.itertuples(), strict=True):
        assert common.branch_label(r.branch) in text and f"{r.gate:.3f}" in text
        assert ("ran" in text) == bool(r.ran) and ("skipped" in text) != bool(r.ran)


def test_labels_stay_clear_of_the_arcs(model, branches):
    """Titles above every arc, routers right of them, inputs' sources below the line: nothing overlaps."""
    fig = network.network_diagram(branches, THRESHOLD, "skipped")
    titles, routers = trace(fig, "cell titles"), trace(fig, "routers")
    sources, nodes = trace(fig, "inputs come from"), trace(fig, "nodes")
    baselines = list(nodes.y[::STATES])
    for c, baseline in enumerate(baselines):
        ys = [y for t in arcs(fig) for p, y in zip(t.customdata, t.y, strict=True) if p[0] == c]
        assert baseline <= min(ys) and max(ys) < titles.y[c] - 7, "an arc reaches into the title row"
        assert sources.y[2 * c] < baseline - network.NODE_PX / 2, "a source label touches its node"
    assert min(routers.x) > max(x for t in arcs(fig) for x in t.x if x is not None)
    assert all(len(t.name) <= 9 for t in fig.data if t.showlegend is not False), "legend names must fit a phone"
    assert 500 <= fig.layout.height <= 900, fig.layout.height
    assert len(fig.layout.title.subtitle.text) <= 50, "a subtitle longer than a phone is wide"


@pytest.mark.parametrize("highlight", network.HIGHLIGHTS)
def test_every_highlight_changes_what_is_emphasised(branches, highlight):
    plain, fig = network.network_diagram(branches, THRESHOLD), network.network_diagram(branches, THRESHOLD, highlight)
    look = {name: (trace(fig, name).opacity, trace(plain, name).opacity) for name in ("routers", "answer", "stem")}
    ran = [t for t in arcs(fig) if t.meta["ran"]]
    skipped = [t for t in arcs(fig) if not t.meta["ran"]]
    plain_skipped = next(t for t in arcs(plain) if not t.meta["ran"])
    if highlight == "cells":
        assert all(s.line.color == common.ACCENT for s in fig.layout.shapes)
        assert not any(s.line.color == common.ACCENT for s in plain.layout.shapes)
        assert all(t.opacity < 1 for t in ran)
    elif highlight == "branches":
        assert {t.opacity for t in skipped} == {t.opacity for t in ran}, "every candidate drawn alike"
        assert {t.line.width for t in skipped} == {t.line.width for t in ran}
    elif highlight == "router":
        links = trace(fig, "router weights")
        assert sum(x is None for x in links.x) == branches.groupby(["cell", "edge"]).ngroups, "one link per edge"
        assert look["routers"][0] > look["routers"][1]
        assert not [t for t in plain.data if t.name == "router weights"]
    elif highlight == "gates":
        width = {
            (int(p[0]), int(p[1]), t.meta["branch"]): t.line.width
            for t in ran
            for p in t.customdata
            if p[0] is not None
        }
        gate = {(int(r.cell), int(r.edge), r.branch): r.gate for r in branches.itertuples() if r.ran}
        order = sorted(gate, key=gate.get)
        assert [width[k] for k in order] == sorted(width[k] for k in order), "a larger weight, a wider arc"
        assert len(set(width.values())) > 1
    elif highlight == "skipped":
        assert all(t.line.dash == "dot" and t.opacity > plain_skipped.opacity for t in skipped)
        assert all(t.opacity == 1.0 for t in ran)
        counts = branches.groupby("cell")["ran"].sum()
        assert all(f"{counts[c]}/" in text for c, text in enumerate(trace(fig, "cell titles").text))
    elif highlight == "answer":
        assert trace(fig, "answer").marker.color == common.ACCENT
        assert all(t.opacity < plain_skipped.opacity for t in skipped)
        assert look["stem"][0] < look["stem"][1]
    assert fig.layout.title.subtitle.text != plain.layout.title.subtitle.text


def test_answer_row_says_what_the_classifier_said(branches):
    fig = network.network_diagram(branches, THRESHOLD, answer="Trouser (97%)")
    assert "Trouser (97%)" in trace(fig, "answer").text[-1]
    assert "classifier" in trace(network.network_diagram(branches, THRESHOLD), "answer").text[-1]


def test_short_branch_names():
    assert [network.branch_short(b) for b in PRIMITIVES] == [
        "sep 3×3",
        "sep 5×5",
        "dil 3×3",
        "dil 5×5",
        "max pool",
        "avg pool",
        "skip",
    ]


def test_refuses_what_it_cannot_draw(branches):
    with pytest.raises(ValueError, match="highlight"):
        network.network_diagram(branches, THRESHOLD, "everything")  # type: ignore[arg-type]
    two = pd.concat([branches, branches.assign(sample=1)])
    with pytest.raises(ValueError, match="one image"):
        network.network_diagram(two, THRESHOLD)
    static = create_model("mobilenetv2", width_mult=0.25).eval()
    with torch.no_grad():
        _, trace_ = static(torch.zeros(1, 1, 28, 28))
    message = network.network_diagram(trace_.branches_frame(), THRESHOLD)
    assert common.NO_ROUTER in message.layout.annotations[0].text


def test_teaching_page_runs_and_shows_the_step_control(app_models: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DRNETS_MODELS_DIR", str(app_models))
    at = AppTest.from_file(str(appkit.ROOT / "app" / "main.py"), default_timeout=300)
    at.switch_page("views/teaching.py").run()
    assert not at.exception, [e.message for e in at.exception]
    steps = at.radio(key="teaching_step")
    assert list(steps.options) == ["1 · Cells", "2 · Branches", "3 · Router", "4 · Gates", "5 · Skipped", "6 · Answer"]
    steps.set_value("3 · Router").run()
    assert not at.exception and not at.error, [e.message for e in at.exception]
    assert "router" in " ".join(c.value for c in at.caption)
