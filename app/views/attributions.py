"""Attributions: which pixels DRNet and MobileNetV2 used for their answer, with DRNet's route frozen."""

from __future__ import annotations

import streamlit as st

from app import picker, state, ui
from app.analysis import EXPLAINED_MODELS, FAST_METHODS, Analysis, analyse, explain
from app.figures.images import attribution_overlay
from app.models import LABELS, ModelSet, load_models
from drnets.attribution import METHOD_NOTES
from drnets.upload import UploadError

OVERLAY_PX = 224  # two side by side fit a laptop's half; one fills a phone's width
SLOW = ("integrated_gradients", "occlusion")  # on request; FAST_METHODS come at once
TITLES = {
    "saliency": "Saliency",
    "gradcam": "Grad-CAM",
    "integrated_gradients": "Integrated Gradients",
    "occlusion": "Occlusion",
}


def main() -> None:
    st.title("Attributions")
    st.caption(
        "Which pixels pushed each model towards its answer. DRNet is explained with its route frozen to the "
        "one this image took, so the maps describe the network that actually ran."
    )
    picker.render()
    settings = state.settings()
    models = load_models(settings.models_dir)
    ui.require_drnet(models)
    source = state.focus(state.images())
    if source is None:
        st.info("Pick a sample, upload a photo or take one above first.", icon=":material/arrow_upward:")
        return
    try:
        a = analyse(models, source, *settings.routing)
    except UploadError as err:
        st.error(f"**{ui.md(source.name)}** cannot be used: {err}", icon=":material/broken_image:")
        return
    names = [n for n in EXPLAINED_MODELS if n in a.runs]
    header_ui(a, models, names)
    for method in FAST_METHODS:
        with ui.guard(f"computing {TITLES[method]}"):
            method_ui(a, models, names, method, settings)
    requested = st.session_state[state.SLOW_ATTRIBUTIONS]
    if a.source.digest not in requested:
        st.divider()
        if st.button(
            "Also compute Integrated Gradients and Occlusion",
            key="run_slow_attributions",
            icon=":material/hourglass_top:",
            help="Slower: dozens of forward passes per image. Other users are not slowed down much; each session computes alone.",
        ):
            requested.add(a.source.digest)
            st.rerun()
        return
    for method in SLOW:
        with ui.guard(f"computing {TITLES[method]}"):
            method_ui(a, models, names, method, settings)


def header_ui(a: Analysis, models: ModelSet, names: list[str]) -> None:
    columns = st.columns([1, *[2] * len(names)])
    columns[0].image(ui.pixelated(a.prepared.seen, 112), caption=f"{ui.md(a.source.name)}, as the model saw it")
    for column, name in zip(columns[1:], names, strict=True):
        run = a.runs[name]
        with column:
            ui.verdict(LABELS[name], models.class_names[run.pred], float(run.probs.max()))


def method_ui(a: Analysis, models: ModelSet, names: list[str], method: str, settings: state.Settings) -> None:
    st.markdown(f"#### {TITLES[method]}")
    st.caption(f"{METHOD_NOTES[method]} Red: the pixels that mattered most; clear: little or none.")
    columns = st.columns(len(names))
    for column, name in zip(columns, names, strict=True):
        with column, st.spinner(f"{TITLES[method]} for {LABELS[name]}…"):
            result = explain(models, models.key, a.source.digest, a.prepared.tensor, name, method, *settings.routing)
            title = f"{LABELS[name]} · for “{models.class_names[result.target]}”"
            st.image(attribution_overlay(result.heatmap, a.prepared.seen), caption=title, width=OVERLAY_PX)
            note = f"computed in {result.seconds:.1f} s"
            if result.delta is not None:
                note += (
                    f" · convergence delta {result.delta:.2g} (0 means the pixel shares add up exactly to the score)"
                )
            st.caption(note)


main()
