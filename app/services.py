"""What the pages ask of the models: loading, cached inference, evaluation results.

Models load once per process (``st.cache_resource``) and are shared by every session, so
nothing here mutates them: a routing policy is applied to a shallow copy (``routed``), and
attributions run on the private copy ``drnets.attribution.attribute`` makes. Derived data is
cached per image hash and settings (``st.cache_data``); arguments starting with ``_`` are
not hashed, their identity is carried by the key arguments next to them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
import torch
from torch import nn

from drnets.attribution import Attribution, attribute
from drnets.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from drnets.data import normalization, to_input
from drnets.device import describe, keep_freed_memory, pick_device
from drnets.model import DRNet
from drnets.router import RoutingPolicy
from drnets.trace import RoutingTrace
from drnets.upload import PreparedImage, prepare_upload

ROOT = Path(__file__).resolve().parent.parent
MODEL_NAMES = ("drnet", "mobilenetv2", "dense")
LABELS = {"drnet": "DRNet", "mobilenetv2": "MobileNetV2", "dense": "Dense supernet"}
# Latency: the median of a few rounds, each calling every model once on the image (round-robin, as
# bench/ does), so a busy CPU (the browser drawing the page on the same cores) slows all models alike.
LATENCY_ROUNDS = 3  # all three models, 3 rounds: about 75 ms per new image or threshold on 2 cores
# A timing taken while the server was busy (another session, a test run) must not stick to the image:
# it is measured again on the first rerun after this many seconds.
LATENCY_TTL_S = 60


def default_models_dir() -> str:
    """The shipped models, unless DRNETS_MODELS_DIR points elsewhere (tests, your own runs)."""
    return os.environ.get("DRNETS_MODELS_DIR") or str(ROOT / "assets" / "models")


def samples_dir() -> Path:
    return Path(os.environ.get("DRNETS_SAMPLES_DIR") or ROOT / "assets" / "samples")


def list_samples() -> list[str]:
    """Sample file names (``<class>_<n>.png``), sorted; empty when there are none."""
    folder = samples_dir()
    return sorted(p.name for p in folder.glob("*.png")) if folder.is_dir() else []


def read_sample(name: str) -> bytes:
    path = samples_dir() / Path(name).name  # a name from list_samples, never a path
    return path.read_bytes()


# ---- models ----


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


def _checkpoint_folder(directory: Path, name: str) -> Path:
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
        path = _checkpoint_folder(folder, name)
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
        # NHWC is faster on CPU for all three models at batch 1 (docs/BENCHMARKS.md, bench/ uses it too).
        ckpt.model.to(memory_format=torch.channels_last)
        loaded[name] = ckpt
    if "drnet" not in loaded:
        return ModelSet(folder, target, loaded, problems)
    reference = loaded["drnet"]
    size, mean, std = _input_format(reference)
    for name in [n for n in loaded if n != "drnet"]:
        if loaded[name].class_names != reference.class_names or _input_format(loaded[name])[0] != size:
            problems[name] = f"{LABELS[name]} was trained on other classes or image sizes than the DRNet; left out"
            del loaded[name]
    for name in list(loaded):
        try:
            warm_up(loaded[name].model, size, target)
        except (RuntimeError, ValueError) as err:  # a checkpoint whose model cannot run at its own input size
            problems[name] = f"{LABELS[name]} cannot run on {'x'.join(map(str, size))} inputs: {err}"
            del loaded[name]
    if "drnet" not in loaded:
        return ModelSet(folder, target, loaded, problems)
    return ModelSet(folder, target, loaded, problems, reference.class_names, size, mean, std)


def warm_up(model: nn.Module, size: tuple[int, int, int], device: torch.device) -> None:
    """One batch-1 forward with every branch on, while the loading spinner shows.

    oneDNN (and cuDNN) build each convolution's kernel on its first call; without this, the first
    image's latency would include building the kernels of every branch its route uses (tens of ms).
    """
    x = torch.zeros(1, *size, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        routed(model, RoutingPolicy(0.0))(x)


def routed(model: nn.Module, policy: RoutingPolicy | None) -> nn.Module:
    """The model with ``policy`` in force, without touching the shared instance.

    A shallow copy has its own ``__dict__`` (so its own ``policy``) but shares every
    parameter and buffer: no memory is copied and other sessions keep their policy.
    """
    if policy is None or not isinstance(model, DRNet) or not model.config.dynamic:
        return model
    view = copy.copy(model)
    view.policy = policy
    return view


# ---- one image ----


@dataclass
class ModelRun:
    """One model's answer for one image, detached from autograd and on the CPU (picklable for st.cache_data)."""

    name: str
    probs: np.ndarray
    trace: RoutingTrace

    @property
    def pred(self) -> int:
        return int(self.probs.argmax())

    @property
    def flops(self) -> int:
        return int(self.trace.flops[0])

    @property
    def params(self) -> int:
        return int(self.trace.params[0])


