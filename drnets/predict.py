"""``drnets predict``: classify image files with a checkpoint, preprocessed exactly as app uploads are.

With a ``calibration.json`` beside the checkpoint (``drnets calibrate``) every answer also says whether
the image looks like the training data (``in_distribution``, ``ood_score``) and gives the probability
after temperature scaling (``calibrated_probability``); without one they are None and the text says so.

Each file is read, checked and prepared on its own, so one unreadable file costs only its
own line. Exit status: 0 if at least one image was classified, 1 if none was (every file
failed), 2 for bad flags or an unusable checkpoint (argparse's and ``cli.main``'s code).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from .argtypes import open_unit_float, positive_int, unit_float
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .inference import for_inference
from .model import policy_with
from .ood import NOT_GARMENT, UNCALIBRATED, Calibration, judge, load_calibration, pooled_features
from .router import RoutingPolicy
from .upload import UploadError, check_size, prepare_upload

MAX_BYTES = 20_000_000  # same limit as the app's uploads


def preprocessing(checkpoint: Checkpoint) -> tuple[tuple[int, int, int], tuple[float, ...], tuple[float, ...]]:
    """(input_size, mean, std) from the checkpoint's training metadata."""
    training = checkpoint.training
    try:
        input_size = tuple(int(v) for v in training["input_size"])
        mean = tuple(float(v) for v in training["mean"])
        std = tuple(float(v) for v in training["std"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(
            f"{checkpoint.path}: config.json has no usable training metadata (input_size, mean, std), "
            "so images cannot be preprocessed the way the model was trained"
        ) from None
    if len(input_size) != 3 or input_size[0] != checkpoint.model.config.in_channels:
        raise CheckpointError(
            f"{checkpoint.path}: training input_size {list(input_size)} does not fit a model with "
            f"{checkpoint.model.config.in_channels} input channels"
        )
    return input_size, mean, std  # type: ignore[return-value]


def read_upload(path: Path, max_bytes: int = MAX_BYTES) -> bytes:
    """The file's bytes; a file over ``max_bytes`` is refused before it is read."""
    check_size(path.stat().st_size, max_bytes)
    with open(path, "rb") as fh:
        return fh.read(max_bytes + 1)


def predict_file(
    checkpoint: Checkpoint,
    path: Path,
    top_k: int = 3,
    policy: RoutingPolicy | None = None,
    model: torch.nn.Module | None = None,
    calibration: Calibration | None = None,
) -> dict[str, Any]:
    """One JSON-ready result: the prediction and its cost under ``policy``, or ``{file, error}``.

    ``model``: what runs the image (default: the checkpoint's plain model; the CLI passes its
    ``for_inference`` twin, built once for every file). ``calibration``: the checkpoint's
    (``drnets.ood.load_calibration``); None gives ``in_distribution`` and ``ood_score`` None."""
    input_size, mean, std = preprocessing(checkpoint)
    try:
        prepared = prepare_upload(read_upload(path), input_size, mean, std)
    except UploadError as err:
        return {"file": str(path), "error": str(err)}
    except OSError as err:  # missing file, a directory, no permission
        return {"file": str(path), "error": f"cannot read the file: {err.strerror or err}"}
    with torch.inference_mode():
        _, trace = (model or checkpoint.model)(prepared.tensor, policy)
    probs = trace.probs[0]
    top = probs.topk(min(top_k, len(probs)))
    names = checkpoint.class_names
    features = pooled_features(checkpoint.model, prepared.tensor, policy) if calibration is not None else None
    calibrated, scores, inside = judge(calibration, trace.logits.detach().cpu(), features)
    return {
        "file": str(path),
        "top1": names[int(top.indices[0])],
        "probability": float(top.values[0]),
        "calibrated_probability": float(calibrated[0, top.indices[0]]) if calibration is not None else None,
        "temperature": calibration.temperature if calibration is not None else None,
        "in_distribution": bool(inside[0]) if inside is not None else None,
        "ood_score": float(scores[0]) if scores is not None else None,
        "ood_threshold": calibration.threshold if calibration is not None else None,
        "flops": int(trace.flops[0]),
        "params": int(trace.params[0]),
        "dense_flops": int(trace.dense_flops),
        "dense_params": int(trace.dense_params),
        "topk": [
            {"class": names[int(i)], "probability": float(p)} for p, i in zip(top.values, top.indices, strict=True)
        ],
        "notes": prepared.notes,
    }


def cmd_predict(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint)
    policy = policy_with(checkpoint.model, args.threshold, budget=args.budget)
    calibration = load_calibration(checkpoint)
    fast = for_inference(checkpoint.model)
    results = [predict_file(checkpoint, Path(p), args.top_k, policy, fast, calibration) for p in args.images]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        if calibration is None:
            print(f"drnets predict: {checkpoint.path}: {UNCALIBRATED}", file=sys.stderr)
        for row in results:
            _print_result(row, len(checkpoint.class_names))
    return 0 if any("error" not in row for row in results) else 1


def _print_result(row: dict[str, Any], classes: int) -> None:
    if "error" in row:
        print(f"drnets predict: {row['file']}: error: {row['error']}", file=sys.stderr)
        return
    if row["in_distribution"] is False:
        print(f"{row['file']}: {NOT_GARMENT.format(n=classes)} (closest: {row['top1']})")
    elif row["calibrated_probability"] is not None:
        print(f"{row['file']}: {row['top1']} ({row['calibrated_probability']:.1%}, calibrated)")
    else:
        print(f"{row['file']}: {row['top1']} ({row['probability']:.1%})")
    ranked = ", ".join(f"{t['class']} {t['probability']:.1%}" for t in row["topk"])
    print(f"  top-{len(row['topk'])}: {ranked}")
    share = row["flops"] / row["dense_flops"]
    print(
        f"  FLOPs (2×MACs): {row['flops']:,} of {row['dense_flops']:,} dense ({share:.1%}); "
        f"params used: {row['params']:,} of {row['dense_params']:,}"
    )
    if row["ood_score"] is not None:
        verdict = "like the training data" if row["in_distribution"] else "unlike the training data"
        print(f"  out-of-distribution score: {row['ood_score']:.2f} (threshold {row['ood_threshold']:.2f}: {verdict})")
    if row["notes"]:
        print(f"  preprocessing: {'; '.join(row['notes'])}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``drnets predict`` on the main parser's subcommands."""
    p = sub.add_parser(
        "predict",
        help="classify image files with a checkpoint (top-k classes, per-image FLOPs)",
        description="Classify images with the preprocessing the app uses for uploads (a photo on a light "
        "background is inverted, cropped and centred into Fashion-MNIST form).",
        epilog="Exit status: 0 if at least one image was classified, 1 if every file failed, 2 for bad flags "
        "or an unusable checkpoint.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG, WebP, GIF, BMP or TIFF files")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--top-k", type=positive_int, default=3, help="how many classes to list (default 3)")
    p.add_argument("--threshold", type=unit_float, default=None, help="routing threshold t for a DRNet")
    p.add_argument("--budget", type=open_unit_float, default=None,
                   help="share of the routed branches' FLOPs to aim at, for a DRNet with budget-conditioned routers")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON list, one object per image")
    p.set_defaults(func=cmd_predict)
