"""Finding the garment in a photo (drnets/segment.py) and what the upload path makes of it."""

from __future__ import annotations

import io
import time

import cv2
import numpy as np
import pytest
from PIL import Image

from drnets import photos, segment
from drnets.upload import prepare_upload


def encode(image: np.ndarray, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **options)
    return buffer.getvalue()


def fabric(h: int, w: int, seed: int, colour=(196, 170, 140)) -> np.ndarray:
    """A woven-looking background: crossing threads, slow shading and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    weave = 10 * np.sin(x * 0.9) * np.sin(y * 0.9) + 6 * np.sin((x + y) * 0.13)
    shade = 25 * (1 - ((x - w / 2) ** 2 + (y - h / 2) ** 2) / (w**2 / 4 + h**2 / 4))  # vignette
    base = np.asarray(colour, np.float32) + (weave + shade)[..., None] + rng.normal(0, 6, (h, w, 1))
    return np.clip(base, 0, 255).astype(np.uint8)


def shirt_polygon(cx: float, cy: float, s: float) -> np.ndarray:
    """A T-shirt outline (body and sleeves) of height ~2s around (cx, cy)."""
    points = [(-0.3, -1), (0.3, -1), (1, -0.7), (0.8, -0.3), (0.55, -0.45), (0.55, 1), (-0.55, 1),
              (-0.55, -0.45), (-0.8, -0.3), (-1, -0.7)]  # fmt: skip
    return np.array([(cx + s * px, cy + s * py) for px, py in points], np.int32)


def shirt_photo(
    seed: int = 0, size: tuple[int, int] = (900, 1200), garment=(40, 50, 95)
) -> tuple[np.ndarray, np.ndarray]:
    """(photo, true mask): a shaded dark shirt with a soft shadow on fabric."""
    h, w = size
    photo = fabric(h, w, seed).astype(np.float32)
    truth = np.zeros((h, w), np.uint8)
    cv2.fillPoly(truth, [shirt_polygon(w * 0.55, h * 0.5, h * 0.3)], 1)
    shadow = cv2.GaussianBlur(np.roll(truth, (12, 18), axis=(0, 1)).astype(np.float32), (0, 0), 15)
    photo *= 1 - 0.35 * shadow[..., None]
    folds = 1 + 0.15 * np.sin(np.mgrid[0:h, 0:w][1] * 0.05)[..., None]
    photo = np.where(truth[..., None] == 1, np.asarray(garment, np.float32) * folds, photo)
    return np.clip(photo, 0, 255).astype(np.uint8), truth.astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("seed, garment", [(0, (40, 50, 95)), (1, (235, 230, 220)), (2, (150, 30, 40))])
def test_grabcut_finds_a_garment_on_fabric(seed: int, garment: tuple[int, int, int]) -> None:
    photo, truth = shirt_photo(seed, garment=garment)
    found = segment.find_object(photo)
    assert found.found, found.reason
    assert iou(found.mask, truth) > 0.7


def test_the_trim_alone_fails_on_the_same_photo() -> None:
    """Why segmentation exists: the colour-distance trim keeps the textured, shaded frame."""
    photo, truth = shirt_photo()
    trimmed = prepare_upload(encode(photo), segment=False)
    assert not trimmed.unsure
    left, top, right, bottom = segment.bounding_box(truth)
    found = prepare_upload(encode(photo))
    assert "separated the object from the background (GrabCut)" in found.notes
    # The object view outlines the crop; the seen images differ: the trim framed (nearly) the whole photo.
    assert found.object_view is not None and max(found.object_view.size) <= 512
    assert np.abs(found.seen.astype(float) - trimmed.seen).mean() > 10
    assert (right - left) < 0.6 * photo.shape[1]


def test_upload_of_a_garment_on_fabric_is_framed_like_fashion_mnist() -> None:
    photo, _ = shirt_photo()
    prepared = prepare_upload(encode(photo, quality=80))
    assert not prepared.unsure
    assert any(note.startswith("negated the object") for note in prepared.notes)
    seen = prepared.seen
    rows, cols = np.flatnonzero((seen > 30).any(axis=1)), np.flatnonzero((seen > 30).any(axis=0))
    assert rows[0] <= 1 and rows[-1] >= 26  # the shirt's longest side fills the frame
    assert abs((cols[0] + cols[-1]) / 2 - 13.5) <= 1.5  # centred
    assert seen[14:, :4].mean() < 10 and seen[14:, -4:].mean() < 10  # background black beside the body
    assert seen[14, 10:18].mean() > 100  # the dark shirt is light


@pytest.mark.parametrize(
    "image",
    [
        np.full((600, 800, 3), 200, np.uint8),
        np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8),
        np.clip(np.random.default_rng(1).normal(128, 40, (900, 1200)), 0, 255).astype(np.uint8),
        fabric(900, 1200, 3),
    ],
    ids=["blank", "colour noise", "gray noise", "empty fabric"],
)
def test_images_without_an_object_say_so(image: np.ndarray) -> None:
    prepared = prepare_upload(encode(image, "PNG"))
    assert prepared.unsure.startswith(segment.NOT_FOUND)
    assert prepared.unsure in prepared.notes
    assert prepared.seen.shape == (28, 28)


def test_small_tilt_is_measured_and_straightened() -> None:
    mask = np.zeros((300, 300), np.uint8)
    cv2.rectangle(mask, (110, 60), (190, 240), 1, -1)
    turned = cv2.warpAffine(mask, cv2.getRotationMatrix2D((150, 150), 9, 1), (300, 300), flags=cv2.INTER_NEAREST)
    angle = segment.tilt(turned.astype(bool))
    assert abs(angle - 9) < 1
    _, upright = segment.straighten(turned.astype(np.float32), turned.astype(bool), angle)
    left, top, right, bottom = segment.bounding_box(upright)
    assert abs((right - left) - 81) <= 3 and abs((bottom - top) - 181) <= 3
    big = cv2.warpAffine(mask, cv2.getRotationMatrix2D((150, 150), 30, 1), (300, 300), flags=cv2.INTER_NEAREST)
    assert segment.tilt(big.astype(bool)) == 0.0  # a large angle is the shape, not the camera


def test_a_6000x4000_photo_is_prepared_quickly() -> None:
    photo, _ = shirt_photo(size=(1000, 1500))
    huge = cv2.resize(photo, (6000, 4000), interpolation=cv2.INTER_LINEAR)
    data = encode(huge, quality=85)
    prepare_upload(data)  # warm up OpenCV and Pillow
    start = time.perf_counter()
    prepared = prepare_upload(data)
    seconds = time.perf_counter() - start
    assert not prepared.unsure and "separated the object from the background (GrabCut)" in prepared.notes
    assert seconds < 2.0, f"{seconds:.2f} s"


def test_a_6000x4000_png_is_prepared_within_bounds() -> None:
    photo, _ = shirt_photo(size=(400, 600))
    huge = cv2.resize(photo, (6000, 4000), interpolation=cv2.INTER_NEAREST)
    data = encode(huge, "PNG", compress_level=1)
    start = time.perf_counter()
    prepared = prepare_upload(data, max_bytes=100_000_000)
    assert time.perf_counter() - start < 6.0
    assert not prepared.unsure


def test_the_same_photo_gets_the_same_mask_whatever_came_before() -> None:
    item = np.zeros((28, 28), np.uint8)
    item[4:24, 6:22] = 200  # a plain light garment
    photo, _ = photos.render(item, "fabric", np.random.default_rng(3))
    small = cv2.resize(photo, (128, 96), interpolation=cv2.INTER_AREA)
    first = segment.grabcut(small)
    for seed in range(3):  # other photos advance OpenCV's RNG
        other, _ = photos.render(item, "wood", np.random.default_rng(seed))
        segment.grabcut(cv2.resize(other, (128, 96), interpolation=cv2.INTER_AREA))
    assert np.array_equal(segment.grabcut(small), first)
