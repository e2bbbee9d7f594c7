"""A seeded set of phone-style garment photos made from Fashion-MNIST images, and the accuracy
of every model on it, overall and per condition.

Real uploads are phone photos: a garment filling part of a 1200x900 frame, slightly turned, on a
bed sheet, a wooden floor, a coloured or dark surface, with a soft shadow, light falling off
towards the corners and JPEG compression. Each photo here is made from one 28x28 image, upscaled
smoothly and tinted: a test image for the evaluation set, a training image for a training pool
(``drnets.photo_pool``), so the set a model is measured on never shows an image it learnt from.
Fashion-MNIST is light-on-black because its product photos were negated, so an item's brightness
there is its darkness in the original photo: the item's mean brightness sets how dark it is
drawn, its detail modulates a plausible garment colour, and light, mid and dark garments all
occur.

``write_photos`` writes the JPEGs and ``labels.csv`` (the true class and the condition labels:
background kind, size bucket, tilt bucket, garment tone); ``evaluate_photos`` runs every model's
preprocessing and fast inference twin on them. ``python -m drnets photos`` / ``photos-eval``
are the command line.
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .argtypes import positive_int
from .data import load_dataset

BACKGROUNDS = ("plain", "fabric", "wood", "coloured", "dark")
FRAMES = ((1200, 900), (900, 1200))  # landscape and portrait phone frames (width, height)
FILL = (0.30, 0.75)  # garment's longest side as a share of the frame's shorter side
SIZE_BUCKETS = ((0.45, "small"), (0.60, "medium"), (1.00, "large"))  # upper bounds of the fill
MAX_TILT = 12.0  # degrees either way
TILT_BUCKETS = ((4.0, "0-4°"), (8.0, "4-8°"), (90.0, "8-12°"))  # upper bounds of |tilt|
QUALITY = (60, 90)  # JPEG quality range
MIN_CONTRAST = 30.0  # Lab distance between garment and background colours: a garment one can see
CONDITIONS = ("background", "size", "tilt", "tone")
LABELS_CSV = "labels.csv"


@dataclass(frozen=True)
class PhotoLabel:
    """One photo of the set: its file, truth and conditions (a row of ``labels.csv``)."""

    file: str
    label: int
    class_name: str
    split: str
    index: int
    background: str
    size: str
    tilt: str
    tone: str
    fill: float
    tilt_deg: float
    width: int
    height: int
    quality: int


def write_photos(
    out: Path | str, n: int = 300, seed: int = 0, data_root: str | None = None, split: str = "test"
) -> list[PhotoLabel]:
    """Write ``n`` JPEG photos and ``labels.csv`` to ``out``; the same seed gives the same files.

    Classes are balanced (photo i shows class i mod 10), each photo draws its ``split`` image and
    conditions from its own generator seeded by (seed, i), and backgrounds cycle through
    ``BACKGROUNDS`` so every kind is equally common.
    """
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    source = load_dataset("fashion-mnist", split, data_root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = source.labels.numpy()
    by_class = [np.flatnonzero(labels == c) for c in range(len(source.class_names))]
    rows = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        label = i % len(by_class)
        index = int(rng.choice(by_class[label]))
        background = BACKGROUNDS[(i // len(by_class)) % len(BACKGROUNDS)]
        photo, row = render(source.images[index, ..., 0].numpy(), background, rng)
        name = f"{i:04d}_{label}.jpg"
        ok, encoded = cv2.imencode(".jpg", photo[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, row["quality"]])
        if not ok:
            raise RuntimeError(f"could not encode {name}")
        (out / name).write_bytes(encoded.tobytes())
        rows.append(PhotoLabel(name, label, source.class_names[label], split, index, **row))
    with open(out / LABELS_CSV, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return rows


def read_labels(photos: Path | str) -> list[PhotoLabel]:
    with open(Path(photos) / LABELS_CSV, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    if reader.fieldnames != list(PhotoLabel.__dataclass_fields__):
        raise ValueError(
            f"{Path(photos) / LABELS_CSV} has other columns than `drnets photos` writes; write the set again"
        )
    types = {name: field.type for name, field in PhotoLabel.__dataclass_fields__.items()}
    cast = {"int": int, "float": float, "str": str}
    return [PhotoLabel(**{k: cast[types[k]](v) for k, v in row.items()}) for row in rows]


# ---- rendering one photo ----


def render(item: np.ndarray, background: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """uint8 [28, 28] Fashion-MNIST item -> (uint8 [H, W, 3] RGB photo, its condition labels)."""
    width, height = FRAMES[int(rng.integers(len(FRAMES)))]
    fill = float(rng.uniform(*FILL))
    tilt = float(rng.uniform(-MAX_TILT, MAX_TILT))
    quality = int(rng.integers(QUALITY[0], QUALITY[1] + 1))
    back = make_background(background, height, width, rng)
    colour, tone = garment_colour(item, back, rng)
    value, alpha = garment_layers(item, round(fill * min(width, height)), tilt)
    h, w = alpha.shape
    # Off-centre by up to 40% of the free space either way: a phone frames the garment roughly.
    x0 = max(0, int((width - w) / 2 * (1 + rng.uniform(-0.4, 0.4))))
    y0 = max(0, int((height - h) / 2 * (1 + rng.uniform(-0.4, 0.4))))
    full_alpha = np.zeros((height, width), np.float32)
    full_alpha[y0 : y0 + h, x0 : x0 + w] = alpha[: height - y0, : width - x0]
    full_value = np.zeros((height, width), np.float32)
    full_value[y0 : y0 + h, x0 : x0 + w] = value[: height - y0, : width - x0]
    photo = back * (1 - soft_shadow(full_alpha, fill * min(width, height), rng))[..., None]
    garment = garment_pixels(full_value, full_alpha, colour)
    photo = photo * (1 - full_alpha[..., None]) + garment * full_alpha[..., None]
    photo *= light_falloff(height, width, rng)[..., None]
    photo += rng.normal(0, rng.uniform(1.5, 4.0), photo.shape[:2])[..., None]
    labels = {
        "background": background,
        "size": next(name for upper, name in SIZE_BUCKETS if fill < upper),
        "tilt": next(name for upper, name in TILT_BUCKETS if abs(tilt) < upper),
        "tone": tone,
        "fill": round(fill, 3),
        "tilt_deg": round(tilt, 2),
        "width": width,
        "height": height,
        "quality": quality,
    }
    return np.clip(photo, 0, 255).astype(np.uint8), labels


def garment_layers(item: np.ndarray, side: int, tilt: float) -> tuple[np.ndarray, np.ndarray]:
    """(value, alpha) float32 maps of the item, longest side ``side`` px, turned ``tilt`` degrees
    counter-clockwise. The silhouette is the item's non-black pixels with holes filled, smoothed."""
    v = item.astype(np.float32) / 255.0
    silhouette = (item > 5).astype(np.uint8)
    flood = np.pad(silhouette, 1)
    cv2.floodFill(flood, None, (0, 0), 1)
    silhouette = silhouette | (flood[1:-1, 1:-1] == 0)
    rows, cols = np.flatnonzero(silhouette.any(1)), np.flatnonzero(silhouette.any(0))
    if rows.size == 0:
        rows, cols = np.arange(28), np.arange(28)
    v = v[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    silhouette = silhouette[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32)
    scale = side / max(v.shape)
    size = (max(1, round(v.shape[1] * scale)), max(1, round(v.shape[0] * scale)))
    value = cv2.GaussianBlur(cv2.resize(v, size, interpolation=cv2.INTER_CUBIC), (0, 0), scale * 0.35)
    alpha = cv2.GaussianBlur(cv2.resize(silhouette, size, interpolation=cv2.INTER_LINEAR), (0, 0), scale * 0.6)
    alpha = np.clip((alpha - 0.5) * 2.5 + 0.5, 0, 1)  # a soft but definite edge
    pad = int(0.2 * side)
    value, alpha = np.pad(value, pad), np.pad(alpha, pad)
    centre = (value.shape[1] / 2, value.shape[0] / 2)
    matrix = cv2.getRotationMatrix2D(centre, tilt, 1.0)
    shape = (value.shape[1], value.shape[0])
    value = cv2.warpAffine(value, matrix, shape, flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(alpha, matrix, shape, flags=cv2.INTER_LINEAR)
    rows, cols = np.flatnonzero(alpha.max(1) > 0.01), np.flatnonzero(alpha.max(0) > 0.01)
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return np.clip(value[box], 0, 1), np.clip(alpha[box], 0, 1)


def garment_colour(item: np.ndarray, back: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A plausible garment colour (RGB 0..255) and its tone, distinct enough from the background.

    The item's mean brightness in Fashion-MNIST is its darkness in the product photo: bright
    items are drawn dark, dim ones light, with a random hue and some spread so every tone occurs.
    """
    inside = item[item > 5].astype(np.float32) / 255.0
    darkness = float(inside.mean()) if inside.size else 0.5
    back_lab = _lab(back.reshape(-1, 3).mean(0))
    best, best_distance = None, -1.0
    for _ in range(12):
        lightness = float(np.clip(1.0 - darkness + rng.normal(0, 0.25), 0.06, 0.95))
        saturation = float(rng.choice([0.0, 0.1, 0.3, 0.6]))
        rgb = np.asarray(colorsys.hsv_to_rgb(float(rng.uniform()), saturation, lightness)) * 255
        distance = float(np.linalg.norm(_lab(rgb) - back_lab))
        if distance > best_distance:
            best, best_distance = rgb.astype(np.float32), distance
        if distance >= MIN_CONTRAST:
            break
    tone = "light" if _lab(best)[0] > 65 else "dark" if _lab(best)[0] < 35 else "mid"
    return best, tone


def garment_pixels(value: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """The garment's colour shaded by the item's detail: darker where the item is brighter than its mean."""
    inside = alpha > 0.5
    mean = float(value[inside].mean()) if inside.any() else 0.0
    shade = np.clip(1.0 + 0.9 * (mean - value), 0.45, 1.5)
    return colour[None, None, :] * shade[..., None]


def make_background(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [h, w, 3] surface of the given kind, before lighting."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "plain":  # paper, a white wall or sheet
        base = _hsv(rng.uniform(), rng.uniform(0, 0.08), rng.uniform(0.82, 0.97))
        return base + 6 * _blobs(h, w, rng, 6)[..., None]
    if kind == "fabric":  # a woven sheet or towel: crossing threads, folds
        base = _hsv(rng.uniform(), rng.uniform(0.05, 0.5), rng.uniform(0.35, 0.9))
        period = rng.uniform(4, 14)
        angle = rng.uniform(-0.3, 0.3)
        u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
        weave = np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period)
        threads = _blobs(h, w, rng, int(w / 3)) * 0.5
        folds = _blobs(h, w, rng, 5)
        texture = rng.uniform(15, 30) * (weave + threads) + rng.uniform(10, 25) * folds
        return base + texture[..., None]
    if kind == "wood":  # planks with grain
        base = _hsv(rng.uniform(0.05, 0.11), rng.uniform(0.35, 0.7), rng.uniform(0.3, 0.85))
        plank = rng.uniform(150, 320)
        warp = 25 * _blobs(h, w, rng, 8)
        across = y if rng.uniform() < 0.5 else x  # planks run along the other axis
        grain = np.sin(2 * np.pi * (across + warp) / rng.uniform(6, 18)) + 0.6 * _blobs(h, w, rng, 60)
        planks = rng.uniform(-20, 20, 64)[((across + 0.3 * warp) // plank).astype(int) % 64]
        seams = np.abs(((across + 0.3 * warp) % plank) - plank / 2) > plank / 2 - 2
        texture = rng.uniform(10, 25) * grain + planks - 40 * seams
        return base * (1 + texture[..., None] / 255)
    if kind == "coloured":  # a painted table, a coloured blanket
        base = _hsv(rng.uniform(), rng.uniform(0.45, 0.9), rng.uniform(0.45, 0.85))
        return base + 8 * _blobs(h, w, rng, 6)[..., None]
    if kind == "dark":  # a dark floor, a black sheet
        base = _hsv(rng.uniform(), rng.uniform(0, 0.4), rng.uniform(0.06, 0.25))
        return base + 4 * _blobs(h, w, rng, 10)[..., None]
    raise ValueError(f"unknown background {kind!r}; known: {', '.join(BACKGROUNDS)}")


def soft_shadow(alpha: np.ndarray, side: float, rng: np.random.Generator) -> np.ndarray:
    """The garment's shadow on the surface: its silhouette shifted, blurred and weakened."""
    dx, dy = (rng.uniform(-0.03, 0.03, 2) * side).round().astype(int)
    shifted = np.roll(alpha, (int(dy), int(dx)), axis=(0, 1))
    small = cv2.resize(shifted, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(small, (0, 0), max(1.0, rng.uniform(0.01, 0.04) * side / 4))
    return rng.uniform(0.15, 0.45) * cv2.resize(blurred, alpha.shape[::-1], interpolation=cv2.INTER_LINEAR)


def light_falloff(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative lighting: a vignette around an off-centre light, and a gradient across the frame."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    r2 = ((x - cx) ** 2 + (y - cy) ** 2) / (0.25 * (w**2 + h**2))
    angle = rng.uniform(0, 2 * np.pi)
    gradient = ((x / w - 0.5) * np.cos(angle) + (y / h - 0.5) * np.sin(angle)) * rng.uniform(0, 0.25)
    return np.clip(1 - rng.uniform(0.15, 0.45) * r2 + gradient, 0.3, 1.2)


def _blobs(h: int, w: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth random field in about [-1, 1], varying over ``cells`` cells across the width."""
    cells = max(2, cells)
    grid = rng.normal(0, 1, (max(2, round(cells * h / w)), cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC) / 2, -1.5, 1.5)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h, s, v), np.float32) * 255


def _lab(rgb: np.ndarray) -> np.ndarray:
    pixel = np.clip(np.asarray(rgb, np.float32), 0, 255).reshape(1, 1, 3) / 255
    return cv2.cvtColor(pixel, cv2.COLOR_RGB2LAB).reshape(3)  # L in 0..100


# ---- measuring the models on the set ----


def evaluate_photos(
    photos: Path | str,
    models: Path | str,
    segment: bool = True,
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Accuracy of every checkpoint folder under ``models`` on the photo set, overall and per condition.

    Each photo is preprocessed once per distinct (input_size, mean, std) with
    ``drnets.upload.prepare_upload`` (``segment=False``: the plain trim) and run through the
    model's fast inference twin at its own routing policy.
    """
    from .checkpoint import load_checkpoint
    from .inference import for_inference
    from .predict import preprocessing
    from .upload import prepare_upload

    photos = Path(photos)
    labels = read_labels(photos)[:limit]
    folders = sorted(p.parent for p in Path(models).glob("*/config.json"))
    if not folders:
        raise FileNotFoundError(f"no checkpoint folders (*/config.json) under {models}")
    prepared: dict[tuple, tuple[torch.Tensor, list[bool], float]] = {}
    result: dict = {"photos": str(photos), "n": len(labels), "segment": segment, "models": {}}
    for folder in folders:
        checkpoint = load_checkpoint(folder)
        key = preprocessing(checkpoint)
        if key not in prepared:
            start, tensors, unsure = time.perf_counter(), [], []
            for row in labels:
                image = prepare_upload((photos / row.file).read_bytes(), *key, segment=segment)
                tensors.append(image.tensor)
                unsure.append(bool(image.unsure))
            prepared[key] = (torch.cat(tensors), unsure, (time.perf_counter() - start) / len(labels))
        batch, unsure, seconds = prepared[key]
        model = for_inference(checkpoint.model.eval())
        with torch.inference_mode():
            predictions = torch.cat([model(x, None)[0].argmax(1) for x in batch.split(64)]).tolist()
        correct = [p == row.label for p, row in zip(predictions, labels, strict=True)]
        result["models"][folder.name] = {
            "accuracy": float(np.mean(correct)),
            "by": {c: _accuracy_by(labels, correct, c) for c in (*CONDITIONS, "class_name")},
            "unsure": float(np.mean(unsure)),
            "seconds_per_photo": seconds,
        }
        if progress:
            progress(f"{folder.name}: {np.mean(correct):.1%}")
    return result


def _accuracy_by(labels: list[PhotoLabel], correct: list[bool], condition: str) -> dict[str, float]:
    groups: dict[str, list[bool]] = {}
    for row, ok in zip(labels, correct, strict=True):
        groups.setdefault(getattr(row, condition), []).append(ok)
    return {name: float(np.mean(values)) for name, values in sorted(groups.items())}


def format_report(result: dict) -> str:
    """Plain-text table: one column per model, overall then every condition's groups."""
    names = list(result["models"])
    lines = [
        f"{result['n']} photos in {result['photos']}, preprocessing: "
        + ("GrabCut where the background is not uniform" if result["segment"] else "trim only"),
        f"{'':<24}" + "".join(f"{n:>13}" for n in names),
        f"{'overall':<24}" + "".join(f"{result['models'][n]['accuracy']:>13.1%}" for n in names),
    ]
    first = result["models"][names[0]]
    for condition in (*CONDITIONS, "class_name"):
        for group in first["by"][condition]:
            cells = "".join(f"{result['models'][n]['by'][condition][group]:>13.1%}" for n in names)
            lines.append(f"{condition + ' ' + group:<24.24}{cells}")
    lines.append(f"{'no clear object':<24}" + "".join(f"{result['models'][n]['unsure']:>13.1%}" for n in names))
    lines.append(f"preprocessing: {first['seconds_per_photo'] * 1e3:.0f} ms per photo (decode included)")
    return "\n".join(lines)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("photos", help="write a seeded phone-style photo set from Fashion-MNIST images")
    p.add_argument("--out", type=Path, required=True, help="folder for the JPEGs and labels.csv")
    p.add_argument("--n", type=positive_int, default=300, help="number of photos (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: the Debian files)")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="test: an evaluation set (the default); train: a pool for `drnets train --photo-pool`")  # fmt: skip
    p.set_defaults(func=lambda a: print(f"wrote {len(write_photos(a.out, a.n, a.seed, a.data_root, a.split))} photos to {a.out}") or 0)  # fmt: skip
    p = sub.add_parser("photos-eval", help="accuracy of every model on a photo set, overall and per condition")
    p.add_argument("--photos", type=Path, required=True, help="a folder written by `drnets photos`")
    p.add_argument("--models", type=Path, default=Path("assets/models"), help="folder of checkpoint folders")
    p.add_argument("--no-segment", dest="segment", action="store_false",
                   help="preprocess with the plain background trim only (no GrabCut)")  # fmt: skip
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N photos")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    result = evaluate_photos(args.photos, args.models, args.segment, args.limit)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0
