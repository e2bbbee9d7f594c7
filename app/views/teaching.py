"""Teaching mode: what a DRNet is, one step at a time, on the live model and one image."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import state, ui
from app.analysis import Analysis, analyse
from app.costs import branch_costs, cells_table, dense_cell_flops
from app.figures import routing
from app.figures.common import FLOPS_UNIT, branch_label
from app.models import ModelSet, load_models
from drnets.upload import UploadError

STEPS = ("1 · Cells", "2 · Edges", "3 · Branches", "4 · Router", "5 · Gate", "6 · Skip")
STEP = "teaching_step"


def main() -> None:
    st.title("How a DRNet works")
    settings = state.settings()
    models = load_models(settings.models_dir)
    ui.require_drnet(models)
    source = state.focus(state.images()) or state.first_sample()
    if source is None:
        st.info(
            "Pick a sample or upload a photo in the sidebar: the walk-through uses it.", icon=":material/arrow_back:"
        )
        return
    try:
        a = analyse(models, source, settings.threshold, settings.top_k)
    except UploadError as err:
        st.error(f"**{ui.md(source.name)}** cannot be used: {err}")
        return
    left, right = st.columns([4, 1])
    with left:
        step = st.radio("Step", STEPS, horizontal=True, key=STEP, label_visibility="collapsed")
    with right:
        st.button(
            "Next step",
            key="teaching_next",
            on_click=_next,
            disabled=step == STEPS[-1],
            icon=":material/arrow_forward:",
        )
    picture, story = st.columns([1, 5], gap="large")
    with picture:
        st.image(
            ui.pixelated(a.prepared.seen, 140),
            # The answer on a line of its own: "DRNet says: T-" / "shirt/top" in a 140-pixel column.
            caption=f"{ui.md(a.source.name)}\n\nDRNet says:\n\n{ui.md(models.class_names[a.runs['drnet'].pred])}",
        )
    with story, ui.guard("drawing this step"):
        STEP_VIEWS[STEPS.index(step)](a, models, settings.threshold)


def _next() -> None:
    current = STEPS.index(st.session_state[STEP])
    st.session_state[STEP] = STEPS[min(current + 1, len(STEPS) - 1)]


def cells_step(a: Analysis, models: ModelSet, threshold: float) -> None:
    n = len(models.drnet().cells)
    st.markdown(
        f"A DRNet is a stack of **{n} cells** between a stem convolution and a classifier. "
        "Each cell reads the outputs of the two cells before it. Reduction cells halve the image and double the channels."
    )
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


def edges_step(a: Analysis, models: ModelSet, threshold: float) -> None:
    cell = models.drnet().cells[0]
    st.markdown(
        f"Inside a cell, the two inputs (in0, in1) feed **{cell.num_nodes} new nodes** (n0, n1, …). "
        f"Every arrow from an earlier node to a later one is an **edge**: {len(cell.edges)} per cell. "
        "A node adds up what arrives on its edges; the cell's output joins all new nodes."
    )
    ui.chart(routing.route_sankey(a.runs["drnet"].trace.branches_frame()), key="teaching_route")
    st.caption("This image's path: each link is one branch on one edge that ran.")


def branches_step(a: Analysis, models: ModelSet, threshold: float) -> None:
    st.markdown(
        "Every edge offers the same **candidate branches**: separable and dilated convolutions, pooling, "
        "and a plain skip. They differ a lot in cost, as on the first edge of cell 0:"
    )
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


def router_step(a: Analysis, models: ModelSet, threshold: float) -> None:
    config = models.checkpoints["drnet"].model.config
    looks_at = (
        "the image's features after the first convolution" if config.router_input == "stem" else "the cell's inputs"
    )
    if config.router_relu:
        looks_at += " with their negative values set to zero"
    regions = "the image" if config.router_grid == 1 else f"each of {config.router_grid**2} regions of the image"
    st.markdown(
        f"Before a cell runs, its **router** looks at {looks_at} (averaged over {regions}, then two small layers) "
        "and gives every branch on every edge a **weight**. The weights on one edge add up to 1. "
        "For this image, the first edge of cell 0 got:"
    )
    branches = a.runs["drnet"].trace.branches_frame()
    first = branches[(branches["cell"] == 0) & (branches["edge"] == 0)]
    weights = pd.DataFrame({"branch": first["branch"].map(branch_label), "weight": first["gate"]})
    st.bar_chart(weights, x="branch", y="weight", horizontal=True, height=260)
    st.caption("Another image gets other weights: the route is chosen per image.")


def gate_step(a: Analysis, models: ModelSet, threshold: float) -> None:
    st.markdown(
        f"The **gate**: a branch runs only if its weight is at least the threshold **t = {threshold:.2f}** "
        "(the slider in the sidebar); its output is scaled by its weight. ● marks what ran for this image."
    )
    ui.chart(routing.gate_heatmap(a.runs["drnet"].trace.branches_frame(), threshold), key="teaching_gates")
    st.caption("Move the threshold in the sidebar and watch branches switch on and off.")


def skip_step(a: Analysis, models: ModelSet, threshold: float) -> None:
    run, dense = a.runs["drnet"], a.runs.get("dense")
    ran, total = int(run.trace.ran.sum()), run.trace.ran.numel()
    st.markdown(
        f"**Skipped branches are never computed.** This image ran {ran} of {total} branches; the whole network "
        f"(stem and classifier included) cost **{ui.si(run.flops)} {FLOPS_UNIT}**"
        + (f", {run.flops / dense.flops:.0%} of the dense supernet's {ui.si(dense.flops)}." if dense else ".")
        + " Cell by cell:"
    )
    ui.chart(routing.cell_flops_bars(run.trace.cells_frame(), dense_cell_flops(models)), key="teaching_cell_flops")
    st.caption("Training adds the expected cost to the loss, so the routers learn to spend FLOPs only where they help.")


STEP_VIEWS = (cells_step, edges_step, branches_step, router_step, gate_step, skip_step)

main()
