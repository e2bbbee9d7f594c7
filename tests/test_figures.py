"""Figure builders: the data inside each figure matches the trace or evaluation frame it was built from.

Route frames come from a real (random-init, seeded) DRNet on real Fashion-MNIST test images
with a threshold and top-k that leave some branches skipped; the eval.json-shaped frames
are computed from that model's traces the way evaluate.py defines them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from app.figures import common, dataset, images, routing
from drnets.data import load_dataset, normalization, to_input
from drnets.model import create_model
from drnets.ops import PRIMITIVES
from drnets.router import RoutingPolicy
from drnets.routing_stats import routing_stats

THRESHOLD = 0.15  # random-init gates sit near 1/7 ≈ 0.14, so this runs some branches and skips others
TOP_K = 2  # and this skips some branches that passed the threshold
N_IMAGES = 30


@pytest.fixture(scope="module")
def routed():
    torch.manual_seed(0)
    model = create_model("drnet", channels=4, num_cells=3, num_nodes=2).eval()
    data = load_dataset("fashion-mnist", "test").subset(N_IMAGES)
    x = to_input(data.images, *normalization("fashion-mnist", 1))
    with torch.no_grad():
        _, trace = model(x, RoutingPolicy(THRESHOLD, TOP_K))
    return model, data, x, trace


@pytest.fixture(scope="module")
def one(routed):
    _, _, _, trace = routed
    branches = trace.branches_frame()
    return branches[branches["sample"] == 0].reset_index(drop=True)


@pytest.fixture(scope="module")
def per_class(routed):
    _, data, _, trace = routed
    samples = trace.samples_frame(data.class_names)
    samples["label"] = data.labels.numpy()
    samples["correct"] = samples["pred"] == samples["label"]
    frame = (
        samples.groupby("label")
        .agg(
            n=("pred", "size"),
            accuracy=("correct", "mean"),
            flops_mean=("flops", "mean"),
            params_used_mean=("params", "mean"),
        )
        .reset_index()
        .rename(columns={"label": "index"})
    )
    frame["class"] = [data.class_names[i] for i in frame["index"]]
    return frame


@pytest.fixture(scope="module")
def usage(routed):
    _, data, _, trace = routed
    branches = trace.branches_frame()
    branches["class"] = [data.class_names[i] for i in data.labels.numpy()[branches["sample"]]]
    return branches.groupby(["class", "cell", "branch"], sort=False)["ran"].mean().reset_index(name="usage")


@pytest.fixture(scope="module")
def sweep(routed):
    model, data, x, _ = routed
    rows = []
    for threshold in (0.0, 0.12, 0.14, 0.16, 0.3):
        with torch.no_grad():
            logits, trace = model(x, RoutingPolicy(threshold, None))
        rows.append(
            {
                "threshold": threshold,
                "accuracy": float((logits.argmax(1) == data.labels).float().mean()),
                "flops_mean": float(trace.flops.float().mean()),
                "params_used_mean": float(trace.params.float().mean()),
            }
        )
    return pd.DataFrame(rows)


def _hover(trace: go.Heatmap) -> np.ndarray:
    return np.asarray(trace.hovertext, dtype=object)


# ---- labels ----


def test_labels_read_like_words():
    assert common.branch_label("sep_conv_3x3") == "sep conv 3×3"
    assert common.branch_label("skip_connect") == "skip connect"
    assert common.edge_label(0, 2) == "in0→n0" and common.edge_label(2, 3) == "n0→n1"
    assert common.cell_label(0, False) == "cell 0 (normal)" and common.cell_label(2, True) == "cell 2 (reduction)"
    assert common.branch_color("sep_conv_3x3") != common.branch_color("sep_conv_5x5")


def test_the_model_under_test_runs_some_branches_and_skips_others(one):
    # Without this the ran/skipped checks below would pass vacuously.
    assert one["ran"].any() and not one["ran"].all()
    assert ((one["gate"] >= THRESHOLD) & ~one["ran"]).any(), "top-k should skip a branch above t"


# ---- gate heatmap ----


def test_gate_heatmap_z_is_the_gates_and_marks_what_ran(one):
    fig = routing.gate_heatmap(one, THRESHOLD)
    heat, veil = fig.data
    names = list(one["branch"].unique())
    expected = one.pivot(index=["cell", "edge"], columns="branch", values="gate")[names].to_numpy()
    ran = one.pivot(index=["cell", "edge"], columns="branch", values="ran")[names].to_numpy().astype(bool)
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float), expected)
    assert list(heat.x) == [common.branch_label(b) for b in names]
    np.testing.assert_array_equal(np.asarray(heat.text) == "●", ran)
    np.testing.assert_array_equal(np.isnan(np.asarray(veil.z, dtype=float)), ran)  # the veil covers skipped only
    cells_axis, edges_axis = heat.y
    assert cells_axis[0] == "cell 0 (normal)" and cells_axis[-1] == "cell 2 (reduction)"
    assert edges_axis[0] == "in0→n0" and edges_axis[-1] == "n0→n1"
    assert len(edges_axis) == one[["cell", "edge"]].drop_duplicates().shape[0]


def test_gate_heatmap_shows_the_threshold_and_explains_every_cell(one):
    fig = routing.gate_heatmap(one, THRESHOLD)
    heat = fig.data[0]
    assert f"t = {THRESHOLD:.2f}" in fig.layout.title.subtitle.text
    assert f"t = {THRESHOLD:.2f}" in heat.colorbar.ticktext
    assert THRESHOLD in heat.colorbar.tickvals
    hover = _hover(heat)
    names = list(one["branch"].unique())
    gates = one.pivot(index=["cell", "edge"], columns="branch", values="gate")[names].to_numpy()
    ran = one.pivot(index=["cell", "edge"], columns="branch", values="ran")[names].to_numpy().astype(bool)
    for (i, j), text in np.ndenumerate(hover):
        assert ("✓ ran" in text) == ran[i, j]
        assert common.branch_label(names[j]) in text and f"{gates[i, j]:.3f}" in text
        if not ran[i, j] and gates[i, j] >= THRESHOLD:
            assert "top-k" in text
    np.testing.assert_array_equal(_hover(fig.data[1]), hover)  # the veil must not hide the explanation
    assert fig.layout.template.layout.paper_bgcolor == "white"


def _assert_short_branch_ticks(fig: go.Figure) -> None:
    """Column names short and upright, one per column, above the plot: seven fit a phone's width."""
    heat, axis = fig.data[0], fig.layout.xaxis
    assert list(axis.tickvals) == list(heat.x)
    assert all(len(t) <= 8 for t in axis.ticktext), list(axis.ticktext)
    assert len(set(axis.ticktext)) == len(axis.ticktext)
    assert axis.tickangle == -90 and axis.side == "top"


