"""Compare two images: their DRNet routes side by side, the edges that chose differently, each cell's FLOPs
and every model's answer, e.g. an easy sneaker against a hard shirt."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import state, ui
from app.analysis import Analysis, ImageSource, ModelRun, analyse
from app.costs import dense_cell_flops
from app.figures import compare
from app.figures.common import FLOPS_UNIT, branch_label, cell_label, edge_label
from app.models import LABELS, ModelSet, load_models
from app.picker import UPLOAD_TYPES
from app.samples import list_samples, sample_title
from drnets.ood import UNKNOWN_ANSWER
from drnets.upload import UploadError

SIDES = ("A", "B")
# Shown on a first visit: on the shipped DRNet's test set, sneakers are among the easiest classes
# (95.9% right, the cheapest on average) and shirts the hardest (64.7%); see assets/models/drnet/eval.json.
DEFAULT_CLASSES = ("sneaker", "shirt")
IMAGE_PX = 140  # the 28×28 input, enlarged: beside its verdict on a wide screen, not screen-wide on a phone


def main() -> None:
    st.title("Compare two images")
    st.caption(
        "Two images through the same networks: where DRNet's routes part, what each cell spent, and what every "
        "model answers. Pick each image below; the routing settings in the sidebar apply to both."
    )
    settings = state.settings()
    models = load_models(settings.models_dir)
    ui.require_drnet(models)
    defaults = default_pair(list_samples())
    analyses = []
    for column, side, default in zip(st.columns(2, gap="large"), SIDES, defaults, strict=True):
        with column:
            analyses.append(side_ui(side, default, models, settings))
    a, b = analyses
    if a is None or b is None:
        st.info("Pick two usable images above to compare their routes.", icon=":material/compare:")
        return
    with ui.guard("comparing the routes"):
        routes_ui(a, b, settings.threshold)
    with ui.guard("drawing the FLOPs per cell"):
        flops_ui(a, b, models)
    with ui.guard("listing the answers"):
        answers_ui(a, b, models)


def default_pair(samples: list[str]) -> tuple[str | None, str | None]:
    """The first sample of each DEFAULT_CLASSES, else the first two samples; one sample twice; none: None."""
    first_of: dict[str, str] = {}
    for name in samples:
        first_of.setdefault(name.rsplit("_", 1)[0], name)
    wanted = [first_of[c] for c in DEFAULT_CLASSES if c in first_of]
    pair = list(dict.fromkeys(wanted + samples))[:2]
    return (pair[0], pair[-1]) if pair else (None, None)


def picker_ui(side: str, default: str | None) -> ImageSource | None:
    """A sample, or the photo uploaded on this side while there is one."""
    prefix = f"compare_{side.lower()}_"
    samples = list_samples()
    sample = st.selectbox(
        "Sample from the test set",
        samples,
        index=samples.index(default) if default in samples else None,
        format_func=sample_title,
        placeholder="no samples found",
        key=prefix + "sample",
    )
    upload = st.file_uploader(
        "…or your own photo",
        type=UPLOAD_TYPES,
        key=prefix + "upload",
        help="A photo of one garment, bag or shoe on a plain background works best. Nothing is stored.",
    )
    if upload is not None:
        st.caption("Your photo is compared; remove it to compare the sample.")
        return ImageSource.of(state.display_name(upload.name), upload.getvalue())
    return state.sample_source(sample) if sample else None


def side_ui(side: str, default: str | None, models: ModelSet, settings: state.Settings) -> Analysis | None:
    """One image's picker, what the models saw and DRNet's answer; None when there is no usable image."""
    st.subheader(f"Image {side}")
    source = picker_ui(side, default)
    if source is None:
        return None
    try:
        with st.spinner(f"Running {ui.md(source.name)}…"):
            a = analyse(models, source, *settings.routing)
    except UploadError as err:
        st.error(f"**{ui.md(source.name)}** cannot be used: {err}", icon=":material/broken_image:")
        return None
    except Exception:  # noqa: BLE001 - logged; the other image and the page keep working
        ui.log.exception("analysing %s", source.name)
        st.error(
            f"**{ui.md(source.name)}**: something went wrong while analysing it; the details are in the server log."
        )
        return None
    picture, verdict = st.columns([1, 2], vertical_alignment="center")
    picture.image(ui.pixelated(a.prepared.seen), width=IMAGE_PX)
    with verdict:
        drnet = a.runs["drnet"]
        closest = models.class_names[drnet.pred]
        if drnet.in_distribution is False:
            ui.unknown_verdict(LABELS["drnet"], closest)
        else:
            ui.verdict(LABELS["drnet"], closest, drnet.confidence)
    st.caption(f"{ui.md(source.name)}: the 28×28 input the models saw.")
    if a.prepared.unsure:
        st.warning(f"Not sure where the garment is: {a.prepared.unsure}.", icon=":material/help:")
    return a


def answer(run: ModelRun, models: ModelSet) -> str:
    """'Class (probability)', or, for an image unlike the training data (the calibration's verdict),
    that the model does not know and what came closest."""
    closest = f"{models.class_names[run.pred]} ({run.confidence:.0%})"
    return closest if run.in_distribution is not False else f"{UNKNOWN_ANSWER}; closest: {closest}"


def routes_ui(a: Analysis, b: Analysis, threshold: float) -> None:
    st.markdown("#### Where the routes differ")
    trace_a, trace_b = a.runs["drnet"].trace, b.runs["drnet"].trace
    branches_a, branches_b = trace_a.branches_frame(), trace_b.branches_frame()
    diff = compare.route_differences(branches_a, branches_b)
    changed = diff[diff["differs"]]
    flops_a, flops_b = a.runs["drnet"].flops, b.runs["drnet"].flops
    cols = st.columns(3)
    cols[0].metric(
        "Edges that chose differently",
        f"{len(changed)} of {len(diff)}",
        help="Edges whose set of branches that ran is not the same for the two images.",
    )
    cols[1].metric(
        "Branches that differ",
        sum(len(r.only_a) + len(r.only_b) for r in changed.itertuples()),
        help="Branches that ran for one image and were skipped for the other.",
    )
    cols[2].metric(
        "DRNet FLOPs, A → B",
        f"{ui.si(flops_a)} → {ui.si(flops_b)}",
        delta=f"{ui.change(flops_b, flops_a)} for B",
        delta_color="inverse",
        help=f"{FLOPS_UNIT} of the whole DRNet for each image, routers and classifier included.",
    )
    overlap, table, each = st.tabs(["Both routes", "Edges that differ", "Each route"])
    with overlap:
        st.caption(
            "Each row is one edge of a cell, each column a candidate branch: A or B marks a branch that ran for that "
            "image only, ● one that ran for both; ≠ marks the edges that chose differently."
        )
        ui.chart(compare.difference_heatmap(branches_a, branches_b, threshold), key="compare_difference")
    with table:
        if changed.empty:
            st.success("Both images took the same route: every edge ran the same branches.", icon=":material/check:")
        else:
            st.dataframe(differences_table(changed), hide_index=True, key="compare_differences_table")
    with each:
        st.caption("The router's weight for every branch; ● marks the branches that ran, faded ones were skipped.")
        for column, side, branches in zip(st.columns(2), SIDES, (branches_a, branches_b), strict=True):
            with column:
                ui.chart(compare.gate_heatmap(branches, threshold, side), key=f"compare_gates_{side.lower()}")


def differences_table(changed: pd.DataFrame) -> pd.DataFrame:
    """The edges that chose differently, their branches by human name ('—' for none)."""

    def names(branches: tuple[str, ...]) -> str:
        return ", ".join(map(branch_label, branches)) or "—"

    return pd.DataFrame(
        {
            "cell": [cell_label(int(c)) for c in changed["cell"]],
            "edge": [edge_label(int(s), int(d)) for s, d in zip(changed["src"], changed["dst"], strict=True)],
            "only A ran": changed["only_a"].map(names),
            "only B ran": changed["only_b"].map(names),
            "both ran": changed["both"].map(names),
        }
    )


def flops_ui(a: Analysis, b: Analysis, models: ModelSet) -> None:
    st.markdown("#### What each cell spent")
    cells_a, cells_b = a.runs["drnet"].trace.cells_frame(), b.runs["drnet"].trace.cells_frame()
    st.caption(
        "What DRNet's cells spent on each image; hover a bar for its share of the same cell with every branch on."
    )
    ui.chart(compare.cell_flops_pair(cells_a, cells_b, dense_cell_flops(models)), key="compare_cell_flops")


def answers_ui(a: Analysis, b: Analysis, models: ModelSet) -> None:
    st.markdown("#### Every model's answer")
    rows = []
    for name in a.runs:
        row: dict[str, object] = {"model": LABELS[name]}
        for side, run in zip(SIDES, (a.runs[name], b.runs[name]), strict=True):
            row[f"{side} says"] = answer(run, models)
        row["FLOPs A"], row["FLOPs B"] = a.runs[name].flops, b.runs[name].flops
        rows.append(row)
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        column_config={
            "FLOPs A": st.column_config.NumberColumn(format="compact", help=FLOPS_UNIT),
            "FLOPs B": st.column_config.NumberColumn(format="compact", help=FLOPS_UNIT),
        },
        key="compare_answers",
    )
    st.caption("Only DRNet's cost depends on the image; MobileNetV2 and the dense supernet run every layer for both.")


main()
