"""The Streamlit app driven headlessly with AppTest, on the shipped models (stand-ins until they exist).

Plotly charts are opaque to AppTest; their builders are tested in test_figures.py. Here
we check what a user reads: metrics, errors, captions, and that no page raises.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import appkit
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

import app.models as app_models_module
from app import export, picker, sidebar, state
from app.evaluations import sweep_point
from app.figures.images import prediction_bars
from app.models import SHIPPED_LABEL, load_models, model_folders, warm_up
from app.samples import list_samples, samples_dir
from app.timing import LATENCY_ROUNDS, server_timing
from drnets.checkpoint import load_checkpoint, save_checkpoint
from drnets.data import FASHION_MNIST_CLASSES, load_dataset, normalization
from drnets.evaluate import SWEEP_BUDGETS, evaluate, write_results
from drnets.inference import for_inference
from drnets.model import create_model
from drnets.router import RoutingPolicy
from drnets.upload import prepare_upload

MAIN = appkit.ROOT / "app" / "main.py"
PAGES = ("views/inspect.py", "views/attributions.py", "views/explorer.py", "views/teaching.py")
TIMEOUT = 300  # seconds per script run; a loaded 2-core machine needs them on the first (cold) run
app_models = appkit.app_models  # session fixture: the shipped models or stand-ins
BROKEN_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"truncated"
BROKEN_PNG_AS_JPEG = ("photo.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00truncated", "image/jpeg")


@pytest.fixture(scope="module")
def models_dir(app_models: Path):
    """The models the app finds through DRNETS_MODELS_DIR (see appkit.app_models)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRNETS_MODELS_DIR", str(app_models))
        yield app_models


def new_app() -> AppTest:
    return AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)


def metric(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r}; metrics: {[m.label for m in at.metric]}"
    return values[0]


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "subheader", "title", "info", "error") for e in at.get(kind)]
    return "\n".join(map(str, parts))


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_every_page_runs_on_the_default_sample(models_dir: Path) -> None:
    at = new_app().run()
    assert_clean(at)
    assert at.session_state[state.SAMPLE], "a first-time user should see a sample without doing anything"
    assert metric(at, "DRNet FLOPs")
    assert "DRNet says" in [m.label for m in at.metric]
    at.switch_page("views/attributions.py").run()
    assert_clean(at)
    assert "Saliency" in texts(at) and "Grad-CAM" in texts(at)
    at.switch_page("views/explorer.py").run()
    assert_clean(at)
    assert "Headline" in texts(at) and "cheapest" in texts(at)
    assert "10,000 test images of Fashion-MNIST" in texts(at)
    at.switch_page("views/teaching.py").run()
    assert_clean(at)


def _page_with_a_chart() -> None:
    import plotly.graph_objects as go
    import streamlit as st

    from app import state, ui

    state.init()
    st.session_state.setdefault("charts_ready_per_run", []).append(st.session_state[state.CHARTS_READY])
    st.metric("answer", "Sneaker")
    ui.chart(go.Figure(go.Bar(y=[1, 2])), key="chart")
    ui.draw_held_charts()


def test_the_first_run_answers_before_its_charts_come_in_a_second_run() -> None:
    """A session's first run holds its Plotly charts back, then runs again with them (AppTest's run()
    includes that second run); later runs draw them at once, without a second run."""
    at = AppTest.from_function(_page_with_a_chart).run()
    assert_clean(at)
    assert at.session_state["charts_ready_per_run"] == [False, True]
    assert len(at.get("plotly_chart")) == 1 and not any("Drawing the chart" in c.value for c in at.caption)
    at.run()
    assert at.session_state["charts_ready_per_run"] == [False, True, True]
    assert len(at.get("plotly_chart")) == 1


def test_the_apps_first_run_ends_with_its_charts_drawn(models_dir: Path) -> None:
    at = new_app().run()
    assert at.get("plotly_chart") and not any("Drawing the chart" in c.value for c in at.caption)


def test_teaching_mode_walks_through_every_step(models_dir: Path) -> None:
    at = new_app()
    at.switch_page("views/teaching.py").run()
    steps = [at.radio(key="teaching_step").value]
    while not at.button(key="teaching_next").disabled:
        at.button(key="teaching_next").click().run()
        assert_clean(at)
        steps.append(at.radio(key="teaching_step").value)
    assert len(steps) == 6 and len(set(steps)) == 6, steps
    assert "Skipped branches are never computed" in texts(at)


