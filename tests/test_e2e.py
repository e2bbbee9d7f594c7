"""End to end in Debian's headless Chromium: the app started the README's way, used as a person would,
on a laptop (1400x1000) and on a phone (390x844), with a fake camera that films a garment photo.

Screenshots land in test-artifacts/ (gitignored) so a person can look at what the tests saw; the
laptop ones also go, shrunk, to test-artifacts/readme/, where docs/screenshots/ is copied from.
"""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import appkit
import pytest
from appkit import AppServer
from PIL import Image

from app.sidebar import BUDGET_RANGE
from app.ui import HELD_CHART, si
from bench.classroom import ANSWER, READY_JS, STARTUP_SECONDS
from drnets.data import FASHION_MNIST_CLASSES, load_dataset

pytestmark = pytest.mark.e2e
# Session fixtures from appkit: one server (and one models folder) for test_launch and test_e2e.
app_server, app_models = appkit.app_server, appkit.app_models
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = appkit.ROOT / "test-artifacts"
WAIT_MS = STARTUP_SECONDS * 1000
BROKEN_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"truncated"
PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1400, "height": 1000}
PAGES = ("Inspect an image", "Compare two images", "Attributions", "Data-set explorer", "How a DRNet works")
README_WIDTH = 700  # px of the README's screenshots


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium")
    film = tmp_path_factory.mktemp("camera") / "garment.mjpeg"  # one JPEG frame, filmed over and over
    film.write_bytes(appkit.garment_photo())
    camera = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", *camera,
                  f"--use-file-for-fake-video-capture={film}"],
        )  # fmt: skip
        yield browser
        browser.close()


def open_app(browser, app_server: AppServer, viewport: dict) -> Iterator:
    context = browser.new_context(viewport=viewport, permissions=["camera"])
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(app_server.url, wait_until="domcontentloaded")
    yield page
    context.close()


@pytest.fixture()
def page(browser, app_server: AppServer):
    yield from open_app(browser, app_server, LAPTOP)


@pytest.fixture()
def phone(browser, app_server: AppServer):
    yield from open_app(browser, app_server, PHONE)


def settle(page) -> None:
    """Wait until the script run triggered by the last action has finished."""
    page.wait_for_timeout(1000)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=WAIT_MS)


def metric_value(page, label: str) -> str:
    metric = page.locator('[data-testid="stMetric"]', has_text=label).first
    return metric.locator('[data-testid="stMetricValue"]').inner_text().strip()


def shot(page, name: str) -> Path:
    """The whole page: Streamlit scrolls inside its main block, so the viewport grows to fit it first."""
    ARTIFACTS.mkdir(exist_ok=True)
    viewport = page.viewport_size
    height = page.evaluate("document.querySelector('[data-testid=stMain]').scrollHeight")
    page.set_viewport_size({"width": viewport["width"], "height": max(viewport["height"], min(height, 16000))})
    page.wait_for_timeout(1000)  # charts redraw at the new size
    path = ARTIFACTS / f"e2e_{name}.png"
    page.screenshot(path=str(path))
    page.set_viewport_size(viewport)
    return path


def readme_shot(page, name: str) -> None:
    """The first screen of a page, shrunk for the README (docs/screenshots/ is copied from these)."""
    folder = ARTIFACTS / "readme"
    folder.mkdir(parents=True, exist_ok=True)
    picture = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    picture.thumbnail((README_WIDTH, README_WIDTH * 2))
    picture.save(folder / f"{name}.png", optimize=True)


def go_to(page, title: str) -> None:
    """Open a page from the sidebar's navigation, as a person would; on a phone the sidebar opens
    first and is closed again afterwards."""
    expand = page.locator('[data-testid="stExpandSidebarButton"]')
    if expand.is_visible():
        expand.click()
    page.get_by_role("link", name=title).click()
    page.get_by_role("heading", name=title).first.wait_for()
    settle(page)
    sidebar = page.locator('[data-testid="stSidebar"]').bounding_box()
    if page.viewport_size["width"] < 600 and sidebar and sidebar["width"] > 0 and sidebar["x"] >= 0:
        page.locator('[data-testid="stSidebarCollapseButton"] button').click()
        page.wait_for_timeout(500)


