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
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from drnets.ops import PRIMITIVES

TEMPLATE = "plotly_white"
FLOPS_UNIT = "FLOPs (2×MACs)"  # the project's one cost convention (torch's FlopCounterMode), in figures and pages
TITLE_MARGIN = 80  # px above the plot: title plus subtitle
TOP_WITH_TICKS = TITLE_MARGIN + 45  # title, subtitle, then two-line branch names above a heatmap
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


def branch_tick(name: str) -> str:
    """Two-line axis tick, 'sep conv<br>3×3': seven one-line names overlap in a ~700 px chart."""
    words = branch_label(name).rsplit(" ", 1)
    return "<br>".join(words)


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
    """The look every figure shares; ``top`` grows when x labels sit above the plot."""
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "subtitle": {"text": subtitle}, "x": 0.01, "xanchor": "left"},
        height=int(height),
        margin={"t": top, "b": 40, "l": 10, "r": 10},
        **kwargs,
    )
    return fig


def branch_ticks(fig: go.Figure, names: list[str]) -> None:
    """Branch names above the columns, two short lines each and never rotated, so they
    stay clear of the subtitle at any width (the heatmap's x stays the full ``branch_label``)."""
    fig.update_xaxes(
        side="top",
        tickmode="array",
        tickvals=[branch_label(b) for b in names],
        ticktext=[branch_tick(b) for b in names],
        tickangle=0,
        tickfont={"size": 11},
    )


def message_figure(title: str, message: str) -> go.Figure:
    """An empty figure that says why there is nothing to draw (e.g. a static model has no router)."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font={"size": 15})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return layout(fig, title, height=200)
