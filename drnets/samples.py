"""Export a few test images per class as PNG, so the app has samples on first start."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from PIL import Image

from .argtypes import positive_int
from .data import DATASETS, load_dataset


def slug(name: str) -> str:
    """File-name-safe class name: 'T-shirt/top' -> 't-shirt-top'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def export_samples(dataset: str, out: Path, per_class: int, root: str | None = None) -> list[Path]:
    data = load_dataset(dataset, "test", root)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for label, name in enumerate(data.class_names):
        indices = (data.labels == label).nonzero().flatten()[:per_class].tolist()
        for n, index in enumerate(indices):
            pixels = data.images[index].numpy()
            image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
            path = out / f"{slug(name)}_{n}.png"
            image.save(path)
            written.append(path)
    return written


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-samples", help="write a few test images per class as PNG")
    p.add_argument("--data", choices=DATASETS, default="fashion-mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", type=Path, default=Path("assets/samples"))
    p.add_argument("--per-class", type=positive_int, default=3, help="images per class (default 3)")
    p.set_defaults(
        func=lambda a: (
            print(f"wrote {len(export_samples(a.data, a.out, a.per_class, a.data_root))} images to {a.out}") or 0
        )
    )
