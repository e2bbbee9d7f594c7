"""Inspect: one or several images through DRNet, MobileNetV2 and the dense supernet, with the route DRNet took."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import export, picker, state, ui
from app.analysis import Analysis, ModelRun, analyse, load_calibrations
from app.costs import dense_cell_flops
from app.evaluations import load_eval, load_sweep, sweep_knob, sweep_point
from app.figures import dataset, images, routing
from app.figures.common import FLOPS_UNIT
from app.figures.network import network_diagram
from app.models import LABELS, ModelSet, load_models
from app.timing import server_timing
from drnets.ood import NOT_GARMENT, UNKNOWN_ANSWER
from drnets.upload import UploadError

FigureBuilder = Callable[[], go.Figure]  # figures are built when drawn or downloaded, not on every run
IMAGE_PX = 96  # each of the three small views: three fit side by side on a 390 px phone
ROUTE_TABS = {  # tab label -> (figure, caption)
    "Gate weights": (
        "Gate weights",
        "Each row is one edge of a cell, each column a candidate branch. The colour is the router's weight "
        "for this image; ● marks the branches that ran, faded ones were skipped and never computed.",
    ),
    "The network": (
        "Network",
        "Every cell of the network, each edge a fan of its candidate branches: the ones this image ran in colour, "
        "the skipped ones faded. *How a DRNet works* steps through it.",
    ),
    "Path through the cells": (
        "Route",
        "Only the branches that ran, from the input through every cell to the classifier; wider links carry more weight.",
    ),
    "FLOPs per cell": (
        "FLOPs per cell",
        "What each cell spent on this image next to the same cell with every branch on (the dense supernet).",
    ),
}


def main() -> None:
    st.title("Inspect an image")
    st.caption(
        "For every image, DRNet's routers decide which branches of each cell run; skipped branches cost nothing. "
        "Compare its answer and its cost with the static MobileNetV2 baseline and the dense supernet (every branch on)."
    )
    picker.render()
    settings = state.settings()
    models = load_models(settings.models_dir)
    ui.require_drnet(models)
    analyses = analyses_ui(models, settings)
    if not analyses:
        st.info(
            "Pick a sample, upload a photo or take one above to see how DRNet routes it.",
            icon=":material/arrow_upward:",
        )
        return
    focused = state.focus([a.source for a in analyses])
    current = next(a for a in analyses if a.source is focused)
    if len(analyses) > 1:
        summary_ui(analyses, models)
    figs: dict[str, FigureBuilder] = {}
    with ui.guard("drawing the predictions"):
        figs |= image_ui(current, models)
    with ui.guard("computing the costs"):
        cost_ui(current, models)
    with ui.guard("drawing the route"):
        figs |= routing_ui(current, models, settings.threshold)
    with ui.guard("drawing the accuracy-vs-FLOPs curve"):
        figs |= sweep_ui(current, models, settings)
    with ui.guard("preparing the downloads"):
        export_ui(analyses, models, settings, figs)


def analyses_ui(models: ModelSet, settings: state.Settings) -> list[Analysis]:
    """Run every image; a file that is not a usable image gets its own error and is left out."""
    analyses = []
    for source in state.images():
        try:
            with st.spinner(f"Running {ui.md(source.name)}…"):
                analyses.append(analyse(models, source, *settings.routing))
        except UploadError as err:
            st.error(f"**{ui.md(source.name)}** cannot be used: {err}", icon=":material/broken_image:")
        except Exception:  # noqa: BLE001 - logged; one broken image must not hide the others
            ui.log.exception("analysing %s", source.name)
            st.error(
                f"**{ui.md(source.name)}**: something went wrong while analysing it; the details are in the server log."
            )
    return analyses


def summary_ui(analyses: list[Analysis], models: ModelSet) -> None:
    def says(run: ModelRun) -> str:
        return models.class_names[run.pred] if run.in_distribution is not False else UNKNOWN_ANSWER

    rows = []
    for a in analyses:
        drnet = a.runs["drnet"]
        # No confidence beside "I don't know": the closest class's probability would read as sureness.
        confidence = drnet.confidence if drnet.in_distribution is not False else None
        row = {"image": a.source.name, "DRNet says": says(drnet), "confidence": confidence}
        row[FLOPS_UNIT] = drnet.flops
        if "dense" in a.runs:
            row["vs dense"] = drnet.flops / a.runs["dense"].flops
        if "mobilenetv2" in a.runs:
            row["MobileNetV2 says"] = says(a.runs["mobilenetv2"])
        rows.append(row)
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        column_config={
            "confidence": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1),
            "vs dense": st.column_config.NumberColumn(
                format="percent", help="DRNet's FLOPs as a share of the dense supernet's"
            ),
            FLOPS_UNIT: st.column_config.NumberColumn(format="compact"),
        },
        key="summary_table",
    )
    st.caption("Choose which image the views below show under *Show details for* above.")


def image_ui(a: Analysis, models: ModelSet) -> dict[str, FigureBuilder]:
    st.subheader(ui.md(a.source.name))
    left, right = st.columns([1, 3], gap="large")
    with left:
        prepared = a.prepared
        views = [(prepared.original, "yours")]
        if prepared.object_view is not None:
            views.append((prepared.object_view, "found"))
        views.append((ui.pixelated(prepared.seen), "input"))
        pictures, captions = zip(*views, strict=True)
        st.image(list(pictures), caption=list(captions), width=IMAGE_PX)  # side by side, also on a phone
        if prepared.unsure:
            st.warning(
                f"Not sure where the garment is: {prepared.unsure}. The answers below may be about the "
                "background; a photo with the garment filling more of a plainer surface works better.",
                icon=":material/help:",
            )
        notes = [note for note in prepared.notes if note != prepared.unsure]  # the warning above says it
        if notes:
            found = (
                " *Found*: the object, background dimmed, the crop outlined; *input*: the 28×28 image the models saw."
                if prepared.object_view is not None
                else ""
            )
            st.caption("Preprocessing: " + "; ".join(notes) + "." + found)
    figs = {}
    with right:
        columns = st.columns(len(a.runs))
        for column, (name, run) in zip(columns, a.runs.items(), strict=True):
            probs = run.calibrated if run.calibrated is not None else run.probs
            figs[f"{LABELS[name]} predictions"] = functools.partial(
                images.prediction_bars, probs, models.class_names, top_k=3
            )
            with column:
                verdict_ui(name, run, models)
                ui.top_predictions(probs, models.class_names)
        calibration_note(a, models)
    return figs


def verdict_ui(name: str, run: ModelRun, models: ModelSet) -> None:
    """The answer in large type, or, for an image unlike the training data, that message instead."""
    if run.in_distribution is False:
        ui.unknown_verdict(
            LABELS[name], models.class_names[run.pred],
            help=f"Out-of-distribution score {run.ood_score:.2f}, above the threshold fitted on Fashion-MNIST "
            "test images. The score combines how little any class stands out in the logits (energy) and how far "
            "the features lie from every class (Mahalanobis distance).",
        )  # fmt: skip
        st.caption(
            f"This image {NOT_GARMENT.format(n=len(models.class_names))}; the details below are what it computed anyway."
        )
        return
    ui.verdict(LABELS[name], models.class_names[run.pred], run.confidence)


def calibration_note(a: Analysis, models: ModelSet) -> None:
    _, problems = load_calibrations(models, models.key)
    for name, problem in problems.items():
        st.warning(f"{LABELS[name]}: calibration not used: {problem}", icon=":material/warning:")
    uncalibrated = [LABELS[n] for n, run in a.runs.items() if run.in_distribution is None and n not in problems]
    if uncalibrated:
        st.caption(
            f"{', '.join(uncalibrated)}: uncalibrated (no calibration.json beside the checkpoint): raw probabilities, "
            "no check that the image looks like the training data. `python -m drnets calibrate --checkpoint FOLDER` fits one."
        )
    elif not problems:
        st.caption("Probabilities after temperature scaling, fitted on held-out Fashion-MNIST test images.")


def cost_ui(a: Analysis, models: ModelSet) -> None:
    drnet, dense, mobile = a.runs["drnet"], a.runs.get("dense"), a.runs.get("mobilenetv2")
    st.markdown(f"#### What this image cost · {FLOPS_UNIT}")
    cols = st.columns(4)
    cols[0].metric(
        "DRNet FLOPs",
        ui.si(drnet.flops),
        delta=f"{ui.change(drnet.flops, dense.flops)} vs dense" if dense else None,
        delta_color="inverse",
        help=f"{FLOPS_UNIT} of the branches that ran, plus stem, preprocessing, routers and classifier.",
    )
    cols[1].metric(
        "DRNet params touched",
        ui.si(drnet.params),
        delta=f"{ui.change(drnet.params, dense.params)} vs dense" if dense else None,
        delta_color="inverse",
        help="Parameters of the layers that actually ran for this image.",
    )
    if mobile:
        cols[2].metric(
            "Share of MobileNetV2",
            f"{drnet.flops / mobile.flops:.0%} FLOPs",
            delta=f"{drnet.params / mobile.params:.0%} of its params",
            delta_color="off",
            delta_arrow="off",
            help=(
                f"The paper reports {ui.PAPER_FLOPS_SHARE:.0%} of MobileNetV2's FLOPs and "
                f"{ui.PAPER_PARAMS_SHARE:.1%} of its params on CIFAR-10."
            ),
        )
    timing = server_timing(models, models.key)
    seconds = timing.seconds
    cols[3].metric(
        "DRNet latency",
        f"{seconds['drnet'] * 1e3:.1f} ms",
        delta=f"{ui.change(seconds['drnet'], seconds['mobilenetv2'])} vs MobileNetV2" if mobile else None,
        delta_color="inverse",
        help=timing.describe() + " Small models on a CPU are dominated by overheads.",
    )
    table = pd.DataFrame(
        [
            {
                "model": LABELS[name],
                "answer": f"{models.class_names[run.pred]} ({run.confidence:.0%})"
                + (" · unlike the training data" if run.in_distribution is False else ""),
                FLOPS_UNIT: run.flops,
                "FLOPs vs MobileNetV2": run.flops / mobile.flops if mobile else None,
                "params touched": run.params,
                "latency (ms)": seconds[name] * 1e3,
            }
            for name, run in a.runs.items()
        ]
    ).dropna(axis="columns", how="all")  # no MobileNetV2 loaded: no column of blanks
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            FLOPS_UNIT: st.column_config.NumberColumn(format="compact"),
            "params touched": st.column_config.NumberColumn(format="compact"),
            "FLOPs vs MobileNetV2": st.column_config.NumberColumn(format="percent"),
            "latency (ms)": st.column_config.NumberColumn(
                format="%.1f", help="Measured once on this server; see below."
            ),
        },
        key="cost_table",
    )
    st.caption(f"Latency: {timing.describe()}")


def routing_ui(a: Analysis, models: ModelSet, threshold: float) -> dict[str, FigureBuilder]:
    st.markdown("#### The route DRNet took")
    run = a.runs["drnet"]
    branches, cells = run.trace.branches_frame(), run.trace.cells_frame()
    answer = f"{models.class_names[run.pred]} ({run.confidence:.0%})"
    figs = {
        "Network": functools.partial(network_diagram, branches, threshold, answer=answer),
        "Gate weights": functools.partial(routing.gate_heatmap, branches, threshold),
        "Route": functools.partial(routing.route_sankey, branches),
        "FLOPs per cell": functools.partial(routing.cell_flops_bars, cells, dense_cell_flops(models)),
    }
    # Only the open tab is built and drawn: four Plotly charts at once cost a phone (and a class
    # sharing one server) more than the rerun that choosing a tab takes.
    tabs = st.tabs(list(ROUTE_TABS), key="route_tab", on_change="rerun")
    for tab, (figure, caption) in zip(tabs, ROUTE_TABS.values(), strict=True):
        if tab.open:
            with tab:
                st.caption(caption)
                ui.chart(figs[figure](), key=f"route_{figure.lower().replace(' ', '_')}")
    return figs


def sweep_ui(a: Analysis, models: ModelSet, settings: state.Settings) -> dict[str, FigureBuilder]:
    st.markdown("#### Cost vs accuracy on the whole test set")
    sweep = load_sweep(models)
    if sweep.empty:
        st.caption(f"No threshold sweep found next to the DRNet ({models.directory}/drnet/sweep.csv or eval.json).")
        return {}
    baselines = {}
    for name in ("mobilenetv2", "dense"):
        evaluation = load_eval(models, name)
        if evaluation:
            baselines[LABELS[name]] = (evaluation["flops_mean"], evaluation["accuracy"])
    # The sweep was run without a top-k limit (a budget sweep also at one threshold), so the current
    # setting lies on it only without one (and at that threshold).
    if sweep_knob(sweep) == "budget" and settings.budget is not None:
        value, symbol, noun = settings.budget, "c", "budget"
        on_curve = settings.top_k is None and np.isclose(settings.threshold, sweep["threshold"].iloc[0])
    else:
        value, symbol, noun = settings.threshold, "t", "threshold"
        on_curve = settings.top_k is None
    current = sweep_point(sweep, value) if on_curve else None
    fig = dataset.sweep_curve(sweep, current=current, baselines=baselines)
    ui.chart(fig, key="sweep_curve")
    where = (
        f"The star is the {noun} {symbol} = {value:.2f} set in the sidebar; move it and the star moves along the curve."
        if current
        else "The curve was measured without a top-k limit and at the DRNet's own threshold, so the current "
        "setting is not on it."
    )
    st.caption(f"{where} At this setting this image cost {ui.si(a.runs['drnet'].flops)} {FLOPS_UNIT}.")
    return {"Accuracy vs FLOPs": lambda: fig}


def export_ui(
    analyses: list[Analysis], models: ModelSet, settings: state.Settings, figs: dict[str, FigureBuilder]
) -> None:
    with st.expander("Export the trace and the figures"):
        names = [a.source.name for a in analyses]
        samples, cells, branches = export.trace_frames(
            [a.runs["drnet"].trace for a in analyses], names, models.class_names
        )
        meta = {"threshold": settings.threshold, "top_k": settings.top_k, "budget": settings.budget}
        meta["models"] = str(models.directory)
        st.caption(
            f"DRNet's routing trace of {ui.plural(len(names), 'image')}: one row per image, cell, edge and branch."
        )
        left, right = st.columns(2)
        left.download_button(
            "Trace as CSV",
            export.trace_csv(branches, {"threshold": settings.threshold, "top_k": settings.top_k}),
            file_name="drnet_trace.csv",
            mime="text/csv",
            key="download_csv",
            on_click="ignore",
            icon=":material/table:",
        )
        right.download_button(
            "Trace as JSON",
            export.trace_json(samples, cells, branches, meta),
            file_name="drnet_trace.json",
            mime="application/json",
            key="download_json",
            on_click="ignore",
            icon=":material/data_object:",
        )
        st.caption(
            "Figures as interactive HTML pages (they open offline). For a PNG, use the camera icon in each chart's toolbar."
        )
        columns = st.columns(3)
        for i, (name, build) in enumerate(figs.items()):
            slug = re.sub(r"\W+", "_", name.lower())
            columns[i % 3].download_button(
                f"{name} (HTML)",
                lambda build=build: export.figure_html(build()),  # built when asked for
                file_name=f"{slug}.html",
                mime="text/html",
                key=f"download_{slug}",
                on_click="ignore",
            )


main()