def _detach(trace: RoutingTrace) -> RoutingTrace:
    return RoutingTrace.concat([trace])  # concat detaches and moves every tensor to the CPU


def _run(model: nn.Module, x: torch.Tensor, name: str) -> ModelRun:
    with torch.inference_mode():
        _, trace = model(x)
    return ModelRun(name, trace.probs[0].cpu().numpy(), _detach(trace))


@st.cache_data(show_spinner=False, max_entries=256)
def prepare(
    digest: str, _data: bytes, input_size: tuple[int, int, int], mean: tuple, std: tuple, max_bytes: int
) -> PreparedImage:
    """Preprocess an upload once per content hash; ``UploadError`` propagates (and is not cached)."""
    return prepare_upload(_data, input_size=input_size, mean=mean, std=std, max_bytes=max_bytes)


@st.cache_data(show_spinner=False, max_entries=512)
def run_model(
    _models: ModelSet, models_key: str, digest: str, _x: torch.Tensor, name: str, threshold: float, top_k: int | None
) -> ModelRun:
    """One model on one image; only DRNet depends on the routing settings."""
    return _run(_routed(_models, name, threshold, top_k), _on_device(_models, _x), name)


def run_all(models: ModelSet, digest: str, x: torch.Tensor, threshold: float, top_k: int | None) -> dict[str, ModelRun]:
    """Every loaded model on one image; static models ignore (and are not re-run for) the threshold."""
    runs = {}
    for name in models.checkpoints:
        t, k = (threshold, top_k) if name == "drnet" else (0.0, None)
        runs[name] = run_model(models, models.key, digest, x, name, t, k)
    return runs


@st.cache_data(show_spinner=False, max_entries=512, ttl=LATENCY_TTL_S)
def measure_latency(
    _models: ModelSet, models_key: str, digest: str, _x: torch.Tensor, threshold: float, top_k: int | None
) -> dict[str, float]:
    """Seconds per batch-1 forward of every loaded model on this image, timed round-robin (see LATENCY_ROUNDS)."""
    x = _on_device(_models, _x)
    models = {name: _routed(_models, name, threshold, top_k) for name in _models.checkpoints}
    timings: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(LATENCY_ROUNDS):
            for name, model in models.items():
                started = time.perf_counter()
                model(x)
                if x.device.type == "cuda":
                    torch.cuda.synchronize(x.device)
                timings[name].append(time.perf_counter() - started)
    return {name: statistics.median(seconds) for name, seconds in timings.items()}


def _routed(models: ModelSet, name: str, threshold: float, top_k: int | None) -> nn.Module:
    return routed(models.get(name).model, RoutingPolicy(threshold, top_k) if name == "drnet" else None)


def _on_device(models: ModelSet, x: torch.Tensor) -> torch.Tensor:
    return x.to(models.device).contiguous(memory_format=torch.channels_last)


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
) -> Attribution:
    """An attribution with the route the image takes under these settings frozen (see drnets.attribution)."""
    model = routed(_models.get(name).model, RoutingPolicy(threshold, top_k) if name == "drnet" else None)
    black = float(
        np.mean([-m / s for m, s in zip(_models.mean, _models.std, strict=True)])
    )  # a black image, normalised
    return attribute(model, _x.to(_models.device), method, baseline=black)


def dense_cell_flops(models: ModelSet) -> list[int] | None:
    """FLOPs of each DRNet cell with every branch on, at the input size."""
    model = models.drnet()
    if model is None:
        return None
    _, h, w = models.input_size
    table = model.cost_table(h, w)
    return (table.cell_flops + table.branch_flops.sum(dim=(1, 2))).tolist()


