"""Eight sessions at once (issue 5): each gets its own correct answer; the shared model is never touched.

Eight threads, one per session, each run a different test image at a different routing
threshold through the app's analysis module and ask for attributions; the results are compared
with a serial computation made here without the app, and the model that st.cache_resource shares
between sessions is checked for changed weights, a changed routing policy and left-over Captum hooks.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import appkit
import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from app import state
from app.analysis import ImageSource, analyse, explain
from app.models import default_models_dir, load_models
from app.ui import si
from drnets.attribution import attribute
from drnets.checkpoint import load_checkpoint
from drnets.data import load_dataset
from drnets.router import RoutingPolicy

SESSIONS = 8
THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5)
TIMEOUT = 600  # eight sessions share two cores
app_models = appkit.app_models  # session fixture: the shipped models or stand-ins


@pytest.fixture(scope="module")
def models_dir(app_models: Path, tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRNETS_MODELS_DIR", str(app_models))
        mp.setenv("DRNETS_SAMPLES_DIR", str(tmp_path_factory.mktemp("no-samples")))  # only the uploads run
        yield app_models


def fashion_pngs() -> list[bytes]:
    """The first test images of Fashion-MNIST as PNG files, one per session."""
    data = load_dataset("fashion-mnist", "test").subset(SESSIONS)
    pngs = []
    for pixels in data.images.numpy():
        out = io.BytesIO()
        Image.fromarray(pixels[..., 0]).save(out, "PNG")
        pngs.append(out.getvalue())
    return pngs


def session(i: int, image: bytes) -> dict:
    """One user: upload an image at a threshold, run every model, ask for attributions.

    Sessions call the app's analysis module, where the sharing happens (``st.cache_resource``
    models, ``st.cache_data`` results, attributions). AppTest itself is not thread-safe (its
    runs share one global Streamlit runtime), so the page-level check runs once, afterwards.
    """
    shared = load_models(default_models_dir())
    source = ImageSource.of(f"image{i}.png", image)
    analysis = analyse(shared, source, THRESHOLDS[i], None)
    x = analysis.prepared.tensor
    maps = {
        name: explain(shared, shared.key, source.digest, x, name, "gradcam", THRESHOLDS[i], None).heatmap
        for name in ("drnet", "mobilenetv2")
    }
    drnet = analysis.runs["drnet"].trace
    return {"flops": int(drnet.flops[0]), "pred": int(drnet.preds[0]), "maps": maps, "x": x}


@pytest.mark.slow
def test_concurrent_sessions_match_a_serial_run(models_dir: Path) -> None:
    images = fashion_pngs()
    shared = load_models(default_models_dir())
    model = shared.drnet()
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    with ThreadPoolExecutor(SESSIONS) as pool:
        results = list(pool.map(session, range(SESSIONS), images))

    for i, (result, image) in enumerate(zip(results, images, strict=True)):
        reference = appkit.drnet_reference(models_dir, image, THRESHOLDS[i])
        assert (result["flops"], result["pred"]) == (reference.flops, reference.pred), i
        for name in ("drnet", "mobilenetv2"):
            reference = _serial_attribution(models_dir, name, result["x"], THRESHOLDS[i])
            np.testing.assert_allclose(result["maps"][name], reference, atol=1e-5)
    assert len({r["flops"] for r in results}) > 1, "different thresholds should give different costs"

    # The page, served from what the concurrent sessions cached, shows the serial answer.
    at = AppTest.from_file(str(appkit.ROOT / "app" / "main.py"), default_timeout=TIMEOUT).run()
    at.file_uploader(key=state.UPLOADS).set_value(("image0.png", images[0], "image/png"))
    at.slider(key=state.THRESHOLD).set_value(THRESHOLDS[0]).run()
    assert not at.exception and not at.error
    assert next(m.value for m in at.metric if m.label == "DRNet FLOPs") == si(results[0]["flops"])

    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items()), "shared weights changed"
    for module in model.modules():
        hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks)
        assert not any(hooks), f"left-over hooks on {type(module).__name__}"


def _serial_attribution(models_dir: Path, name: str, x: torch.Tensor, threshold: float) -> np.ndarray:
    ckpt = load_checkpoint(models_dir / name)
    policy = RoutingPolicy(threshold, None) if name == "drnet" else None
    t = ckpt.training
    black = float(np.mean([-m / s for m, s in zip(t["mean"], t["std"], strict=True)]))
    return attribute(ckpt.model, x, "gradcam", policy=policy, baseline=black).heatmap
