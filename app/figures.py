"""Pure figure builders: tidy frames (from ``RoutingTrace`` or ``eval.json``) in, Plotly figures out.

No Streamlit here and no ``.show()``: pages call ``st.plotly_chart`` on the result and tests
check ``fig.data``. The figures are meant for a first-time user and for a projector, so
every one says in its title what it shows, names its units ("FLOPs (2×MACs)", "%"), uses
human branch names ("sep conv 3×3"), a fixed colour per branch, and hover text that
explains each mark. Accuracies and probabilities are fractions in [0, 1] (as in
``eval.json``); the axes format them as percentages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from drnets.ops import PRIMITIVES

TEMPLATE = "plotly_white"
FLOPS_UNIT = "FLOPs (2×MACs)"  # the project's one cost convention (torch's FlopCounterMode)
ACCENT = "#1f78b4"  # "this image" / "this model" bars
MUTED = "#c7ccd4"  # dense reference, runner-up predictions
TITLE_MARGIN = 80  # px above the plot: title plus subtitle
TOP_WITH_TICKS = TITLE_MARGIN + 45  # title, subtitle, then two-line branch names above a heatmap
ROW_PX = 18  # height of one heatmap row or bar; keeps figures compact on a projector
INSIDE_TEXT_FROM = 0.5  # bars at least this long carry their % label inside, so it never overruns the plot

# ColorBrewer "Paired": one hue per branch family (sep conv blue, dil conv green, pools
# orange), dark for the small kernel, light for the large one; skip is purple.
BRANCH_COLORS = dict(
    zip(
        PRIMITIVES,
        ("#1f78b4", "#a6cee3", "#33a02c", "#b2df8a", "#ff7f00", "#fdbf6f", "#6a3d9a"),
        strict=True,
    )
)
EXTRA_COLORS = ("#e31a1c", "#fb9a99", "#cab2d6", "#b15928", "#ffff99")  # branches outside PRIMITIVES
MODEL_COLORS = ("#1f78b4", "#ff7f00", "#33a02c", "#6a3d9a", "#e31a1c")


# ---- labels and colours shared by every figure (pages may use them in tables too) ----


def branch_label(name: str) -> str:
    """'sep_conv_3x3' -> 'sep conv 3×3': what a reader, not a programmer, expects."""
    return re.sub(r"(\d)x(\d)", "\\1×\\2", name.replace("_", " "))


def branch_tick(name: str) -> str:
    """Two-line axis tick, 'sep conv<br>3×3': seven one-line names overlap in a ~700 px chart."""
    words = branch_label(name).rsplit(" ", 1)
    return "<br>".join(words)


def state_label(state: int) -> str:
    """States 0 and 1 are the cell's two inputs ('in0', 'in1'); 2.. its intermediate nodes ('n0'..)."""
    return f"in{state}" if state < 2 else f"n{state - 2}"


def edge_label(src: int, dst: int) -> str:
    return f"{state_label(src)}→{state_label(dst)}"


def cell_label(cell: int, reduction: bool | None = None) -> str:
    """'cell 2 (reduction)'; without the flag (e.g. usage tables) just 'cell 2'."""
    if reduction is None:
        return f"cell {cell}"
    return f"cell {cell} ({'reduction' if reduction else 'normal'})"


def branch_color(name: str) -> str:
    """The same colour for a branch in every figure."""
    if name in BRANCH_COLORS:
        return BRANCH_COLORS[name]
    return EXTRA_COLORS[sum(map(ord, name)) % len(EXTRA_COLORS)]


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _branch_order(names: pd.Series) -> list[str]:
    """Known branches in PRIMITIVES order, then any others in order of appearance."""
    present = list(dict.fromkeys(names))
    return [b for b in PRIMITIVES if b in present] + [b for b in present if b not in PRIMITIVES]


def _cell_labels(frame: pd.DataFrame) -> dict[int, str]:
    """Cell number -> label, with '(reduction)'/'(normal)' when the frame says which."""
    if "reduction" in frame:
        flags = frame.groupby("cell")["reduction"].first()
        return {int(c): cell_label(int(c), bool(r)) for c, r in flags.items()}
    return {int(c): cell_label(int(c)) for c in sorted(frame["cell"].unique())}