def _assert_reads_on_a_phone(fig: go.Figure) -> None:
    """Subtitle lines short enough for a 390 px screen; colour bars lie flat under the plot."""
    lines = (fig.layout.title.subtitle.text or "").split("<br>")
    assert all(len(line) <= common.SUBTITLE_CHARS for line in lines), lines
    for trace in fig.data:
        if getattr(trace, "showscale", None) is not False and trace.type == "heatmap":
            assert trace.colorbar.orientation == "h"


def test_gate_heatmap_branch_names_fit_a_narrow_chart(one):
    assert [common.branch_short(b) for b in PRIMITIVES] == [
        "sep 3×3", "sep 5×5", "dil 3×3", "dil 5×5", "max pool", "avg pool", "skip"
    ]  # fmt: skip
    fig = routing.gate_heatmap(one, THRESHOLD)
    _assert_short_branch_ticks(fig)
    _assert_reads_on_a_phone(fig)


def test_long_subtitles_wrap_and_widen_the_top_margin():
    short = common.layout(go.Figure(), "title", "one short line")
    long = common.layout(go.Figure(), "title", "word " * 40)
    lines = long.layout.title.subtitle.text.split("<br>")
    assert len(lines) == 4 and all(len(line) <= common.SUBTITLE_CHARS for line in lines)
    assert long.layout.margin.t - short.layout.margin.t == 3 * common.SUBTITLE_LINE_PX
    assert long.layout.height - short.layout.height == 3 * common.SUBTITLE_LINE_PX


def test_gate_heatmap_refuses_several_samples_and_explains_static_models(routed):
    _, _, _, trace = routed
    with pytest.raises(ValueError, match="one image"):
        routing.gate_heatmap(trace.branches_frame(), THRESHOLD)
    static = create_model("mobilenetv2").eval()
    with torch.no_grad():
        _, static_trace = static(torch.zeros(1, 1, 28, 28))
    fig = routing.gate_heatmap(static_trace.branches_frame(), THRESHOLD)
    assert not fig.data and "no router" in fig.layout.annotations[0].text
    assert "no router" in routing.route_sankey(static_trace.branches_frame()).layout.annotations[0].text