def branch_costs(models: ModelSet, cell: int = 0) -> pd.DataFrame:
    """FLOPs and params of each candidate branch on the first edge of one cell (teaching mode)."""
    model = models.drnet()
    _, h, w = models.input_size
    table = model.cost_table(h, w)
    return pd.DataFrame(
        {
            "branch": list(model.config.branches),
            "flops": table.branch_flops[cell, 0].tolist(),
            "params": table.branch_params[cell, 0].tolist(),
        }
    )


# ---- evaluation results (eval.json, sweep.csv) ----


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.is_file() else 0.0


@st.cache_data(show_spinner=False, max_entries=16)
def _read_json(path: str, mtime: float) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_eval(models: ModelSet, name: str) -> dict[str, Any] | None:
    """``<model folder>/eval.json`` as written by ``drnets eval``, or None."""
    path = _checkpoint_folder(models.directory, name) / "eval.json"
    return _read_json(str(path), _mtime(path))


def eval_command(models: ModelSet, name: str) -> str:
    """The command that writes ``name``'s eval.json where the app looks for it."""
    folder = _checkpoint_folder(models.directory, name)
    dataset = models.get(name).training.get("dataset", "fashion-mnist")
    return f"python -m drnets eval --checkpoint {folder} --data {dataset} --split test --out {folder}"


def load_sweep(models: ModelSet) -> pd.DataFrame:
    """DRNet's threshold sweep: sweep.csv, else eval.json's ``sweep``; empty if neither exists."""
    path = _checkpoint_folder(models.directory, "drnet") / "sweep.csv"
    if path.is_file():
        try:
            return pd.read_csv(path)
        except (OSError, ValueError):
            pass
    evaluation = load_eval(models, "drnet") or {}
    return pd.DataFrame(
        evaluation.get("sweep") or [], columns=["threshold", "accuracy", "flops_mean", "params_used_mean"]
    )


def sweep_point(sweep: pd.DataFrame, threshold: float) -> tuple[float, float] | None:
    """(mean FLOPs, accuracy) at ``threshold``, interpolated between the sweep's thresholds."""
    if sweep.empty:
        return None
    data = sweep.sort_values("threshold")
    t = data["threshold"].to_numpy(dtype=float)
    return float(np.interp(threshold, t, data["flops_mean"])), float(np.interp(threshold, t, data["accuracy"]))


def run_pixels(models: ModelSet, pixels: list, threshold: float, top_k: int | None) -> ModelRun:
    """DRNet on a raw uint8 test image from eval.json ``extremes`` ([H][W] or [H][W][C] nested lists)."""
    images = torch.tensor(np.asarray(pixels, dtype=np.uint8))
    if images.dim() == 2:
        images = images.unsqueeze(-1)
    x = to_input(images.unsqueeze(0), models.mean, models.std)
    digest = "pixels:" + hashlib.sha256(images.numpy().tobytes()).hexdigest()
    return run_model(models, models.key, digest, x, "drnet", threshold, top_k)


# ---- the images a session looks at ----


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
class Analysis:
    """One image through every loaded model at the current settings."""

    source: ImageSource
    prepared: PreparedImage
    runs: dict[str, ModelRun]
    seconds: dict[str, float]  # batch-1 latency per model, from measure_latency


def analyse(models: ModelSet, source: ImageSource, threshold: float, top_k: int | None, max_bytes: int) -> Analysis:
    """Preprocess and run one image; raises ``UploadError`` for files that are not usable images."""
    prepared = prepare(source.digest, source.data, models.input_size, models.mean, models.std, max_bytes)
    x = prepared.tensor
    return Analysis(
        source,
        prepared,
        run_all(models, source.digest, x, threshold, top_k),
        measure_latency(models, models.key, source.digest, x, threshold, top_k),
    )


def cells_table(models: ModelSet) -> pd.DataFrame:
    """One row per DRNet cell: its kind, width, edges and what it costs with every branch on (teaching mode)."""
    model = models.drnet()
    dense = dense_cell_flops(models)
    return pd.DataFrame(
        {
            "cell": range(len(model.cells)),
            "kind": ["reduction (½ size, 2× channels)" if c.reduction else "normal" for c in model.cells],
            "channels": [c.channels for c in model.cells],
            "edges": [len(c.edges) for c in model.cells],
            "branches": [len(c.branch_names) for c in model.cells],
            "FLOPs, all on": dense,
        }
    )
