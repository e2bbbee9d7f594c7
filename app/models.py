"""The models the pages compare: finding the checkpoints, loading, checking and warming them.

Models load once per process (``st.cache_resource``) and every session shares them, so nothing
in the app mutates them (see ``app.analysis.with_policy``). Each plain model (attributions) comes
with its ``for_inference`` twin (everything else).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st
import torch
from torch import nn

from app.analysis import with_policy
from app.paths import ASSETS
from drnets.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from drnets.data import normalization
from drnets.device import describe, pick_device
from drnets.inference import for_inference, keep_freed_memory
from drnets.model import DRNet

LABELS = {"drnet": "DRNet", "mobilenetv2": "MobileNetV2", "dense": "Dense supernet"}
MODEL_NAMES = tuple(LABELS)  # the folders looked for, DRNet first: it sets the input format
# NHWC is faster on CPU for all three models at batch 1 (docs/BENCHMARKS.md; bench/ uses it too).
MEMORY_FORMAT = torch.channels_last


SHIPPED_MODELS = ASSETS / "models"
SHIPPED_LABEL = "shipped models"


def configured_folders() -> list[Path]:
    """The folders DRNETS_MODELS_DIR names, separated by ``os.pathsep``; empty entries are skipped."""
    raw = os.environ.get("DRNETS_MODELS_DIR") or ""
    return [Path(entry).expanduser() for entry in raw.split(os.pathsep) if entry.strip()]


def model_folders() -> dict[str, Path]:
    """The model folders the app offers, by the label the browser sees: the shipped models first,
    then every folder of DRNETS_MODELS_DIR. Only the server's configuration adds to this list."""
    folders = {SHIPPED_LABEL: SHIPPED_MODELS}
    seen = {SHIPPED_MODELS.resolve()}
    for folder in configured_folders():
        if folder.resolve() in seen:
            continue
        seen.add(folder.resolve())
        base = folder.name or "folder"
        label, n = base, 2
        while label in folders:
            label, n = f"{base} ({n})", n + 1
        folders[label] = folder
    return folders


def default_folder_label(folders: dict[str, Path]) -> str:
    """The first folder of DRNETS_MODELS_DIR (your own runs, tests), else the shipped models."""
    configured = configured_folders()
    if configured:
        first = configured[0].resolve()
        return next(label for label, folder in folders.items() if folder.resolve() == first)
    return SHIPPED_LABEL


def default_models_dir() -> str:
    """The folder the app shows first: the first of DRNETS_MODELS_DIR, else the shipped models."""
    folders = model_folders()
    return str(folders[default_folder_label(folders)])


@dataclass(frozen=True)
class ModelSet:
    """The models found in one folder, the problems with the others, and the input format they share."""

    directory: Path
    device: torch.device
    checkpoints: dict[str, Checkpoint]
    problems: dict[str, str]
    class_names: list[str] = field(default_factory=list)
    input_size: tuple[int, int, int] = (1, 28, 28)
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    fast: dict[str, nn.Module] = field(default_factory=dict)  # name -> the model's for_inference twin

    @property
    def key(self) -> str:
        """Identity for st.cache_data: the folder and the device."""
        return f"{self.directory}|{self.device}"

    @property
    def device_text(self) -> str:
        return describe(self.device)

    def get(self, name: str) -> Checkpoint | None:
        return self.checkpoints.get(name)

    def drnet(self) -> DRNet | None:
        ckpt = self.get("drnet")
        return ckpt.model if ckpt is not None else None

    def on_device(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch on the models' device, in their memory layout."""
        return x.to(self.device).contiguous(memory_format=MEMORY_FORMAT)


def checkpoint_folder(directory: Path, name: str) -> Path:
    """``<dir>/<name>``, or ``<dir>/<name>/model`` as the training CLI writes it under runs/."""
    folder = directory / name
    if not (folder / "config.json").is_file() and (folder / "model" / "config.json").is_file():
        return folder / "model"
    return folder


def _input_format(ckpt: Checkpoint) -> tuple[tuple[int, int, int], tuple[float, ...], tuple[float, ...]]:
    channels = ckpt.model.config.in_channels
    training = ckpt.training
    size = tuple(training.get("input_size") or (channels, 28, 28))
    default_mean, default_std = normalization(training.get("dataset", "fashion-mnist"), channels)
    return size, tuple(training.get("mean") or default_mean), tuple(training.get("std") or default_std)  # type: ignore[return-value]


@st.cache_resource(show_spinner="Loading models…", max_entries=4)
def load_models(directory: str, device: str = "") -> ModelSet:
    """Load drnet, mobilenetv2 and dense from ``directory``; DRNet sets the input format the others must share."""
    folder = Path(directory).expanduser()
    target = pick_device(device or None)
    keep_freed_memory()
    loaded: dict[str, Checkpoint] = {}
    problems: dict[str, str] = {}
    if not folder.is_dir():
        return ModelSet(folder, target, {}, {name: f"folder {folder} does not exist" for name in MODEL_NAMES})
    for name in MODEL_NAMES:
        path = checkpoint_folder(folder, name)
        if not path.exists():
            problems[name] = f"no {LABELS[name]} checkpoint: {path} does not exist"
            continue
        try:
            ckpt = load_checkpoint(path, map_location=target)
        except CheckpointError as err:
            problems[name] = str(err)
            continue
        if ckpt.name != name:
            problems[name] = f"{path} holds a {ckpt.name!r} checkpoint, expected {name!r}"
            continue
        ckpt.model.to(memory_format=MEMORY_FORMAT)
        loaded[name] = ckpt
    if "drnet" not in loaded:
        return ModelSet(folder, target, loaded, problems)
    reference = loaded["drnet"]
    size, mean, std = _input_format(reference)
    for name in [n for n in loaded if n != "drnet"]:
        if loaded[name].class_names != reference.class_names or _input_format(loaded[name])[0] != size:
            problems[name] = f"{LABELS[name]} was trained on other classes or image sizes than the DRNet; left out"
            del loaded[name]
    fast = {}
    for name in list(loaded):
        try:
            fast[name] = for_inference(loaded[name].model)
            warm_up(fast[name], size, target)
        except (RuntimeError, ValueError) as err:  # a checkpoint whose model cannot run at its own input size
            problems[name] = f"{LABELS[name]} cannot run on {'x'.join(map(str, size))} inputs: {err}"
            del loaded[name]
    if "drnet" not in loaded:
        return ModelSet(folder, target, loaded, problems)
    return ModelSet(folder, target, loaded, problems, reference.class_names, size, mean, std, fast)


def warm_up(model: nn.Module, size: tuple[int, int, int], device: torch.device) -> None:
    """One batch-1 forward with every branch on, while the loading spinner shows.

    oneDNN (and cuDNN) build each convolution's kernel on its first call; without this, the first
    image's latency would include building the kernels of every branch its route uses (tens of ms).
    """
    x = torch.zeros(1, *size, device=device).contiguous(memory_format=MEMORY_FORMAT)
    with torch.inference_mode():
        with_policy(model, threshold=0.0, top_k=None)(x)