def _one_sample(frame: pd.DataFrame, figure: str) -> None:
    if "sample" in frame and frame["sample"].nunique() > 1:
        raise ValueError(
            f"{figure} draws one image; the frame holds {frame['sample'].nunique()} samples. "
            "Select one first, e.g. frame[frame['sample'] == sample_id]."
        )


def _require(frame: pd.DataFrame, columns: Sequence[str], figure: str) -> None:
    missing = [c for c in columns if c not in frame]
    if missing:
        raise ValueError(f"{figure} needs columns {list(columns)}; missing {missing}")


def _layout(
    fig: go.Figure, title: str, subtitle: str = "", height: float = 360, top: int = TITLE_MARGIN, **kwargs: object
) -> go.Figure:
    """The look every figure shares; ``top`` grows when x labels sit above the plot."""
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "subtitle": {"text": subtitle}, "x": 0.01, "xanchor": "left"},
        height=int(height),
        margin={"t": top, "b": 40, "l": 10, "r": 10},
        **kwargs,
    )
    return fig


def _branch_ticks(fig: go.Figure, names: list[str]) -> None:
    """Branch names above the columns, two short lines each and never rotated, so they
    stay clear of the subtitle at any width (the heatmap's x stays the full ``branch_label``)."""
    fig.update_xaxes(
        side="top",
        tickmode="array",
        tickvals=[branch_label(b) for b in names],
        ticktext=[branch_tick(b) for b in names],
        tickangle=0,
        tickfont={"size": 11},
    )


