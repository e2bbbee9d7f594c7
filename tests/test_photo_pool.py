"""Garment photos and outliers as training data (drnets/photo_pool.py): prepared as uploads are, cached,
mixed in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import TINY_DRNET, write_idx_dataset

from drnets import photos
from drnets.data import ImageSet
from drnets.losses import outlier_loss, training_loss
from drnets.model import MobileNetV2, MobileNetV2Config
from drnets.nongarments import KINDS, read_kinds, write_nongarments
from drnets.photo_pool import CACHE, OUTLIER, code_digest, mixed, prepared_outliers, prepared_pool
from drnets.train import TrainConfig, make_batch
from drnets.upload import prepare_upload

CLASSES = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def outliers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("outliers")
    write_nongarments(out, n=len(KINDS), seed=3)
    return out


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pool")
    photos.write_photos(out, n=6, seed=11, split="train")
    return out


def test_a_pool_is_prepared_as_uploads_are_and_cached(pool: Path) -> None:
    rows = photos.read_labels(pool)
    assert {row.split for row in rows} == {"train"}
    prepared = prepared_pool([str(pool)], (1, 28, 28), CLASSES)
    assert prepared.images.shape == (6, 28, 28, 1) and prepared.labels.tolist() == [row.label for row in rows]
    for image, row in zip(prepared.images, rows, strict=True):
        assert np.array_equal(image[..., 0].numpy(), prepare_upload((pool / row.file).read_bytes()).seen)
    assert (pool / CACHE.format(c=1, h=28, w=28)).is_file()
    moved = pool / "moved"
    moved.mkdir()
    (pool / rows[0].file).rename(moved / rows[0].file)  # the cache answers without the photo
    try:
        assert torch.equal(prepared_pool([str(pool)], (1, 28, 28), CLASSES).images, prepared.images)
    finally:
        (moved / rows[0].file).rename(pool / rows[0].file)


def test_a_cache_made_by_other_preparation_code_is_prepared_again(pool: Path) -> None:
    expected = prepared_pool([str(pool)], (1, 28, 28), CLASSES).images
    cache = pool / CACHE.format(c=1, h=28, w=28)
    with np.load(cache) as stored:
        files = stored["files"]
    np.savez(cache, seen=np.zeros_like(expected.numpy()), files=files, preparation=np.asarray("older code"))
    assert torch.equal(prepared_pool([str(pool)], (1, 28, 28), CLASSES).images, expected)


def test_the_cache_key_follows_the_code_not_its_comments_or_docstrings() -> None:
    source = 'def f(x):\n    """Why."""\n    return x + 1  # one more\n'
    reworded = 'def f(x):\n    """Why, said otherwise."""\n    return x + 1\n'
    changed = 'def f(x):\n    """Why."""\n    return x + 2\n'
    assert code_digest([source]) == code_digest([reworded]) != code_digest([changed])
    assert code_digest(['"""Module."""\n']) == code_digest([""])


def test_non_garments_are_prepared_as_uploads_are_and_labelled_outliers(outliers: Path) -> None:
    prepared = prepared_outliers([str(outliers)], (1, 28, 28), CLASSES)
    kinds = read_kinds(outliers)
    assert prepared.images.shape == (len(KINDS), 28, 28, 1) and set(prepared.labels.tolist()) == {OUTLIER}
    file, _ = kinds[0]
    assert np.array_equal(prepared.images[0, ..., 0].numpy(), prepare_upload((outliers / file).read_bytes()).seen)
    with pytest.raises(ValueError, match="no kinds.csv"):
        prepared_outliers([str(outliers / "nowhere")], (1, 28, 28), CLASSES)


def test_outliers_are_pulled_to_a_flat_answer_and_take_no_cross_entropy() -> None:
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 3.0, -1.0]])
    labels = torch.tensor([0, OUTLIER, OUTLIER])
    flat = -torch.log_softmax(logits[1:], 1).mean()
    torch.testing.assert_close(outlier_loss(logits, labels), flat)
    torch.testing.assert_close(outlier_loss(logits[1:2], labels[1:2]), torch.tensor(np.log(3), dtype=torch.float32))
    assert float(outlier_loss(logits[:1], labels[:1])) == 0.0  # a batch without outliers
    cfg = TrainConfig(model="mobilenetv2", outlier_weight=0.5)
    loss, ce = training_loss(MobileNetV2(MobileNetV2Config(num_classes=3)), logits, None, labels, cfg, 28, 28)
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(logits[:1], labels[:1]))
    torch.testing.assert_close(loss, ce + 0.5 * flat)


def test_photos_of_test_images_are_refused_as_a_pool(tmp_path: Path) -> None:
    photos.write_photos(tmp_path, n=2, seed=0)
    with pytest.raises(ValueError, match="photos of test images"):
        prepared_pool([str(tmp_path)], (1, 28, 28), CLASSES)
    with pytest.raises(ValueError, match="no labels.csv"):
        prepared_pool([str(tmp_path / "nowhere")], (1, 28, 28), CLASSES)


def test_the_pool_makes_up_its_share_of_the_training_set() -> None:
    data = ImageSet(torch.zeros(300, 28, 28, 1, dtype=torch.uint8), torch.zeros(300, dtype=torch.long), CLASSES, "d")
    pool = ImageSet(torch.ones(10, 28, 28, 1, dtype=torch.uint8), torch.arange(10), CLASSES, "p")
    both = mixed(data, pool, 0.25)
    assert len(both) == 400 and int((both.images[:, 0, 0, 0] == 1).sum()) == 100
    assert both.labels[300:].tolist() == list(range(10)) * 10


def test_photo_augmentation_leaves_the_pool_photos_as_prepared() -> None:
    """Training images get scale, tilt, contrast...; a prepared photo only the crop and flip every image gets."""
    flat = torch.full((8, 28, 28, 1), 120, dtype=torch.uint8)  # crop (2 px) and flip leave its middle flat
    data = ImageSet(flat, torch.zeros(8, dtype=torch.long), CLASSES, "d")
    x, _ = make_batch(data, torch.arange(8), torch.Generator().manual_seed(0), (0.0,), (1 / 255,), "photo", 4)
    middle = x[:, :, 2:-2, 2:-2]
    assert all(torch.allclose(middle[i], torch.tensor(120.0)) for i in range(4, 8))
    assert not any(torch.allclose(middle[i], torch.tensor(120.0)) for i in range(4))


def test_train_mixes_a_pool_and_outliers_in(pool: Path, outliers: Path, tmp_path: Path) -> None:
    root = write_idx_dataset(tmp_path / "fmnist", n_train=64, n_test=16)
    command = [
        sys.executable, "-m", "drnets", "train", "--data-root", str(root), "--model-config", TINY_DRNET,
        "--epochs", "1", "--batch-size", "16", "--no-progress", "--augment", "photo",
        "--photo-pool", str(pool), "--photo-share", "0.5", "--outlier-pool", str(outliers),
        "--out", str(tmp_path / "run"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    recipe = json.loads((tmp_path / "run" / "args.json").read_text())
    assert recipe["photo_pool"] == [str(pool)] and recipe["photo_share"] == 0.5
    assert recipe["outlier_pool"] == [str(outliers)] and recipe["outlier_share"] == 0.1
    history = json.loads((tmp_path / "run" / "model" / "config.json").read_text())["training"]["history"]
    assert 0 <= history[0]["train_acc"] <= 1  # outliers count in no accuracy
    done = subprocess.run([*command[:-2], "--photo-share", "1", "--out", str(tmp_path / "bad")],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 2 and "photo_share must lie in (0, 1)" in done.stderr and "Traceback" not in done.stderr
