"""The shared sidebar: which routing settings, which models, on which device.

It lives in the entry file so every page sees the same settings. The images are picked on the
pages themselves (``app.picker``), where a phone user finds them without opening the sidebar.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import state
from app.models import ModelSet, default_folder_label, load_models, model_folders
from drnets.evaluate import SWEEP_BUDGETS
from drnets.model import DRNet

MAX_THRESHOLD = 0.5  # above this almost every edge would be skipped
BUDGET_RANGE = (min(SWEEP_BUDGETS), max(SWEEP_BUDGETS))  # the budgets drnets eval sweeps
TOP_K_CHOICES = [None, 1, 2, 3]
MODELS_FOLDER = "models_folder"  # widget key: the label of one of app.models.model_folders()
# Set when a sent folder was refused: the notice shows in the next run too, which for a session's first
# run comes at once (app.ui.draw_held_charts) and would otherwise take the notice away.
FOLDER_REFUSED = "models_folder_refused"


def render() -> None:
    """Draw the sidebar; the widgets' values land in st.session_state under the keys in app.state."""
    with st.sidebar:
        routing_box, models_box = st.container(), st.container()
        with models_box:
            models = models_ui()
        with routing_box:
            routing_ui(models)


def default_routing(drnet: DRNet | None) -> tuple[float, int | None, float | None]:
    """(threshold, top_k, budget) a session starts with: the DRNet's own, within the sliders' ranges."""
    if drnet is None:
        return 0.1, None, None
    budget = float(drnet.config.budget) if drnet.config.budgeted else None
    return float(min(drnet.config.threshold, MAX_THRESHOLD)), None, budget


def routing_ui(models: ModelSet) -> None:
    st.subheader("Routing")
    drnet = models.drnet()
    budget_ui(drnet)
    threshold, _, _ = default_routing(drnet)
    st.slider(
        "Threshold t",
        0.0,
        MAX_THRESHOLD,
        value=threshold,
        step=0.01,
        key=state.THRESHOLD,
        help="A branch runs only if the router gives it a weight of at least t. Higher t: fewer branches, fewer FLOPs.",
    )
    st.selectbox(
        "Branches per edge, at most",
        TOP_K_CHOICES,
        format_func=lambda k: "no limit" if k is None else str(k),
        key=state.TOP_K,
        help="Also keep only the k heaviest branches on every edge.",
    )


def budget_ui(drnet: DRNet | None) -> None:
    """The main routing control of a DRNet whose routers read a budget: one set of weights, any cost.
    Other DRNets have no budget; the key is dropped so the pages see None."""
    if drnet is None or not drnet.config.budgeted:
        st.session_state.pop(state.BUDGET, None)
        return
    st.slider(
        "Budget c",
        BUDGET_RANGE[0],
        BUDGET_RANGE[1],
        value=default_routing(drnet)[2],
        step=0.01,
        key=state.BUDGET,
        help="The share of the routed branches' FLOPs the routers aim to spend. Lower c: cheaper routes; "
        "the same weights serve every c.",
    )


def models_ui() -> ModelSet:
    folders = model_folders()
    default = default_folder_label(folders)
    # Only labels of the server's list are accepted; anything else a client sends (a path, a
    # stale label) is replaced by the default before the widget is drawn.
    sent = st.session_state.get(MODELS_FOLDER, default)
    refused = not _offered(sent, folders)
    refused_before = st.session_state.pop(FOLDER_REFUSED, False)
    if refused or MODELS_FOLDER not in st.session_state:
        st.session_state[MODELS_FOLDER] = default
    notice = st.empty()  # above the expander, which starts collapsed
    with st.expander("Models and device"):
        label = st.selectbox(
            "Model folder",
            list(folders),
            key=MODELS_FOLDER,
            help="The folders this server offers: the shipped models and those its operator lists in DRNETS_MODELS_DIR.",
        )
        if not _offered(label, folders):
            label, refused = default, True
        folder = str(folders[label])
        st.session_state[state.MODELS_DIR] = folder  # what the pages load (state.settings)
        models = load_models(folder)
        for name, ckpt in models.checkpoints.items():
            st.caption(f"✓ {name}: {ckpt.path}")
        for name, problem in models.problems.items():
            st.caption(f"✗ {name}: {problem}")
    if refused:
        st.session_state[FOLDER_REFUSED] = True
    if refused or refused_before:
        notice.warning(f"That model folder is not one this server offers; showing “{default}” instead.")
    st.caption(f"Device: {models.device_text}")
    return models


def _offered(value: object, folders: dict[str, Path]) -> bool:
    return isinstance(value, str) and value in folders
