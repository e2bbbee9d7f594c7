"""Two images' DRNet routes side by side: which edges chose differently, and what each cell spent.

Each function takes the tidy frames of one image per side (``RoutingTrace.branches_frame()``,
``cells_frame()``), A first. Labels stay short and legends sit below the plots, so the figures
read in a 390 px phone column as well as on a projector.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app.figures import routing
from app.figures.common import (
    BLUE,
    FLOPS_UNIT,
    GREY,
    MUTED,
    NO_ROUTER,
    ORANGE,
    ROW_PX,
    TOP_WITH_TICKS,
    branch_label,
    branch_order,
    branch_ticks,
    cell_label,
    cell_labels,
    edge_label,
    layout,
    legend_below,
    message_figure,
    one_sample,
    require,
)

BRANCH_COLUMNS = ("cell", "edge", "src", "dst", "branch", "gate", "ran")
# What a (cell, edge, branch) did in the two images; the codes index CHOICE_COLORS.
NEITHER, ONLY_A, ONLY_B, BOTH = 0, 1, 2, 3
CHOICE_COLORS = ("#ffffff", BLUE, ORANGE, MUTED)  # the side colours match the FLOPs bars
CHOICE_TEXT = ("", "A", "B", "●")
LEGEND_ROOM = 90  # px under the bars for the cell names and a legend that may wrap on a phone


def _branch_grid(branches: pd.DataFrame, figure: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One image's gate weights and ran flags as (cell, edge) x branch tables."""
    require(branches, BRANCH_COLUMNS, figure)
    one_sample(branches, figure)
    names = branch_order(branches["branch"])
    gates = branches.pivot(index=["cell", "edge"], columns="branch", values="gate")[names]
    ran = branches.pivot(index=["cell", "edge"], columns="branch", values="ran")[names].astype(bool)
    return gates, ran


