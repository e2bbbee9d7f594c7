"""Batch-1 latency of the models on one image, as the Inspect page reports it.

The median of a few rounds, each calling every model once (round-robin, as bench/ does), so a
busy CPU (the browser drawing the page on the same cores) slows all models alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import streamlit as st
import torch
from torch import nn

LATENCY_ROUNDS = 3  # all three models, 3 rounds: about 75 ms per new image or threshold on 2 cores
# A timing taken while the server is busy (another session, a test run) must not stick to the image:
# it is measured again on the first rerun after this many seconds.
LATENCY_TTL_S = 60


@st.cache_data(show_spinner=False, max_entries=512, ttl=LATENCY_TTL_S)
def measure_latency(
    _models: Mapping[str, nn.Module],
    models_key: str,
    digest: str,
    _x: torch.Tensor,
    threshold: float,
    top_k: int | None,
) -> dict[str, float]:
    """Seconds per batch-1 forward of each model on ``_x``, timed round-robin (see LATENCY_ROUNDS).

    ``_models`` run as given (routing policy applied, on the input's device); the key arguments
    say which models, image and settings they are.
    """
    timings: dict[str, list[float]] = {name: [] for name in _models}
    with torch.inference_mode():
        for _ in range(LATENCY_ROUNDS):
            for name, model in _models.items():
                started = time.perf_counter()
                model(_x)
                if _x.device.type == "cuda":
                    torch.cuda.synchronize(_x.device)
                timings[name].append(time.perf_counter() - started)
    return {name: statistics.median(seconds) for name, seconds in timings.items()}
