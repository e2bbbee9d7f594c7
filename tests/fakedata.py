"""Small data sets written by the tests in the real on-disk formats (nothing is downloaded).

Images carry a class-dependent bright bar so a tiny model can learn them in a few steps.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

TINY_DRNET = '{"channels": 4, "num_cells": 3, "num_nodes": 2}'  # a DRNet that trains in about a second


def class_images(labels: np.ndarray, size: int = 28, channels: int = 1, seed: int = 0) -> np.ndarray:
    """uint8 [N, size, size, channels]: dim noise plus a bright bar that encodes the label.

    The row (label mod 5, 5 px apart) survives the +-2 px random crop, and the width
    (full for labels 0-4, a centred block for 5-9) survives the horizontal flip.
    """
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 50, (len(labels), size, size, channels), dtype=np.uint8)
    for i, label in enumerate(labels):
        row = 2 + 5 * (int(label) % 5)
        left, right = (4, size - 4) if int(label) % 10 < 5 else (size // 2 - 3, size // 2 + 3)
        images[i, row : row + 3, left:right] = 200
    return images


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file (magic 0, 0, 0x08 = uint8, ndim; big-endian dims; raw data)."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_dataset(root: Path, n_train: int = 256, n_test: int = 128, gz: bool = True, seed: int = 0) -> Path:
    """Fashion-MNIST-format files (train + t10k images/labels) with 10 classes of 28x28 images."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = class_images(labels, seed=seed + n)[..., 0]
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                with gzip.open(root / f"{name}.gz", "wb") as fh:
                    fh.write(idx_bytes(array))
            else:
                (root / name).write_bytes(idx_bytes(array))
    return root


def cifar_batch(n: int, classes: int, fine: bool, seed: int) -> dict:
    """A CIFAR python batch dict: bytes keys, 'data' uint8 [N, 3072] in channel-major order."""
    labels = np.random.default_rng(seed).integers(0, classes, n)
    data = class_images(labels, size=32, channels=3, seed=seed).transpose(0, 3, 1, 2).reshape(n, 3072)
    label_key = b"fine_labels" if fine else b"labels"
    return {b"batch_label": b"testing batch", label_key: labels.tolist(), b"data": data, b"filenames": [b"x.png"] * n}


def write_cifar10(root: Path, per_batch: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        with open(root / f"data_batch_{i}", "wb") as fh:
            pickle.dump(cifar_batch(per_batch, 10, False, seed=i), fh)
    with open(root / "test_batch", "wb") as fh:
        pickle.dump(cifar_batch(per_batch, 10, False, seed=9), fh)
    names = [f"class{i}".encode() for i in range(10)]
    with open(root / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch}, fh)
    return root


def write_cifar100(root: Path, n: int = 8) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, seed in (("train", 1), ("test", 2)):
        with open(root / split, "wb") as fh:
            pickle.dump(cifar_batch(n, 100, True, seed=seed), fh)
    with open(root / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}, fh)  # fmt: skip
    return root