def overlaps(boxes: list[dict]) -> list[tuple[dict, dict]]:
    """Pairs of label boxes that cover each other by more than a pixel each way."""
    return [
        (a, b)
        for i, a in enumerate(boxes)
        for b in boxes[i + 1 :]
        if min(a["right"], b["right"]) - max(a["left"], b["left"]) > 1
        and min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > 1
    ]


def assert_fits_the_screen(page) -> None:
    """Nothing wider than the viewport (the page, its charts, its pictures), and no two tick labels of
    one chart axis on top of each other."""
    width = page.viewport_size["width"]
    main = page.evaluate(
        "(() => { const m = document.querySelector('[data-testid=stMain]'); return m.scrollWidth; })()"
    )
    assert main <= width + 1, f"the page scrolls sideways: {main} px in a {width} px screen"
    charts = page.evaluate(
        """() => [...document.querySelectorAll('.js-plotly-plot')].map(plot => ({
            width: plot.getBoundingClientRect().width,
            title: plot.querySelector('.gtitle')?.textContent ?? '',
            axes: ['.xtick', '.ytick', '.x2tick', '.y2tick'].map(sel => [...plot.querySelectorAll(sel + ' text')]
                .filter(t => t.textContent.trim()).map(t => {
                    const r = t.getBoundingClientRect();
                    return {text: t.textContent, left: r.left, right: r.right, top: r.top, bottom: r.bottom};
                })),
        }))"""
    )
    pictures = page.evaluate(
        "[...document.querySelectorAll('[data-testid=stMain] img')].map(i => i.getBoundingClientRect().width)"
    )
    assert all(w <= width + 1 for w in pictures), f"a picture wider than the {width} px screen: {pictures}"
    for chart in charts:
        assert chart["width"] <= width + 1, f"{chart['title']!r} is {chart['width']} px wide in a {width} px screen"
        for labels in chart["axes"]:
            clashes = overlaps(labels)
            assert not clashes, (
                f"{chart['title']!r}: labels overlap: {[(a['text'], b['text']) for a, b in clashes][:3]}"
            )


