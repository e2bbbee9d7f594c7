"""Out-of-distribution verdicts and temperature scaling: the numbers, the calibration file, the CLI fields,
and the non-garment set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from drnets import ood, photos
from drnets.checkpoint import load_checkpoint, save_checkpoint
from drnets.cli import main
from drnets.data import FASHION_MNIST_CLASSES, load_dataset
from drnets.nongarments import (
    HELD_OUT_KINDS,
    KINDS,
    TRAINING_KINDS,
    evaluate_ood,
    format_ood_report,
    read_kinds,
    render_nongarment,
    write_nongarments,
)

ASSETS = Path(__file__).parents[1] / "assets" / "models"
TRAINING = {"dataset": "fashion-mnist", "mean": [0.2860], "std": [0.3530], "input_size": [1, 28, 28]}


def test_temperature_scaling_lowers_the_nll_of_an_overconfident_model() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (2000,), generator=gen)
    logits = torch.randn(2000, 10, generator=gen)
    logits[torch.arange(2000), labels] += 2.0  # right about 70% of the time...
    logits *= 6.0  # ...but far too sure of itself
    t = ood.fit_temperature(logits, labels)
    assert t > 2.0
    assert ood.nll(logits, labels, t) < 0.7 * ood.nll(logits, labels)
    before = ood.expected_calibration_error(ood.calibrated_probs(logits), labels)
    after = ood.expected_calibration_error(ood.calibrated_probs(logits, t), labels)
    assert after < before / 3
    assert torch.equal(ood.calibrated_probs(logits, t).argmax(1), logits.argmax(1))  # answers unchanged


def test_threshold_flags_the_asked_share_of_in_distribution_scores() -> None:
    rng = np.random.default_rng(0)
    cal, held = rng.chisquare(10, 5000), rng.chisquare(10, 5000)
    threshold = ood.threshold_for(cal, 0.05)
    assert np.mean(cal > threshold) == pytest.approx(0.05, abs=0.002)
    assert np.mean(held > threshold) == pytest.approx(0.05, abs=0.015)
    assert ood.auroc(held, held + 100) == 1.0 and ood.auroc(held, held) == pytest.approx(0.5, abs=0.01)


def test_test_split_is_fixed_and_disjoint() -> None:
    a, b = ood.split_halves(10_000)
    assert len(a) == len(b) == 5000 and not set(a) & set(b)
    assert np.array_equal(a, ood.split_halves(10_000)[0])


def test_mahalanobis_flags_points_far_from_every_class() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    centres = np.array([[0.0] * 4, [5.0] * 4, [-5.0, 5.0, -5.0, 5.0]])
    feats = centres[labels] + rng.normal(0, 1, (600, 4))
    calibration = ood.Calibration("x", "", 1.0, 0.0, *ood.fit_gaussian(feats, labels, 3))
    calibration.threshold = ood.threshold_for(calibration.ood_scores(feats), 0.05)
    far = np.array([[20.0, -20.0, 20.0, -20.0], [0.0, 0.0, 30.0, 0.0]])
    assert not calibration.in_distribution(calibration.ood_scores(far)).any()
    assert calibration.in_distribution(calibration.ood_scores(centres)).all()


def _two_part_calibration(score: str) -> tuple[ood.Calibration, np.ndarray, torch.Tensor, np.ndarray]:
    """A detector on 3 classes of 4-D features with confident logits, fitted with ``score``."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 600)
    centres = np.array([[0.0] * 4, [5.0] * 4, [-5.0, 5.0, -5.0, 5.0]])
    feats = centres[labels] + rng.normal(0, 1, (600, 4))
    logits = torch.nn.functional.one_hot(torch.as_tensor(labels), 3).float() * 8 + torch.randn(600, 3) * 0.3
    calibration = ood.Calibration("x", "", 1.0, 0.0, *ood.fit_gaussian(feats, labels, 3), score=score)
    calibration.scales = {
        ood.MAHALANOBIS: ood.score_scale(calibration.distances(feats)),
        ood.ENERGY: ood.score_scale(ood.energy(logits)),
    }
    calibration.threshold = ood.threshold_for(calibration.ood_scores(feats, logits), 0.05)
    return calibration, feats, logits, centres