def _paired_grids(
    branches_a: pd.DataFrame, branches_b: pd.DataFrame, figure: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Both images' grids, checked to come from one network (same cells, edges and branches)."""
    gates_a, ran_a = _branch_grid(branches_a, figure)
    gates_b, ran_b = _branch_grid(branches_b, figure)
    if not (ran_a.index.equals(ran_b.index) and ran_a.columns.equals(ran_b.columns)):
        raise ValueError(f"{figure} compares two routes through one network; these frames have different edges")
    return gates_a, ran_a, gates_b, ran_b


def route_differences(branches_a: pd.DataFrame, branches_b: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, edge): the branches that ran for A only, for B only and for both.

    An edge *chose differently* when its set of ran branches differs between the images; a
    weight that moved but stayed on the same side of the threshold does not count.

    Args:
        branches_a, branches_b: ``RoutingTrace.branches_frame()`` of one image each, same network.
    Returns:
        Columns cell, edge, src, dst, only_a, only_b, both (tuples of branch names in
        ``branch_order``) and differs (bool), rows in (cell, edge) order.
    Example:
        >>> diff = route_differences(trace_a.branches_frame(), trace_b.branches_frame())
        >>> int(diff["differs"].sum())  # edges that chose differently
    """
    _, ran_a, _, ran_b = _paired_grids(branches_a, branches_b, "route_differences")
    names = np.asarray(ran_a.columns)
    a, b = ran_a.to_numpy(), ran_b.to_numpy()
    ends = branches_a.groupby(["cell", "edge"])[["src", "dst"]].first().loc[ran_a.index]
    frame = ran_a.index.to_frame(index=False)
    frame["src"], frame["dst"] = ends["src"].to_numpy(), ends["dst"].to_numpy()
    frame["only_a"] = [tuple(names[row]) for row in a & ~b]
    frame["only_b"] = [tuple(names[row]) for row in b & ~a]
    frame["both"] = [tuple(names[row]) for row in a & b]
    frame["differs"] = (a != b).any(axis=1)
    return frame


def difference_heatmap(branches_a: pd.DataFrame, branches_b: pd.DataFrame, threshold: float) -> go.Figure:
    """Every (cell, edge) x branch coloured by which image ran it; edges that chose differently marked ≠.

    Args:
        branches_a, branches_b: ``RoutingTrace.branches_frame()`` of one image each, same network.
        threshold: the routing threshold t in force for both traces (for the hover text).
    Returns:
        One heatmap trace whose z holds the codes NEITHER, ONLY_A, ONLY_B, BOTH per cell and
        whose text marks them ("", "A", "B", "●"); rows (cell, edge) in order, no colour bar.
    Example:
        >>> fig = difference_heatmap(trace_a.branches_frame(), trace_b.branches_frame(), 0.1)
    """
    title = "Where the routes differ"
    if branches_a.empty or branches_b.empty:
        return message_figure(title, NO_ROUTER)
    gates_a, ran_a, gates_b, ran_b = _paired_grids(branches_a, branches_b, "difference_heatmap")
    names = list(ran_a.columns)
    a, b = ran_a.to_numpy(), ran_b.to_numpy()
    codes = np.select([a & b, a, b], [BOTH, ONLY_A, ONLY_B], NEITHER)
    differs = (a != b).any(axis=1)
    cells = cell_labels(branches_a)
    ends = branches_a.groupby(["cell", "edge"])[["src", "dst"]].first()
    # Rows by number, named through the ticks: a multicategory axis orders its labels globally, so
    # marking some of them would move their rows away from their z.
    rows = np.arange(len(codes))
    row_labels = [
        f"<b>≠ {cell_label(c)} · {edge_label(*ends.loc[(c, e)])}</b>"
        if d
        else f"{cell_label(c)} · {edge_label(*ends.loc[(c, e)])}"
        for (c, e), d in zip(ran_a.index, differs, strict=True)
    ]  # "(reduction)" would crowd a phone; it is in the hover

    def side(ran: bool, gate: float) -> str:
        return f"{'ran' if ran else 'skipped'} (weight {gate:.3f})"

    hover = [
        [
            f"<b>{cells[c]}, edge {edge_label(*ends.loc[(c, e)])}</b><br>{branch_label(name)}<br>"
            f"A: {side(a[i, j], gates_a.iat[i, j])}<br>B: {side(b[i, j], gates_b.iat[i, j])}<br>t = {threshold:.2f}"
            for j, name in enumerate(names)
        ]
        for i, (c, e) in enumerate(ran_a.index)
    ]
    n = len(CHOICE_COLORS)  # one flat band of colour per code, codes centred in their band
    scale = [[(k + edge) / n, color] for k, color in enumerate(CHOICE_COLORS) for edge in (0, 1)]
    x = [branch_label(name) for name in names]
    fig = go.Figure(
        go.Heatmap(
            z=codes,
            x=x,
            y=rows,
            zmin=-0.5,
            zmax=n - 0.5,
            colorscale=scale,
            showscale=False,
            text=np.asarray(CHOICE_TEXT, dtype=object)[codes],
            texttemplate="%{text}",
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            xgap=1,
            ygap=1,
            name="choice",
        )
    )
    fig.update_yaxes(
        autorange="reversed",
        tickmode="array",
        tickvals=rows,
        ticktext=row_labels,
        tickfont={"size": 11},
        showgrid=False,
    )
    cell_of_row = ran_a.index.get_level_values("cell").to_numpy()
    for boundary in np.flatnonzero(np.diff(cell_of_row)) + 0.5:  # a rule between cells
        fig.add_hline(y=boundary, line={"color": GREY, "width": 1})
    branch_ticks(fig, names)
    subtitle = f"A, B: ran for that image only · ●: for both · ≠ {int(differs.sum())} of {len(differs)} edges chose differently"
    return layout(fig, title, subtitle, height=TOP_WITH_TICKS + 40 + ROW_PX * len(codes), top=TOP_WITH_TICKS)


def gate_heatmap(branches: pd.DataFrame, threshold: float, side: str) -> go.Figure:
    """One image's gate weights (``routing.gate_heatmap``) fitted to half a page or a phone: a short
    title and cell names, and only t and the top on the colour bar ("0" would run into "t = 0.10")."""
    fig = routing.gate_heatmap(branches, threshold)
    if branches.empty:
        return fig
    _, ran = _branch_grid(branches, "gate_heatmap")
    wrapped = fig.layout.margin.t - TOP_WITH_TICKS  # the long subtitle's extra lines, gone with it
    fig.update_layout(
        title={"text": f"Route of {side}", "subtitle": {"text": f"●: ran ({int(ran.sum().sum())} branches)"}},
        margin={"t": TOP_WITH_TICKS},
        height=fig.layout.height - wrapped,
    )
    edges = fig.data[0].y[1]
    fig.update_traces(y=[[cell_label(c) for c, _ in ran.index], edges])  # "(reduction)" is in the hover
    top = float(fig.data[0].zmax)
    ticks = {top: f"{top:.2f}", threshold: f"t = {threshold:.2f}"}  # t wins a tie, as in routing.gate_heatmap
    fig.update_traces(
        colorbar={"tickvals": list(ticks), "ticktext": list(ticks.values())}, selector={"name": "gate weight"}
    )
    return fig


def cell_flops_pair(
    cells_a: pd.DataFrame, cells_b: pd.DataFrame, dense_cell_flops: list[int] | None = None
) -> go.Figure:
    """FLOPs each cell spent on A and on B as grouped bars.

    The dense cells (every branch on) cost several times more; drawn as bars they would flatten the
    difference between A and B, so they appear only in the hover, as each bar's share of them.

    Args:
        cells_a, cells_b: ``RoutingTrace.cells_frame()`` of one image each (columns cell, flops,
            branches_ran; ``reduction`` labels the cells in the hover), same network.
        dense_cell_flops: FLOPs of each cell with every branch on, in cell order
            (``app.costs.dense_cell_flops``), for the hover.
    Returns:
        Traces A, then B; x = "cell 0", "cell 1", ...
    Example:
        >>> fig = cell_flops_pair(trace_a.cells_frame(), trace_b.cells_frame(), dense_cell_flops(models))
    """
    title = "FLOPs per cell"
    if cells_a.empty or cells_b.empty:
        return message_figure(title, NO_ROUTER)
    for frame in (cells_a, cells_b):
        require(frame, ("cell", "flops", "branches_ran"), "cell_flops_pair")
        one_sample(frame, "cell_flops_pair")
    order = sorted(cells_a["cell"].unique())
    if sorted(cells_b["cell"].unique()) != order:
        raise ValueError("cell_flops_pair compares two images in one network; these frames have different cells")
    labels = cell_labels(cells_a)
    x = [cell_label(int(c)) for c in order]
    dense = None
    if dense_cell_flops is not None:
        if len(dense_cell_flops) != len(order):
            raise ValueError(f"dense_cell_flops has {len(dense_cell_flops)} values for {len(order)} cells")
        dense = np.asarray(dense_cell_flops, dtype=float)
    fig = go.Figure()
    totals = []
    for side, frame, color in (("A", cells_a, BLUE), ("B", cells_b, ORANGE)):
        rows = frame.set_index("cell").loc[order]
        used = rows["flops"].to_numpy(dtype=float)
        totals.append(used.sum())
        hover = [
            f"{labels[c]}, image {side}<br>{used[j]:,.0f} FLOPs · {int(rows['branches_ran'].iat[j])} branches ran"
            + (f"<br>{used[j] / dense[j]:.0%} of the dense cell" if dense is not None else "")
            for j, c in enumerate(order)
        ]
        fig.add_trace(
            go.Bar(
                x=x, y=used, name=f"image {side}", marker_color=color, hovertext=hover,
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )  # fmt: skip
    fig.update_yaxes(title=FLOPS_UNIT)
    subtitle = f"all cells: A {totals[0] / 1e6:.2f} M · B {totals[1] / 1e6:.2f} M"
    fig = layout(fig, title, subtitle, height=380, barmode="group", legend=legend_below())
    fig.update_layout(margin={"b": LEGEND_ROOM})
    return fig