# ---- route Sankey ----


def test_route_sankey_links_are_exactly_the_branches_that_ran(one):
    fig = routing.route_sankey(one)
    sankey = fig.data[0]
    node_ids = list(sankey.node.customdata)  # hover text names the cell and node unambiguously
    links = sankey.link
    branch_names = {common.branch_label(b) for b in one["branch"].unique()}
    drawn = sorted(
        (node_ids[s], node_ids[t], label, round(v, 6))
        for s, t, label, v in zip(links.source, links.target, links.label, links.value, strict=True)
        if label in branch_names
    )
    cells = {0: "cell 0 (normal)", 1: "cell 1 (reduction)", 2: "cell 2 (reduction)"}

    def node_text(cell: int, state: int) -> str:
        if state >= 2:
            return f"{cells[cell]}, node {common.state_label(state)}: sum of the branches that ran into it"
        previous = cell - (2 - state)  # DARTS wiring: in0 = cell k-2, in1 = cell k-1, else the stem
        if previous < 0:
            return "the image after the stem convolution"
        return f"{cells[previous]}: output = its nodes concatenated"

    ran = one[one["ran"]]
    expected = sorted(
        (node_text(r.cell, r.src), node_text(r.cell, r.dst), common.branch_label(r.branch), round(float(r.gate), 6))
        for r in ran.itertuples()
    )
    assert drawn == expected
    colors = [c for c, label in zip(links.color, links.label, strict=True) if label in branch_names]
    assert len(colors) == len(ran)
    for color, label in zip(colors, [lab for lab in links.label if lab in branch_names], strict=True):
        raw = next(b for b in one["branch"].unique() if common.branch_label(b) == label)
        r, g, b = (int(common.branch_color(raw)[i : i + 2], 16) for i in (1, 3, 5))
        assert color.startswith(f"rgba({r},{g},{b},")
    assert all("gate weight" in h for h, lab in zip(links.customdata, links.label, strict=True) if lab in branch_names)
    assert f"{len(ran)} branches ran" in fig.layout.title.subtitle.text


def test_route_sankey_says_so_when_nothing_ran(one):
    fig = routing.route_sankey(one.assign(ran=False))
    assert not fig.data and "No branch ran" in fig.layout.annotations[0].text


def test_route_sankey_concat_links_carry_each_nodes_inflow(one):
    sankey = routing.route_sankey(one).data[0]
    links = sankey.link
    concat = [v for v, label in zip(links.value, links.label, strict=True) if label == "concat"]
    inflow = one[one["ran"]].groupby(["cell", "dst"])["gate"].sum()
    np.testing.assert_allclose(sorted(concat), sorted(inflow.to_numpy()), rtol=1e-6)


# ---- per-cell FLOPs ----


def test_cell_flops_bars_heights_are_the_cells_frame(routed):
    model, _, _, trace = routed
    cells = trace.cells_frame()
    first = cells[cells["sample"] == 0]
    table = model.cost_table(28, 28)
    dense = (table.cell_flops + table.branch_flops.sum(dim=(1, 2))).tolist()
    fig = routing.cell_flops_bars(first, dense)
    dense_bar, used_bar = fig.data
    np.testing.assert_array_equal(dense_bar.y, dense)
    np.testing.assert_array_equal(used_bar.y, first["flops"].to_numpy())
    assert list(used_bar.x) == ["cell 0 (normal)", "cell 1 (reduction)", "cell 2 (reduction)"]
    assert list(used_bar.text) == [f"{u / d:.0%}" for u, d in zip(first["flops"], dense, strict=True)]
    assert all("branches ran" in h for h in used_bar.hovertext)
    assert fig.layout.yaxis.title.text == "FLOPs (2×MACs)"
    assert used_bar.y.sum() < sum(dense)  # some branches were skipped, so cost fell below dense

    several = routing.cell_flops_bars(cells[cells["sample"] < 3])
    assert [bar.name for bar in several.data] == ["image 0", "image 1", "image 2"]
    with pytest.raises(ValueError, match="cells"):
        routing.cell_flops_bars(first, dense[:2])


# ---- data-set views ----