@pytest.mark.parametrize("score", [ood.LARGER, ood.SUMMED])
def test_a_two_part_score_flags_what_either_part_flags_far_out(score) -> None:
    """Features near a class but logits with no class standing out, or the reverse: both flagged."""
    calibration, feats, logits, centres = _two_part_calibration(score)
    confident = torch.tensor([[8.0, 0.0, 0.0]])
    unsure = torch.zeros(1, 3)  # no class stands out
    assert calibration.in_distribution(calibration.ood_scores(centres[:1], confident)).all()
    assert not calibration.in_distribution(calibration.ood_scores(centres[:1], unsure)).any()
    assert not calibration.in_distribution(calibration.ood_scores(np.full((1, 4), 30.0), confident)).any()
    with pytest.raises(ood.CalibrationError, match="needs the logits"):
        calibration.ood_scores(feats)
    again = ood._from_dict(json.loads(calibration.to_json()))
    assert again.score == score
    np.testing.assert_allclose(again.ood_scores(feats, logits), calibration.ood_scores(feats, logits), atol=1e-5)


def test_the_summed_score_adds_the_scaled_parts_the_larger_takes_the_larger() -> None:
    """One class at the origin, identity covariance, scales (0, 1): a part's scaled value is its raw value.
    Distance 0.8 and energy 0.8: the sum (1.6) is over a threshold of 1, the larger (0.8) is not."""
    feature = np.array([[np.sqrt(0.8), 0.0]])
    logits = torch.tensor([[-0.8]])  # one class: energy = -logit
    scores = {}
    for score in (ood.LARGER, ood.SUMMED):
        calibration = ood.Calibration("x", "", 1.0, 1.0, np.zeros((1, 2)), np.eye(2), score=score)
        calibration.scales = {ood.MAHALANOBIS: (0.0, 1.0), ood.ENERGY: (0.0, 1.0)}
        scores[score] = calibration.ood_scores(feature, logits)
        assert calibration.in_distribution(scores[score]).item() is (score == ood.LARGER)
    np.testing.assert_allclose([scores[ood.LARGER][0], scores[ood.SUMMED][0]], [0.8, 1.6], atol=1e-6)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model) -> Path:
    return save_checkpoint(
        tmp_path_factory.mktemp("ood") / "drnet", tiny_model("drnet"), "drnet", FASHION_MNIST_CLASSES, TRAINING
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "boot.png"
    Image.fromarray(load_dataset("fashion-mnist", "test").images[0, ..., 0].numpy()).save(path)
    return path


def small_calibration(folder: Path, threshold: float) -> ood.Calibration:
    """A calibration of the tiny checkpoint fitted on 200 training images (fast), saved beside it."""
    ckpt = load_checkpoint(folder)
    train = load_dataset("fashion-mnist", "train")
    x = (train.images[:200].permute(0, 3, 1, 2).float() / 255 - 0.2860) / 0.3530
    _, feats = ood.logits_and_features(ckpt.model, x)
    fitted = ood.fit_gaussian(feats.numpy(), train.labels[:200].numpy(), 10)
    calibration = ood.Calibration("drnet", ood.weights_digest(ckpt), 1.7, threshold, *fitted)
    ood.save_calibration(calibration, folder)
    return calibration


def test_calibration_file_round_trips_and_predict_json_has_the_verdict(checkpoint, image, capsys) -> None:
    (checkpoint / ood.CALIBRATION).unlink(missing_ok=True)
    assert main(["predict", "--checkpoint", str(checkpoint), str(image), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["in_distribution"] is None and row["ood_score"] is None and row["calibrated_probability"] is None

    saved = small_calibration(checkpoint, threshold=-1.0)  # every image is flagged
    loaded = ood.load_calibration(load_checkpoint(checkpoint))
    assert loaded.temperature == pytest.approx(1.7) and np.allclose(loaded.means, saved.means, atol=1e-5)
    assert main(["predict", "--checkpoint", str(checkpoint), str(image), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["in_distribution"] is False and row["ood_score"] > 0 and row["temperature"] == pytest.approx(1.7)
    assert 0 < row["calibrated_probability"] < row["probability"]  # T > 1 softens
    assert main(["predict", "--checkpoint", str(checkpoint), str(image)]) == 0
    assert "does not look like any of the 10 classes the model knows" in capsys.readouterr().out

    small_calibration(checkpoint, threshold=1e12)  # nothing is flagged
    assert main(["predict", "--checkpoint", str(checkpoint), str(image), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["in_distribution"] is True
    (checkpoint / ood.CALIBRATION).unlink()


def test_calibrate_fits_the_class_means_on_training_photos_too(checkpoint, tmp_path) -> None:
    """`calibrate --photo-pool`: the pool's photos join the training images in the fit, and the file says so."""
    pool = tmp_path / "pool"
    photos.write_photos(pool, n=10, seed=5, split="train")
    fitted = {}
    for name, extra in (("plain", []), ("pooled", ["--photo-pool", str(pool)])):
        folder = shutil.copytree(checkpoint, tmp_path / name)
        assert main(["calibrate", "--checkpoint", str(folder), "--train-images", "200", *extra]) == 0
        fitted[name] = json.loads((folder / ood.CALIBRATION).read_text())
    assert fitted["plain"]["score"] == fitted["pooled"]["score"] == ood.SUMMED
    assert fitted["plain"]["fit"]["pool_images"] == 0 and fitted["pooled"]["fit"]["pool_images"] == 10
    assert fitted["pooled"]["fit"]["photo_pools"] == [str(pool)]
    assert not np.allclose(fitted["plain"]["means"], fitted["pooled"]["means"])
    assert fitted["plain"]["temperature"] == pytest.approx(
        fitted["pooled"]["temperature"]
    )  # T is fitted on test images


def test_ood_eval_with_a_score_fits_every_model_now_and_writes_nothing(checkpoint, tmp_path, capsys) -> None:
    models = tmp_path / "models"
    shutil.copytree(checkpoint, models / "drnet")
    small_calibration(models / "drnet", threshold=1e12)  # the file says nothing is flagged; --score ignores it
    before = (models / "drnet" / ood.CALIBRATION).read_text()
    write_nongarments(tmp_path / "ng", n=len(KINDS), seed=4)
    result = evaluate_ood(models, tmp_path / "ng", score=ood.LARGER)
    row = result["models"]["drnet"]
    assert row["calibration"] == "fitted now" and row["score"] == ood.LARGER and row["threshold"] < 1e12
    assert 0 < row["flagged_test"] < 0.1  # the 3% rule, on the other half
    assert (models / "drnet" / ood.CALIBRATION).read_text() == before
    assert main(["ood-eval", "--models", str(models), "--nongarments", str(tmp_path / "ng"), "--photo-pool", "x"]) == 2
    assert "give --score as well" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('{"format": "something-else"}', "is not a drnets calibration file"),
        ('{"format": "drnets-calibration", "version": 1, "model": "drnet"}', "a field is missing or malformed"),
    ],
)
def test_corrupt_calibration_is_a_clear_error(tmp_path, tiny_model, image, capsys, content, message) -> None:
    folder = save_checkpoint(tmp_path / "drnet", tiny_model("drnet"), "drnet", FASHION_MNIST_CLASSES, TRAINING)
    (folder / ood.CALIBRATION).write_text(content)
    with pytest.raises(ood.CalibrationError, match=message):
        ood.load_calibration(load_checkpoint(folder))
    assert main(["predict", "--checkpoint", str(folder), str(image)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_calibration_for_other_weights_is_refused(tmp_path, tiny_model, checkpoint) -> None:
    small_calibration(checkpoint, threshold=1.0)
    other = save_checkpoint(tmp_path / "drnet", tiny_model("drnet", seed=1), "drnet", FASHION_MNIST_CLASSES, TRAINING)
    (other / ood.CALIBRATION).write_bytes((checkpoint / ood.CALIBRATION).read_bytes())
    with pytest.raises(ood.CalibrationError, match="fitted for other weights"):
        ood.load_calibration(load_checkpoint(other))
    (checkpoint / ood.CALIBRATION).unlink()


def test_nongarment_set_is_deterministic_and_covers_every_kind(tmp_path) -> None:
    rows = write_nongarments(tmp_path / "a", n=2 * len(KINDS), seed=3)
    assert rows == write_nongarments(tmp_path / "b", n=2 * len(KINDS), seed=3)
    other = write_nongarments(tmp_path / "c", n=len(KINDS), seed=4)
    assert {kind for _, kind in rows} == set(KINDS) and read_kinds(tmp_path / "a") == rows
    for name, _ in rows:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        Image.open(tmp_path / "a" / name).verify()
    assert any((tmp_path / "a" / n).read_bytes() != (tmp_path / "c" / n).read_bytes() for n, _ in other)


def test_a_nongarment_set_of_some_kinds_is_the_same_images_as_those_kinds_alone(tmp_path) -> None:
    """The training outliers are drawn from TRAINING_KINDS only: the held-out kinds stay unseen."""
    rows = write_nongarments(tmp_path / "t", n=len(TRAINING_KINDS) + 2, seed=5, kinds=TRAINING_KINDS)
    assert [kind for _, kind in rows] == [*TRAINING_KINDS, *TRAINING_KINDS[:2]]
    assert not set(HELD_OUT_KINDS) & {kind for _, kind in rows}
    with pytest.raises(ValueError, match="unknown kinds sweater"):
        write_nongarments(tmp_path / "u", n=2, kinds=("noise", "sweater"))
    assert main(["nongarments", "--out", str(tmp_path / "v"), "--n", "2", "--kinds", "selfie,screenshot"]) == 0
    assert [kind for _, kind in read_kinds(tmp_path / "v")] == ["selfie", "screenshot"]


def test_ood_report_names_every_rate() -> None:
    row = {"calibration": "calibration.json", "temperature": 1.1, "threshold": 90.0, "flagged_nongarments": 0.93,
           "flagged_test": 0.047, "flagged_photos": 0.3, "auroc": 0.988, "ece_before": 0.008, "ece_after": 0.007,
           "flagged_by_kind": {"noise": 1.0, "text": 0.67}}  # fmt: skip
    result = {"n_nongarments": 210, "nongarments": "ng", "n_held_out": 5000, "n_photos": 300, "models": {"drnet": row}}
    report = format_ood_report(result)
    assert "93.0%" in report and "4.7%" in report and "30.0%" in report and "0.988" in report
    assert "text 67%" in report


@pytest.mark.skipif(not (ASSETS / "drnet" / ood.CALIBRATION).is_file(), reason="needs the shipped, calibrated models")
def test_inspect_page_says_when_an_upload_is_not_a_garment(tmp_path, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    from app import state

    models = tmp_path / "models"
    shutil.copytree(ASSETS, models)
    (models / "dense" / ood.CALIBRATION).write_text("{broken")
    monkeypatch.setenv("DRNETS_MODELS_DIR", str(models))
    _, smiley = render_nongarment("smiley", np.random.default_rng([0, 4]))
    at = AppTest.from_file(str(Path(__file__).parents[1] / "app" / "main.py"), default_timeout=300).run()
    sneaker = (Path(__file__).parents[1] / "assets" / "samples" / "sneaker_0.png").read_bytes()
    at.file_uploader(key=state.UPLOADS).set_value(
        [("smiley.png", smiley, "image/png"), ("sneaker.png", sneaker, "image/png")]
    ).run()
    assert not at.exception, [e.message for e in at.exception]
    summary = next(d.value for d in at.dataframe if "DRNet says" in d.value.columns).set_index("image")
    assert summary.at["smiley.png", "DRNet says"] == ood.UNKNOWN_ANSWER
    assert pd.isna(summary.at["smiley.png", "confidence"]), "no sureness beside I don't know"
    assert summary.at["sneaker.png", "DRNet says"] == "Sneaker" and summary.at["sneaker.png", "confidence"] > 0.5
    assert summary.at["smiley.png", "MobileNetV2 says"] == ood.UNKNOWN_ANSWER, "each model's own verdict"
    assert summary.at["sneaker.png", "MobileNetV2 says"] == "Sneaker"
    says = {m.label: m.value for m in at.metric if m.label.endswith(" says")}
    assert says["DRNet says"] == ood.UNKNOWN_ANSWER, says
    assert says["Dense supernet says"] != ood.UNKNOWN_ANSWER  # its calibration file is unusable: no verdict
    assert any("calibration not used" in w.value and "not valid JSON" in w.value for w in at.warning)
    captions = " ".join(str(c.value) for c in at.caption)
    assert "does not look like any of the 10 classes the model knows" in captions
    assert metric_value(at, "DRNet FLOPs")  # the details stay


def metric_value(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_features_of_another_width_are_a_clear_error() -> None:
    rng = np.random.default_rng(0)
    calibration = ood.Calibration(
        "drnet", "", 1.0, 1.0, *ood.fit_gaussian(rng.normal(size=(50, 4)), np.arange(50) % 2, 2)
    )
    with pytest.raises(ood.CalibrationError, match="expects 4 feature dimensions, the model gives 6"):
        calibration.ood_scores(rng.normal(size=(3, 6)))
