"""The DRNet drawn as a graph: its cells, their nodes and edges, and the branches one image ran.

One band per cell, top to bottom in the order of the forward pass, between the stem and the
classifier. Inside a band the cell's states sit on a line (inputs in0 and in1, new nodes n0.., the
output), and every edge is a fan of arcs above that line, one arc per candidate branch: the
branches that ran for the image in their colour, the skipped ones faded. The vertical axis is in
pixels, so a fan keeps its spacing at any width (a 390-px phone or a 1400-px screen) and only the
horizontal axis stretches. Steps of a walk-through (``HIGHLIGHTS``) bring one part forward and dim
the rest, as CNN Explainer does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app.figures.common import (
    ACCENT,
    GREY,
    HIGHLIGHT,
    INK,
    LIGHT_GREY,
    NO_ROUTER,
    TITLE_MARGIN,
    branch_color,
    branch_label,
    branch_order,
    branch_short,
    cell_label,
    edge_label,
    layout,
    message_figure,
    one_sample,
    require,
    rgba,
    state_label,
)

Highlight = Literal["cells", "branches", "router", "gates", "skipped", "answer"]
HIGHLIGHTS: tuple[Highlight, ...] = get_args(Highlight)

FAN_GAP = 3.0  # px between the arcs of one edge's branches: 7 arcs fit in ~20 px
# px an arc rises per state it spans; above half a fan's height, so two fans with one centre (their
# spans differ by 2) never overlap
SPAN_RISE = 11.0
TITLE_ROW = 18  # px above a cell's arcs for its title and router
BELOW = 30  # px under a cell's line: where its inputs come from, the links to its output
BAND_GAP = 8  # px between cells
END_ROW = 34  # px for the stem row on top and the answer row at the bottom
LEGEND_ROOM = 50  # px under the plot for the branch legend (one row wide, three on a phone)
NODE_PX = 22  # node marker size: fits "in0" in 9-px type
ARC_POINTS = 17  # points per arc: smooth at 1400 px, light enough for 300 arcs
X_PAD = 0.45  # state units left and right of the outermost nodes, for their labels
ROUTER_LEFT = 0.3  # state units from the output node to the router's diamond; its label sits right of it
BAND_FILL = "#f3f5f8"  # reduction cells' background


@dataclass(frozen=True)
class _Look:
    """Opacity of each part of the diagram, and how the branch arcs are drawn, for one highlight."""

    structure: float  # nodes, titles, source labels, links to the outputs, the stem
    router: float
    ran: float
    skipped: float
    answer: float
    ran_width: float = 2.5
    skipped_width: float = 1.2
    skipped_dash: str = "solid"
    skipped_color: str | None = None  # None: each branch's own colour
    width_is_gate: bool = False  # ran arcs as wide as their gate weight
    outline_cells: bool = False
    router_links: bool = False


FADED = 0.15  # a skipped branch: still there, visibly not taken
LOOKS: dict[Highlight | None, _Look] = {
    None: _Look(structure=1.0, router=0.6, ran=1.0, skipped=FADED, answer=1.0),
    "cells": _Look(structure=1.0, router=0.25, ran=0.3, skipped=0.06, answer=1.0, outline_cells=True),
    "branches": _Look(structure=0.5, router=0.25, ran=0.9, skipped=0.9, answer=0.5, ran_width=1.5, skipped_width=1.5),
    "router": _Look(structure=0.5, router=1.0, ran=0.25, skipped=0.06, answer=0.5, router_links=True),
    "gates": _Look(structure=0.5, router=0.25, ran=1.0, skipped=FADED, answer=0.5, width_is_gate=True),
    "skipped": _Look(
        structure=0.5, router=0.25, ran=1.0, skipped=0.6, answer=0.5, skipped_dash="dot", skipped_color=LIGHT_GREY
    ),
    "answer": _Look(structure=0.5, router=0.25, ran=1.0, skipped=0.06, answer=1.0),
}


def _arc(x0: float, x1: float, base: float, height: float) -> tuple[np.ndarray, np.ndarray]:
    """Half-ellipse from (x0, base) to (x1, base), ``height`` px above the line (below when negative)."""
    t = np.linspace(0.0, np.pi, ARC_POINTS)
    return (x0 + x1) / 2 - (x1 - x0) / 2 * np.cos(t), base + height * np.sin(t)


def _arc_height(src: int, dst: int, k: int, rise: float) -> float:
    """Px the arc of branch k on edge (src, dst) rises: by the states it spans, then its place in the fan."""
    return (dst - src) * rise + k * FAN_GAP


def _polyline(pieces: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list, list]:
    """Many lines as one trace: Plotly breaks a line at None."""
    xs, ys = [], []
    for x, y in pieces:
        xs += [*x, None]
        ys += [*y, None]
    return xs, ys


def network_diagram(
    branches: pd.DataFrame,
    threshold: float,
    highlight: Highlight | None = None,
    answer: str | None = None,
) -> go.Figure:
    """The DRNet's cells, nodes and edges, with the branches one image ran drawn and the skipped ones faded.

    Args:
        branches: one sample's ``RoutingTrace.branches_frame()`` (columns cell, edge, src, dst,
            branch, gate, ran; ``reduction`` marks the reduction cells when present).
        threshold: the routing threshold t in force when the trace was taken (hover and the
            gates subtitle quote it).
        highlight: the part a walk-through step explains, one of ``HIGHLIGHTS``; it is drawn
            forward and the rest dimmed. None draws the route plainly.
        answer: what the classifier said, e.g. "Trouser (97%)", written in the bottom row.
    Returns:
        Line traces of the arcs, one per (branch, ran) and, under "gates", line width (``meta``
        {"branch", "ran"}; ``customdata`` [cell, edge] on every point), a "nodes" marker trace (every cell's in0, in1, n0.., out), an
        invisible "branch details" trace carrying the hover text at each arc's top, cell
        titles, routers, the stem and answer rows, and legend entries per branch.
    Example:
        >>> fig = network_diagram(trace.select([0]).branches_frame(), policy.threshold, "gates", "Trouser (97%)")
    """
    title = "The network and this image's route"
    if highlight not in LOOKS:
        raise ValueError(f"highlight must be None or one of {', '.join(HIGHLIGHTS)}, got {highlight!r}")
    if branches.empty:
        return message_figure(title, NO_ROUTER)
    require(branches, ("cell", "edge", "src", "dst", "branch", "gate", "ran"), "network_diagram")
    one_sample(branches, "network_diagram")
    look = LOOKS[highlight]
    names = branch_order(branches["branch"])
    cells = sorted(int(c) for c in branches["cell"].unique())
    reduction = (
        {int(c): bool(r) for c, r in branches.groupby("cell")["reduction"].first().items()}
        if "reduction" in branches
        else dict.fromkeys(cells, False)
    )
    num_nodes = int(branches["dst"].max()) - 1  # states 2..N+1 are the nodes n0..n(N-1)
    out_x = num_nodes + 2  # in0, in1, the nodes, then the output, one state unit apart
    rise = max(SPAN_RISE, FAN_GAP * len(names) / 2)  # a wider fan needs a larger rise (see SPAN_RISE)
    fan_top = (num_nodes + 1) * rise + (len(names) - 1) * FAN_GAP
    band = TITLE_ROW + fan_top + BELOW + BAND_GAP
    baselines = {c: -END_ROW - i * band - TITLE_ROW - fan_top for i, c in enumerate(cells)}
    bottom = -END_ROW - len(cells) * band - END_ROW
    ran = branches["ran"].astype(bool)

    fig = go.Figure()
    for i, c in enumerate(cells):
        top = -END_ROW - i * band
        fig.add_shape(
            type="rect",
            x0=-X_PAD,
            x1=out_x + X_PAD,
            y0=top,
            y1=top - band + BAND_GAP / 2,
            layer="below",
            fillcolor=BAND_FILL if reduction[c] else "rgba(0,0,0,0)",
            line={"color": ACCENT if look.outline_cells else "rgba(0,0,0,0)", "width": 1.5},
        )
    _add_branches(fig, branches, names, baselines, rise, look)
    _add_branch_hover(fig, branches, names, baselines, rise, threshold)
    _add_links_to_outputs(fig, cells, baselines, num_nodes, look)
    _add_nodes(fig, cells, reduction, baselines, num_nodes, look)
    counts = ran.groupby(branches["cell"]).agg(["sum", "size"])
    titles = [
        f"<b>cell {c}</b>"
        + (" · reduction" if reduction[c] else "")
        + (f" · {counts.at[c, 'sum']}/{counts.at[c, 'size']} ran" if highlight == "skipped" else "")
        for c in cells
    ]
    title_ys = [baselines[c] + fan_top + TITLE_ROW / 2 for c in cells]
    fig.add_trace(_text([0.0] * len(cells), title_ys, titles, "middle right", INK, look.structure, "cell titles"))
    _add_routers(fig, branches, cells, baselines, rise, title_ys, out_x, look)
    _add_stem(fig, look)
    _add_answer(fig, baselines[cells[-1]], bottom + END_ROW / 2, out_x, cell_label(cells[-1]), answer, highlight, look)
    for b in names:  # legend entries only; the arcs share their legendgroup, so a click hides a branch
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="lines",
                line={"color": branch_color(b), "width": 3},
                name=branch_short(b),
                legendgroup=b,
                hoverinfo="skip",
            )
        )
    fig.update_xaxes(visible=False, range=[-X_PAD, out_x + X_PAD], fixedrange=True)
    fig.update_yaxes(visible=False, range=[bottom, 0], fixedrange=True)
    fig = layout(
        fig,
        title,
        _subtitle(highlight, branches, threshold, answer),
        height=TITLE_MARGIN + -bottom + LEGEND_ROOM,
        hovermode="closest",
        dragmode=False,
        legend={"orientation": "h", "x": 0, "y": 0, "yanchor": "top", "font": {"size": 11}},
    )
    fig.update_layout(margin={"b": 10})
    return fig


def _add_branches(
    fig: go.Figure, branches: pd.DataFrame, names: list[str], baselines: dict[int, float], rise: float, look: _Look
) -> None:
    """One line trace per (branch, ran, width): every arc of that kind in the network."""
    k_of = {b: k for k, b in enumerate(names)}
    groups: dict[tuple[str, bool, float], list] = {}
    for row in branches.itertuples(index=False):
        did_run = bool(row.ran)
        width = look.ran_width if did_run else look.skipped_width
        if did_run and look.width_is_gate:
            width = round(2 * (1 + 4 * float(row.gate))) / 2  # half-pixel steps keep the traces few
        height = _arc_height(row.src, row.dst, k_of[row.branch], rise)
        arc = _arc(float(row.src), float(row.dst), baselines[int(row.cell)], height)
        groups.setdefault((row.branch, did_run, width), []).append((arc, (int(row.cell), int(row.edge))))
    for (b, did_run, width), arcs in sorted(groups.items(), key=lambda g: (g[0][1], k_of[g[0][0]], g[0][2])):
        x, y = _polyline([arc for arc, _ in arcs])
        ids = [point for _, key in arcs for point in [list(key)] * ARC_POINTS + [[None, None]]]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                line={
                    "color": branch_color(b) if did_run else look.skipped_color or branch_color(b),
                    "width": width,
                    "dash": "solid" if did_run else look.skipped_dash,
                },
                opacity=look.ran if did_run else look.skipped,
                customdata=ids,
                name=f"{branch_short(b)} ({'ran' if did_run else 'skipped'})",
                legendgroup=b,
                showlegend=False,
                hoverinfo="skip",
                meta={"branch": b, "ran": did_run},
            )
        )


def _add_branch_hover(
    fig: go.Figure,
    branches: pd.DataFrame,
    names: list[str],
    baselines: dict[int, float],
    rise: float,
    threshold: float,
) -> None:
    """Hover at the top of every arc: the arcs of a fan are a few pixels apart, so the pointer picks one."""
    k_of = {b: k for k, b in enumerate(names)}
    x = (branches["src"] + branches["dst"]) / 2
    y = [
        baselines[int(r.cell)] + _arc_height(r.src, r.dst, k_of[r.branch], rise)
        for r in branches.itertuples(index=False)
    ]
    text = [
        f"<b>{cell_label(int(r.cell))}, edge {edge_label(int(r.src), int(r.dst))}</b><br>"
        f"{branch_label(r.branch)}: gate weight {r.gate:.3f}<br>"
        + (f"ran (weight ≥ t = {threshold:.2f})" if r.ran else "skipped, never computed")
        for r in branches.itertuples(index=False)
    ]
    fig.add_trace(
        go.Scatter(
            x=x,
            y=y,
            mode="markers",
            marker={"size": 8, "color": "rgba(0,0,0,0)"},
            hovertext=text,
            hovertemplate="%{hovertext}<extra></extra>",
            name="branch details",
            showlegend=False,
        )
    )


def _add_links_to_outputs(
    fig: go.Figure, cells: list[int], baselines: dict[int, float], num_nodes: int, look: _Look
) -> None:
    """Dashed arcs under each cell's line from every new node to the output that concatenates them."""
    out_x = num_nodes + 2
    pieces = [
        _arc(float(2 + n), float(out_x), baselines[c], -(8 + (BELOW - 12) * (num_nodes - n) / num_nodes))
        for c in cells
        for n in range(num_nodes)
    ]
    x, y = _polyline(pieces)
    fig.add_trace(
        go.Scatter(
            x=x,
            y=y,
            mode="lines",
            line={"color": LIGHT_GREY, "width": 1, "dash": "dash"},
            opacity=look.structure,
            hoverinfo="skip",
            name="to the output",
            showlegend=False,
        )
    )


def _add_nodes(
    fig: go.Figure,
    cells: list[int],
    reduction: dict[int, bool],
    baselines: dict[int, float],
    num_nodes: int,
    look: _Look,
) -> None:
    """Every cell's states as labelled circles, and under its inputs the cell each one comes from."""
    states = num_nodes + 3  # in0, in1, n0.., out
    x, y, text, hover = [], [], [], []
    for c in cells:
        name = cell_label(c, reduction[c])
        for s in range(states):
            x.append(float(s))
            y.append(baselines[c])
            if s < 2:
                source = cells.index(c) - (2 - s)  # in0 <- cell k-2, in1 <- cell k-1 (DARTS wiring)
                origin = "the stem" if source < 0 else cell_label(cells[source])
                text.append(state_label(s))
                hover.append(f"{name}: input {state_label(s)} = the output of {origin}")
            elif s < states - 1:
                text.append(state_label(s))
                hover.append(f"{name}, node {state_label(s)}: adds the branches that ran on its {s} incoming edges")
            else:
                text.append("out")
                hover.append(f"{name}: output = its {num_nodes} new nodes joined (concatenated)")
    fig.add_trace(
        go.Scatter(
            x=x,
            y=y,
            mode="markers+text",
            # dimmed by colour, not opacity: an opaque fill keeps the arcs from showing through
            marker={"size": NODE_PX, "color": "white", "line": {"color": rgba(GREY, look.structure), "width": 1.5}},
            text=text,
            textfont={"size": 9, "color": rgba(INK, look.structure)},
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            name="nodes",
            showlegend=False,
        )
    )
    sources = [
        "↑ stem" if i - (2 - s) < 0 else f"↑ cell {cells[i - (2 - s)]}" for i in range(len(cells)) for s in (0, 1)
    ]
    fig.add_trace(
        _text(
            [0.0, 1.0] * len(cells),
            [baselines[c] - 20 for c in cells for _ in (0, 1)],
            sources,
            "middle center",
            GREY,
            look.structure,
            "inputs come from",
            size=10,
        )
    )


def _add_routers(
    fig: go.Figure,
    branches: pd.DataFrame,
    cells: list[int],
    baselines: dict[int, float],
    rise: float,
    title_ys: list[float],
    out_x: int,
    look: _Look,
) -> None:
    """A diamond per cell for its router; when it is the highlight, dotted lines to every edge it weighs."""
    color = HIGHLIGHT if look.router_links else LIGHT_GREY
    per_cell = branches.groupby("cell").size()  # rows per cell = its edges x branches
    x = out_x - ROUTER_LEFT
    fig.add_trace(
        go.Scatter(
            x=[x] * len(cells),
            y=title_ys,
            mode="markers+text",
            marker={"symbol": "diamond", "size": 12, "color": color},
            text=["router"] * len(cells),
            textposition="middle right",
            textfont={"size": 10, "color": color},
            hovertext=[f"{cell_label(c)}'s router: gives this image's {per_cell[c]} branches a weight" for c in cells],
            hovertemplate="%{hovertext}<extra></extra>",
            opacity=look.router,
            cliponaxis=False,
            name="routers",
            showlegend=False,
        )
    )
    if not look.router_links:
        return
    edges = branches.groupby(["cell", "edge"])[["src", "dst"]].first().reset_index()
    last = branches["branch"].nunique() - 1
    pieces = [
        (
            np.array([x, (e.src + e.dst) / 2]),
            np.array([title_ys[cells.index(e.cell)], baselines[e.cell] + _arc_height(e.src, e.dst, last, rise)]),
        )
        for e in edges.itertuples(index=False)
    ]
    x, y = _polyline(pieces)
    fig.add_trace(
        go.Scatter(
            x=x,
            y=y,
            mode="lines",
            line={"color": HIGHLIGHT, "width": 1, "dash": "dot"},
            hoverinfo="skip",
            name="router weights",
            showlegend=False,
        )
    )


def _text(
    x: list[float],
    y: list[float],
    text: list[str],
    position: str,
    color: str,
    opacity: float,
    name: str,
    size: int = 11,
) -> go.Scatter:
    return go.Scatter(
        x=x,
        y=y,
        mode="text",
        text=text,
        textposition=position,
        textfont={"size": size, "color": color},
        opacity=opacity,
        cliponaxis=False,
        hoverinfo="skip",
        name=name,
        showlegend=False,
    )


def _add_stem(fig: go.Figure, look: _Look) -> None:
    """The stem above the cells: a square and one line of text."""
    fig.add_trace(
        go.Scatter(
            x=[0.0],
            y=[-END_ROW / 2],
            mode="markers+text",
            marker={"symbol": "square", "size": 14, "color": GREY},
            text=["  image → stem conv"],
            textposition="middle right",
            textfont={"size": 12, "color": INK},
            hovertext=["the stem: one 3×3 convolution on the image; cells 0 and 1 read its output"],
            hovertemplate="%{hovertext}<extra></extra>",
            opacity=look.structure,
            cliponaxis=False,
            name="stem",
            showlegend=False,
        )
    )


def _add_answer(
    fig: go.Figure,
    last_baseline: float,
    y: float,
    out_x: int,
    last_cell: str,
    answer: str | None,
    highlight: Highlight | None,
    look: _Look,
) -> None:
    """The classifier under the last cell's output, a line from that output, and what it said."""
    color = ACCENT if highlight == "answer" else GREY
    said = f"classifier says <b>{answer}</b>  " if answer else "classifier  "
    fig.add_trace(
        go.Scatter(
            x=[float(out_x), float(out_x)],
            y=[last_baseline - NODE_PX / 2, y],  # from under the output node, not through its label
            mode="lines+markers+text",
            line={"color": color, "width": 1.5},
            marker={"symbol": "square", "size": [0, 14], "color": color},
            text=["", said],
            textposition="middle left",
            textfont={"size": 12, "color": INK},
            hovertext=["", f"{last_cell}'s output, averaged over the image, into a linear classifier"],
            hovertemplate="%{hovertext}<extra></extra>",
            opacity=look.answer,
            cliponaxis=False,
            name="answer",
            showlegend=False,
        )
    )


def _subtitle(highlight: Highlight | None, branches: pd.DataFrame, threshold: float, answer: str | None) -> str:
    """One short line (it must fit a phone) saying what the highlighted part is."""
    n_ran, n_all = int(branches["ran"].astype(bool).sum()), len(branches)
    return {
        None: f"{n_ran} of {n_all} branches ran · faded: skipped",
        "cells": f"{branches['cell'].nunique()} cells; shaded: reduction cells",
        "branches": f"every edge: the same {branches['branch'].nunique()} candidate branches",
        "router": "◆ each cell's router weighs every branch",
        "gates": f"runs if weight ≥ t = {threshold:.2f} · width = weight",
        "skipped": f"dotted: {n_all - n_ran} skipped branches, never computed",
        "answer": f"the answer: {answer}" if answer else f"{n_ran} branches made the answer",
    }[highlight]
