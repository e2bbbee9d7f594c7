"""What every figure shares: palette, units, labels for branches, edges and cells, and the layout.

Figures are pure functions (tidy frames in, Plotly figures out; no Streamlit, no ``.show()``):
pages call ``st.plotly_chart`` on the result and tests check ``fig.data``. They are meant for a
first-time user and for a projector, so every one says in its title what it shows, names its
units ("FLOPs (2×MACs)", "%"), uses human branch names ("sep conv 3×3"), a fixed colour per
branch, and hover text that explains each mark. Accuracies and probabilities are fractions in
[0, 1] (as in ``eval.json``); the axes format them as percentages.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from drnets.ops import PRIMITIVES

TEMPLATE = "plotly_white"
FLOPS_UNIT = "FLOPs (2×MACs)"  # the project's one cost convention (torch's FlopCounterMode), in figures and pages
TITLE_MARGIN = 80  # px above the plot: title plus one line of subtitle
TOP_WITH_TICKS = TITLE_MARGIN + 75  # title, subtitle, then upright branch names above a heatmap
# Figures must read on a 390 px phone as well as at 1400 px, and Plotly does not wrap text:
# subtitles break into lines this long, the extra lines widening the top margin.
SUBTITLE_CHARS = 52
SUBTITLE_LINE_PX = 16
COLORBAR_ROOM = 75  # px under a heatmap for its horizontal colour bar
ROW_PX = 18  # height of one heatmap row or bar; keeps figures compact on a projector
INSIDE_TEXT_FROM = 0.5  # bars at least this long carry their % label inside, so it never overruns the plot
NO_ROUTER = "This model has no router: every layer runs for every image."

# ColorBrewer "Paired": six hues, each dark and light.
BLUE, LIGHT_BLUE = "#1f78b4", "#a6cee3"
GREEN, LIGHT_GREEN = "#33a02c", "#b2df8a"
RED, LIGHT_RED = "#e31a1c", "#fb9a99"
ORANGE, LIGHT_ORANGE = "#ff7f00", "#fdbf6f"
PURPLE, LIGHT_PURPLE = "#6a3d9a", "#cab2d6"
BROWN, YELLOW = "#b15928", "#ffff99"
MUTED = "#c7ccd4"  # dense reference, runner-up predictions
INK = "#333333"  # dark text, the network's input
GREY = "#555555"  # secondary text, cell outputs
LIGHT_GREY = "#888888"  # reference lines
NODE_GREY = "#9aa3ad"  # a cell's intermediate nodes
GATE_SCALE = "Blues"  # gate weights and branch usage, 0 white to 1 dark blue

ACCENT = BLUE  # "this image" / "this model" bars
HIGHLIGHT = RED  # the setting in force, e.g. the current threshold on the sweep curve
MODEL_COLORS = (BLUE, ORANGE, GREEN, PURPLE, RED)
# One hue per branch family (sep conv blue, dil conv green, pools orange), dark for the small
# kernel, light for the large one; skip is purple.
BRANCH_COLORS = dict(zip(PRIMITIVES, (BLUE, LIGHT_BLUE, GREEN, LIGHT_GREEN, ORANGE, LIGHT_ORANGE, PURPLE), strict=True))
EXTRA_COLORS = (RED, LIGHT_RED, LIGHT_PURPLE, BROWN, YELLOW)  # branches outside PRIMITIVES


# ---- labels and colours (pages use them in tables too) ----


def branch_label(name: str) -> str:
    """'sep_conv_3x3' -> 'sep conv 3×3': what a reader, not a programmer, expects."""
    return re.sub(r"(\d)x(\d)", "\\1×\\2", name.replace("_", " "))


def branch_short(name: str) -> str:
    """'sep_conv_3x3' -> 'sep 3×3', 'max_pool_3x3' -> 'max pool', 'skip_connect' -> 'skip': tick-sized."""
    label = branch_label(name).replace(" conv", "").replace(" connect", "")
    return re.sub(r" pool \d×\d$", " pool", label)


def state_label(state: int) -> str:
    """States 0 and 1 are the cell's two inputs ('in0', 'in1'); 2.. its intermediate nodes ('n0'..)."""
    return f"in{state}" if state < 2 else f"n{state - 2}"


