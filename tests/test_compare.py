"""The compare page (app/views/compare.py) through AppTest, and its figures on real traces.

The page runs under a small entry script like app/main.py, with the shared sidebar and only this
page, so the test does not depend on the page being registered in main.py. The expected routes come
from the shipped models run here without the app, as appkit.drnet_reference does.
"""

from __future__ import annotations

from pathlib import Path

import appkit
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app import state
from app.figures import compare
from app.samples import read_sample
from drnets import ood
from drnets.checkpoint import load_checkpoint
from drnets.inference import for_inference
from drnets.nongarments import render_nongarment
from drnets.router import RoutingPolicy
from drnets.trace import RoutingTrace
from drnets.upload import prepare_upload

PAGE = appkit.ROOT / "app" / "views" / "compare.py"
TIMEOUT = 300  # seconds per script run; the first one loads every model on a loaded 2-core machine
ASSETS = appkit.ROOT / "assets" / "models"
BROKEN_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"truncated"
SNEAKER, SHIRT = "sneaker_0.png", "shirt_0.png"
app_models = appkit.app_models  # session fixture: the shipped models or stand-ins

ENTRY = f"""
import sys
sys.path.insert(0, {str(appkit.ROOT)!r})
import streamlit as st
from app import sidebar, state
state.init()
page = st.navigation([st.Page({str(PAGE)!r}, title="Compare two images", default=True)])
sidebar.render()
page.run()
"""


