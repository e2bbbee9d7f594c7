"""Per-session state: widget keys, the keys set once per session, and what the user chose.

The routing controls live in the shared sidebar and the image controls (``app.picker``) at the top
of the pages that show an image; every page sees the same images and settings through
``settings()`` and ``images()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from app.analysis import ImageSource
from app.samples import list_samples, read_sample, sample_title

MAX_NAME = 60  # characters of an uploaded file's name shown in the pages

# Widget keys (tests find the widgets by these keys).
MODELS_DIR = "models_dir"
SAMPLE = "sample"
UPLOADS = "uploads"
CAMERA_ON = "camera_on"
CAMERA = "camera"
FOCUS = "focus"
THRESHOLD = "threshold"
TOP_K = "top_k"
BUDGET = "budget"  # only for a DRNet with budget-conditioned routers
# Plain session keys, set once per session in init().
SLOW_ATTRIBUTIONS = "slow_attributions"  # digests of images for which the user asked for IG and occlusion
UPLOADED = "uploaded"  # the uploader's files as ImageSources, kept while a page without the uploader shows
PHOTO = "photo"  # the camera's last photo as an ImageSource, or None
CHARTS_READY = "charts_ready"  # False until the session's first run has shown its answers (app.ui.chart)
CHARTS_WAITING = "charts_waiting"  # a chart of this run was held back for the next one
# Widgets on some pages only; Streamlit forgets a widget's value on a run that does not draw it.
PAGE_WIDGETS = (SAMPLE, CAMERA_ON, FOCUS)


def init() -> None:
    """Create the non-widget keys once per session, and carry the page widgets' values over this run."""
    st.session_state.setdefault(SLOW_ATTRIBUTIONS, set())
    st.session_state.setdefault(UPLOADED, [])
    st.session_state.setdefault(PHOTO, None)
    st.session_state.setdefault(CHARTS_READY, False)
    for key in PAGE_WIDGETS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


@dataclass(frozen=True)
class Settings:
    models_dir: str
    threshold: float
    top_k: int | None
    budget: float | None  # None unless the DRNet's routers read a budget

    @property
    def routing(self) -> tuple[float, int | None, float | None]:
        """(threshold, top_k, budget), the routing arguments of app.analysis."""
        return self.threshold, self.top_k, self.budget


def settings() -> Settings:
    budget = st.session_state.get(BUDGET)
    return Settings(
        st.session_state[MODELS_DIR],
        float(st.session_state[THRESHOLD]),
        st.session_state[TOP_K],
        None if budget is None else float(budget),
    )


def images() -> list[ImageSource]:
    """Uploaded files first, then the camera's photo, then the picked sample; the same content twice counts once."""
    picked = list(st.session_state.get(UPLOADED) or [])
    if st.session_state.get(PHOTO) is not None:
        picked.append(st.session_state[PHOTO])
    sample = st.session_state.get(SAMPLE)
    if sample:
        picked.append(sample_source(sample))
    unique = {source.digest: source for source in reversed(picked)}  # first occurrence wins
    return [source for source in picked if unique[source.digest] is source]


def focus(sources: list[ImageSource]) -> ImageSource | None:
    """The image the detailed views show: the user's choice under *Show details for*, else the first one."""
    chosen = st.session_state.get(FOCUS)
    return next((s for s in sources if s.digest == chosen), sources[0] if sources else None)


def display_name(file_name: str) -> str:
    """An uploaded file's name, shortened for headings and tables."""
    return file_name if len(file_name) <= MAX_NAME else file_name[: MAX_NAME - 1] + "…"


def sample_label(file_name: str) -> str:
    """'Ankle-boot_2.png' -> 'sample: Ankle-boot 2'."""
    return "sample: " + sample_title(file_name)


def sample_source(file_name: str) -> ImageSource:
    """A shipped sample as the pages show it, named by ``sample_label``."""
    return ImageSource.of(sample_label(file_name), read_sample(file_name))


def first_sample() -> ImageSource | None:
    """The first shipped sample, for a page that needs an image when none is picked."""
    samples = list_samples()
    return sample_source(samples[0]) if samples else None
