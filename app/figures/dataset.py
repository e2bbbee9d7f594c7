"""The whole test set, from ``eval.json`` and sweep.csv: accuracy vs compute, cost and accuracy per class,
branch usage, and the routing statistics as a table a teacher can read."""

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
    HIGHLIGHT,
    LIGHT_GREY,
    MODEL_COLORS,
    NO_ROUTER,
    ROW_PX,
    TITLE_MARGIN,
    TOP_WITH_TICKS,
    branch_label,
    branch_order,
    branch_ticks,
    cell_label,
    colorbar_below,
    layout,
    legend_below,
    message_figure,
    require,
)
from drnets.evaluate import SWEEP_COLUMNS


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
    """Test accuracy vs mean FLOPs, one point per routing threshold t, or per budget c for a DRNet
    whose routers read a budget (a sweep with a varying ``budget`` column).

    Args:
        sweep: columns threshold, accuracy (fraction), flops_mean, params_used_mean (and budget).
        current: (mean FLOPs, accuracy) of the setting in force, drawn as a star.
        baselines: name -> (mean FLOPs, accuracy) of static models, drawn as labelled diamonds.
    Example:
        >>> fig = sweep_curve(pd.DataFrame(ev["sweep"]), baselines={"MobileNetV2": (1.2e7, 0.93)})
    """
    title = "Accuracy vs compute over the test set"
    if sweep.empty:
        return message_figure(title, "No threshold sweep: only routed models (DRNet) have one.")
    require(sweep, SWEEP_COLUMNS, "sweep_curve")
    data = sweep.sort_values("flops_mean")
    knob = "budget" if "budget" in data and data["budget"].nunique() > 1 else "threshold"
    symbol, noun = ("c", "budget") if knob == "budget" else ("t", "threshold")
    # Only the two ends of the range get a label (the lowest value above its point, the highest
    # below): the values in between often cost nearly the same and their labels would pile up.
    # Every point still names its value on hover.
    lowest, highest = data[knob].min(), data[knob].max()
    labels = {lowest: (f"{symbol}={lowest:g}", "top center"), highest: (f"{symbol}={highest:g}", "bottom center")}
    fig = go.Figure(
        go.Scatter(
            x=data["flops_mean"],
            y=data["accuracy"],
            mode="lines+markers+text",
            text=[labels.get(v, ("", ""))[0] for v in data[knob]],
            textposition=[labels.get(v, ("", "top center"))[1] for v in data[knob]],
            textfont={"size": 11, "color": GREY},
            cliponaxis=False,
            customdata=data[[knob, "params_used_mean"]].to_numpy(),
            name=f"DRNet at {noun} {symbol}",
            line={"color": ACCENT},
            hovertemplate=(
                f"{noun} {symbol} = %{{customdata[0]:.3g}}"
                "<br>accuracy %{y:.1%}<br>mean %{x:.3s} FLOPs per image"
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
                marker={"symbol": "star", "size": 18, "color": HIGHLIGHT, "line": {"width": 1, "color": "white"}},
                cliponaxis=False,
                name=f"current {noun}",
                hovertemplate=f"current {noun}"
                + "<br>accuracy %{y:.1%}<br>mean %{x:.3s} FLOPs per image<extra></extra>",
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
    subtitle = (
        "each point is one budget c: the same weights, a higher c runs more branches, costs more FLOPs"
        if knob == "budget"
        else "each point is one routing threshold t: a lower t runs more branches, costs more FLOPs"
    )
    fig = layout(fig, title, subtitle, height=440, legend=legend_below())
    fig.update_layout(margin={"b": 110})
    return fig


def class_flops_bars(per_class: pd.DataFrame, dense_flops: float | None = None) -> go.Figure:
    """Mean FLOPs per test image of each true class, most expensive class on top.

    Args:
        per_class: ``eval.json`` per_class rows (class, index, n, accuracy, flops_mean, params_used_mean).
        dense_flops: optional FLOPs of the dense supernet, drawn as a dashed reference line.
    """
    title = "Mean FLOPs per image, by true class"
    require(per_class, ("class", "n", "accuracy", "flops_mean"), "class_flops_bars")
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
            line_color=LIGHT_GREY,
            annotation_text="dense supernet",
            annotation_position="top",
        )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title=f"mean {FLOPS_UNIT} per image")
    subtitle = "the router spends more on some classes than on others"
    return layout(fig, title, subtitle, height=TITLE_MARGIN + 70 + ROW_PX * 1.5 * len(data))


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
        return message_figure(title, NO_ROUTER)
    by = "class" if "class" in usage else "cell"
    require(usage, (by, "branch", "usage"), "branch_usage_heatmap")
    names = branch_order(usage["branch"])
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
            colorscale=GATE_SCALE,
            texttemplate="%{z:.0%}",
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            xgap=1,
            ygap=1,
            colorbar=colorbar_below("ran", tickformat=".0%"),
        )
    )
    fig.update_yaxes(autorange="reversed")
    branch_ticks(fig, names)
    height = TOP_WITH_TICKS + COLORBAR_ROOM + ROW_PX * 1.5 * len(rows)
    fig = layout(fig, f"{title}, by {by}", subtitle, height=height, top=TOP_WITH_TICKS)
    fig.update_layout(margin={"b": COLORBAR_ROOM})
    return fig


