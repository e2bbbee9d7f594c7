"""End to end in Debian's headless Chromium: the app started the README's way, used as a person would.

Screenshots land in test-artifacts/ (gitignored) so a person can look at what the tests saw.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import appkit
import pytest
from appkit import AppServer
from PIL import Image

from app.ui import si
from drnets.data import FASHION_MNIST_CLASSES, load_dataset

pytestmark = pytest.mark.e2e
# Session fixtures from appkit: one server (and one models folder) for test_launch and test_e2e.
app_server, app_models = appkit.app_server, appkit.app_models
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = appkit.ROOT / "test-artifacts"
WAIT_MS = appkit.STARTUP_SECONDS * 1000
BROKEN_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"truncated"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, app_server: AppServer):
    context = browser.new_context(viewport={"width": 1366, "height": 1600})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(app_server.url, wait_until="domcontentloaded")
    yield page
    context.close()


def settle(page) -> None:
    """Wait until the script run triggered by the last action has finished."""
    page.wait_for_timeout(1000)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=WAIT_MS)


def metric_value(page, label: str) -> str:
    metric = page.locator('[data-testid="stMetric"]', has_text=label).first
    return metric.locator('[data-testid="stMetricValue"]').inner_text().strip()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"e2e_{name}.png"), full_page=True)


def test_upload_a_photo_and_a_broken_file_then_move_the_threshold(page, app_server: AppServer) -> None:
    page.get_by_text("DRNet FLOPs").wait_for()
    settle(page)
    assert "20MB per file" in page.locator('[data-testid="stFileUploaderDropzone"]').inner_text(), (
        "maxUploadSize in force"
    )
    shot(page, "1_first_visit")

    photo = appkit.garment_photo()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
        [
            {"name": "shirt.jpg", "mimeType": "image/jpeg", "buffer": photo},
            {"name": "broken.png", "mimeType": "image/png", "buffer": BROKEN_PNG},
        ]
    )
    page.get_by_role("heading", name="shirt.jpg").wait_for()
    settle(page)
    error = page.locator('[data-testid="stAlertContentError"]').inner_text()
    assert "broken.png" in error and "cannot be used" in error
    answer = metric_value(page, "DRNet says")
    assert answer in FASHION_MNIST_CLASSES
    assert metric_value(page, "MobileNetV2 says") in FASHION_MNIST_CLASSES
    threshold = float(page.locator('[data-testid="stSliderThumbValue"]').inner_text())
    before = metric_value(page, "DRNet FLOPs")
    assert before == si(appkit.drnet_reference(app_server.models, photo, threshold).flops)
    shot(page, "2_uploaded")

    slider = page.locator('[data-testid="stSlider"] input[type="range"]').first
    slider.focus()
    for _ in range(round(threshold / 0.01)):
        page.keyboard.press("ArrowLeft")
    page.wait_for_function(
        "before => [...document.querySelectorAll('[data-testid=stMetric]')]"
        ".find(m => m.innerText.includes('DRNet FLOPs'))?.querySelector('[data-testid=stMetricValue]')?.innerText.trim() !== before",
        arg=before,
        timeout=WAIT_MS,
    )
    settle(page)
    assert page.locator('[data-testid="stSliderThumbValue"]').inner_text() == "0.00"
    assert metric_value(page, "DRNet FLOPs") == si(appkit.drnet_reference(app_server.models, photo, 0.0).flops)
    assert not page.locator('[data-testid="stException"]').count()
    shot(page, "3_threshold_0")


def test_every_page_renders_without_errors(page) -> None:
    page.get_by_text("DRNet FLOPs").wait_for()
    settle(page)
    for link, heading in (
        ("Attributions", "Attributions"),
        ("Data-set explorer", "Data-set explorer"),
        ("How a DRNet works", "How a DRNet works"),
    ):
        page.get_by_role("link", name=link).click()
        page.get_by_role("heading", name=heading).wait_for()
        settle(page)
        assert not page.locator('[data-testid="stException"]').count()
        assert not page.locator('[data-testid="stAlertContentError"]').count(), page.locator(
            '[data-testid="stAlertContentError"]'
        ).all_inner_texts()
        shot(page, re.sub(r"\W+", "_", link.lower()))


@pytest.mark.slow
def test_eight_browser_sessions_at_once(browser, app_server: AppServer) -> None:
    """Eight real browser sessions upload different images and ask for attributions at the same
    time; each gets the answer a serial computation gives, and none waits long on the others."""
    data = load_dataset("fashion-mnist", "test").subset(8)
    images = []
    for pixels in data.images.numpy():
        out = io.BytesIO()
        Image.fromarray(pixels[..., 0]).save(out, "PNG")
        images.append(out.getvalue())
    contexts = [browser.new_context(viewport={"width": 1366, "height": 1200}) for _ in images]
    pages = [context.new_page() for context in contexts]
    try:
        for page in pages:
            page.set_default_timeout(WAIT_MS)
            page.goto(app_server.url, wait_until="domcontentloaded")
        for page in pages:
            page.get_by_text("DRNet FLOPs").wait_for()
        started = time.monotonic()
        for i, page in enumerate(pages):  # all uploads go out before any result is read
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
                [{"name": f"session{i}.png", "mimeType": "image/png", "buffer": images[i]}]
            )
        for i, page in enumerate(pages):
            page.get_by_role("heading", name=f"session{i}.png").wait_for()
            settle(page)
            threshold = float(page.locator('[data-testid="stSliderThumbValue"]').inner_text())
            reference = appkit.drnet_reference(app_server.models, images[i], threshold)
            assert metric_value(page, "DRNet FLOPs") == si(reference.flops)
            assert metric_value(page, "DRNet says") == reference.answer
        uploads_done = time.monotonic() - started
        for page in pages:
            page.get_by_role("link", name="Attributions").click()
        for page in pages:
            page.get_by_role("button", name="Also compute Integrated Gradients and Occlusion").click()
        for i, page in enumerate(pages):
            page.get_by_text("Integrated Gradients", exact=False).first.wait_for()
            settle(page)
            assert not page.locator('[data-testid="stException"]').count(), i
            assert not page.locator('[data-testid="stAlertContentError"]').count(), i
        shot(pages[-1], "8_sessions_attributions")
        # Eight sessions on two cores: every one finished well inside the page timeout.
        assert uploads_done < WAIT_MS / 1000
    finally:
        for context in contexts:
            context.close()
