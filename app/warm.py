"""Warm the server before its first visitor: imports, models, calibrations, timings, test-set results.

A fresh Streamlit server imports nothing until the first page is requested, so without this the
first student waits for torch, Plotly and Captum to import, three checkpoints to load and the models
to be timed (about 14 s on two cores). ``app.launch`` runs ``warm`` in a background thread as the
server starts; the work lands in the same process-wide caches (``st.cache_resource``) the pages
read, and a visitor who comes before it finishes waits only for what is still missing.
"""

from __future__ import annotations

import logging
import threading
import time

from streamlit.logger import get_logger

log = get_logger("drnets.app")
THREAD_NAME = "drnets-warm"


def warm() -> None:
    """Everything the first page needs, for every model folder the server offers."""
    started = time.perf_counter()
    # The bare-mode warnings Streamlit logs for cached calls made outside a page run say nothing here.
    for name in ("streamlit.runtime.scriptrunner_utils.script_run_context", "streamlit.runtime.caching.cache_data_api"):
        logging.getLogger(name).addFilter(_not_from_this_thread)
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
        except Exception:  # noqa: BLE001 - a broken folder must not stop the server; the page says what is wrong
            log.exception("warming the models of %s", label)
    log.info("warm: models loaded and timed in %.1f s", time.perf_counter() - started)


def _not_from_this_thread(record: logging.LogRecord) -> bool:
    return record.threadName != THREAD_NAME


def warm_in_background() -> threading.Thread:
    thread = threading.Thread(target=warm, name=THREAD_NAME, daemon=True)
    thread.start()
    return thread
