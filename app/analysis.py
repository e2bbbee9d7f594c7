"""One image through the loaded models: preprocessing, inference and attributions.

The models are shared by every session (``st.cache_resource``) and nothing here mutates them: a
session's routing settings are an argument of each forward (``with_policy``), inference runs on each
model's ``for_inference`` twin, and attributions run on the private copy of the plain model that
``drnets.attribution.attribute`` makes. Results are cached
per image hash and settings (``st.cache_data``); arguments starting with ``_`` are not hashed,
their identity is carried by the key arguments next to them.

Each answer also carries the checkpoint's calibrated probabilities and out-of-distribution verdict
(``drnets.ood``) when the checkpoint folder has a ``calibration.json``; the features the verdict reads
come from the plain model, in inference mode and without hooks, at the session's routing settings.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st
import torch
from torch import nn

from drnets.attribution import Attribution, attribute
from drnets.data import to_input
from drnets.model import is_routed
from drnets.ood import Calibration, CalibrationError, judge, load_calibration
from drnets.router import RoutingPolicy
from drnets.trace import RoutingTrace
from drnets.upload import PreparedImage, prepare_upload

if TYPE_CHECKING:
    from app.models import ModelSet


FAST_METHODS = ("saliency", "gradcam")  # the attributions the Attributions page computes at once
EXPLAINED_MODELS = ("drnet", "mobilenetv2")  # the models it explains side by side


def max_upload_bytes() -> int:
    """The upload limit in bytes: ``server.maxUploadSize`` (MB), set in streamlit_config.toml.

    The server refuses larger uploads itself; preprocessing holds the bytes it decodes to the same limit.
    """
    return int(st.get_option("server.maxUploadSize")) * 1024 * 1024


@dataclass(frozen=True)
class ImageSource:
    """An image the user uploaded or picked: its bytes, and their SHA-256 as the cache key."""

    name: str
    data: bytes
    digest: str

    @staticmethod
    def of(name: str, data: bytes) -> ImageSource:
        return ImageSource(name, data, hashlib.sha256(data).hexdigest())


@dataclass
class ModelRun:
    """One model's answer for one image, detached from autograd and on the CPU (picklable for st.cache_data)."""

    name: str
    probs: np.ndarray
    trace: RoutingTrace
    calibrated: np.ndarray | None = None  # softmax(logits / T) with the checkpoint's T; None: uncalibrated
    ood_score: float | None = None  # drnets.ood's score; higher = less like the training data
    in_distribution: bool | None = None  # None: no calibration.json, no verdict

    @property
    def confidence(self) -> float:
        """The answer's probability, calibrated when the checkpoint is."""
        return float((self.calibrated if self.calibrated is not None else self.probs).max())

    @property
    def pred(self) -> int:
        return int(self.probs.argmax())

    @property
    def flops(self) -> int:
        return int(self.trace.flops[0])

    @property
    def params(self) -> int:
        return int(self.trace.params[0])


@dataclass
class Analysis:
    """One image through every loaded model at the current settings."""

    source: ImageSource
    prepared: PreparedImage
    runs: dict[str, ModelRun]


# ---- routing settings ----


Forward = Callable[[torch.Tensor], tuple[torch.Tensor, RoutingTrace]]


def policy_for(
    model: nn.Module, threshold: float, top_k: int | None, budget: float | None = None
) -> RoutingPolicy | None:
    """The session's routing settings for a routed model; None (nothing to route) for the others.
    ``budget`` is for a DRNet with budget-conditioned routers; other DRNets leave it out."""
    return RoutingPolicy(threshold, top_k, budget=budget) if is_routed(model) else None


def with_policy(model: nn.Module, threshold: float, top_k: int | None, budget: float | None = None) -> Forward:
    """``model``'s forward at these routing settings: the one place a session's settings meet a shared model."""
    return functools.partial(model, policy=policy_for(model, threshold, top_k, budget))


def route_settings(
    name: str, threshold: float, top_k: int | None, budget: float | None = None
) -> tuple[float, int | None, float | None]:
    """Only DRNet depends on the routing settings; the static models are cached once per image."""
    return (threshold, top_k, budget) if name == "drnet" else (0.0, None, None)


# ---- one image ----


