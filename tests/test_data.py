"""Data readers on small files written here in each real format; bad folders get clear messages."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import cifar_batch, class_images, idx_bytes, write_cifar10, write_cifar100, write_idx_dataset
from PIL import Image

from drnets.data import (
    FASHION_MNIST_CLASSES,
    DataError,
    augment,
    load_cifar,
    load_dataset,
    normalization,
    read_idx,
    to_input,
)

# ---- Fashion-MNIST idx ----


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    images = class_images(labels)[..., 0]
    for name, array in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        data = idx_bytes(array)
        if gz:
            (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (tmp_path / name).write_bytes(data)
    ds = load_dataset("fashion-mnist", "test", tmp_path)
    assert ds.images.shape == (5, 28, 28, 1) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[..., 0], torch.from_numpy(images))
    assert ds.labels.tolist() == labels.tolist() and ds.labels.dtype == torch.int64
    assert ds.class_names == FASHION_MNIST_CLASSES and ds.name == "fashion-mnist"
    assert len(ds.subset(2)) == 2 and ds.subset(None) is ds


def test_idx_missing_files_name_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_dataset("fashion-mnist", "train", tmp_path)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_dataset("fashion-mnist", "test", tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x00\x0d\x01" + b"\x00\x00\x00\x01" + b"\x00" * 4, "bad magic"),  # float idx, not uint8
        (b"PK\x03\x04 not idx", "bad magic"),
        (idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-10], "header says"),  # truncated data
        (b"", "bad magic"),
    ],
)
def test_malformed_idx_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_idx(path)


def test_corrupt_gzip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 28, 28), np.uint8)))[:20])
    with pytest.raises(DataError, match="could not be read"):
        read_idx(path)


def test_images_and_labels_must_pair_up(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, n_train=8, n_test=4)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(3, np.uint8))))
    with pytest.raises(DataError, match="do not pair up"):
        load_dataset("fashion-mnist", "test", tmp_path)


# ---- CIFAR python batches ----


def test_cifar10_batches(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=6)
    train, test = load_dataset("cifar10", "train", tmp_path), load_dataset("cifar10", "test", tmp_path)
    assert train.images.shape == (30, 32, 32, 3) and test.images.shape == (6, 32, 32, 3)
    assert train.class_names == [f"class{i}" for i in range(10)] and train.name == "cifar10"
    # Rows are channel-major (1024 red, 1024 green, 1024 blue); the reader must give H, W, C.
    batch = cifar_batch(6, 10, False, seed=9)
    expected = batch[b"data"].reshape(6, 3, 32, 32).transpose(0, 2, 3, 1)
    assert torch.equal(test.images, torch.from_numpy(expected))
    assert test.labels.tolist() == batch[b"labels"]


def test_cifar100_batches(tmp_path: Path) -> None:
    write_cifar100(tmp_path, n=8)
    ds = load_dataset("cifar100", "test", tmp_path)
    assert ds.images.shape == (8, 32, 32, 3) and len(ds.class_names) == 100 and ds.class_names[7] == "fine7"
    assert ds.labels.tolist() == cifar_batch(8, 100, True, seed=2)[b"fine_labels"]
    assert ds.name == "cifar100"


def test_cifar_missing_folder_and_batches(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="python version"):
        load_dataset("cifar10", "train", tmp_path / "nowhere")
    with pytest.raises(DataError, match="--data-root"):
        load_dataset("cifar10", "train", None)
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", "train", tmp_path)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not a pickle at all", "not a CIFAR python batch"),
        (pickle.dumps({b"labels": [1]}), "no 'data' entry"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), r"expected \[N, 3072\]"),
    ],
)
def test_malformed_cifar_batch(tmp_path: Path, payload: bytes, message: str) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(payload)
    with pytest.raises(DataError, match=message):
        load_cifar(tmp_path, "test")


class _Payload:
    """Unpickling this runs ``os.system``: the reader must refuse it before it runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_cifar_pickle_is_refused_without_running(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    batch = cifar_batch(6, 10, False, seed=9)
    batch[b"data"] = _Payload(marker)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match="refusing to load"):
        load_cifar(tmp_path, "test")
    assert not marker.exists()


# ---- ImageFolder ----


def test_image_folder_of_pngs(tmp_path: Path) -> None:
    colours = {"boots": 30, "hats": 200}
    for name, value in colours.items():
        (tmp_path / "test" / name).mkdir(parents=True)
        for i, size in enumerate((28, 40)):  # a non-28 image is resized
            Image.new("RGB", (size, size), (value, value, value)).save(tmp_path / "test" / name / f"{i}.png")
    (tmp_path / "test" / "hats" / "notes.txt").write_text("not an image; skipped")
    ds = load_dataset("folder", "test", tmp_path)
    assert ds.class_names == ["boots", "hats"] and ds.name == "folder"
    assert ds.images.shape == (4, 28, 28, 1) and ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.images[0].unique().tolist() == [30] and ds.images[3].unique().tolist() == [200]


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="one sub-folder of images per class"):
        load_dataset("folder", "test", tmp_path)
    (tmp_path / "test" / "empty").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_dataset("folder", "test", tmp_path)
    (tmp_path / "test" / "empty" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match="broken.png is not a readable image"):
        load_dataset("folder", "test", tmp_path)


def test_unknown_data_set_and_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("imagenet", "train", tmp_path)
    with pytest.raises(DataError, match="split must be"):
        load_dataset("fashion-mnist", "validation", tmp_path)


# ---- batch transforms ----


def test_augment_keeps_shape_and_is_deterministic() -> None:
    images = torch.from_numpy(class_images(np.arange(8) % 10, channels=1))
    first = augment(images, torch.Generator().manual_seed(3))
    again = augment(images, torch.Generator().manual_seed(3))
    other = augment(images, torch.Generator().manual_seed(4))
    assert first.shape == images.shape and first.dtype == torch.uint8
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(augment(images, torch.Generator(), pad=0, flip=False), images)  # nothing to do


def test_augment_is_a_shifted_or_flipped_crop() -> None:
    images = torch.from_numpy(class_images(np.arange(16) % 10, channels=3, size=12))
    out = augment(images, torch.Generator().manual_seed(0), pad=2, flip=True)
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2), (2, 2, 2, 2)).permute(0, 2, 3, 1)
    for image, result in zip(padded, out, strict=True):
        crops = [image[dy : dy + 12, dx : dx + 12] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(result, c) or torch.equal(result, c.flip(1)) for c in crops)


def test_to_input_normalises_per_channel() -> None:
    images = torch.tensor([[[[0, 255, 51]]]], dtype=torch.uint8)  # [1, 1, 1, 3]
    mean, std = (0.0, 0.5, 0.2), (1.0, 0.5, 0.1)
    x = to_input(images, mean, std)
    assert x.shape == (1, 3, 1, 1) and x.dtype == torch.float32
    assert torch.allclose(x.flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    assert normalization("fashion-mnist", 1) == ((0.2860,), (0.3530,))
    assert normalization("folder", 3) == ((0.5,) * 3, (0.5,) * 3)
