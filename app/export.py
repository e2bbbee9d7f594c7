"""Downloads: the routing trace of the current images (CSV, JSON) and figures as HTML.

PNG: every chart's toolbar has a camera icon that saves a PNG in the browser. Server-side
PNG would need kaleido, which since 1.0 drives a Chrome or Chromium that must be installed
on the server (or downloaded by kaleido); the app does not require one.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from drnets.trace import RoutingTrace


def trace_frames(
    traces: list[RoutingTrace], names: list[str], class_names: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(samples, cells, branches) tidy frames of one model's traces, one sample per image name."""
    trace = RoutingTrace.concat(traces)
    return trace.samples_frame(class_names, names), trace.cells_frame(names), trace.branches_frame(names)


def trace_csv(branches: pd.DataFrame, settings: dict[str, Any]) -> bytes:
    """One row per (image, cell, edge, branch), with the routing settings repeated on every row."""
    return branches.assign(**settings).to_csv(index=False).encode()


def trace_json(samples: pd.DataFrame, cells: pd.DataFrame, branches: pd.DataFrame, settings: dict[str, Any]) -> bytes:
    """The three tables as lists of records, plus the settings they were taken under."""
    document = {
        "settings": settings,
        "flops_convention": "FLOPs = 2 x multiply-accumulates of conv and linear layers",
        "samples": samples.to_dict(orient="records"),
        "cells": cells.to_dict(orient="records"),
        "branches": branches.to_dict(orient="records"),
    }
    return json.dumps(document, indent=1, default=_plain).encode()


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers for json.dumps."""
    return value.item() if hasattr(value, "item") else str(value)


def figure_html(fig: go.Figure) -> str:
    """A self-contained page (plotly.js inlined): opens offline, hover text included."""
    return fig.to_html(include_plotlyjs=True, full_html=True)
