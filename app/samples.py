"""The sample images shipped with the app: Fashion-MNIST test images named ``<class>_<n>.png``."""

from __future__ import annotations

import os
from pathlib import Path

from app.paths import ASSETS


def samples_dir() -> Path:
    """``assets/samples``, unless DRNETS_SAMPLES_DIR points elsewhere (tests)."""
    return Path(os.environ.get("DRNETS_SAMPLES_DIR") or ASSETS / "samples")


def list_samples() -> list[str]:
    """Sample file names, sorted; empty when there are none."""
    folder = samples_dir()
    return sorted(p.name for p in folder.glob("*.png")) if folder.is_dir() else []


def read_sample(name: str) -> bytes:
    path = samples_dir() / Path(name).name  # a name from list_samples, never a path
    return path.read_bytes()


def sample_title(name: str) -> str:
    """'Ankle-boot_2.png' -> 'Ankle-boot 2'."""
    return name.rsplit(".", 1)[0].replace("_", " ")
