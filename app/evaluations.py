"""Test-set results written next to each checkpoint by ``drnets eval``: eval.json and DRNet's sweep.csv."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from app.models import ModelSet, checkpoint_folder
from drnets.evaluate import SWEEP_COLUMNS


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.is_file() else 0.0


@st.cache_data(show_spinner=False, max_entries=16)
def _read_json(path: str, mtime: float) -> dict[str, Any] | None:
    """The file's object, read again whenever ``mtime`` changes; None if it is missing or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_eval(models: ModelSet, name: str) -> dict[str, Any] | None:
    """``<model folder>/eval.json`` as written by ``drnets eval``, or None."""
    path = checkpoint_folder(models.directory, name) / "eval.json"
    return _read_json(str(path), _mtime(path))


def eval_command(models: ModelSet, name: str) -> str:
    """The command that writes ``name``'s eval.json where the app looks for it."""
    folder = checkpoint_folder(models.directory, name)
    dataset = models.get(name).training.get("dataset", "fashion-mnist")
    return f"python -m drnets eval --checkpoint {folder} --data {dataset} --split test --out {folder}"


def load_sweep(models: ModelSet) -> pd.DataFrame:
    """DRNet's threshold sweep: sweep.csv, else eval.json's ``sweep``; empty if neither exists."""
    path = checkpoint_folder(models.directory, "drnet") / "sweep.csv"
    if path.is_file():
        try:
            return pd.read_csv(path)
        except (OSError, ValueError):
            pass
    evaluation = load_eval(models, "drnet") or {}
    return pd.DataFrame(evaluation.get("sweep") or [], columns=list(SWEEP_COLUMNS))


def sweep_knob(sweep: pd.DataFrame) -> str:
    """What the sweep varies: "budget" for a DRNet with budget-conditioned routers, else "threshold"."""
    return "budget" if "budget" in sweep and sweep["budget"].nunique() > 1 else "threshold"


def sweep_point(sweep: pd.DataFrame, value: float) -> tuple[float, float] | None:
    """(mean FLOPs, accuracy) at ``value`` of the sweep's knob, interpolated between its points."""
    if sweep.empty:
        return None
    knob = sweep_knob(sweep)
    data = sweep.sort_values(knob)
    v = data[knob].to_numpy(dtype=float)
    return float(np.interp(value, v, data["flops_mean"])), float(np.interp(value, v, data["accuracy"]))
