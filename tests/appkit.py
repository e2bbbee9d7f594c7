"""What the app tests run on: the shipped models (or stand-ins until they exist) and a garment photo.

Once ``assets/models/{drnet,dense,mobilenetv2}`` hold checkpoints the tests use them, as the
app does. Before that, ``build_standins`` writes small random-init checkpoints in the same
layout (with eval.json and sweep.csv from a real evaluation on a few test images), so the
app and its tests run on real models, just untrained ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bench.classroom import started_server
from drnets.checkpoint import load_checkpoint, save_checkpoint
from drnets.data import FASHION_MNIST_CLASSES, load_dataset, normalization
from drnets.evaluate import evaluate, write_results
from drnets.inference import for_inference
from drnets.model import create_model
from drnets.router import RoutingPolicy
from drnets.upload import prepare_upload

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets" / "models"
NAMES = ("drnet", "dense", "mobilenetv2")
STANDIN = {
    "drnet": {"channels": 8, "num_nodes": 2},
    "dense": {"channels": 8, "num_nodes": 2},
    "mobilenetv2": {"width_mult": 0.25},
}
EVAL_IMAGES = 48  # enough for every class to appear in eval.json, small enough for a 2-core CI


def shipped() -> Path | None:
    """assets/models when all three checkpoints and their evaluations are there."""
    files = ("config.json", "model.safetensors", "eval.json")
    ok = all((ASSETS / name / f).is_file() for name in NAMES for f in files)
    return ASSETS if ok else None


def build_standins(out: Path, seed: int = 0) -> Path:
    """Random-init checkpoints with spread-out router weights (so routes differ per image), evaluated."""
    mean, std = normalization("fashion-mnist", 1)
    training = {"dataset": "fashion-mnist", "mean": list(mean), "std": list(std), "input_size": [1, 28, 28]}
    data = load_dataset("fashion-mnist", "test").subset(EVAL_IMAGES)
    for name in NAMES:
        torch.manual_seed(seed)
        model = create_model(name, **STANDIN[name]).eval()
        if name == "drnet":
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for cell in model.cells:
                    for p in cell.router.parameters():
                        p.copy_(torch.randn(p.shape, generator=generator))
        save_checkpoint(out / name, model, name, FASHION_MNIST_CLASSES, training)
        result = evaluate(load_checkpoint(out / name), data, sweep=(0.0, 0.05, 0.1, 0.15, 0.2, 0.3))
        write_results(out / name, result)
    return out


def garment_photo(size: tuple[int, int] = (640, 480), seed: int = 0) -> bytes:
    """A JPEG 'photo' of a dark T-shirt lying on a light, unevenly lit table, with sensor noise."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    w, h = size
    rng = np.random.default_rng(seed)
    light = np.linspace(235, 205, w)[None, :] + np.linspace(0, 15, h)[:, None]  # window light from the left
    background = Image.fromarray(np.clip(light, 0, 255).astype(np.uint8)).convert("RGB")
    shirt = Image.new("L", size, 0)
    cx, top, s = w // 2, int(h * 0.18), min(w, h) / 480
    outline = [(-60, 0), (-20, 10), (20, 10), (60, 0), (150, 45), (125, 110), (85, 90), (85, 330), (-85, 330),
               (-85, 90), (-125, 110), (-150, 45)]  # fmt: skip
    ImageDraw.Draw(shirt).polygon([(cx + x * s, top + y * s) for x, y in outline], fill=255)
    fabric = Image.new("RGB", size, (40, 52, 88))  # navy cotton
    photo = Image.composite(fabric, background, shirt.filter(ImageFilter.GaussianBlur(2)))
    pixels = np.asarray(photo, dtype=float) + rng.normal(0, 4, (h, w, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=88)
    return out.getvalue()


@dataclass(frozen=True)
class Reference:
    """What the DRNet makes of an upload, computed here without the app."""

    pred: int
    answer: str
    flops: int


def drnet_reference(models_dir: Path, data: bytes, threshold: float, budget: float | None = None) -> Reference:
    ckpt = load_checkpoint(models_dir / "drnet")
    training = ckpt.training
    prepared = prepare_upload(data, tuple(training["input_size"]), tuple(training["mean"]), tuple(training["std"]))
    logits, trace = for_inference(ckpt.model)(prepared.tensor, RoutingPolicy(threshold, None, budget=budget))
    pred = int(logits[0].argmax())
    return Reference(pred, ckpt.class_names[pred], int(trace.flops[0]))


# ---- the app started the README's way, shared by test_launch and test_e2e ----


@dataclass(frozen=True)
class AppServer:
    port: int
    models: Path  # the models folder it serves
    pid: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def app_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """assets/models when shipped, else evaluated random-init stand-ins, built once per test session."""
    return shipped() or build_standins(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def app_server(tmp_path_factory: pytest.TempPathFactory, app_models: Path) -> Iterator[AppServer]:
    """``python -m app.launch --server.port <free port>`` in a subprocess, as `make run` does."""
    env = dict(os.environ, DRNETS_MODELS_DIR=str(app_models), OMP_NUM_THREADS="1")
    with started_server(tmp_path_factory.mktemp("server"), env) as server:
        server.wait_healthy()
        yield AppServer(server.port, app_models, server.process.pid)