def test_upload_of_a_photo_and_a_broken_file(models_dir: Path) -> None:
    photo = appkit.garment_photo()
    at = new_app().run()
    at.file_uploader(key=state.UPLOADS).set_value(
        [("shirt.jpg", photo, "image/jpeg"), ("broken.png", BROKEN_PNG, "image/png")]
    ).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "broken.png" in errors[0], errors
    assert at.session_state[state.SAMPLE] is None, "a fresh upload replaces the sample"
    assert "shirt.jpg" in [s.value for s in at.subheader]
    assert metric(at, "DRNet FLOPs") == _si(
        appkit.drnet_reference(models_dir, photo, at.slider(key=state.THRESHOLD).value).flops
    )
    at.switch_page("views/attributions.py").run()
    assert_clean(at)
    assert "shirt.jpg" in texts(at), "the upload survives a page switch"
    at.switch_page("views/explorer.py").run()  # a page without the image controls
    at.switch_page("views/inspect.py").run()
    assert "shirt.jpg" in [s.value for s in at.subheader], "and a visit to a page without the uploader"
    assert any("Still showing from before: shirt.jpg, broken.png" in c.value for c in at.caption)
    at.button(key="clear_kept").click().run()
    assert "shirt.jpg" not in [s.value for s in at.subheader]


def test_a_photo_without_a_clear_object_is_said_once(models_dir: Path) -> None:
    """The warning says the whole frame was used; the preprocessing caption below does not say it again."""
    from drnets.nongarments import render_nongarment

    _, selfie = render_nongarment("selfie", np.random.default_rng(5))
    at = new_app().run()
    at.file_uploader(key=state.UPLOADS).set_value([("selfie.jpg", selfie, "image/jpeg")]).run()
    assert not at.exception
    warnings = [w.value for w in at.warning if "Not sure where the garment is" in w.value]
    assert len(warnings) == 1, [w.value for w in at.warning]
    assert texts(at).count("no clear object found") == 0 and warnings[0].count("no clear object found") == 1


def test_camera_photo_gets_the_answer_and_cost_of_the_same_file_uploaded(models_dir: Path) -> None:
    photo = appkit.garment_photo(seed=3)
    uploaded = new_app().run()
    uploaded.file_uploader(key=state.UPLOADS).set_value([("shirt.jpg", photo, "image/jpeg")]).run()
    at = new_app().run()
    assert not at.camera_input, "the camera waits until the user switches it on"
    at.toggle(key=state.CAMERA_ON).set_value(True).run()
    at.camera_input(key=state.CAMERA).set_value(("photo.jpg", photo, "image/jpeg")).run()
    assert_clean(at)
    assert at.session_state[state.SAMPLE] is None, "a photo replaces the sample"
    assert picker.CAMERA_NAME in [s.value for s in at.subheader]
    for label in ("DRNet says", "DRNet FLOPs", "MobileNetV2 says", "DRNet params touched"):
        assert metric(at, label) == metric(uploaded, label), label
    at.camera_input(key=state.CAMERA).set_value(BROKEN_PNG_AS_JPEG).run()
    assert not at.exception
    assert any(picker.CAMERA_NAME in e.value and "cannot be used" in e.value for e in at.error)


def test_sample_picker_shows_the_chosen_sample(models_dir: Path) -> None:
    at = new_app().run()
    samples = at.selectbox(key=state.SAMPLE).options
    assert len(samples) >= 3, "assets/samples/ should hold a few test images"
    at.selectbox(key=state.SAMPLE).set_value(at.selectbox(key=state.SAMPLE).options[2]).run()
    assert_clean(at)
    chosen = at.session_state[state.SAMPLE]
    assert state.sample_label(chosen) in [s.value for s in at.subheader]


def test_threshold_slider_reroutes_the_image(models_dir: Path) -> None:
    at = new_app().run()
    sample = (samples_dir() / at.session_state[state.SAMPLE]).read_bytes()
    seen = {}
    for t in (0.0, 0.3):
        at.slider(key=state.THRESHOLD).set_value(t).run()
        assert_clean(at)
        seen[t] = metric(at, "DRNet FLOPs")
        assert seen[t] == _si(appkit.drnet_reference(models_dir, sample, t).flops)
    assert seen[0.0] != seen[0.3], "every branch runs at t=0, far fewer at t=0.3"