def routing_of(page) -> tuple[float, float | None]:
    """(threshold, budget) the sidebar's sliders hold; budget None when the DRNet has no Budget slider.
    Read from the DOM, so it works with the sidebar closed (a phone)."""
    values = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('[data-testid=stSlider]')].map(s => [
            s.querySelector('[data-testid=stWidgetLabel]')?.textContent.trim(),
            s.querySelector('[data-testid=stSliderThumbValue]')?.textContent.trim()]))"""
    )
    budget = values.get("Budget c")
    return float(values["Threshold t"]), float(budget) if budget is not None else None


def test_upload_a_photo_and_a_broken_file_then_move_the_routing_control(page, app_server: AppServer) -> None:
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
    threshold, budget = routing_of(page)
    before = metric_value(page, "DRNet FLOPs")
    assert before == si(appkit.drnet_reference(app_server.models, photo, threshold, budget).flops)
    shot(page, "2_uploaded")

    # The main control: a budgeted DRNet's budget up to its largest value, another DRNet's threshold down to 0.
    name, key, steps = (
        ("Budget c", "ArrowRight", round((BUDGET_RANGE[1] - budget) / 0.01))
        if budget is not None
        else ("Threshold t", "ArrowLeft", round(threshold / 0.01))
    )
    target = (threshold, BUDGET_RANGE[1]) if budget is not None else (0.0, None)
    page.locator('[data-testid="stSlider"]').filter(has_text=name).locator('input[type="range"]').focus()
    for _ in range(steps):
        page.keyboard.press(key)
    page.wait_for_function(
        "before => [...document.querySelectorAll('[data-testid=stMetric]')]"
        ".find(m => m.innerText.includes('DRNet FLOPs'))?.querySelector('[data-testid=stMetricValue]')?.innerText.trim() !== before",
        arg=before,
        timeout=WAIT_MS,
    )
    settle(page)
    assert routing_of(page) == target
    assert metric_value(page, "DRNet FLOPs") == si(appkit.drnet_reference(app_server.models, photo, *target).flops)
    assert not page.locator('[data-testid="stException"]').count()
    shot(page, "3_routing_moved")


@pytest.mark.parametrize("screen", ["laptop", "phone"])
def test_every_page_renders_and_fits_the_screen(browser, app_server: AppServer, screen: str) -> None:
    for page in open_app(browser, app_server, LAPTOP if screen == "laptop" else PHONE):
        page.get_by_text("DRNet FLOPs").wait_for()
        settle(page)
        for title in PAGES:
            if title != PAGES[0]:
                go_to(page, title)
            assert not page.locator('[data-testid="stException"]').count()
            assert not page.locator('[data-testid="stAlertContentError"]').count(), page.locator(
                '[data-testid="stAlertContentError"]'
            ).all_inner_texts()
            assert_fits_the_screen(page)
            slug = re.sub(r"\W+", "_", title.lower())
            shot(page, f"{screen}_{slug}")
            if screen == "laptop":
                readme_shot(page, slug)


def test_a_phone_reaches_the_uploader_and_the_camera_and_a_photo_gets_the_answer_of_its_file(
    phone, app_server: AppServer
) -> None:
    """No sidebar opened: the image controls are on the page. The fake camera films a garment photo;
    the photo it takes gets the answer and FLOPs the same bytes get when uploaded, or computed here."""
    phone.get_by_text("DRNet FLOPs").wait_for()
    settle(phone)
    assert phone.locator('[data-testid="stFileUploaderDropzone"]').is_visible()
    phone.get_by_text("Take a photo with the camera").click()
    take = phone.get_by_role("button", name="Take Photo")
    take.wait_for()
    phone.wait_for_function("() => !document.querySelector('[data-testid=stCameraInputButton]')?.disabled")
    take.click()
    phone.get_by_role("heading", name="camera photo").wait_for()
    settle(phone)
    source = phone.locator('[data-testid="stCameraInput"] img').first.get_attribute("src")
    photo = base64.b64decode(
        phone.evaluate(
            """async src => { const bytes = new Uint8Array(await (await fetch(src)).arrayBuffer());
            let text = ''; bytes.forEach(b => text += String.fromCharCode(b)); return btoa(text); }""",
            source,
        )
    )
    reference = appkit.drnet_reference(app_server.models, photo, *routing_of(phone))
    taken = {label: metric_value(phone, label) for label in ("DRNet says", "DRNet FLOPs", "DRNet params touched")}
    assert taken["DRNet FLOPs"] == si(reference.flops) and taken["DRNet says"] == reference.answer
    shot(phone, "phone_camera_photo")

    phone.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
        [{"name": "same.jpg", "mimeType": "image/jpeg", "buffer": photo}]
    )
    phone.get_by_role("heading", name="same.jpg").wait_for()
    settle(phone)
    assert {label: metric_value(phone, label) for label in taken} == taken
    assert not phone.locator('[data-testid="stException"]').count()


def test_the_first_page_answers_then_draws_its_held_back_charts(page) -> None:
    """What bench.classroom waits for before it times page switches: the answer, then the charts the
    first run held back drawn by Plotly, no placeholder left."""
    page.wait_for_function(READY_JS, arg=["metric", ANSWER], timeout=WAIT_MS)
    page.wait_for_function(READY_JS, arg=["complete", ANSWER], timeout=WAIT_MS)
    charts = page.locator('[data-testid="stPlotlyChart"]')
    assert charts.count() >= 1 and charts.locator(".main-svg").count() >= charts.count()
    assert not page.get_by_text(HELD_CHART).count()


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
            reference = appkit.drnet_reference(app_server.models, images[i], *routing_of(page))
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