def _message_figure(title: str, message: str) -> go.Figure:
    """An empty figure that says why there is nothing to draw (e.g. a static model has no router)."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font={"size": 15})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, height=200)


NO_ROUTER = "This model has no router: every layer runs for every image."


# ---- one image's route ----


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
        >>> fig = gate_heatmap(trace.select([0]).branches_frame(), model.policy.threshold)
    """
    title = "Which branches ran on each edge"
    if branches.empty:
        return _message_figure(title, NO_ROUTER)
    _require(branches, ("cell", "edge", "src", "dst", "branch", "gate", "ran"), "gate_heatmap")
    _one_sample(branches, "gate_heatmap")
    names = _branch_order(branches["branch"])
    gates = branches.pivot(index=["cell", "edge"], columns="branch", values="gate")[names]
    ran = branches.pivot(index=["cell", "edge"], columns="branch", values="ran")[names].astype(bool)
    cells = _cell_labels(branches)
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
    ticks = {0.0: "0", zmax: f"{zmax:.2f}", threshold: f"t = {threshold:.2f}"}  # t wins a tie
    fig = go.Figure()
    fig.add_trace(
        go.Heatmap(
            z=gates.to_numpy(),
            x=x,
            y=y,
            zmin=0.0,
            zmax=zmax,
            colorscale="Blues",
            text=np.where(ran.to_numpy(), "●", ""),
            texttemplate="%{text}",
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            xgap=1,
            ygap=1,
            name="gate weight",
            colorbar={
                "title": {"text": "gate weight"},
                "tickvals": list(ticks),
                "ticktext": list(ticks.values()),
                "thickness": 14,
            },
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
    _branch_ticks(fig, names)
    n_ran, n_all = int(ran.to_numpy().sum()), ran.size
    subtitle = (
        f"● ran: gate weight ≥ t = {threshold:.2f} · faded: skipped, never computed · {n_ran} of {n_all} branches ran"
    )
    return _layout(fig, title, subtitle, height=TITLE_MARGIN + 115 + ROW_PX * len(gates), top=TOP_WITH_TICKS)


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
        return _message_figure(title, NO_ROUTER)
    _require(branches, ("cell", "edge", "src", "dst", "branch", "gate", "ran"), "route_sankey")
    _one_sample(branches, "route_sankey")
    cells = _cell_labels(branches)
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
            for attr, v in zip(node_attrs, (label, hover, color, x, 0.5), strict=True):
                node_attrs[attr].append(v)
        return nodes[key]

    def output(cell: int) -> int:
        p = order.index(cell)
        hover = f"{cells[cell]}: output = its nodes concatenated"
        return node(f"out{cell}", "out", hover, "#555555", (p + 1) * per_cell)

    def source(cell: int, state: int) -> int:
        if state >= 2:
            hover = f"{cells[cell]}, node {state_label(state)}: sum of the branches that ran into it"
            column = 1 + order.index(cell) * per_cell + state - 2
            return node(f"c{cell}s{state}", state_label(state), hover, "#9aa3ad", column)
        previous = order.index(cell) - (2 - state)  # in0 <- cell k-2, in1 <- cell k-1
        if previous >= 0:
            return output(order[previous])
        return node("stem", "input", "the image after the stem convolution", "#333333", 0)

    ran = branches[branches["ran"].astype(bool)].sort_values(["cell", "dst", "edge"])
    if ran.empty:
        return _message_figure(title, "No branch ran for this image: every gate weight was below the threshold.")
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
            _rgba(branch_color(row.branch), 0.6),
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
    used = _branch_order(ran["branch"])
    key = " &nbsp; ".join(f"<span style='color:{branch_color(b)}'>■</span> {branch_label(b)}" for b in used)
    fig.add_annotation(text=key, x=0, y=-0.06, xref="paper", yref="paper", showarrow=False, xanchor="left")
    for p, c in enumerate(order):  # a header over each cell's columns
        middle = 0.001 + 0.998 * (1 + p * per_cell + (per_cell - 1) / 2) / (last_column + 0.5)
        fig.add_annotation(
            text=f"<b>{cells[c]}</b>", x=middle, y=1.0, xref="paper", yref="paper", showarrow=False, yanchor="bottom"
        )
    subtitle = f"{len(ran)} branches ran · link width = gate weight · colour = branch (hover a link for details)"
    fig = _layout(fig, title, subtitle, height=460, top=TITLE_MARGIN + 20)
    fig.update_layout(margin={"b": 50})
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
        return _message_figure(title, NO_ROUTER)
    _require(cells, ("sample", "cell", "flops", "branches_ran"), "cell_flops_bars")
    labels = _cell_labels(cells)
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
    legend = {"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"}
    return _layout(fig, title, subtitle, height=340, barmode="group", legend=legend)


# ---- data-set views (frames shaped like eval.json) ----


def _si(value: float) -> str:
    """12e6 -> '12M', 3e5 -> '300k': short FLOPs tick labels."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:g}{suffix}"
    return f"{value:g}"


def _log_ticks(low: float, high: float) -> list[float]:
    """1-2-3-5 steps of each decade in [low, high]: a few readable ticks on a log axis
    (only 1-2-5, then only powers of ten, when the range spans several decades)."""
    decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
    for steps in ((1, 2, 3, 5), (1, 2, 5), (1,)):
        ticks = [s * 10.0**d for d in decades for s in steps if low <= s * 10.0**d <= high]
        if len(ticks) <= 8:
            break
    return ticks


def sweep_curve(
    sweep: pd.DataFrame,
    current: tuple[float, float] | None = None,
    baselines: dict[str, tuple[float, float]] | None = None,
) -> go.Figure:
    """Test accuracy vs mean FLOPs, one point per routing threshold t.

    Args:
        sweep: columns threshold, accuracy (fraction), flops_mean, params_used_mean.
        current: (mean FLOPs, accuracy) of the threshold now in force, drawn as a star.
        baselines: name -> (mean FLOPs, accuracy) of static models, drawn as labelled diamonds.
    Example:
        >>> fig = sweep_curve(pd.DataFrame(ev["sweep"]), baselines={"MobileNetV2": (1.2e7, 0.93)})
    """
    title = "Accuracy vs compute over the test set"
    if sweep.empty:
        return _message_figure(title, "No threshold sweep: only routed models (DRNet) have one.")
    _require(sweep, ("threshold", "accuracy", "flops_mean", "params_used_mean"), "sweep_curve")
    data = sweep.sort_values("flops_mean")
    # Only the two ends of the threshold range get a "t=" label (the lowest t above its point,
    # the highest below): the thresholds in between often cost nearly the same and their labels
    # would pile up. Every point still names its t on hover.
    lowest, highest = data["threshold"].min(), data["threshold"].max()
    labels = {lowest: (f"t={lowest:g}", "top center"), highest: (f"t={highest:g}", "bottom center")}
    fig = go.Figure(
        go.Scatter(
            x=data["flops_mean"],
            y=data["accuracy"],
            mode="lines+markers+text",
            text=[labels.get(t, ("", ""))[0] for t in data["threshold"]],
            textposition=[labels.get(t, ("", "top center"))[1] for t in data["threshold"]],
            textfont={"size": 11, "color": "#555"},
            cliponaxis=False,
            customdata=data[["threshold", "params_used_mean"]].to_numpy(),
            name="DRNet at threshold t",
            line={"color": ACCENT},
            hovertemplate=(
                "threshold t = %{customdata[0]:.3g}<br>accuracy %{y:.1%}<br>mean %{x:.3s} FLOPs per image"
                "<br>mean params used %{customdata[1]:.3s}<extra></extra>"
            ),
        )
    )
    for i, (name, (flops, accuracy)) in enumerate((baselines or {}).items()):
        fig.add_trace(
            go.Scatter(
                x=[flops],
                y=[accuracy],
                mode="markers+text",
                text=[name],
                textposition="bottom center",
                cliponaxis=False,
                marker={"symbol": "diamond", "size": 12, "color": MODEL_COLORS[(i + 1) % len(MODEL_COLORS)]},
                name=name,
                hovertemplate=f"{name} (static)<br>accuracy %{{y:.1%}}<br>%{{x:.3s}} FLOPs per image<extra></extra>",
            )
        )
    if current is not None:
        fig.add_trace(
            go.Scatter(
                x=[current[0]],
                y=[current[1]],
                mode="markers",
                marker={"symbol": "star", "size": 18, "color": "#e31a1c", "line": {"width": 1, "color": "white"}},
                cliponaxis=False,
                name="current threshold",
                hovertemplate="current threshold<br>accuracy %{y:.1%}<br>mean %{x:.3s} FLOPs per image<extra></extra>",
            )
        )
    # Log x: a static baseline ten times DRNet's cost would otherwise squeeze the curve into the left edge.
    flops = [*data["flops_mean"], *(f for f, _ in (baselines or {}).values())]
    flops += [current[0]] if current is not None else []
    low, high = max(min(flops), 1.0) / 1.3, max(flops) * 1.3
    ticks = _log_ticks(low, high)
    fig.update_xaxes(
        title=f"mean {FLOPS_UNIT} per image",
        type="log",
        range=[np.log10(low), np.log10(high)],
        tickmode="array",
        tickvals=ticks,
        ticktext=[_si(v) for v in ticks],
    )
    fig.update_yaxes(title="test accuracy", tickformat=".0%")
    subtitle = "each point is one routing threshold t: a lower t runs more branches, costs more FLOPs"
    return _layout(fig, title, subtitle, height=380, legend={"orientation": "h", "y": -0.2})


def class_flops_bars(per_class: pd.DataFrame, dense_flops: float | None = None) -> go.Figure:
    """Mean FLOPs per test image of each true class, most expensive class on top.

    Args:
        per_class: ``eval.json`` per_class rows (class, index, n, accuracy, flops_mean, params_used_mean).
        dense_flops: optional FLOPs of the dense supernet, drawn as a dashed reference line.
    """
    title = "Mean FLOPs per image, by true class"
    _require(per_class, ("class", "n", "accuracy", "flops_mean"), "class_flops_bars")
    data = per_class.sort_values("flops_mean", ascending=False)
    fig = go.Figure(
        go.Bar(
            x=data["flops_mean"],
            y=data["class"],
            orientation="h",
            marker_color=ACCENT,
            text=[f"{v / 1e6:.2f} M" for v in data["flops_mean"]],
            textposition="auto",
            customdata=data[["n", "accuracy"]].to_numpy(),
            hovertemplate=(
                "class %{y}: mean %{x:,.0f} FLOPs per image<br>"
                "over %{customdata[0]} test images, accuracy %{customdata[1]:.1%}<extra></extra>"
            ),
            name="mean FLOPs",
        )
    )
    if dense_flops is not None:
        fig.add_vline(
            x=dense_flops,
            line_dash="dash",
            line_color="#888",
            annotation_text="dense supernet",
            annotation_position="top",
        )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title=f"mean {FLOPS_UNIT} per image")
    subtitle = "the router spends more on some classes than on others"
    return _layout(fig, title, subtitle, height=TITLE_MARGIN + 70 + ROW_PX * 1.5 * len(data))


def branch_usage_heatmap(usage: pd.DataFrame) -> go.Figure:
    """How often each branch ran, per class or per cell.

    Args:
        usage: ``eval.json`` branch_usage rows (class, cell, branch, usage) or cell_usage
            rows (cell, branch, usage). With a class column the rows are classes, averaged
            over the cells present (filter to one cell first to see that cell alone);
            otherwise the rows are cells.
    Returns:
        One heatmap: z = usage fraction, columns the branches in PRIMITIVES order.
    """
    title = "How often each branch ran"
    if usage.empty:
        return _message_figure(title, NO_ROUTER)
    by = "class" if "class" in usage else "cell"
    _require(usage, (by, "branch", "usage"), "branch_usage_heatmap")
    names = _branch_order(usage["branch"])
    rows = list(dict.fromkeys(usage[by])) if by == "class" else sorted(usage["cell"].unique())
    table = usage.groupby([by, "branch"])["usage"].mean().unstack("branch").loc[rows, names]
    row_labels = [str(r) for r in rows] if by == "class" else [cell_label(int(r)) for r in rows]
    if by == "class":
        cells = sorted(usage["cell"].unique()) if "cell" in usage else []
        where = f"in cell {cells[0]}" if len(cells) == 1 else "averaged over all cells"
        subtitle = f"share of each class's (image, edge) pairs where the branch ran, {where}"
    else:
        subtitle = "share of (image, edge) pairs in that cell where the branch ran, over the test set"
    hover = [
        [
            f"{row_labels[i]} · {branch_label(b)}<br>ran on {table.iat[i, j]:.1%} of the edges"
            for j, b in enumerate(names)
        ]
        for i in range(len(rows))
    ]
    fig = go.Figure(
        go.Heatmap(
            z=table.to_numpy(),
            x=[branch_label(b) for b in names],
            y=row_labels,
            zmin=0.0,
            zmax=1.0,
            colorscale="Blues",
            texttemplate="%{z:.0%}",
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            xgap=1,
            ygap=1,
            colorbar={"title": {"text": "ran"}, "tickformat": ".0%", "thickness": 14},
        )
    )
    fig.update_yaxes(autorange="reversed")
    _branch_ticks(fig, names)
    height = TITLE_MARGIN + 115 + ROW_PX * 1.5 * len(rows)
    return _layout(fig, f"{title}, by {by}", subtitle, height=height, top=TOP_WITH_TICKS)


def class_accuracy_bars(per_class_by_model: dict[str, pd.DataFrame]) -> go.Figure:
    """Test accuracy of each class, one bar per model, classes in data-set order.

    Args:
        per_class_by_model: model name -> its ``eval.json`` per_class rows.
    Example:
        >>> fig = class_accuracy_bars({"DRNet": pd.DataFrame(a["per_class"]), "MobileNetV2": ...})
    """
    title = "Test accuracy per class"
    if not per_class_by_model:
        return _message_figure(title, "No evaluation results to compare.")
    fig = go.Figure()
    classes: list[str] = []
    for i, (model, frame) in enumerate(per_class_by_model.items()):
        _require(frame, ("class", "index", "n", "accuracy"), "class_accuracy_bars")
        data = frame.sort_values("index")
        classes += [c for c in data["class"] if c not in classes]
        overall = float((data["accuracy"] * data["n"]).sum() / data["n"].sum())
        fig.add_trace(
            go.Bar(
                x=data["accuracy"],
                y=data["class"],
                orientation="h",
                name=f"{model} (all classes: {overall:.1%})",
                marker_color=MODEL_COLORS[i % len(MODEL_COLORS)],
                customdata=data[["n"]].to_numpy(),
                hovertemplate=f"{model}<br>%{{y}}: %{{x:.1%}} correct of %{{customdata[0]}} test images<extra></extra>",
            )
        )
    fig.update_yaxes(categoryorder="array", categoryarray=classes, autorange="reversed")
    fig.update_xaxes(title="test accuracy", tickformat=".0%", range=[0, 1])
    height = TITLE_MARGIN + 140 + ROW_PX * len(classes) * (1 + 0.6 * len(per_class_by_model))
    fig = _layout(
        fig,
        title,
        "share of each class's test images classified correctly",
        height=height,
        barmode="group",
        # below the axis title, anchored to the figure's bottom edge: a legend that wraps onto
        # a second row in a narrow column grows into the bottom margin, never into the subtitle
        legend={"orientation": "h", "x": 0, "y": 0, "xanchor": "left", "yanchor": "bottom", "yref": "container"},
    )
    fig.update_layout(margin={"b": 100})
    return fig


# ---- one image: prediction and attribution ----


def prediction_bars(probs: Sequence[float], class_names: list[str], top_k: int = 5, title: str = "") -> go.Figure:
    """The k most probable classes as horizontal bars, highest on top, labelled in %.

    Args:
        probs: softmax probabilities of one image, one per class.
        class_names: names in the same order as ``probs``.
        top_k: how many classes to show.
        title: e.g. the model's name; defaults to "Top-k predictions".
    """
    values = np.asarray(probs, dtype=float).ravel()
    if len(values) != len(class_names):
        raise ValueError(f"{len(values)} probabilities for {len(class_names)} class names")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    top = np.argsort(-values, kind="stable")[: min(top_k, len(values))]
    fig = go.Figure(
        go.Bar(
            x=values[top],
            y=[class_names[i] for i in top],
            orientation="h",
            marker_color=[ACCENT] + [MUTED] * (len(top) - 1),
            text=[f"{v:.1%}" for v in values[top]],
            # long bars carry the label inside their end, short ones just past it, so no label
            # reaches beyond the 100% mark even in a third-width column
            textposition=["inside" if v >= INSIDE_TEXT_FROM else "outside" for v in values[top]],
            insidetextanchor="end",
            insidetextfont={"color": "white"},
            outsidetextfont={"color": "#333"},
            cliponaxis=False,
            hovertemplate="%{y}: %{x:.1%} probability (softmax of the class scores)<extra></extra>",
            name="probability",
        )
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title="probability", tickformat=".0%", range=[0, 1.0], showgrid=False)
    fig = _layout(fig, title or f"Top-{len(top)} predictions", height=110 + 30 * len(top), top=50)
    fig.update_layout(margin={"r": 20})  # room for half the "100%" tick label
    return fig


def _grayscale(image: np.ndarray) -> np.ndarray:
    """[H, W] or [H, W, C] uint8 -> float [H, W] brightness 0..255 (ITU-R 601 luma for RGB)."""
    pixels = np.asarray(image, dtype=float)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        return pixels[..., 0]
    if pixels.ndim == 3 and pixels.shape[2] >= 3:
        return pixels[..., :3] @ np.array([0.299, 0.587, 0.114])
    if pixels.ndim == 2:
        return pixels
    raise ValueError(f"expected an image of shape [H, W] or [H, W, C], got {pixels.shape}")


# Transparent where the attribution is ~0 so the garment shows through; hot where it matters.
ATTRIBUTION_COLORSCALE = [
    [0.0, "rgba(255,255,0,0)"],
    [0.25, "rgba(255,200,0,0.25)"],
    [0.6, "rgba(255,90,0,0.6)"],
    [1.0, "rgba(220,0,0,0.85)"],
]


def attribution_figure(heatmap: np.ndarray, image: np.ndarray, title: str) -> go.Figure:
    """An attribution map over the grayscale image the model saw, square pixels, no axes.

    Args:
        heatmap: [H, W] importance in [0, 1] (``Attribution.heatmap``).
        image: uint8 [H, W] or [H, W, C], exactly what the model saw (``PreparedImage.seen``).
        title: e.g. "Grad-CAM · DRNet".
    Returns:
        Trace 0: the image in gray; trace 1: the heatmap, transparent where importance is low.
    """
    gray = _grayscale(image)
    heat = np.asarray(heatmap, dtype=float)
    if heat.shape != gray.shape:
        raise ValueError(f"heatmap shape {heat.shape} does not match the image's {gray.shape}")
    fig = go.Figure()
    fig.add_trace(
        go.Heatmap(
            z=gray,
            zmin=0,
            zmax=255,
            colorscale=[[0, "black"], [1, "white"]],
            showscale=False,
            hoverinfo="skip",
            name="image",
        )
    )
    fig.add_trace(
        go.Heatmap(
            z=heat,
            zmin=0.0,
            zmax=1.0,
            colorscale=ATTRIBUTION_COLORSCALE,
            customdata=gray,
            hovertemplate=(
                "pixel (x %{x}, y %{y})<br>importance %{z:.2f} (1 = most important)"
                "<br>brightness %{customdata:.0f} of 255<extra></extra>"
            ),
            colorbar={"title": {"text": "importance"}, "tickvals": [0, 0.5, 1], "thickness": 12},
            name="importance",
        )
    )
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x", constrain="domain")
    return _layout(fig, title, height=340, top=50, plot_bgcolor="black")