@pytest.fixture(scope="module")
def models_dir(app_models: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRNETS_MODELS_DIR", str(app_models))
        yield app_models


@pytest.fixture(scope="module")
def entry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compare") / "compare_app.py"
    path.write_text(ENTRY)
    return path


def drnet_trace(models_dir: Path, data: bytes, threshold: float) -> tuple[str, RoutingTrace]:
    """DRNet's answer and trace for one image, without the app."""
    ckpt = load_checkpoint(models_dir / "drnet")
    training = ckpt.training
    prepared = prepare_upload(data, tuple(training["input_size"]), tuple(training["mean"]), tuple(training["std"]))
    logits, trace = for_inference(ckpt.model)(prepared.tensor, RoutingPolicy(threshold, None))
    return ckpt.class_names[int(logits[0].argmax())], RoutingTrace.concat([trace])


@pytest.fixture(scope="module")
def pair(models_dir: Path) -> tuple[RoutingTrace, RoutingTrace]:
    """The default pair's DRNet traces at the checkpoint's threshold."""
    threshold = load_checkpoint(models_dir / "drnet").model.config.threshold
    return drnet_trace(models_dir, read_sample(SNEAKER), threshold)[1], drnet_trace(
        models_dir, read_sample(SHIRT), threshold
    )[1]


def metric(at: AppTest, label: str) -> list[str]:
    return [m.value for m in at.metric if m.label == label]


def table(at: AppTest, column: str) -> pd.DataFrame:
    """The table with this column (AppTest's dataframes do not carry their keys)."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert len(found) == 1, [list(d.value.columns) for d in at.dataframe]
    return found[0]


def test_defaults_show_a_sneaker_against_a_shirt(models_dir: Path, entry: Path) -> None:
    at = AppTest.from_file(str(entry), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="compare_a_sample").value == SNEAKER
    assert at.selectbox(key="compare_b_sample").value == SHIRT
    threshold = at.slider(key=state.THRESHOLD).value
    (answer_a, trace_a), (answer_b, trace_b) = (
        drnet_trace(models_dir, read_sample(name), threshold) for name in (SNEAKER, SHIRT)
    )
    assert metric(at, "DRNet says") == [answer_a, answer_b]
    ran_a, ran_b = trace_a.ran[0], trace_b.ran[0]  # [L, E, K]
    edges = ran_a.shape[0] * ran_a.shape[1]
    differing = int((ran_a != ran_b).any(dim=-1).sum())
    assert metric(at, "Edges that chose differently") == [f"{differing} of {edges}"]
    assert metric(at, "Branches that differ") == [str(int((ran_a != ran_b).sum()))]
    answers = table(at, "A says")
    assert list(answers["model"]) == ["DRNet", "MobileNetV2", "Dense supernet"]
    assert answers["A says"].iat[0].startswith(answer_a) and answers["B says"].iat[0].startswith(answer_b)
    assert answers["FLOPs A"].iat[0] == int(trace_a.flops[0]) and answers["FLOPs B"].iat[0] == int(trace_b.flops[0])
    if differing:
        assert len(table(at, "only A ran")) == differing


def test_a_photo_and_a_broken_file_go_through_the_upload_checks(models_dir: Path, entry: Path) -> None:
    photo = appkit.garment_photo()
    at = AppTest.from_file(str(entry), default_timeout=TIMEOUT).run()
    at.file_uploader(key="compare_a_upload").set_value(("shirt.jpg", photo, "image/jpeg"))
    at.file_uploader(key="compare_b_upload").set_value(("broken.png", BROKEN_PNG, "image/png")).run()
    assert not at.exception, [e.message for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "broken.png" in errors[0] and "cannot be used" in errors[0], errors
    reference = appkit.drnet_reference(models_dir, photo, at.slider(key=state.THRESHOLD).value)
    assert metric(at, "DRNet says") == [reference.answer], "side A shows the photo's answer, as preprocessed elsewhere"
    assert any("shirt.jpg" in c.value for c in at.caption)
    assert not metric(at, "Edges that chose differently"), "no comparison without a second image"


def test_route_differences_match_the_traces(pair: tuple[RoutingTrace, RoutingTrace]) -> None:
    trace_a, trace_b = pair
    diff = compare.route_differences(trace_a.branches_frame(), trace_b.branches_frame())
    ran_a, ran_b = trace_a.ran[0].numpy(), trace_b.ran[0].numpy()
    cells, edges, _ = ran_a.shape
    assert len(diff) == cells * edges
    assert diff["differs"].tolist() == (ran_a != ran_b).any(axis=-1).ravel().tolist()
    names = np.asarray(trace_a.branch_names)
    rows_a, rows_b = ran_a.reshape(-1, ran_a.shape[-1]), ran_b.reshape(-1, ran_b.shape[-1])
    for row, a, b in zip(diff.itertuples(), rows_a, rows_b, strict=True):
        assert set(row.only_a) == set(names[a & ~b]) and set(row.only_b) == set(names[b & ~a])
        assert set(row.both) == set(names[a & b])
    same = compare.route_differences(trace_a.branches_frame(), trace_a.branches_frame())
    assert not same["differs"].any() and not same["only_a"].map(len).any()


def test_difference_heatmap_codes_and_marks(pair: tuple[RoutingTrace, RoutingTrace]) -> None:
    trace_a, trace_b = pair
    fig = compare.difference_heatmap(trace_a.branches_frame(), trace_b.branches_frame(), 0.1)
    (heat,) = fig.data
    ran_a = trace_a.ran[0].reshape(-1, trace_a.ran.shape[-1]).numpy()
    ran_b = trace_b.ran[0].reshape(-1, trace_b.ran.shape[-1]).numpy()
    expected = np.where(
        ran_a & ran_b, compare.BOTH, np.where(ran_a, compare.ONLY_A, np.where(ran_b, compare.ONLY_B, 0))
    )
    assert np.array_equal(np.asarray(heat.z), expected)
    marked = [label for label in fig.layout.yaxis.ticktext if "≠" in label]
    assert len(marked) == int((ran_a != ran_b).any(axis=1).sum())
    assert f"≠ {len(marked)} of {len(ran_a)} edges" in fig.layout.title.subtitle.text.replace("<br>", " ")
    assert heat.showscale is False


def test_difference_heatmap_refuses_two_networks(pair: tuple[RoutingTrace, RoutingTrace]) -> None:
    trace_a, trace_b = pair
    fewer = trace_b.branches_frame().query("cell > 0")
    with pytest.raises(ValueError, match="different edges"):
        compare.difference_heatmap(trace_a.branches_frame(), fewer, 0.1)


def test_gate_heatmap_fits_half_a_page(pair: tuple[RoutingTrace, RoutingTrace]) -> None:
    trace_a, _ = pair
    fig = compare.gate_heatmap(trace_a.branches_frame(), 0.1, "A")
    ticks = list(fig.data[0].colorbar.ticktext)
    assert "t = 0.10" in ticks and "0" not in ticks
    assert set(fig.data[0].y[0]) == {f"cell {c}" for c in range(trace_a.ran.shape[1])}
    assert fig.layout.title.text == "Route of A"
    assert fig.layout.title.subtitle.text == f"●: ran ({int(trace_a.ran.sum())} branches)"


def test_cell_flops_pair_groups_both_images(pair: tuple[RoutingTrace, RoutingTrace]) -> None:
    trace_a, trace_b = pair
    dense = [2 * int(f) for f in trace_a.cell_flops[0].tolist()]  # any per-cell reference of the right length
    fig = compare.cell_flops_pair(trace_a.cells_frame(), trace_b.cells_frame(), dense)
    assert [t.name for t in fig.data] == ["image A", "image B"]
    assert list(fig.data[0].y) == trace_a.cell_flops[0].tolist()
    assert list(fig.data[1].y) == trace_b.cell_flops[0].tolist()
    assert all("50% of the dense cell" in text for text in fig.data[0].hovertext)
    assert fig.layout.barmode == "group" and fig.layout.legend.orientation == "h"
    with pytest.raises(ValueError, match="dense_cell_flops"):
        compare.cell_flops_pair(trace_a.cells_frame(), trace_b.cells_frame(), dense[:-1])


def test_figures_say_why_they_are_empty() -> None:
    empty = pd.DataFrame()
    for fig in (compare.difference_heatmap(empty, empty, 0.1), compare.cell_flops_pair(empty, empty)):
        assert not fig.data and fig.layout.annotations


@pytest.mark.skipif(not (ASSETS / "drnet" / ood.CALIBRATION).is_file(), reason="needs the shipped, calibrated models")
def test_a_non_garment_gets_i_dont_know_with_the_closest_class(entry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRNETS_MODELS_DIR", str(ASSETS))
    _, smiley = render_nongarment("smiley", np.random.default_rng([0, 4]))
    at = AppTest.from_file(str(entry), default_timeout=TIMEOUT).run()
    at.file_uploader(key="compare_b_upload").set_value(("smiley.png", smiley, "image/png")).run()
    assert not at.exception, [e.message for e in at.exception]
    says = [m for m in at.metric if m.label == "DRNet says"]
    assert [m.value for m in says] == ["Sneaker", ood.UNKNOWN_ANSWER]
    assert says[1].delta.startswith("closest: ")
    answers = table(at, "B says")
    assert answers["B says"].iat[0].startswith(f"{ood.UNKNOWN_ANSWER}; closest: ")
    assert not answers["A says"].iat[0].startswith(ood.UNKNOWN_ANSWER)
