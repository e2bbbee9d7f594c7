"""One image: the classes a model finds most probable, and which pixels it used (attributions)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from app.figures.common import ACCENT, INK, INSIDE_TEXT_FROM, MUTED, layout


def prediction_bars(probs: Sequence[float], class_names: list[str], top_k: int = 5, title: str = "") -> go.Figure:
    """The k most probable classes as horizontal bars, highest on top, labelled in %.

    Args:
        probs: softmax probabilities of one image, one per class.
        class_names: names in the same order as ``probs``.
        top_k: how many classes to show.
        title: e.g. the model's name; defaults to "Top-k predictions".
    """
    values = np.asarray(probs, dtype=float).ravel()
    if len(values) != len(class_names):
        raise ValueError(f"{len(values)} probabilities for {len(class_names)} class names")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    top = np.argsort(-values, kind="stable")[: min(top_k, len(values))]
    fig = go.Figure(
        go.Bar(
            x=values[top],
            y=[class_names[i] for i in top],
            orientation="h",
            marker_color=[ACCENT] + [MUTED] * (len(top) - 1),
            text=[f"{v:.1%}" for v in values[top]],
            # long bars carry the label inside their end, short ones just past it, so no label
            # reaches beyond the 100% mark even in a third-width column
            textposition=["inside" if v >= INSIDE_TEXT_FROM else "outside" for v in values[top]],
            insidetextanchor="end",
            insidetextfont={"color": "white"},
            outsidetextfont={"color": INK},
            cliponaxis=False,
            hovertemplate="%{y}: %{x:.1%} probability (softmax of the class scores)<extra></extra>",
            name="probability",
        )
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title="probability", tickformat=".0%", range=[0, 1.0], showgrid=False)
    fig = layout(fig, title or f"Top-{len(top)} predictions", height=110 + 30 * len(top), top=50)
    fig.update_layout(margin={"r": 20})  # room for half the "100%" tick label
    return fig


def _grayscale(image: np.ndarray) -> np.ndarray:
    """[H, W] or [H, W, C] uint8 -> float [H, W] brightness 0..255 (ITU-R 601 luma for RGB)."""
    pixels = np.asarray(image, dtype=float)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        return pixels[..., 0]
    if pixels.ndim == 3 and pixels.shape[2] >= 3:
        return pixels[..., :3] @ np.array([0.299, 0.587, 0.114])
    if pixels.ndim == 2:
        return pixels
    raise ValueError(f"expected an image of shape [H, W] or [H, W, C], got {pixels.shape}")


# (importance, red, green, blue, opacity): transparent where the attribution is ~0 so the garment
# shows through, hot where it matters.
ATTRIBUTION_COLORS = np.array(
    [
        [0.0, 255, 255, 0, 0.0],
        [0.25, 255, 200, 0, 0.25],
        [0.6, 255, 90, 0, 0.6],
        [1.0, 220, 0, 0, 0.85],
    ]
)


def attribution_overlay(heatmap: np.ndarray, image: np.ndarray, size: int = 224) -> np.ndarray:
    """An attribution map over the grayscale image the model saw, as one RGB picture, each pixel
    enlarged to a square block: four of them on a page cost a phone nothing, four Plotly charts do.

    Args:
        heatmap: [H, W] importance in [0, 1] (``Attribution.heatmap``).
        image: uint8 [H, W] or [H, W, C], exactly what the model saw (``PreparedImage.seen``).
        size: the picture's longest side is at least this many px (a whole multiple of the image's).
    Returns:
        uint8 [H * f, W * f, 3]: the image's gray blended with ATTRIBUTION_COLORS by importance.
    """
    gray = _grayscale(image).astype(float)
    heat = np.clip(np.asarray(heatmap, dtype=float), 0.0, 1.0)
    if heat.shape != gray.shape:
        raise ValueError(f"heatmap shape {heat.shape} does not match the image's {gray.shape}")
    stops = ATTRIBUTION_COLORS[:, 0]
    colour = np.stack([np.interp(heat, stops, ATTRIBUTION_COLORS[:, k]) for k in (1, 2, 3)], axis=-1)
    alpha = np.interp(heat, stops, ATTRIBUTION_COLORS[:, 4])[..., None]
    blended = np.rint(gray[..., None] * (1 - alpha) + colour * alpha).astype(np.uint8)
    factor = max(1, -(-size // max(gray.shape)))
    return blended.repeat(factor, axis=0).repeat(factor, axis=1)
