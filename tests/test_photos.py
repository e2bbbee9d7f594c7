"""The phone-style photo set (drnets/photos.py): deterministic, balanced, test images only, measurable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drnets import photos
from drnets.cli import main
from drnets.data import load_dataset

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "models"


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[photos.PhotoLabel]]:
    out = tmp_path_factory.mktemp("photos")
    return out, photos.write_photos(out, n=12, seed=3)


def test_same_seed_same_files_other_seed_other_files(
    photo_set: tuple[Path, list[photos.PhotoLabel]], tmp_path: Path
) -> None:
    out, rows = photo_set
    again = photos.write_photos(tmp_path / "again", n=3, seed=3)
    assert again == rows[:3]  # photo i depends on (seed, i) only, not on n
    for row in again:
        assert (tmp_path / "again" / row.file).read_bytes() == (out / row.file).read_bytes()
    other = photos.write_photos(tmp_path / "other", n=3, seed=4)
    assert [r.index for r in other] != [r.index for r in again]


def test_every_class_and_background_occurs_with_its_labels(photo_set: tuple[Path, list[photos.PhotoLabel]]) -> None:
    out, rows = photo_set
    assert {r.label for r in rows} == set(range(10))
    assert photos.read_labels(out) == rows
    test = load_dataset("fashion-mnist", "test")
    for row in rows:
        assert row.split == "test" and int(test.labels[row.index]) == row.label  # a test image, of the labelled class
        assert test.class_names[row.label] == row.class_name
        assert (row.width, row.height) in photos.FRAMES
        assert photos.FILL[0] <= row.fill <= photos.FILL[1] and abs(row.tilt_deg) <= photos.MAX_TILT
        assert row.size in {name for _, name in photos.SIZE_BUCKETS}
        assert row.tilt in {name for _, name in photos.TILT_BUCKETS}
        assert row.tone in ("light", "mid", "dark") and row.background in photos.BACKGROUNDS
        assert photos.QUALITY[0] <= row.quality <= photos.QUALITY[1]
        with Image.open(out / row.file) as image:
            assert image.format == "JPEG" and image.size == (row.width, row.height)


def test_a_300_photo_plan_is_balanced() -> None:
    """The labels follow from (seed, i) without rendering: 30 per class, every background with every class."""
    pairs = {(i % 10, photos.BACKGROUNDS[(i // 10) % 5]) for i in range(300)}
    assert len(pairs) == 50


def test_garment_is_where_the_photo_is_not_background() -> None:
    """The rendered garment differs from its surroundings, and both garment tones occur."""
    item = load_dataset("fashion-mnist", "test").images[0, ..., 0].numpy()
    tones = set()
    for i, kind in enumerate(photos.BACKGROUNDS * 2):
        photo, labels = photos.render(item, kind, np.random.default_rng([7, i]))
        assert photo.shape == (labels["height"], labels["width"], 3) and photo.dtype == np.uint8
        tones.add(labels["tone"])
    assert len(tones) >= 2


@pytest.mark.skipif(not (SHIPPED / "drnet" / "config.json").is_file(), reason="shipped models not built")
def test_photos_eval_reports_every_model_and_condition(
    photo_set: tuple[Path, list[photos.PhotoLabel]], capsys: pytest.CaptureFixture
) -> None:
    out, rows = photo_set
    assert main(["photos-eval", "--photos", str(out), "--models", str(SHIPPED), "--limit", "10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 10 and result["segment"] is True
    assert set(result["models"]) == {"dense", "drnet", "mobilenetv2"}
    for model in result["models"].values():
        assert 0 <= model["accuracy"] <= 1
        assert set(model["by"]) == {*photos.CONDITIONS, "class_name"}
        assert set(model["by"]["background"]) == {r.background for r in rows[:10]}
    text = photos.format_report(result)
    assert "overall" in text and "background plain" in text and "tone " in text


def test_photos_refuses_a_bad_count(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["photos", "--out", str(tmp_path), "--n", "0"])
    assert info.value.code == 2 and "--n" in capsys.readouterr().err
