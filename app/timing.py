"""Batch-1 latency of the models, measured once per server and model folder, off the request path.

Timing every upload would put three models times several rounds (the dense supernet alone about
60 ms a call on two cores) between a student and the answer, and a class uploading at once would
time each other's load. Instead the server times the models once, on the shipped sample images,
when it warms up (``app.warm``), and the pages show that measurement with when and how it was taken.
Rounds are round-robin over the models (as bench/ does), so a busy CPU slows all models alike.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import streamlit as st
import torch

from app.analysis import ImageSource, max_upload_bytes, prepare, with_policy
from app.samples import list_samples, read_sample

if TYPE_CHECKING:
    from app.models import ModelSet

LATENCY_ROUNDS = 3  # every sample through every model, three times; the median per model
MAX_SAMPLES = 10  # enough images for DRNet's routes to vary, little enough to finish in seconds


@dataclass(frozen=True)
class ServerTiming:
    """Median seconds per batch-1 forward of each model, and how they were measured."""

    seconds: dict[str, float]
    measured_at: datetime
    images: int  # how many images each round ran
    threshold: float  # the DRNet's routing threshold during the measurement
    device: str

    def describe(self) -> str:
        """'measured on this server at 12:04 UTC: ...', for captions and tooltips."""
        return (
            f"Measured on this server ({self.device}) at {self.measured_at:%H:%M} UTC: batch size 1, the median "
            f"over {LATENCY_ROUNDS} rounds of {self.images} sample images, each round running every model once "
            f"(DRNet at t = {self.threshold:.2f}). Measured once per server, not per upload, so a busy class "
            "does not slow the answers."
        )


@st.cache_resource(show_spinner="Timing the models on this server…", max_entries=4)
def server_timing(_models: ModelSet, models_key: str) -> ServerTiming:
    """Time ``_models``' fast twins on up to MAX_SAMPLES shipped samples (a blank image if none)."""
    sources = [ImageSource.of(name, read_sample(name)) for name in list_samples()[:MAX_SAMPLES]]
    size, mean, std = _models.input_size, _models.mean, _models.std
    inputs = [_models.on_device(prepare(s.digest, s.data, size, mean, std, max_upload_bytes()).tensor) for s in sources]
    inputs = inputs or [_models.on_device(torch.zeros(1, *size))]
    threshold = _models.drnet().config.threshold
    ready = {name: with_policy(_models.fast[name], threshold, None) for name in _models.checkpoints}
    timings: dict[str, list[float]] = {name: [] for name in ready}
    with torch.inference_mode():
        for _ in range(LATENCY_ROUNDS):
            for x in inputs:
                for name, forward in ready.items():
                    started = time.perf_counter()
                    forward(x)
                    if x.device.type == "cuda":
                        torch.cuda.synchronize(x.device)
                    timings[name].append(time.perf_counter() - started)
    seconds = {name: statistics.median(values) for name, values in timings.items()}
    return ServerTiming(seconds, datetime.now(UTC), len(inputs), threshold, _models.device_text)
