"""One image's route through the DRNet: gate weights, the path through the cells, FLOPs per cell.

Each figure takes one sample's tidy frames from ``RoutingTrace`` (``branches_frame()``,
``cells_frame()``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app.figures.common import (
    ACCENT,
    COLORBAR_ROOM,
    FLOPS_UNIT,
    GATE_SCALE,
    GREY,
    INK,
    MODEL_COLORS,
    MUTED,
    NO_ROUTER,
    NODE_GREY,
    ROW_PX,
    TITLE_MARGIN,
    TOP_WITH_TICKS,
    branch_color,
    branch_label,
    branch_order,
    branch_short,
    branch_ticks,
    cell_label,
    cell_labels,
    colorbar_below,
    edge_label,
    layout,
    legend_below,
    message_figure,
    one_sample,
    require,
    rgba,
    state_label,
)


def _gate_explanation(gate: float, ran: bool, threshold: float) -> str:
    if ran and gate >= threshold:
        return f"✓ ran: weight {gate:.3f} ≥ t = {threshold:.2f}; its output is scaled by {gate:.3f}"
    if ran:
        return f"✓ ran although weight {gate:.3f} < t = {threshold:.2f} (route was forced)"
    if gate >= threshold:
        return f"✗ skipped: weight {gate:.3f} ≥ t, but not among the top-k branches of this edge"
    return f"✗ skipped, never computed: weight {gate:.3f} < t = {threshold:.2f}"


def gate_heatmap(branches: pd.DataFrame, threshold: float) -> go.Figure:
    """Gate weight of every (cell, edge) x branch for one image, ran branches marked ●, skipped faded.

    Args:
        branches: one sample's ``RoutingTrace.branches_frame()`` (columns cell, edge, src,
            dst, branch, gate, ran; ``reduction`` labels the cells when present).
        threshold: the routing threshold t in force when the trace was taken.
    Returns:
        Trace 0 is the heatmap of all gate weights (rows (cell, edge) in order, columns the
        branches); trace 1 is a white veil over the skipped branches.
    Example:
        >>> fig = gate_heatmap(trace.select([0]).branches_frame(), policy.threshold)
    """
    title = "Which branches ran on each edge"
    if branches.empty:
        return message_figure(title, NO_ROUTER)
    require(branches, ("cell", "edge", "src", "dst", "branch", "gate", "ran"), "gate_heatmap")
    one_sample(branches, "gate_heatmap")
    names = branch_order(branches["branch"])
    gates = branches.pivot(index=["cell", "edge"], columns="branch", values="gate")[names]
    ran = branches.pivot(index=["cell", "edge"], columns="branch", values="ran")[names].astype(bool)
    cells = cell_labels(branches)
    ends = branches.groupby(["cell", "edge"])[["src", "dst"]].first()
    row_cells = [cells[c] for c, _ in gates.index]
    row_edges = [edge_label(*ends.loc[key]) for key in gates.index]
    hover = [
        [
            f"<b>{row_cells[i]}, edge {row_edges[i]}</b><br>branch: {branch_label(b)}<br>"
            + _gate_explanation(float(gates.iat[i, j]), bool(ran.iat[i, j]), threshold)
            for j, b in enumerate(names)
        ]
        for i in range(len(gates))
    ]
    x = [branch_label(b) for b in names]
    y = [row_cells, row_edges]
    zmax = max(float(gates.to_numpy().max()), threshold)
    ticks = {zmax: f"{zmax:.2f}", threshold: f"t = {threshold:.2f}"}  # t wins a tie
    if threshold > 0.25 * zmax:  # room for a 0 that does not run into t's label
        ticks = {0.0: "0", **ticks}
    fig = go.Figure()
    fig.add_trace(
        go.Heatmap(
            z=gates.to_numpy(),
            x=x,
            y=y,
            zmin=0.0,
            zmax=zmax,
            colorscale=GATE_SCALE,
            text=np.where(ran.to_numpy(), "●", ""),
            texttemplate="%{text}",
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            xgap=1,
            ygap=1,
            name="gate weight",
            colorbar=colorbar_below("gate weight", tickvals=list(ticks), ticktext=list(ticks.values())),
        )
    )
    fig.add_trace(
        go.Heatmap(
            z=np.where(ran.to_numpy(), np.nan, 1.0),
            x=x,
            y=y,
            colorscale=[[0, "rgba(255,255,255,0.72)"], [1, "rgba(255,255,255,0.72)"]],
            showscale=False,
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            xgap=1,
            ygap=1,
            name="skipped",
        )
    )
    fig.update_yaxes(autorange="reversed", tickfont={"size": 11})
    branch_ticks(fig, names)
    n_ran, n_all = int(ran.to_numpy().sum()), ran.size
    subtitle = (
        f"● ran: gate weight ≥ t = {threshold:.2f} · faded: skipped, never computed · {n_ran} of {n_all} branches ran"
    )
    fig = layout(fig, title, subtitle, height=TOP_WITH_TICKS + COLORBAR_ROOM + ROW_PX * len(gates), top=TOP_WITH_TICKS)
    fig.update_layout(margin={"b": COLORBAR_ROOM})
    return fig


KEY_PER_ROW = 4  # branch colours per line of the path figure's key: four fit a phone's width


def route_sankey(branches: pd.DataFrame) -> go.Figure:
    """Path diagram of one image's route: input -> each cell's nodes -> its output, one link per branch that ran.

    Cell k reads the outputs of cells k-2 (its in0) and k-1 (its in1), the stem standing in
    for missing cells (DARTS wiring); each of its intermediate nodes n0.. sums the branches
    that ran on its incoming edges, and the cell output concatenates the nodes.
    Link width = gate weight; the link's colour and label name the branch.

    Args:
        branches: one sample's ``RoutingTrace.branches_frame()``.
    Example:
        >>> fig = route_sankey(trace.select([0]).branches_frame())
    """
    title = "The route this image took through the network"
    if branches.empty:
        return message_figure(title, NO_ROUTER)
    require(branches, ("cell", "edge", "src", "dst", "branch", "gate", "ran"), "route_sankey")
    one_sample(branches, "route_sankey")
    cells = cell_labels(branches)
    order = sorted(cells)
    per_cell = int(branches["dst"].max())  # columns per cell: nodes n0.. (states 2..dst max), then the output
    last_column = len(order) * per_cell
    nodes: dict[str, int] = {}
    node_attrs: dict[str, list] = {k: [] for k in ("label", "customdata", "color", "x", "y")}

    def node(key: str, label: str, hover: str, color: str, column: int) -> int:
        """Index of a node, created on first use at a fixed column (stem, cell 0 n0.., cell 0 out, ...)."""
        if key not in nodes:
            nodes[key] = len(nodes)
            # plotly ignores nodes placed exactly on 0 or 1; the wider last gap keeps room for the
            # final node's label, which plotly draws on its left
            x = 0.999 if column == last_column else 0.001 + 0.998 * column / (last_column + 0.5)
            # no text on the nodes: at a phone's width "in0 n0 n1 out" of five cells run together;
            # every node names itself on hover
            for attr, v in zip(node_attrs, ("", hover, color, x, 0.5), strict=True):
                node_attrs[attr].append(v)
        return nodes[key]

    def output(cell: int) -> int:
        p = order.index(cell)
        hover = f"{cells[cell]}: output = its nodes concatenated"
        return node(f"out{cell}", "out", hover, GREY, (p + 1) * per_cell)

    def source(cell: int, state: int) -> int:
        if state >= 2:
            hover = f"{cells[cell]}, node {state_label(state)}: sum of the branches that ran into it"
            column = 1 + order.index(cell) * per_cell + state - 2
            return node(f"c{cell}s{state}", state_label(state), hover, NODE_GREY, column)
        previous = order.index(cell) - (2 - state)  # in0 <- cell k-2, in1 <- cell k-1
        if previous >= 0:
            return output(order[previous])
        return node("stem", "input", "the image after the stem convolution", INK, 0)

    ran = branches[branches["ran"].astype(bool)].sort_values(["cell", "dst", "edge"])
    if ran.empty:
        return message_figure(title, "No branch ran for this image: every gate weight was below the threshold.")
    links: dict[str, list] = {k: [] for k in ("source", "target", "value", "label", "color", "customdata")}

    def link(src: int, dst: int, value: float, label: str, color: str, hover: str) -> None:
        for key, v in zip(links, (src, dst, value, label, color, hover), strict=True):
            links[key].append(v)

    for row in ran.itertuples(index=False):
        cell, src, dst, gate = int(row.cell), int(row.src), int(row.dst), float(row.gate)
        name = branch_label(row.branch)
        link(
            source(cell, src),
            source(cell, dst),
            gate,
            name,
            rgba(branch_color(row.branch), 0.6),
            f"{cells[cell]}, edge {edge_label(src, dst)}<br>{name} ran with gate weight {gate:.3f}",
        )
    inflow = ran.groupby(["cell", "dst"])["gate"].sum()
    for (cell, dst), total in inflow.items():
        link(
            source(int(cell), int(dst)),
            output(int(cell)),
            float(total),
            "concat",
            "rgba(160,160,160,0.35)",
            f"{cells[int(cell)]}: node {state_label(int(dst))} joins the cell output (concatenation)",
        )
    fig = go.Figure(
        go.Sankey(
            arrangement="snap",
            node={**node_attrs, "hovertemplate": "%{customdata}<extra></extra>", "pad": 12, "thickness": 12},
            link={**links, "hovertemplate": "%{customdata}<extra></extra>"},
        )
    )
    used = branch_order(ran["branch"])
    entries = [f"<span style='color:{branch_color(b)}'>■</span> {branch_short(b)}" for b in used]
    rows = [" &nbsp; ".join(entries[i : i + KEY_PER_ROW]) for i in range(0, len(entries), KEY_PER_ROW)]
    fig.add_annotation(
        text="<br>".join(rows), x=0, y=-0.04, xref="paper", yref="paper", showarrow=False, xanchor="left",
        yanchor="top", align="left",
    )  # fmt: skip
    for p, c in enumerate(order):  # a header over each cell's columns
        middle = 0.001 + 0.998 * (1 + p * per_cell + (per_cell - 1) / 2) / (last_column + 0.5)
        fig.add_annotation(
            text=f"<b>{cell_label(c)}</b>",
            x=middle,
            y=1.0,
            xref="paper",
            yref="paper",
            showarrow=False,
            yanchor="bottom",
            hovertext=cells[c],
        )
    subtitle = f"{len(ran)} branches ran · link width = gate weight · colour = branch (hover a link for details)"
    fig = layout(fig, title, subtitle, height=460, top=TITLE_MARGIN + 20)
    fig.update_layout(margin={"b": 30 + 18 * len(rows)})
    return fig


def cell_flops_bars(cells: pd.DataFrame, dense_cell_flops: list[int] | None = None) -> go.Figure:
    """FLOPs each cell spent on the image(s), beside what the dense supernet's cell costs.

    Args:
        cells: ``RoutingTrace.cells_frame()`` of one or a few images (columns sample, cell,
            flops, branches_ran; ``reduction`` labels the cells); one bar series per image.
        dense_cell_flops: FLOPs of each cell with every branch on, in cell order.
    Example:
        >>> fig = cell_flops_bars(trace.cells_frame(), dense_cell_flops=[...])
    """
    title = "FLOPs spent in each cell"
    if cells.empty:
        return message_figure(title, NO_ROUTER)
    require(cells, ("sample", "cell", "flops", "branches_ran"), "cell_flops_bars")
    labels = cell_labels(cells)
    order = sorted(labels)
    x = [labels[c] for c in order]
    fig = go.Figure()
    dense = None
    if dense_cell_flops is not None:
        if len(dense_cell_flops) != len(order):
            raise ValueError(f"dense_cell_flops has {len(dense_cell_flops)} values for {len(order)} cells")
        dense = np.asarray(dense_cell_flops, dtype=float)
        fig.add_trace(
            go.Bar(
                x=x,
                y=dense,
                name="dense supernet (every branch)",
                marker_color=MUTED,
                hovertemplate="%{x}<br>dense supernet: %{y:.3s} FLOPs (every branch runs)<extra></extra>",
            )
        )
    samples = list(dict.fromkeys(cells["sample"]))
    for i, sample in enumerate(samples):
        rows = cells[cells["sample"] == sample].set_index("cell").loc[order]
        used = rows["flops"].to_numpy(dtype=float)
        share = used / dense if dense is not None else None
        hover = [
            f"{labels[c]}: {used[j]:,.0f} FLOPs used<br>{int(rows['branches_ran'].iat[j])} branches ran"
            + (f"<br>{share[j]:.0%} of the dense cell" if share is not None else "")
            for j, c in enumerate(order)
        ]
        fig.add_trace(
            go.Bar(
                x=x,
                y=used,
                name="this image" if len(samples) == 1 else f"image {sample}",
                marker_color=ACCENT if len(samples) == 1 else MODEL_COLORS[i % len(MODEL_COLORS)],
                text=[f"{s:.0%}" for s in share] if share is not None else None,
                textposition="outside",
                hovertext=hover,
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )
    total = cells.groupby("sample")["flops"].sum()
    subtitle = f"sum over cells: {total.iloc[0] / 1e6:.2f} M FLOPs" if len(samples) == 1 else ""
    if dense is not None and len(samples) == 1:
        subtitle += f" = {total.iloc[0] / dense.sum():.0%} of the dense supernet's {dense.sum() / 1e6:.2f} M"
    fig.update_yaxes(title=FLOPS_UNIT)
    fig = layout(fig, title, subtitle, height=380, barmode="group", legend=legend_below())
    fig.update_layout(margin={"b": 90})
    return fig