def test_attributions_on_request(models_dir: Path) -> None:
    at = new_app()
    at.switch_page("views/attributions.py").run()
    assert "Integrated Gradients" not in [m.value for m in at.markdown]
    at.button(key="run_slow_attributions").click().run()
    assert_clean(at)
    body = texts(at)
    assert "Integrated Gradients" in body and "Occlusion" in body and "convergence delta" in body


def test_the_browser_picks_among_the_folders_the_operator_configured(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine"
    _lone_drnet(mine / "drnet")
    monkeypatch.setenv("DRNETS_MODELS_DIR", os.pathsep.join([str(models_dir), str(mine)]))
    at = new_app().run()
    assert_clean(at)
    picker = at.selectbox(key=sidebar.MODELS_FOLDER)
    assert picker.options[0] == SHIPPED_LABEL and "mine" in picker.options
    assert not any(os.sep in label for label in picker.options), "labels, never server paths"
    assert at.session_state[state.MODELS_DIR] == str(models_dir), "the first configured folder is the default"
    picker.set_value("mine").run()
    assert_clean(at)
    assert at.session_state[state.MODELS_DIR] == str(mine)
    assert f"✓ drnet: {mine / 'drnet'}" in texts(at)


@pytest.mark.parametrize("sent", ["outside", "/etc", "../.."])
def test_a_folder_the_server_does_not_offer_loads_nothing(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sent: str
) -> None:
    """A crafted client sends a path (here a folder holding a valid DRNet) as the folder picker's value."""
    outside = tmp_path / "outside"
    _lone_drnet(outside / "drnet")
    sent = str(outside) if sent == "outside" else sent
    read: list[Path] = []
    real_load = app_models_module.load_checkpoint

    def spy(path: Path, **kwargs):
        read.append(Path(path))
        return real_load(path, **kwargs)

    monkeypatch.setattr(app_models_module, "load_checkpoint", spy)
    at = new_app()
    at.session_state[sidebar.MODELS_FOLDER] = sent
    at.session_state[state.MODELS_DIR] = sent  # the key the pages load from: the sidebar sets it, not the client
    at.run()
    assert_clean(at)
    assert any("not one this server offers" in w.value for w in at.warning), [w.value for w in at.warning]
    configured = [str(folder) for folder in model_folders().values()]
    assert at.session_state[state.MODELS_DIR] == str(models_dir) and str(models_dir) in configured
    assert at.selectbox(key=sidebar.MODELS_FOLDER).value in model_folders()
    assert not [p for p in read if p.is_relative_to(outside)], read
    assert str(outside) not in texts(at)


def test_no_text_box_takes_a_server_path(models_dir: Path) -> None:
    at = new_app().run()
    assert not at.exception
    assert not at.text_input and not at.text_area, [w.key for w in [*at.text_input, *at.text_area]]


def test_missing_models_and_samples_get_a_message(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRNETS_SAMPLES_DIR", str(tmp_path / "no-samples"))
    monkeypatch.setenv("DRNETS_MODELS_DIR", os.pathsep.join([str(models_dir), str(tmp_path / "nowhere")]))
    at = new_app().run()
    assert not at.exception
    assert any("Pick a sample, upload a photo or take one" in i.value for i in at.info)
    at.selectbox(key=sidebar.MODELS_FOLDER).set_value("nowhere").run()
    assert not at.exception
    assert any("No usable DRNet" in e.value for e in at.error)
    for page in PAGES[1:]:
        at.switch_page(page).run()
        assert not at.exception and any("No usable DRNet" in e.value for e in at.error)


def test_exports_hold_the_trace_of_every_image(models_dir: Path) -> None:
    ckpt = load_checkpoint(models_dir / "drnet")
    images = [_png(np.full((28, 28), v, dtype=np.uint8)) for v in (30, 200)]
    x = torch.cat([prepare_upload(b).tensor for b in images])
    with torch.no_grad():
        trace = ckpt.model(x)[1]
    traces = [trace.select([0]), trace.select([1])]
    samples, cells, branches = export.trace_frames(traces, ["a.png", "b.png"], ckpt.class_names)
    _, layers, edges, k = trace.ran.shape
    table = pd.read_csv(io.BytesIO(export.trace_csv(branches, {"threshold": 0.1, "top_k": None})))
    assert len(table) == 2 * layers * edges * k
    assert set(table["sample"]) == {"a.png", "b.png"} and (table["threshold"] == 0.1).all()
    assert table.groupby("sample")["ran"].sum().tolist() == trace.ran.sum(dim=(1, 2, 3)).tolist()
    document = json.loads(export.trace_json(samples, cells, branches, {"threshold": 0.1}))
    assert [s["flops"] for s in document["samples"]] == trace.flops.tolist()
    assert len(document["cells"]) == 2 * layers and document["settings"] == {"threshold": 0.1}
    html = export.figure_html(prediction_bars(trace.probs[0], ckpt.class_names))
    assert "<html>" in html[:100] and "plotly" in html and "<script src=" not in html, "self-contained: opens offline"


# ---- helpers ----


def _si(value: float) -> str:
    from app.ui import si

    return si(value)


def _lone_drnet(folder: Path) -> None:
    torch.manual_seed(0)
    save_checkpoint(folder, create_model("drnet", channels=4, num_nodes=2).eval(), "drnet",
                    list(FASHION_MNIST_CLASSES), {"dataset": "fashion-mnist", "input_size": [1, 28, 28]})  # fmt: skip


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def test_unexpected_errors_become_a_friendly_message() -> None:
    def script() -> None:
        import streamlit as st

        from app import ui

        with ui.guard("drawing a test figure"):
            raise RuntimeError("internal detail /srv/secret.py line 3")
        st.markdown("the rest of the page")

    at = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert len(at.error) == 1 and "Something went wrong while drawing a test figure" in at.error[0].value
    assert "secret" not in at.error[0].value and "RuntimeError" not in at.error[0].value
    assert at.markdown[0].value == "the rest of the page"


def test_loading_runs_every_branch_once_and_leaves_the_shared_model_as_it_was() -> None:
    """The first image's latency must not include oneDNN building the kernels of the branches it uses."""
    torch.manual_seed(0)
    fast = for_inference(create_model("drnet", channels=4, num_nodes=2, threshold=0.9))  # would skip every branch
    branches = {name for name, _ in fast.cells.named_modules() if ".branches." in name and name.count(".") == 3}
    called: set[str] = set()
    for name in branches:
        fast.cells.get_submodule(name).register_forward_hook(lambda *_, name=name: called.add(name))
    warm_up(fast, (1, 28, 28), torch.device("cpu"))
    assert len(branches) == 5 * 5 * 7 and called == branches  # cells x edges x branches


def test_a_checkpoint_that_cannot_run_at_its_own_input_size_is_reported_not_raised(tmp_path: Path) -> None:
    """A stranger's DRNet claiming 4x4 inputs (below the stem's minimum) fails its warm-up: a problem, no crash."""
    torch.manual_seed(0)
    for name in ("drnet", "mobilenetv2"):
        save_checkpoint(tmp_path / name, create_model(name, channels=4, num_nodes=2) if name == "drnet"
                        else create_model(name), name, list(FASHION_MNIST_CLASSES), {"input_size": [1, 4, 4]})  # fmt: skip
    models = load_models(str(tmp_path))
    assert "drnet" not in models.checkpoints
    assert "cannot run on 1x4x4 inputs" in models.problems["drnet"]


def test_server_timing_runs_every_model_once_per_round_on_the_samples(tmp_path: Path, monkeypatch) -> None:
    """Measured once per server on the shipped samples, round-robin as bench/ does: a CPU busy
    drawing the page then slows every model alike, instead of whichever is timed at that moment."""
    samples = tmp_path / "samples"
    samples.mkdir()
    for i in range(2):
        Image.fromarray(np.full((28, 28), 60 * i, dtype=np.uint8)).save(samples / f"Coat_{i}.png")
    monkeypatch.setenv("DRNETS_SAMPLES_DIR", str(samples))
    torch.manual_seed(0)
    for name in ("drnet", "mobilenetv2"):
        model = create_model(name, channels=4, num_nodes=2) if name == "drnet" else create_model(name)
        save_checkpoint(tmp_path / name, model, name, list(FASHION_MNIST_CLASSES), {"input_size": [1, 28, 28]})
    models = load_models(str(tmp_path))
    calls: list[str] = []
    hooks = [models.fast[n].register_forward_pre_hook(lambda *_, n=n: calls.append(n)) for n in models.checkpoints]
    timing = server_timing(models, models.key)
    for hook in hooks:
        hook.remove()
    assert calls == list(models.checkpoints) * 2 * LATENCY_ROUNDS  # every model per image, per round
    assert set(timing.seconds) == set(models.checkpoints) and all(s > 0 for s in timing.seconds.values())
    assert timing.images == 2 and "UTC" in timing.describe() and "2 sample images" in timing.describe()
    assert server_timing(models, models.key) is timing, "measured once, not per request"


def test_a_lone_drnet_without_evaluation_works_and_says_how_to_evaluate_it(tmp_path: Path) -> None:
    """A researcher's own DRNet, alone in a folder as training writes it: Inspect has no empty
    MobileNetV2 column, and the explorer gives the exact command that creates what it reads."""
    _lone_drnet(tmp_path / "drnet" / "model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRNETS_MODELS_DIR", str(tmp_path))
        at = new_app().run()
        assert_clean(at)
        costs = at.dataframe[0].value  # the per-model cost table
        assert "latency (ms)" in costs.columns and "FLOPs vs MobileNetV2" not in costs.columns
        at.switch_page("views/explorer.py").run()
    assert_clean(at)
    folder = tmp_path / "drnet" / "model"
    assert [c.value for c in at.code] == [
        f"python -m drnets eval --checkpoint {folder} --data fashion-mnist --split test --out {folder}"
    ]


def test_warm_fills_the_caches_the_pages_read(models_dir: Path, monkeypatch) -> None:
    """What app.serve runs as the server starts: afterwards the first page loads and times nothing."""
    from app import warm

    monkeypatch.setenv("DRNETS_MODELS_DIR", str(models_dir))
    warm.warm()
    models = load_models(str(models_dir))
    assert models.drnet() is not None
    timed: list[str] = []
    hook = models.fast["drnet"].register_forward_pre_hook(lambda *_: timed.append("drnet"))
    try:
        timing = server_timing(models, models.key)
    finally:
        hook.remove()
    assert not timed and set(timing.seconds) == set(models.checkpoints)


def test_budget_slider_reroutes_a_budgeted_drnet_and_moves_the_star(tmp_path: Path, monkeypatch) -> None:
    """A DRNet whose routers read a budget gets the budget as its main control: the image re-routes to
    what the model computes at that budget, and the star sits on the sweep at that budget."""
    torch.manual_seed(0)
    model = create_model(
        "drnet", channels=8, num_nodes=2, router_input="cell", gate="sigmoid", budgeted=True, threshold=0.5
    ).eval()
    mean, std = normalization("fashion-mnist", 1)
    training = {"dataset": "fashion-mnist", "input_size": [1, 28, 28], "mean": list(mean), "std": list(std)}
    save_checkpoint(tmp_path / "drnet", model, "drnet", list(FASHION_MNIST_CLASSES), training)
    ckpt = load_checkpoint(tmp_path / "drnet")
    write_results(tmp_path / "drnet", evaluate(ckpt, load_dataset("fashion-mnist", "test").subset(48)))
    monkeypatch.setenv("DRNETS_MODELS_DIR", str(tmp_path))
    sample = (samples_dir() / list_samples()[0]).read_bytes()
    prepared = prepare_upload(sample, (1, 28, 28), mean, std)
    fast = for_inference(ckpt.model)

    at = new_app().run()
    assert_clean(at)
    slider = at.slider(key=state.BUDGET)
    assert (slider.min, slider.max) == (min(SWEEP_BUDGETS), max(SWEEP_BUDGETS)) and slider.value == model.config.budget
    flops = {}
    for budget in (min(SWEEP_BUDGETS), max(SWEEP_BUDGETS)):
        at.slider(key=state.BUDGET).set_value(budget).run()
        assert_clean(at)
        _, trace = fast(prepared.tensor, RoutingPolicy(0.5, None, budget=budget))
        flops[budget] = metric(at, "DRNet FLOPs")
        assert flops[budget] == _si(int(trace.flops[0])), budget
        assert any(f"budget c = {budget:.2f}" in c.value for c in at.caption), "the caption names the budget"
        curve = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if "current budget" in c.proto.spec)
        star = next(t for t in curve["data"] if t.get("name") == "current budget")
        assert (star["x"][0], star["y"][0]) == pytest.approx(sweep_point(load_sweep_csv(tmp_path), budget))
    assert flops[min(SWEEP_BUDGETS)] != flops[max(SWEEP_BUDGETS)], "the budget moves the cost"


def load_sweep_csv(models: Path) -> pd.DataFrame:
    return pd.read_csv(models / "drnet" / "sweep.csv")