def test_sweep_curve_puts_points_and_the_current_one_where_they_belong(sweep):
    current = (float(sweep["flops_mean"].iloc[2]), float(sweep["accuracy"].iloc[2]))
    fig = dataset.sweep_curve(sweep, current=current, baselines={"MobileNetV2": (1.2e7, 0.93)})
    curve, baseline, star = fig.data
    ordered = sweep.sort_values("flops_mean")
    np.testing.assert_allclose(curve.x, ordered["flops_mean"])
    np.testing.assert_allclose(curve.y, ordered["accuracy"])
    np.testing.assert_allclose(np.asarray(curve.customdata)[:, 0], ordered["threshold"])
    assert "threshold" in curve.hovertemplate
    assert (star.x[0], star.y[0]) == current and star.marker.symbol == "star"
    assert baseline.text == ("MobileNetV2",) and (baseline.x[0], baseline.y[0]) == (1.2e7, 0.93)
    assert fig.layout.xaxis.title.text == "mean FLOPs (2×MACs) per image"
    assert dataset.sweep_curve(sweep.iloc[:0]).layout.annotations  # static models: a message, no crash


def test_sweep_curve_keeps_a_far_baseline_from_squeezing_the_curve(sweep):
    # A static baseline ~10x DRNet's cost (as MobileNetV2 is next to the trained DRNet).
    far = float(sweep["flops_mean"].max()) * 10
    fig = dataset.sweep_curve(sweep, baselines={"MobileNetV2": (far, 0.9)})
    curve, axis = fig.data[0], fig.layout.xaxis
    assert axis.type == "log"
    low, high = (10**v for v in axis.range)
    points = [*curve.x, far]
    assert low < min(points) and max(points) < high and high / low < 5 * max(points) / min(points)
    assert all(low <= v <= high for v in axis.tickvals) and len(axis.tickvals) >= 2
    assert all(t.endswith(("k", "M", "G")) for t in axis.ticktext)  # "20M", not "2e+07"
    labelled = {t for t in curve.text if t}
    assert labelled == {f"t={sweep['threshold'].min():g}", f"t={sweep['threshold'].max():g}"}


def test_class_flops_bars_heights_are_the_per_class_means(per_class, routed):
    _, _, _, trace = routed
    fig = dataset.class_flops_bars(per_class, dense_flops=trace.dense_flops)
    bars = fig.data[0]
    ordered = per_class.sort_values("flops_mean", ascending=False)
    np.testing.assert_allclose(bars.x, ordered["flops_mean"])
    assert list(bars.y) == list(ordered["class"])
    assert fig.layout.yaxis.autorange == "reversed"  # most expensive class on top
    assert fig.layout.shapes[0].x0 == trace.dense_flops


def test_branch_usage_heatmap_by_class_and_by_cell(usage):
    by_class = dataset.branch_usage_heatmap(usage).data[0]
    expected = usage.groupby(["class", "branch"])["usage"].mean().unstack("branch")
    names = [b for b in usage["branch"].unique()]
    rows = list(dict.fromkeys(usage["class"]))
    np.testing.assert_allclose(np.asarray(by_class.z, dtype=float), expected.loc[rows, names].to_numpy())
    assert list(by_class.y) == rows and list(by_class.x) == [common.branch_label(b) for b in names]

    one_cell = dataset.branch_usage_heatmap(usage[usage["cell"] == 1])
    assert "in cell 1" in one_cell.layout.title.subtitle.text

    cell_usage = usage.groupby(["cell", "branch"])["usage"].mean().reset_index()
    by_cell = dataset.branch_usage_heatmap(cell_usage)
    assert list(by_cell.data[0].y) == ["cell 0", "cell 1", "cell 2"]
    assert "by cell" in by_cell.layout.title.text
    assert "ran on" in by_cell.data[0].hovertext[0][0]
    for fig in (dataset.branch_usage_heatmap(usage), by_cell):
        _assert_short_branch_ticks(fig)
        _assert_reads_on_a_phone(fig)


