"""The image controls at the top of the pages that show an image: a sample, uploads and the camera.

They sit on the page, not in the sidebar, because a phone shows the sidebar collapsed and a student
should find the uploader and the camera first. Widgets exist only on the pages that draw them, so
what they picked is copied into plain session keys (``app.state.UPLOADED``, ``app.state.PHOTO``)
and survives a visit to a page without them.
"""

from __future__ import annotations

import streamlit as st

from app import state
from app.analysis import ImageSource
from app.samples import list_samples, sample_title

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"]
CAMERA_NAME = "camera photo"


def render() -> None:
    """Sample picker, uploader and camera in one bordered box; the camera only when asked for."""
    with st.container(border=True):
        sample_column, upload_column = st.columns([2, 3], vertical_alignment="top")
        with sample_column:
            sample_ui()
        with upload_column:
            upload_ui()
            st.toggle(
                "Take a photo with the camera",
                key=state.CAMERA_ON,
                help="Photograph a shoe, a bag or a garment. The browser asks for the camera only after you switch this on.",
            )
        if st.session_state.get(state.CAMERA_ON):
            st.camera_input(
                "Photograph one garment, bag or shoe",
                key=state.CAMERA,
                on_change=_keep_photo,
                help="The photo goes through the same preprocessing and limits as an upload. Nothing is stored.",
            )
        kept_ui()
        focus_ui()


def sample_ui() -> None:
    samples = list_samples()
    # The first sample is shown on first start; set through session state rather than ``index``,
    # because an upload clears it the same way (Streamlit warns when a widget gets both).
    st.session_state.setdefault(state.SAMPLE, samples[0] if samples else None)
    st.selectbox(
        "Sample from the test set",
        [None, *samples],
        format_func=lambda name: "none" if name is None else sample_title(name),
        placeholder="none",
        key=state.SAMPLE,
        help="Fashion-MNIST test images shipped with the app." if samples else "No samples found in assets/samples/.",
    )


def upload_ui() -> None:
    st.file_uploader(
        "…or your own photos of garments",
        type=UPLOAD_TYPES,
        accept_multiple_files=True,
        key=state.UPLOADS,
        on_change=_keep_uploads,
        help="A photo of one garment, bag or shoe on a plain background works best. Nothing is stored.",
    )


def kept_ui() -> None:
    """Name what is still shown from before (a page without these widgets came in between), with a way to drop it."""
    kept = [] if st.session_state.get(state.UPLOADS) else list(st.session_state.get(state.UPLOADED) or [])
    if st.session_state.get(state.PHOTO) is not None and st.session_state.get(state.CAMERA) is None:
        kept.append(st.session_state[state.PHOTO])
    if kept:
        left, right = st.columns([4, 1], vertical_alignment="center")
        left.caption("Still showing from before: " + ", ".join(source.name for source in kept))
        right.button("Clear", key="clear_kept", on_click=_clear_kept, icon=":material/close:")


def focus_ui() -> None:
    sources = state.images()
    if len(sources) > 1:
        st.selectbox(
            "Show details for",
            [s.digest for s in sources],
            format_func={s.digest: s.name for s in sources}.get,
            key=state.FOCUS,
        )


def _keep_uploads() -> None:
    """Copy the uploader's files into session state; a fresh upload replaces the sample."""
    files = st.session_state.get(state.UPLOADS) or []
    st.session_state[state.UPLOADED] = [ImageSource.of(state.display_name(f.name), f.getvalue()) for f in files]
    if files:
        st.session_state[state.SAMPLE] = None


def _keep_photo() -> None:
    """The camera's photo replaces the previous one and the sample; clearing it removes it."""
    photo = st.session_state.get(state.CAMERA)
    st.session_state[state.PHOTO] = ImageSource.of(CAMERA_NAME, photo.getvalue()) if photo is not None else None
    if photo is not None:
        st.session_state[state.SAMPLE] = None


def _clear_kept() -> None:
    st.session_state[state.UPLOADED] = []
    st.session_state[state.PHOTO] = None