def analyse(
    models: ModelSet, source: ImageSource, threshold: float, top_k: int | None, budget: float | None = None
) -> Analysis:
    """Preprocess and run one image; raises ``UploadError`` for files that are not usable images."""
    prepared = prepare(source.digest, source.data, models.input_size, models.mean, models.std, max_upload_bytes())
    x = models.on_device(prepared.tensor)
    settings = {name: route_settings(name, threshold, top_k, budget) for name in models.checkpoints}
    calibrations, _ = load_calibrations(models, models.key)
    runs = {
        name: run_model(
            models.fast[name], models.key, source.digest, x, name, *settings[name], _calibration=calibrations.get(name)
        )
        for name in models.checkpoints
    }
    return Analysis(source, prepared, runs)


@st.cache_data(show_spinner=False, max_entries=256)
def prepare(
    digest: str, _data: bytes, input_size: tuple[int, int, int], mean: tuple, std: tuple, max_bytes: int
) -> PreparedImage:
    """Preprocess an upload once per content hash; ``UploadError`` propagates (and is not cached)."""
    return prepare_upload(_data, input_size=input_size, mean=mean, std=std, max_bytes=max_bytes)


@st.cache_resource(show_spinner=False, max_entries=4)
def load_calibrations(_models: ModelSet, models_key: str) -> tuple[dict[str, Calibration | None], dict[str, str]]:
    """Each checkpoint's calibration (None: no calibration.json), and the problem with each unusable file."""
    found, problems = {}, {}
    for name, checkpoint in _models.checkpoints.items():
        try:
            found[name] = load_calibration(checkpoint)
        except CalibrationError as err:
            found[name], problems[name] = None, str(err)
    return found, problems


@st.cache_data(show_spinner=False, max_entries=512)
def run_model(
    _fast: nn.Module,
    models_key: str,
    digest: str,
    _x: torch.Tensor,
    name: str,
    threshold: float,
    top_k: int | None,
    budget: float | None = None,
    _calibration: Calibration | None = None,
) -> ModelRun:
    """One model's fast twin at these routing settings on one image already on its device; the key
    arguments say which. With ``_calibration`` (the checkpoint's, fixed per ``models_key``) the answer
    gets its verdict, from the features of the same pass."""
    _, trace, features = _fast.forward_with_features(_x, policy_for(_fast, threshold, top_k, budget))
    # concat detaches and moves every tensor to the CPU
    run = ModelRun(name, trace.probs[0].cpu().numpy(), RoutingTrace.concat([trace]))
    if _calibration is not None:
        calibrated, scores, inside = judge(_calibration, run.trace.logits, features.float().cpu())
        run.calibrated, run.ood_score, run.in_distribution = calibrated[0].numpy(), float(scores[0]), bool(inside[0])
    return run


def run_pixels(
    models: ModelSet, pixels: list, threshold: float, top_k: int | None, budget: float | None = None
) -> ModelRun:
    """DRNet on a raw uint8 test image from eval.json ``extremes`` ([H][W] or [H][W][C] nested lists)."""
    images = torch.tensor(np.asarray(pixels, dtype=np.uint8))
    if images.dim() == 2:
        images = images.unsqueeze(-1)
    x = models.on_device(to_input(images.unsqueeze(0), models.mean, models.std))
    digest = "pixels:" + hashlib.sha256(images.numpy().tobytes()).hexdigest()
    return run_model(models.fast["drnet"], models.key, digest, x, "drnet", threshold, top_k, budget)


@st.cache_data(show_spinner=False, max_entries=256)
def explain(
    _models: ModelSet,
    models_key: str,
    digest: str,
    _x: torch.Tensor,
    name: str,
    method: str,
    threshold: float,
    top_k: int | None,
    budget: float | None = None,
) -> Attribution:
    """An attribution with the route the image takes under these settings frozen (see drnets.attribution).

    Methods that compare with a reference image (Integrated Gradients, occlusion) use a black image.
    """
    model = _models.get(name).model
    policy = policy_for(model, *route_settings(name, threshold, top_k, budget))
    black = float(np.mean([-m / s for m, s in zip(_models.mean, _models.std, strict=True)]))  # normalised 0
    return attribute(model, _x.to(_models.device), method, policy=policy, baseline=black)