def test_routing_table_reads_the_routing_section(routed):
    _, data, _, trace = routed
    stats = routing_stats(trace.ran, trace.flops, data.labels)
    difficulty = {"easy_classes": ["Trouser", "Bag"], "easy_classes_flops_mean": 9e6, "hard_classes_flops_mean": 10e6}
    table = dataset.routing_table(stats, difficulty)
    assert list(table.columns) == ["statistic", "value", "meaning"]
    rows = dict(zip(table["statistic"], table["value"], strict=True))
    assert list(rows) == [
        "distinct routes", "edges that vary", "FLOPs p90/p10", "route-class information", "easy classes' cost",
    ]  # fmt: skip
    assert rows["distinct routes"] == str(stats["distinct_routes"])
    assert rows["edges that vary"] == f"{stats['edges_varying']} of {stats['edges']}"
    assert rows["FLOPs p90/p10"] == f"{stats['flops_p90_p10']:.2f}×"
    assert rows["route-class information"].startswith(f"{stats['route_class_information_bits']:.2f} bits")
    assert rows["easy classes' cost"] == "-10.0%"
    assert "2 most accurate classes" in table["meaning"].iloc[-1]
    assert all(len(m) < 200 for m in table["meaning"])  # one short sentence each
    static = dict(stats, flops_p90_p10=None, route_class_information_share=None)
    no_gap = dataset.routing_table(static, {"easy_classes_flops_mean": None, "hard_classes_flops_mean": None})
    assert len(no_gap) == 4 and no_gap["value"].iloc[2] == "n/a"


def test_class_accuracy_bars_one_series_per_model(per_class):
    better = per_class.assign(accuracy=np.clip(per_class["accuracy"] + 0.2, 0, 1))
    fig = dataset.class_accuracy_bars({"DRNet": per_class, "MobileNetV2": better})
    drnet, mobile = fig.data
    ordered = per_class.sort_values("index")
    np.testing.assert_allclose(drnet.x, ordered["accuracy"])
    np.testing.assert_allclose(mobile.x, np.clip(ordered["accuracy"] + 0.2, 0, 1))
    overall = (per_class["accuracy"] * per_class["n"]).sum() / per_class["n"].sum()
    assert drnet.name == f"DRNet (all classes: {overall:.1%})"
    assert fig.layout.xaxis.tickformat == ".0%"
    legend = fig.layout.legend  # at the figure's bottom edge, below the axis: never over the subtitle
    assert (legend.orientation, legend.yref, legend.y, legend.yanchor) == ("h", "container", 0, "bottom")
    assert fig.layout.margin.b >= 90


# ---- one image ----


def test_prediction_bars_highest_on_top_in_percent(routed):
    _, data, _, trace = routed
    probs = trace.probs[0].tolist()
    fig = images.prediction_bars(probs, data.class_names, top_k=3, title="DRNet")
    bars = fig.data[0]
    order = np.argsort(probs)[::-1][:3]
    assert list(bars.y) == [data.class_names[i] for i in order]
    np.testing.assert_allclose(bars.x, np.asarray(probs)[order])
    assert list(bars.text) == [f"{probs[i]:.1%}" for i in order]
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.title.text == "DRNet"
    with pytest.raises(ValueError, match="class names"):
        images.prediction_bars(probs, data.class_names[:5])


def test_prediction_bars_labels_stay_inside_the_plot(routed):
    _, data, _, _ = routed
    # A confident prediction (95%), as the trained model gives: the long bar's label goes inside it.
    probs = torch.softmax(torch.arange(10.0) * 3, dim=0).tolist()
    fig = images.prediction_bars(probs, data.class_names, top_k=3)
    bars = fig.data[0]
    assert bars.x[0] > 0.9 and list(bars.textposition) == ["inside", "outside", "outside"]
    assert tuple(fig.layout.xaxis.range) == (0, 1.0)  # outside labels only on bars below 50%


def test_attribution_overlay_blends_the_heatmap_over_what_the_model_saw(routed):
    _, data, _, _ = routed
    image = data.images[0, :, :, 0].numpy()
    heat = np.zeros(image.shape)
    heat[0, 0], heat[0, 1] = 1.0, 0.25
    picture = images.attribution_overlay(heat, image, size=224)
    assert picture.shape == (224, 224, 3) and picture.dtype == np.uint8  # 8x8 blocks per pixel
    blocks = picture[::8, ::8]
    np.testing.assert_array_equal(blocks[1:, :, 0], image[1:])  # importance 0: the gray image, untouched
    assert (blocks[1:, :, 0] == blocks[1:, :, 2]).all()
    top = np.rint(image[0, 0] * 0.15 + np.array([220, 0, 0]) * 0.85)
    np.testing.assert_array_equal(blocks[0, 0], top)  # importance 1: mostly red
    np.testing.assert_array_equal(blocks[0, 1], np.rint(image[0, 1] * 0.75 + np.array([255, 200, 0]) * 0.25))
    rgb = np.repeat(image[..., None], 3, axis=2)
    np.testing.assert_array_equal(images.attribution_overlay(heat, rgb), picture)
    with pytest.raises(ValueError, match="does not match"):
        images.attribution_overlay(heat[:10], image)
