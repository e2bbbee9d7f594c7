"""Teaching mode: what a DRNet is, one step at a time, on the live model and one image.

Every step draws the same diagram of the network (``app.figures.network``) with the part it
explains brought forward, a short paragraph, and the numbers behind it, as CNN Explainer does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from app import picker, state, ui
from app.analysis import Analysis, analyse
from app.costs import branch_costs, cells_table, dense_cell_flops
from app.figures import images, network, routing
from app.figures.common import FLOPS_UNIT, branch_label
from app.models import ModelSet, load_models
from drnets.upload import UploadError

STEP = "teaching_step"


def main() -> None:
    st.title("How a DRNet works")
    picker.render()
    settings = state.settings()
    models = load_models(settings.models_dir)
    ui.require_drnet(models)
    source = state.focus(state.images()) or state.first_sample()
    if source is None:
        st.info(
            "Pick a sample, upload a photo or take one above: the walk-through uses it.", icon=":material/arrow_upward:"
        )
        return
    try:
        a = analyse(models, source, *settings.routing)
    except UploadError as err:
        st.error(f"**{ui.md(source.name)}** cannot be used: {err}")
        return
    left, right = st.columns([4, 1])
    with left:
        label = st.radio("Step", LABELS, horizontal=True, key=STEP, label_visibility="collapsed")
    with right:
        st.button(
            "Next step",
            key="teaching_next",
            on_click=_next,
            disabled=label == LABELS[-1],
            icon=":material/arrow_forward:",
        )
    step = STEPS[LABELS.index(label)]
    picture, story = st.columns([1, 5], gap="large")
    with picture:
        st.image(
            ui.pixelated(a.prepared.seen, 140),
            # The answer on a line of its own: "DRNet says: T-" / "shirt/top" in a 140-pixel column.
            caption=f"{ui.md(a.source.name)}\n\nDRNet says:\n\n{ui.md(models.class_names[a.runs['drnet'].pred])}",
        )
    with story, ui.guard("drawing this step"):
        st.markdown(step.story(a, models, settings.threshold))
        diagram_ui(a, models, settings.threshold, step.highlight)
        step.detail(a, models, settings.threshold)


def _next() -> None:
    current = LABELS.index(st.session_state[STEP])
    st.session_state[STEP] = LABELS[min(current + 1, len(LABELS) - 1)]


def diagram_ui(a: Analysis, models: ModelSet, threshold: float, highlight: network.Highlight) -> None:
    """The network with this image's route, the step's part brought forward."""
    run = a.runs["drnet"]
    answer = f"{models.class_names[run.pred]} ({run.confidence:.0%})"
    fig = network.network_diagram(run.trace.branches_frame(), threshold, highlight, answer)
    ui.chart(fig, key="teaching_network")
    st.caption(CAPTIONS[highlight])


CAPTIONS: dict[network.Highlight, str] = {
    "cells": "Each band is a cell; ↑ says which earlier cell each input comes from.",
    "branches": "Each arc is one candidate branch on one edge; a fan of arcs is one edge.",
    "router": "◆ is a cell's router: it weighs every arc of its cell, for this image alone.",
    "gates": "A coloured arc ran; the thicker it is, the larger its weight. Hover an arc for its weight.",
    "skipped": "Dotted arcs were skipped for this image; the coloured ones are all it paid for.",
    "answer": "Only the coloured arcs ran to reach this answer. Skipped branches are never computed.",
}


# ---- the steps: a paragraph, then the numbers behind it ----


def cells_story(a: Analysis, models: ModelSet, threshold: float) -> str:
    model = models.drnet()
    return (
        f"A DRNet is a stack of **{len(model.cells)} cells** between a stem convolution and a classifier: one band each "
        f"in the diagram. A cell reads the outputs of the two cells before it (**in0**, **in1**), builds "
        f"**{model.cells[0].num_nodes} new nodes** (n0, …) and joins them into its output (**out**). "
        "The shaded **reduction cells** halve the image and double the channels."
    )


def cells_detail(a: Analysis, models: ModelSet, threshold: float) -> None:
    st.dataframe(
        cells_table(models),
        hide_index=True,
        column_config={
            "channels": st.column_config.NumberColumn(help="channels of each node's output"),
            "branches": st.column_config.NumberColumn(help="candidate branches on every edge"),
            "FLOPs, all on": st.column_config.NumberColumn(
                help=f"{FLOPS_UNIT} of the cell with every branch on", format="compact"
            ),
        },
        key="teaching_cells",
    )


def branches_story(a: Analysis, models: ModelSet, threshold: float) -> str:
    cell = models.drnet().cells[0]
    return (
        f"Every link from an earlier node to a later one is an **edge**: {len(cell.edges)} per cell. Each edge offers "
        f"the same **{len(cell.branch_names)} candidate branches**, one arc each: separable and dilated convolutions, "
        "pooling, and a plain skip. A node adds up what arrives on its edges."
    )


def branches_detail(a: Analysis, models: ModelSet, threshold: float) -> None:
    st.markdown("The branches differ a lot in cost, as on the first edge of cell 0:")
    costs = branch_costs(models).assign(branch=lambda f: f["branch"].map(branch_label))
    st.dataframe(
        costs,
        hide_index=True,
        column_config={
            "flops": st.column_config.NumberColumn(FLOPS_UNIT, format="compact"),
            "params": st.column_config.NumberColumn("parameters", format="compact"),
        },
        key="teaching_branches",
    )
    st.caption("A static network runs all of them on every edge, for every image: that is the dense supernet.")


def router_story(a: Analysis, models: ModelSet, threshold: float) -> str:
    config = models.checkpoints["drnet"].model.config
    looks_at = (
        "the image's features after the first convolution" if config.router_input == "stem" else "the cell's inputs"
    )
    if config.router_relu:
        looks_at += " with their negative values set to zero"
    regions = "the image" if config.router_grid == 1 else f"each of {config.router_grid**2} regions of the image"
    return (
        f"Before a cell runs, its **router** (◆) looks at {looks_at} (averaged over {regions}, then two small "
        "layers) and gives every branch on every edge a **weight**. The weights on one edge add up to 1."
    )


def router_detail(a: Analysis, models: ModelSet, threshold: float) -> None:
    st.markdown("For this image, the first edge of cell 0 got:")
    branches = a.runs["drnet"].trace.branches_frame()
    first = branches[(branches["cell"] == 0) & (branches["edge"] == 0)]
    weights = pd.DataFrame({"branch": first["branch"].map(branch_label), "weight": first["gate"]})
    st.bar_chart(weights, x="branch", y="weight", horizontal=True, height=260)
    st.caption("Another image gets other weights: the route is chosen per image.")


def gates_story(a: Analysis, models: ModelSet, threshold: float) -> str:
    return (
        f"The **gate**: a branch runs only if its weight is at least the threshold **t = {threshold:.2f}** "
        "(the slider in the sidebar); its output is scaled by its weight."
    )


def gates_detail(a: Analysis, models: ModelSet, threshold: float) -> None:
    ui.chart(routing.gate_heatmap(a.runs["drnet"].trace.branches_frame(), threshold), key="teaching_gates")
    st.caption("Move the threshold in the sidebar and watch branches switch on and off.")


def skipped_story(a: Analysis, models: ModelSet, threshold: float) -> str:
    run, dense = a.runs["drnet"], a.runs.get("dense")
    ran, total = int(run.trace.ran.sum()), run.trace.ran.numel()
    return (
        f"**Skipped branches are never computed.** This image ran {ran} of {total} branches; the whole network "
        f"(stem and classifier included) cost **{ui.si(run.flops)} {FLOPS_UNIT}**"
        + (f", {run.flops / dense.flops:.0%} of the dense supernet's {ui.si(dense.flops)}." if dense else ".")
    )


def skipped_detail(a: Analysis, models: ModelSet, threshold: float) -> None:
    run = a.runs["drnet"]
    ui.chart(routing.cell_flops_bars(run.trace.cells_frame(), dense_cell_flops(models)), key="teaching_cell_flops")
    st.caption("Training adds the expected cost to the loss, so the routers learn to spend FLOPs only where they help.")


def answer_story(a: Analysis, models: ModelSet, threshold: float) -> str:
    run = a.runs["drnet"]
    return (
        "The last cell's output is averaged over the image, and a linear **classifier** turns it into one score per "
        f"class: DRNet says **{models.class_names[run.pred]}** ({run.confidence:.0%}). Another image takes another "
        "route: pick one above and step through again."
    )


def answer_detail(a: Analysis, models: ModelSet, threshold: float) -> None:
    run = a.runs["drnet"]
    probs = run.calibrated if run.calibrated is not None else run.probs
    ui.chart(images.prediction_bars(probs, models.class_names, top_k=3, title="DRNet's answer"), key="teaching_answer")


@dataclass(frozen=True)
class Step:
    """One step of the walk-through: its label, the part of the diagram it explains, its paragraph and numbers."""

    label: str
    highlight: network.Highlight
    story: Callable[[Analysis, ModelSet, float], str]
    detail: Callable[[Analysis, ModelSet, float], None]


STEPS = (
    Step("1 · Cells", "cells", cells_story, cells_detail),
    Step("2 · Branches", "branches", branches_story, branches_detail),
    Step("3 · Router", "router", router_story, router_detail),
    Step("4 · Gates", "gates", gates_story, gates_detail),
    Step("5 · Skipped", "skipped", skipped_story, skipped_detail),
    Step("6 · Answer", "answer", answer_story, answer_detail),
)
LABELS = tuple(step.label for step in STEPS)

main()
