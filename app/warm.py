"""Warm the server before its first visitor: imports, models, calibrations, timings, test-set results.

A fresh Streamlit server imports nothing until the first page is requested, so without this the
first student waits for torch, Plotly and Captum to import, three checkpoints to load and the models
to be timed (about 14 s on two cores). ``app.serve`` runs ``warm`` before Streamlit starts serving,
so the server answers its health check only once the first page is cheap; the work lands in the
process-wide caches (``st.cache_resource``) the pages read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from streamlit.logger import get_logger

if TYPE_CHECKING:
    from app.models import ModelSet

log = get_logger("drnets.app")
# Streamlit warns that cached functions called outside a page run are in "bare mode"; here that is the point.
BARE_MODE_LOGGERS = (
    "streamlit.runtime.scriptrunner_utils.script_run_context",
    "streamlit.runtime.caching.cache_data_api",
)


def warm() -> None:
    """Everything the first page needs, for every model folder the server offers."""
    started = time.perf_counter()
    with _quiet(BARE_MODE_LOGGERS):
        _warm_every_folder()
    log.info("warm: models loaded and timed in %.1f s", time.perf_counter() - started)


def _warm_every_folder() -> None:
    import plotly.graph_objects  # noqa: F401 - imported now so the first page does not wait for it

    import app.figures.dataset  # noqa: F401
    import app.figures.images  # noqa: F401
    import app.figures.network  # noqa: F401
    import app.figures.routing  # noqa: F401
    import drnets.attribution  # noqa: F401 - Captum
    from app.analysis import load_calibrations
    from app.models import load_models, model_folders
    from app.timing import server_timing

    for label, folder in model_folders().items():
        try:
            models = load_models(str(folder))
            if models.drnet() is None:
                continue
            load_calibrations(models, models.key)
            server_timing(models, models.key)
            _warm_first_visit(models)
        except Exception:  # noqa: BLE001 - a broken folder must not stop the server; the page says what is wrong
            log.exception("warming the models of %s", label)


def _warm_first_visit(models: ModelSet) -> None:
    """What a first visit computes at the default settings: the first sample through every model,
    and its attributions. They land in the pages' st.cache_data caches, which outlive this call.
    Its charts are drawn once too: Plotly builds its templates and validators on first use (about
    half of a first page run's time)."""
    from app.analysis import EXPLAINED_MODELS, FAST_METHODS, analyse, explain
    from app.evaluations import load_sweep
    from app.figures.dataset import sweep_curve
    from app.figures.network import network_diagram
    from app.figures.routing import gate_heatmap
    from app.sidebar import default_routing
    from app.state import first_sample

    source = first_sample()
    if source is None:
        return
    routing = default_routing(models.drnet())
    a = analyse(models, source, *routing)
    for method in FAST_METHODS:
        for name in (n for n in EXPLAINED_MODELS if n in a.runs):
            explain(models, models.key, a.source.digest, a.prepared.tensor, name, method, *routing)
    branches = a.runs["drnet"].trace.branches_frame()
    for figure in (
        gate_heatmap(branches, routing[0]),
        network_diagram(branches, routing[0]),
        sweep_curve(load_sweep(models)),
    ):
        figure.to_json()


@contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """Drop what these loggers say while the block runs."""
    loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        logger.addFilter(_drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(_drop)


def _drop(record: logging.LogRecord) -> bool:
    return False
