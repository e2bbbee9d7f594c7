"""A seeded set of images that are not garments, to measure how often a model notices.

People upload what they have at hand: a screenshot, a drawing, a blank page, a photo of their
desk. Every kind here is something a Fashion-MNIST classifier has never seen, drawn the way an
upload would arrive (a phone-sized frame, PNG for drawings, JPEG for photo-like scenes):

- ``noise``: per-pixel random colours, plain or smoothed into blotches;
- ``flat``: one colour, or a linear / radial gradient between two;
- ``shapes``: circles, rectangles, triangles and lines in bright colours on a plain surface;
- ``text``: a few big words in PIL's default bitmap font, scaled up, dark on light or reversed;
- ``smiley``: a drawn face (circle, eyes, a smiling arc) on a plain or tinted surface;
- ``texture``: a bare surface: woven fabric, wood grain or blotches, nothing on it;
- ``desk``: a synthetic desk seen from above: a wooden top with a keyboard, a mug, papers, a phone;
- ``screenshot``: an app or web page: a coloured bar, lines of small text, buttons, image boxes;
- ``selfie``: a face filling much of the frame (skin-toned oval, hair, eyes, mouth, shoulders) in a room.

``write_nongarments(out, n, seed, kinds)`` writes the files and ``kinds.csv``; image i is of kind
``kinds[i % len(kinds)]`` and is drawn by a generator seeded with (seed, i), so a seed always
gives the same files and every kind is equally common. The training outliers of the shipped models
(``drnets train --outlier-pool``) were drawn from ``TRAINING_KINDS`` only, so the ``HELD_OUT_KINDS``
measure how the detector does on kinds of image it was never shown.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .argtypes import positive_int
from .ood import SCORES
from .photos import make_background

TRAINING_KINDS = ("noise", "flat", "shapes", "text", "smiley", "texture", "desk")
HELD_OUT_KINDS = ("screenshot", "selfie")
KINDS = TRAINING_KINDS + HELD_OUT_KINDS
FRAMES = ((800, 600), (600, 800), (640, 640))
KINDS_CSV = "kinds.csv"
WORDS = ("HELLO", "SALE", "NOTE", "TODO", "DRNETS", "42", "MENU", "EXIT", "OK", "MONDAY", "A4", "STOP")


def write_nongarments(
    out: Path | str, n: int = 270, seed: int = 0, kinds: tuple[str, ...] = KINDS
) -> list[tuple[str, str]]:
    """Write ``n`` images of ``kinds`` (cycling) and ``kinds.csv`` (file, kind) to ``out``; returns the rows."""
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown kinds {', '.join(unknown) or '(none given)'}; known: {', '.join(KINDS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        name, data = render_nongarment(kind, np.random.default_rng([seed, i]), i)
        (out / name).write_bytes(data)
        rows.append((name, kind))
    with open(out / KINDS_CSV, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "kind"])
        writer.writerows(rows)
    return rows


def read_kinds(folder: Path | str) -> list[tuple[str, str]]:
    with open(Path(folder) / KINDS_CSV, newline="") as fh:
        return [(row["file"], row["kind"]) for row in csv.DictReader(fh)]


def render_nongarment(kind: str, rng: np.random.Generator, index: int = 0) -> tuple[str, bytes]:
    """(file name, encoded bytes) of one image of ``kind``."""
    w, h = FRAMES[int(rng.integers(len(FRAMES)))]
    draw = {
        "noise": _noise,
        "flat": _flat,
        "shapes": _shapes,
        "text": _text,
        "smiley": _smiley,
        "texture": _texture,
        "desk": _desk,
        "screenshot": _screenshot,
        "selfie": _selfie,
    }
    if kind not in draw:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    image = draw[kind](w, h, rng)
    buffer = io.BytesIO()
    if kind in ("texture", "desk", "noise", "selfie"):
        image.save(buffer, "JPEG", quality=int(rng.integers(70, 92)))
        return f"{index:04d}_{kind}.jpg", buffer.getvalue()
    image.save(buffer, "PNG")
    return f"{index:04d}_{kind}.png", buffer.getvalue()


def _colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(low, high, 3))  # type: ignore[return-value]


def _noise(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    cells = int(rng.choice([1, 1, 4, 16]))  # 1: per-pixel noise; larger: blotches of that size
    small = rng.integers(0, 256, (h // cells, w // cells, 3), dtype=np.uint8)
    if rng.uniform() < 0.5:
        small = np.repeat(small.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    image = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC if cells > 1 else Image.Resampling.NEAREST)
    return image


def _flat(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    style = rng.choice(["plain", "linear", "radial"])
    if style == "plain":
        return Image.new("RGB", (w, h), tuple(int(v) for v in a))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if style == "linear":
        angle = rng.uniform(0, 2 * np.pi)
        t = (x / w - 0.5) * np.cos(angle) + (y / h - 0.5) * np.sin(angle) + 0.5
    else:
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        t = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / np.hypot(w, h)
    t = np.clip(t, 0, 1)[..., None]
    return Image.fromarray((a * (1 - t) + b * t).astype(np.uint8))


def _shapes(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", (w, h), _colour(rng, 180, 256))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 6))):
        x0, y0 = rng.uniform(0, 0.7) * w, rng.uniform(0, 0.7) * h
        size = rng.uniform(0.15, 0.45) * min(w, h)
        box = (x0, y0, x0 + size, y0 + size * rng.uniform(0.5, 1.5))
        shape, fill = rng.choice(["ellipse", "rectangle", "triangle", "line"]), _colour(rng, 0, 200)
        if shape == "ellipse":
            draw.ellipse(box, fill=fill)
        elif shape == "rectangle":
            draw.rectangle(box, fill=fill)
        elif shape == "triangle":
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])], fill=fill)
        else:
            draw.line(box, fill=fill, width=int(rng.integers(6, 30)))
    return image


def _text(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    words = " ".join(rng.choice(WORDS, int(rng.integers(1, 3))))
    ink, paper = (_colour(rng, 0, 80), _colour(rng, 200, 256))
    if rng.uniform() < 0.3:
        ink, paper = paper, ink
    font = ImageFont.load_default_imagefont()
    left, top, right, bottom = font.getbbox(words)
    small = Image.new("RGB", (right - left + 4, bottom - top + 4), paper)
    ImageDraw.Draw(small).text((2 - left, 2 - top), words, fill=ink, font=font)
    scale = rng.uniform(0.5, 0.9) * w / small.width
    big = small.resize((int(small.width * scale), max(1, int(small.height * scale))), Image.Resampling.NEAREST)
    image = Image.new("RGB", (w, h), paper)
    x = int(rng.uniform(0, max(1, w - big.width)))
    y = int(rng.uniform(0, max(1, h - big.height)))
    image.paste(big, (x, y))
    return image


def _smiley(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", (w, h), _colour(rng, 170, 256))
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.2, 0.4) * min(w, h)
    cx, cy = w / 2 + rng.uniform(-0.1, 0.1) * w, h / 2 + rng.uniform(-0.1, 0.1) * h
    line = max(3, int(r / 12))
    face, ink = rng.choice([(255, 214, 0), (250, 250, 250), tuple(_colour(rng, 100, 256))]), (20, 20, 20)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in face), outline=ink, width=line)
    for side in (-1, 1):
        ex, ey, er = cx + side * 0.35 * r, cy - 0.3 * r, 0.1 * r
        draw.ellipse((ex - er, ey - er * 1.5, ex + er, ey + er * 1.5), fill=ink)
    draw.arc((cx - 0.55 * r, cy - 0.4 * r, cx + 0.55 * r, cy + 0.6 * r), 20, 160, fill=ink, width=line)
    return image


def _texture(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    kind = str(rng.choice(["fabric", "wood", "plain", "coloured", "dark"]))
    return _to_image(make_background(kind, h, w, rng))


def _desk(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    top = _to_image(make_background(str(rng.choice(["wood", "coloured", "plain"])), h, w, rng))
    draw = ImageDraw.Draw(top)
    s = min(w, h)
    # papers: light rectangles with grey text lines
    for _ in range(int(rng.integers(1, 3))):
        x0, y0 = rng.uniform(0, 0.6) * w, rng.uniform(0, 0.6) * h
        pw, ph = rng.uniform(0.25, 0.4) * s, rng.uniform(0.3, 0.5) * s
        draw.rectangle((x0, y0, x0 + pw, y0 + ph), fill=_colour(rng, 225, 256))
        for k in range(int(ph // 18)):
            yy = y0 + 12 + 18 * k
            draw.line((x0 + 10, yy, x0 + pw * rng.uniform(0.5, 0.9), yy), fill=(120, 120, 120), width=3)
    # keyboard: a dark slab with a grid of keys
    kx, ky = rng.uniform(0, 0.3) * w, rng.uniform(0.5, 0.7) * h
    kw, kh = 0.65 * w, 0.22 * h
    draw.rounded_rectangle((kx, ky, kx + kw, ky + kh), radius=8, fill=_colour(rng, 20, 70))
    for row in range(4):
        for col in range(12):
            x0, y0 = kx + 6 + col * (kw - 12) / 12, ky + 6 + row * (kh - 12) / 4
            draw.rectangle((x0, y0, x0 + (kw - 12) / 12 - 4, y0 + (kh - 12) / 4 - 4), fill=_colour(rng, 60, 110))
    # mug from above: a ring with a handle; phone: a black rounded slab
    mx, my, mr = rng.uniform(0.6, 0.85) * w, rng.uniform(0.1, 0.4) * h, 0.09 * s
    mug = _colour(rng, 40, 256)
    draw.rectangle((mx + mr * 0.8, my - mr * 0.2, mx + mr * 1.4, my + mr * 0.2), fill=mug)
    draw.ellipse((mx - mr, my - mr, mx + mr, my + mr), fill=mug)
    draw.ellipse((mx - 0.75 * mr, my - 0.75 * mr, mx + 0.75 * mr, my + 0.75 * mr), fill=(70, 40, 20))
    px, py = rng.uniform(0.05, 0.5) * w, rng.uniform(0.05, 0.3) * h
    draw.rounded_rectangle((px, py, px + 0.1 * s, py + 0.2 * s), radius=10, fill=(15, 15, 18))
    return top.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))


def _screenshot(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    dark = rng.uniform() < 0.3
    page = _colour(rng, 15, 50) if dark else _colour(rng, 235, 256)
    ink = (225, 225, 225) if dark else (40, 40, 40)
    image = Image.new("RGB", (w, h), page)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=int(rng.integers(14, 26)))
    bar = int(rng.uniform(0.06, 0.12) * h)
    draw.rectangle((0, 0, w, bar), fill=_colour(rng, 0, 200))
    draw.text((16, bar // 3), " ".join(rng.choice(WORDS, 2)), fill=(255, 255, 255), font=font)
    y = bar + 20
    while y < h - 40:
        block = rng.choice(["text", "text", "button", "picture"])
        if block == "picture":
            ph = int(rng.uniform(0.12, 0.25) * h)
            draw.rectangle((16, y, w * rng.uniform(0.4, 0.95), y + ph), fill=_colour(rng, 60, 220))
            y += ph + 16
        elif block == "button":
            draw.rounded_rectangle(
                (16, y, 16 + rng.uniform(0.2, 0.4) * w, y + 36), radius=10, fill=_colour(rng, 0, 200)
            )
            draw.text((28, y + 8), str(rng.choice(WORDS)), fill=(255, 255, 255), font=font)
            y += 52
        else:
            for _ in range(int(rng.integers(1, 4))):
                words = " ".join(rng.choice(WORDS, int(rng.integers(2, 7)))).lower()
                draw.text((16, y), words, fill=ink, font=font)
                y += int(font.size * 1.5)
            y += 10
    return image


def _selfie(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    image = _to_image(make_background(str(rng.choice(["plain", "coloured", "wood", "fabric"])), h, w, rng))
    draw = ImageDraw.Draw(image)
    skin = tuple(int(v) for v in np.array([224, 172, 140]) * rng.uniform(0.45, 1.1))
    hair = _colour(rng, 10, 90)
    r = rng.uniform(0.18, 0.3) * min(w, h)
    cx, cy = w / 2 + rng.uniform(-0.08, 0.08) * w, h * rng.uniform(0.38, 0.48)
    draw.ellipse((cx - 2.4 * r, cy + 1.1 * r, cx + 2.4 * r, cy + 4 * r), fill=_colour(rng, 0, 256))  # shoulders
    draw.rectangle((cx - 0.35 * r, cy + 0.8 * r, cx + 0.35 * r, cy + 1.5 * r), fill=skin)  # neck
    draw.ellipse((cx - 1.08 * r, cy - 1.45 * r, cx + 1.08 * r, cy + 0.6 * r), fill=hair)
    draw.ellipse((cx - 0.85 * r, cy - 1.1 * r, cx + 0.85 * r, cy + 1.1 * r), fill=skin)
    for side in (-1, 1):
        ex, ey = cx + side * 0.35 * r, cy - 0.15 * r
        draw.ellipse((ex - 0.15 * r, ey - 0.08 * r, ex + 0.15 * r, ey + 0.08 * r), fill=(245, 245, 245))
        draw.ellipse((ex - 0.06 * r, ey - 0.06 * r, ex + 0.06 * r, ey + 0.06 * r), fill=_colour(rng, 20, 110))
    draw.arc((cx - 0.35 * r, cy + 0.2 * r, cx + 0.35 * r, cy + 0.6 * r), 20, 160, fill=(150, 60, 60), width=5)
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))


def _to_image(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


# ---- measuring how often each model notices ----


def evaluate_ood(
    models: Path | str,
    nongarments: Path | str,
    photos: Path | str | None = None,
    data_root: str | None = None,
    progress: Callable[[str], None] | None = None,
    score: str | None = None,
    photo_pools: tuple[str, ...] = (),
) -> dict:
    """Per checkpoint folder under ``models``: the share of non-garments, of held-out Fashion-MNIST test
    images and of garment photos flagged, the AUROC (non-garments vs held-out test images), and the
    held-out ECE before and after temperature scaling.

    Uploads are scored as the app and the CLI score them: after ``prepare_upload``. A folder without
    calibration.json, or every folder when ``score`` names one of ``drnets.ood.SCORES``, is calibrated in memory
    (``"calibration": "fitted now"``, with ``photo_pools`` as ``drnets calibrate --photo-pool``), nothing is
    written: that is how the scores are compared.
    """
    from . import ood
    from .checkpoint import load_checkpoint
    from .data import load_dataset, to_input
    from .model import policy_with
    from .photos import read_labels
    from .predict import preprocessing
    from .upload import prepare_upload

    folders = sorted(p.parent for p in Path(models).glob("*/config.json"))
    if not folders:
        raise FileNotFoundError(f"no checkpoint folders (*/config.json) under {models}")
    kinds = read_kinds(nongarments)
    kind_of = np.array([k for _, k in kinds])
    photo_files = [Path(photos) / row.file for row in read_labels(photos)] if photos else []
    test = load_dataset("fashion-mnist", "test", data_root)
    _, held = ood.split_halves(len(test.labels))
    prepared: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}
    result: dict = {"nongarments": str(nongarments), "photos": str(photos) if photos else None, "models": {}}
    result |= {"n_nongarments": len(kinds), "n_photos": len(photo_files), "n_held_out": len(held)}
    for folder in folders:
        checkpoint = load_checkpoint(folder)
        key = preprocessing(checkpoint)
        if key not in prepared:
            ng = torch.cat([prepare_upload((Path(nongarments) / f).read_bytes(), *key).tensor for f, _ in kinds])
            ph = torch.cat([prepare_upload(p.read_bytes(), *key).tensor for p in photo_files]) if photo_files else None
            prepared[key] = (ng, ph)
        ng, ph = prepared[key]
        if score:
            calibration = ood.calibrate(checkpoint, data_root, score=score, photo_pools=photo_pools)
            source = "fitted now"
        else:
            calibration, source = ood.load_calibration(checkpoint), "calibration.json"
            if calibration is None:
                calibration, source = ood.calibrate(checkpoint, data_root), "fitted now"
        policy = policy_with(checkpoint.model)
        logits, feats = ood.logits_and_features(checkpoint.model, to_input(test.images[held], *key[1:]), policy)
        test_scores = calibration.ood_scores(feats.numpy(), logits)
        ng_scores = _scores(calibration, checkpoint.model, ng, policy)
        row = {
            "calibration": source,
            "score": calibration.score,
            "temperature": calibration.temperature,
            "threshold": calibration.threshold,
            "flagged_nongarments": float(np.mean(~calibration.in_distribution(ng_scores))),
            "flagged_test": float(np.mean(~calibration.in_distribution(test_scores))),
            "flagged_photos": None,
            "auroc": ood.auroc(test_scores, ng_scores),
            "ece_before": ood.expected_calibration_error(ood.calibrated_probs(logits), test.labels[held]),
            "ece_after": ood.expected_calibration_error(calibration.probabilities(logits), test.labels[held]),
            "accuracy_held_out": float((logits.argmax(1) == test.labels[held]).float().mean()),
            "flagged_by_kind": {
                kind: float(np.mean(ng_scores[kind_of == kind] > calibration.threshold))
                for kind in KINDS
                if (kind_of == kind).any()
            },
        }
        if ph is not None:
            row["flagged_photos"] = float(np.mean(~calibration.in_distribution(_scores(calibration, checkpoint.model, ph, policy))))  # fmt: skip
        result["models"][folder.name] = row
        if progress:
            progress(f"{folder.name}: done")
    return result


def _scores(calibration, model: torch.nn.Module, images: torch.Tensor, policy) -> np.ndarray:
    from . import ood

    logits, features = ood.logits_and_features(model, images, policy)
    return calibration.ood_scores(features.numpy(), logits)


def format_ood_report(result: dict) -> str:
    lines = [
        f"non-garments: {result['n_nongarments']} images ({result['nongarments']}); Fashion-MNIST held-out half: "
        f"{result['n_held_out']} test images; garment photos: {result['n_photos']}",
        f"{'model':<12} {'non-garm.':>9} {'F-MNIST':>8} {'photos':>7} {'AUROC':>6} {'ECE before':>10} {'after':>7} {'T':>6}",
    ]
    for name, r in result["models"].items():
        photos = "-" if r["flagged_photos"] is None else f"{r['flagged_photos']:.1%}"
        lines.append(
            f"{name:<12} {r['flagged_nongarments']:>9.1%} {r['flagged_test']:>8.1%} {photos:>7} {r['auroc']:>6.3f} "
            f"{r['ece_before']:>10.4f} {r['ece_after']:>7.4f} {r['temperature']:>6.3f}"
            + ("" if r["calibration"] == "calibration.json" else f"  ({r['score']} score fitted now, not saved)")
        )
    lines.append("flagged = share judged not like the training data; columns 2-4 are shares of each set")
    for name, r in result["models"].items():
        lines.append(
            f"{name} non-garments flagged by kind: "
            + ", ".join(f"{k} {v:.0%}" for k, v in r["flagged_by_kind"].items())
        )
    return "\n".join(lines)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("nongarments", help="write a seeded set of images that are not garments")
    p.add_argument("--out", type=Path, required=True, help="folder for the images and kinds.csv")
    p.add_argument("--n", type=positive_int, default=270, help="number of images (default 270: 30 of each kind)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kinds", type=_kinds, default=KINDS, metavar="K1,K2",
                   help=f"comma-separated kinds to cycle through (default all: {','.join(KINDS)})")  # fmt: skip
    p.set_defaults(func=_cmd_nongarments)
    p = sub.add_parser("ood-eval", help="how often every model flags non-garments, test images and garment photos")
    p.add_argument("--models", type=Path, default=Path("assets/models"), help="folder of checkpoint folders")
    p.add_argument("--nongarments", type=Path, required=True, help="a folder written by `drnets nongarments`")
    p.add_argument("--photos", type=Path, default=None, help="a folder written by `drnets photos` (optional)")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: the Debian files)")
    p.add_argument("--score", choices=SCORES, default=None,
                   help="fit every model's detector in memory with this score instead of reading calibration.json")  # fmt: skip
    p.add_argument("--photo-pool", action="append", default=[], metavar="FOLDER",
                   help="with --score: training photos whose features join the fit, as `drnets calibrate --photo-pool`")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_ood_eval)


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown kinds {', '.join(unknown) or '(none)'}; known: {', '.join(KINDS)}")
    return kinds


def _cmd_nongarments(args: argparse.Namespace) -> int:
    rows = write_nongarments(args.out, args.n, args.seed, args.kinds)
    print(f"wrote {len(rows)} images to {args.out}")
    return 0


def _cmd_ood_eval(args: argparse.Namespace) -> int:
    if args.photo_pool and not args.score:
        raise ValueError("--photo-pool only acts on a fit made now; give --score as well")
    result = evaluate_ood(
        args.models, args.nongarments, args.photos, args.data_root, score=args.score, photo_pools=tuple(args.photo_pool)
    )
    print(json.dumps(result, indent=2) if args.json else format_ood_report(result))
    return 0