def class_accuracy_bars(per_class_by_model: dict[str, pd.DataFrame]) -> go.Figure:
    """Test accuracy of each class, one bar per model, classes in data-set order.

    Args:
        per_class_by_model: model name -> its ``eval.json`` per_class rows.
    Example:
        >>> fig = class_accuracy_bars({"DRNet": pd.DataFrame(a["per_class"]), "MobileNetV2": ...})
    """
    title = "Test accuracy per class"
    if not per_class_by_model:
        return message_figure(title, "No evaluation results to compare.")
    fig = go.Figure()
    classes: list[str] = []
    for i, (model, frame) in enumerate(per_class_by_model.items()):
        require(frame, ("class", "index", "n", "accuracy"), "class_accuracy_bars")
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
    fig = layout(
        fig,
        title,
        "share of each class's test images classified correctly",
        height=height,
        barmode="group",
        # below the axis title, anchored to the figure's bottom edge: a legend that wraps onto
        # a second row in a narrow column grows into the bottom margin, never into the subtitle
        legend=legend_below(),
    )
    fig.update_layout(margin={"b": 100})
    return fig


def routing_table(routing: dict, difficulty: dict | None = None) -> pd.DataFrame:
    """eval.json's ``routing`` section (and the easy/hard class cost gap from ``difficulty``) as rows
    of statistic, value and a one-sentence meaning, in the words of someone new to routing.

    Example:
        >>> routing_table(result["routing"], result["difficulty"])  # one row per statistic
    """
    spread = routing["flops_p90_p10"]
    share = routing["route_class_information_share"]
    rows = [
        (
            "distinct routes",
            f"{routing['distinct_routes']:,}",
            "different sets of branches the test images took; the most common route is taken by "
            f"{routing['top_route_share']:.0%} of them.",
        ),
        (
            "edges that vary",
            f"{routing['edges_varying']} of {routing['edges']}",
            f"edges where at least {routing['edge_vary_min_share']:.0%} of images run other branches than the "
            "edge's usual ones; the other edges do the same for (nearly) every image.",
        ),
        (
            "FLOPs p90/p10",
            f"{spread:.2f}×" if spread is not None else "n/a",
            f"an image at the dear end (90th percentile: {routing['flops_p90'] / 1e6:.1f} M {FLOPS_UNIT}) costs this "
            f"many times one at the cheap end (10th percentile: {routing['flops_p10'] / 1e6:.1f} M); "
            "1× = every image costs the same.",
        ),
        (
            "route-class information",
            f"{routing['route_class_information_bits']:.2f} bits" + (f" ({share:.0%})" if share is not None else ""),
            "how much an image's route tells about its class, out of the "
            f"{routing['class_entropy_bits']:.2f} bits that name the class; 0 = routes ignore the class.",
        ),
    ]
    easy = (difficulty or {}).get("easy_classes_flops_mean")
    hard = (difficulty or {}).get("hard_classes_flops_mean")
    if easy is not None and hard:
        n_easy = len(difficulty["easy_classes"])
        rows.append(
            (
                "easy classes' cost",
                f"{easy / hard - 1:+.1%}",
                f"mean FLOPs per image of the {n_easy} most accurate classes against the other classes; "
                "negative = easy classes are cheaper.",
            )
        )
    return pd.DataFrame(rows, columns=["statistic", "value", "meaning"])
