"""Small pieces every page uses: friendly errors, number formats, pixel-exact image display."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from streamlit.logger import get_logger

from app import state
from app.models import ModelSet
from drnets.ood import UNKNOWN_ANSWER

log = get_logger("drnets.app")  # Streamlit's handler and level (logger.level in streamlit_config.toml)
# What the DRNet paper reports on CIFAR-10, as shares of MobileNetV2's cost; the pages compare with it.
PAPER_FLOPS_SHARE, PAPER_PARAMS_SHARE = 0.3101, 0.0870
HELD_CHART = "Drawing the chart…"  # a held-back chart's placeholder (``chart``)


# One page run at a time, in the order they came. A class uploading at once on a small server would
# otherwise share the CPU (and the GIL) between every run, so every student waits as long as the
# last one; in turn, the first answer comes after one run and the median after half of them.
_RUNS = threading.Lock()


@contextmanager
def one_run_at_a_time() -> Iterator[None]:
    with _RUNS:
        yield


@contextmanager
def guard(doing: str) -> Iterator[None]:
    """Log an unexpected error with its traceback and show a short message instead.

    The rest of the page keeps running; Streamlit's own control flow (st.stop, reruns)
    uses BaseException and passes through.
    """
    try:
        yield
    except Exception:
        log.exception("error while %s", doing)
        st.error(
            f"Something went wrong while {doing}. The details are in the server log; the rest of the page still works."
        )


def require_drnet(models: ModelSet) -> None:
    """Stop the page with a clear message when there is no usable DRNet in the chosen folder."""
    if models.drnet() is not None:
        return
    st.error(
        f"No usable DRNet in **{models.directory}**: {models.problems.get('drnet', 'not found')}. "
        "Point the sidebar's *Model folder* at a folder holding drnet/ (and, for comparisons, "
        "mobilenetv2/ and dense/) checkpoints, as `python -m drnets train` writes them."
    )
    st.stop()


def md(text: str) -> str:
    """User-supplied text (file names) made inert in Markdown: no links or formatting smuggled in."""
    return re.sub(r"([\\`*_{}\[\]()#+!|<>~$])", r"\\\1", text)


def si(value: float, unit: str = "") -> str:
    """12_345_678 -> '12.3 M': three significant digits, SI prefix."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def change(new: float, old: float) -> str:
    """Relative change as a signed percentage for st.metric deltas ('-62%')."""
    return f"{(new / old - 1):+.0%}" if old else "n/a"


def pixelated(image: np.ndarray, size: int = 196) -> np.ndarray:
    """Enlarge a tiny image by repeating pixels, so the browser does not blur 28x28 into mush."""
    pixels = np.asarray(image, dtype=np.uint8)
    factor = max(1, size // max(pixels.shape[:2]))
    return pixels.repeat(factor, axis=0).repeat(factor, axis=1)


def verdict(model: str, answer: str, probability: float) -> None:
    """'DRNet says / Sandal / 12% probability' in large type, readable on a projector."""
    st.metric(f"{model} says", answer, f"{probability:.0%} probability", delta_color="off", delta_arrow="off")


def unknown_verdict(model: str, closest: str, help: str | None = None) -> None:
    """'DRNet says / I don't know / closest: Shirt' for an image unlike the training data."""
    st.metric(f"{model} says", UNKNOWN_ANSWER, f"closest: {closest}", delta_color="off", delta_arrow="off", help=help)


def top_predictions(probs: np.ndarray, class_names: list[str], k: int = 3) -> None:
    """The k most likely classes as plain progress bars: light enough for a phone and a class of
    browsers on one page (the Plotly bars, ``app.figures.images.prediction_bars``, go to the exports)."""
    for index in np.argsort(probs)[::-1][:k]:
        st.progress(float(probs[index]), text=f"{class_names[index]} · {probs[index]:.1%}")


def chart(fig: go.Figure, key: str) -> None:
    """A Plotly chart; its toolbar's camera icon saves a PNG in the browser.

    A session's first run shows a placeholder instead, and ``draw_held_charts`` runs the page again
    at once with the charts: Plotly's script (4.7 MB) takes a browser on a busy laptop 1.5-2 s to
    load, and the first answer should not wait for it (docs/BENCHMARKS.md, section 7).
    """
    if not st.session_state.get(state.CHARTS_READY, True):
        st.session_state[state.CHARTS_WAITING] = True
        st.caption(HELD_CHART)
        return
    st.plotly_chart(fig, key=key, config={"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}})


def draw_held_charts() -> None:
    """End of a session's first run: charts are drawn in every later run, and this run's held-back
    ones come in a second run right away."""
    if st.session_state.get(state.CHARTS_READY, True):
        return
    st.session_state[state.CHARTS_READY] = True
    if st.session_state.pop(state.CHARTS_WAITING, False):
        st.rerun()
