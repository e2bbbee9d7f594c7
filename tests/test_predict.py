"""``drnets predict``: per-file results and errors, JSON output, flags and checkpoint problems."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from drnets.checkpoint import save_checkpoint
from drnets.cli import main
from drnets.data import FASHION_MNIST_CLASSES, load_dataset
from drnets.upload import prepare_upload

TRAINING = {"dataset": "fashion-mnist", "mean": [0.2860], "std": [0.3530], "input_size": [1, 28, 28]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model) -> Path:
    """A tiny DRNet (random weights, routers spread so images take different routes)."""
    return save_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "drnet", tiny_model("drnet"), "drnet", FASHION_MNIST_CLASSES, TRAINING
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """A real Fashion-MNIST test image, a garment photo, a truncated PNG, a text file named .png,
    and a path that does not exist."""
    root = tmp_path_factory.mktemp("images")
    good = root / "ankle_boot.png"
    Image.fromarray(load_dataset("fashion-mnist", "test").images[0, ..., 0].numpy()).save(good)
    photo = Image.new("RGB", (320, 240), (235, 233, 230))
    ImageDraw.Draw(photo).rectangle((120, 20, 200, 220), fill=(30, 30, 60))
    photo.save(root / "photo.jpg", quality=90)
    broken = root / "broken.png"
    broken.write_bytes(good.read_bytes()[:150])
    (root / "notes.png").write_text("not a picture\n")
    return {"good": good, "photo": root / "photo.jpg", "broken": broken, "text": root / "notes.png",
            "missing": root / "missing.png"}  # fmt: skip


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "drnets", *args], check=False, capture_output=True, text=True, env=env, timeout=300
    )


def test_json_lists_every_file_with_a_prediction_or_an_error(checkpoint, images, tiny_model) -> None:
    order = ["good", "broken", "photo", "missing", "text"]
    result = run_cli(
        "predict", "--checkpoint", str(checkpoint), *(str(images[k]) for k in order), "--json", "--top-k", "4"
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = json.loads(result.stdout)
    assert [row["file"] for row in rows] == [str(images[k]) for k in order]
    good, broken, photo, missing, text = rows
    for row in (good, photo):
        assert set(row) >= {"file", "top1", "probability", "flops", "params", "topk"}
        assert set(row) >= {"in_distribution", "ood_score", "calibrated_probability"}
        assert row["in_distribution"] is None and row["ood_score"] is None  # no calibration.json: no verdict
        probs = [t["probability"] for t in row["topk"]]
        assert len(probs) == 4 and probs == sorted(probs, reverse=True)
        assert row["top1"] == row["topk"][0]["class"] and row["probability"] == probs[0]
        assert all(t["class"] in FASHION_MNIST_CLASSES for t in row["topk"])
        assert 0 < row["flops"] <= row["dense_flops"] and 0 < row["params"] <= row["dense_params"]
    assert "inverted the light background" in " ".join(photo["notes"])
    assert "truncated or corrupt" in broken["error"]
    assert "No such file or directory" in missing["error"]
    assert text["error"].startswith("not an image we can read: it looks like a text file")
    # The CLI's answer is the model's answer on the app's preprocessing of the same bytes.
    model = tiny_model("drnet")
    with torch.inference_mode():
        _, trace = model(prepare_upload(images["good"].read_bytes()).tensor)
    assert good["top1"] == FASHION_MNIST_CLASSES[int(trace.preds[0])]
    assert good["probability"] == pytest.approx(float(trace.probs[0].max()), rel=1e-5)
    assert good["flops"] == int(trace.flops[0])


def test_text_output_names_the_flops_convention_and_reports_errors_on_stderr(checkpoint, images, capsys) -> None:
    assert main(["predict", "--checkpoint", str(checkpoint), str(images["good"]), str(images["missing"])]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{images['good']}: ")
    assert "FLOPs (2×MACs):" in out and "params used:" in out and "top-3:" in out
    assert f"drnets predict: {images['missing']}: error: cannot read the file: No such file or directory" in err


def test_exit_status_is_1_when_no_image_could_be_classified(checkpoint, images, capsys) -> None:
    assert main(["predict", "--checkpoint", str(checkpoint), str(images["broken"]), str(images["text"])]) == 1
    assert capsys.readouterr().err.count("error:") == 2


def test_oversized_file_is_refused_without_reading_it(checkpoint, tmp_path, capsys) -> None:
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as fh:
        fh.truncate(25_000_000)  # sparse: 25 MB by size, nothing on disk
    assert main(["predict", "--checkpoint", str(checkpoint), str(huge), "--json"]) == 1
    (row,) = json.loads(capsys.readouterr().out)
    assert row["error"] == "the file is 25.0 MB; the limit is 20 MB"


def test_threshold_changes_the_route_and_its_cost(checkpoint, images, capsys) -> None:
    flops = {}
    for threshold in ("0", "0.2"):
        main(["predict", "--checkpoint", str(checkpoint), str(images["good"]), "--json", "--threshold", threshold])
        (row,) = json.loads(capsys.readouterr().out)
        flops[threshold] = row["flops"]
        dense = row["dense_flops"]
    assert flops["0"] == dense  # threshold 0 runs every branch
    assert flops["0.2"] < dense


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--top-k", "0"], "argument --top-k: must be >= 1, got 0"),
        (["--threshold", "1.5"], "argument --threshold: must lie in [0, 1], got 1.5"),
        (["--top-k", "many"], "argument --top-k: invalid positive_int value: 'many'"),
        ([], "the following arguments are required: IMAGE"),
    ],
)
def test_bad_flags_are_argparse_errors(checkpoint, images, capsys, flags, message) -> None:
    files = [str(images["good"])] if flags else []
    with pytest.raises(SystemExit) as info:
        main(["predict", "--checkpoint", str(checkpoint), *files, *flags])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_is_a_clean_error(tmp_path, images, capsys) -> None:
    assert main(["predict", "--checkpoint", str(tmp_path / "nowhere"), str(images["good"])]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"drnets predict: error: checkpoint folder {tmp_path / 'nowhere'} does not exist"


@pytest.mark.parametrize(
    "training, message",
    [
        ({}, "no usable training metadata (input_size, mean, std)"),
        (
            {**TRAINING, "input_size": [3, 32, 32]},
            "training input_size [3, 32, 32] does not fit a model with 1 input channels",
        ),
    ],
)
def test_checkpoint_without_usable_preprocessing_is_refused(
    tmp_path, images, tiny_model, capsys, training, message
) -> None:
    folder = save_checkpoint(tmp_path / "ck", tiny_model("drnet"), "drnet", FASHION_MNIST_CLASSES, training)
    assert main(["predict", "--checkpoint", str(folder), str(images["good"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("drnets predict: error: ") and message in err


def test_threshold_on_a_static_model_is_refused(tmp_path, images, tiny_model, capsys) -> None:
    folder = save_checkpoint(tmp_path / "mb", tiny_model("mobilenetv2"), "mobilenetv2", FASHION_MNIST_CLASSES, TRAINING)
    assert main(["predict", "--checkpoint", str(folder), str(images["good"]), "--threshold", "0.3"]) == 2
    assert "--threshold applies to DRNets only; this is a static MobileNetV2" in capsys.readouterr().err


def test_rgb_checkpoint_gets_rgb_input(tmp_path, images, tiny_model, capsys) -> None:
    training = {"dataset": "cifar10", "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26], "input_size": [3, 32, 32]}
    folder = save_checkpoint(
        tmp_path / "rgb", tiny_model("drnet", in_channels=3), "drnet", [f"c{i}" for i in range(10)], training
    )
    assert main(["predict", "--checkpoint", str(folder), str(images["photo"]), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["notes"] == ["centre-cropped and resized to 32x32"] and row["top1"].startswith("c")