def edge_label(src: int, dst: int) -> str:
    return f"{state_label(src)}→{state_label(dst)}"


def cell_label(cell: int, reduction: bool | None = None) -> str:
    """'cell 2 (reduction)'; without the flag (e.g. usage tables) just 'cell 2'."""
    if reduction is None:
        return f"cell {cell}"
    return f"cell {cell} ({'reduction' if reduction else 'normal'})"


def branch_color(name: str) -> str:
    """The same colour for a branch in every figure."""
    if name in BRANCH_COLORS:
        return BRANCH_COLORS[name]
    return EXTRA_COLORS[sum(map(ord, name)) % len(EXTRA_COLORS)]


def rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def branch_order(names: pd.Series) -> list[str]:
    """Known branches in PRIMITIVES order, then any others in order of appearance."""
    present = list(dict.fromkeys(names))
    return [b for b in PRIMITIVES if b in present] + [b for b in present if b not in PRIMITIVES]


def cell_labels(frame: pd.DataFrame) -> dict[int, str]:
    """Cell number -> label, with '(reduction)'/'(normal)' when the frame says which."""
    if "reduction" in frame:
        flags = frame.groupby("cell")["reduction"].first()
        return {int(c): cell_label(int(c), bool(r)) for c, r in flags.items()}
    return {int(c): cell_label(int(c)) for c in sorted(frame["cell"].unique())}


def one_sample(frame: pd.DataFrame, figure: str) -> None:
    if "sample" in frame and frame["sample"].nunique() > 1:
        raise ValueError(
            f"{figure} draws one image; the frame holds {frame['sample'].nunique()} samples. "
            "Select one first, e.g. frame[frame['sample'] == sample_id]."
        )


def require(frame: pd.DataFrame, columns: Sequence[str], figure: str) -> None:
    missing = [c for c in columns if c not in frame]
    if missing:
        raise ValueError(f"{figure} needs columns {list(columns)}; missing {missing}")


def layout(
    fig: go.Figure, title: str, subtitle: str = "", height: float = 360, top: int = TITLE_MARGIN, **kwargs: object
) -> go.Figure:
    """The look every figure shares; ``top`` grows when x labels sit above the plot, and with
    every line a long subtitle wraps onto (see SUBTITLE_CHARS)."""
    lines = textwrap.wrap(subtitle, SUBTITLE_CHARS) or [""]
    extra = SUBTITLE_LINE_PX * (len(lines) - 1)
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "subtitle": {"text": "<br>".join(lines)}, "x": 0.01, "xanchor": "left"},
        height=int(height) + extra,
        margin={"t": top + extra, "b": 40, "l": 10, "r": 10},
        **kwargs,
    )
    return fig


def legend_below() -> dict:
    """A horizontal legend under the plot, anchored to the figure's bottom edge, so a legend that
    wraps onto more rows on a phone grows into the bottom margin, never into the axis title."""
    return {"orientation": "h", "x": 0, "y": 0, "xanchor": "left", "yanchor": "bottom", "yref": "container"}


def colorbar_below(title: str, **kwargs: object) -> dict:
    """A slim horizontal colour bar under a heatmap: upright it would take a third of a phone's width.
    The figure needs COLORBAR_ROOM more px at the bottom (``margin={"b": ...}``)."""
    return {
        "title": {"text": title, "side": "top"},
        "orientation": "h",
        "x": 0,
        "xanchor": "left",
        "y": -0.02,
        "yanchor": "top",
        "len": 1.0,
        "thickness": 10,
        **kwargs,
    }


def branch_ticks(fig: go.Figure, names: list[str]) -> None:
    """Short branch names above the columns, upright, so seven of them never run into each other
    even in a phone's 30 px columns (the heatmap's x and hover keep the full ``branch_label``)."""
    fig.update_xaxes(
        side="top",
        tickmode="array",
        tickvals=[branch_label(b) for b in names],
        ticktext=[branch_short(b) for b in names],
        tickangle=-90,
        tickfont={"size": 11},
    )


def message_figure(title: str, message: str) -> go.Figure:
    """An empty figure that says why there is nothing to draw (e.g. a static model has no router)."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font={"size": 15})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return layout(fig, title, height=200)
