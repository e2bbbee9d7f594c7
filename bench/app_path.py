"""The app's path at batch 1: upload bytes -> preprocessing -> prediction + trace + FLOPs,
and the four attribution methods.

The upload is a real Fashion-MNIST test image made into a phone photo (``drnets.photos``: a
garment on a fabric surface, 1200x900 JPEG), so decoding, GrabCut, straightening, cropping and
resizing all do real work. ``app_path_ms`` covers ``prepare_upload`` + the forward pass (the model
the settings give: the fast path by default) + reading the class probabilities and the
image's FLOPs; building the trace's tidy tables is reported on its own (``tables_ms``).
The attribution methods explain the plain model (they need autograd and its modules).

    python -m bench.app_path
"""

from __future__ import annotations

import argparse
import dataclasses
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from drnets.photos import render

from .common import (
    Loaded,
    Settings,
    add_settings_args,
    compare,
    eval_images,
    format_table,
    inference,
    load_model,
    machine,
    place,
    prepare,
    random_init_note,
    report,
    settings_from_args,
)

IG_STEPS = 32  # the Integrated Gradients budget: <= 2 s at 32 steps


def photo_bytes() -> bytes:
    """Fashion-MNIST test image 0 as a phone photo: a 1200x900 or 900x1200 JPEG of the garment on a
    fabric surface, with shadow and uneven light (``drnets.photos.render``), so GrabCut runs."""
    data, _ = eval_images(1)
    photo, labels = render(data.images[0, :, :, 0].numpy(), "fabric", np.random.default_rng(0))
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=labels["quality"])
    return buffer.getvalue()


def run(settings: Settings, loaded: Loaded | None = None, attribution_repeats: int | None = None) -> dict[str, Any]:
    """Time the upload path and each attribution method (skipped, with a note, if unavailable)."""
    loaded = loaded or load_model("drnet")
    model = prepare(loaded.model, settings)
    data = photo_bytes()
    notes = [n for n in (random_init_note([loaded]),) if n]
    result: dict[str, Any] = {"model": loaded.source, "upload_bytes": len(data), "notes": notes}
    try:
        from drnets.upload import prepare_upload
    except ImportError as err:
        notes.append(f"app path skipped: drnets.upload is not importable ({err})")
        return {**result, "app_path_ms": None, "tables_ms": None, "attribution": [], "ig32_s": None}

    input_size = tuple(loaded.training.get("input_size", (1, 28, 28)))

    def predict() -> tuple[torch.Tensor, Any]:
        prepared = prepare_upload(data, input_size, loaded.mean, loaded.std)
        x = prepared.tensor.to(settings.torch_device)
        if settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with inference(settings):
            _, trace = model(x)
            trace.probs.tolist(), trace.flops.tolist()  # what the app shows: class probabilities, FLOPs
        return x, trace

    x, trace = predict()

    def tables() -> tuple:
        return trace.samples_frame(loaded.class_names, ["upload"]), trace.branches_frame(["upload"])

    seconds = compare({"app_path": predict, "tables": tables}, settings)
    result.update(app_path_ms=1e3 * seconds["app_path"], tables_ms=1e3 * seconds["tables"])
    plain = place(loaded.model, settings)
    result.update(_attribution(plain, x.clone(), settings, loaded, attribution_repeats, notes))
    return result


def _attribution(
    model: torch.nn.Module, x: torch.Tensor, settings: Settings, loaded: Loaded, repeats: int | None, notes: list[str]
) -> dict[str, Any]:
    try:
        from drnets.attribution import METHODS, attribute
    except ImportError as err:
        notes.append(f"attribution skipped: drnets.attribution is not importable ({err})")
        return {"attribution": [], "ig32_s": None}
    # IG and Occlusion take seconds: fewer rounds than the forward benchmarks, same median rule.
    timing = dataclasses.replace(settings, warmup=min(settings.warmup, 1), repeats=repeats or min(settings.repeats, 3))
    baseline = -loaded.mean[0] / loaded.std[0]  # a black image in the normalised space
    calls: dict[str, Callable[[], Any]] = {
        method: (lambda m=method: attribute(model, x, m, baseline=baseline, ig_steps=IG_STEPS)) for method in METHODS
    }
    seconds = compare(calls, timing)
    rows = [
        {"method": m, "seconds": s, "ig_steps": IG_STEPS if m == "integrated_gradients" else None}
        for m, s in seconds.items()
    ]
    return {"attribution": rows, "ig32_s": seconds.get("integrated_gradients")}


def show(result: dict[str, Any]) -> None:
    if result["app_path_ms"] is None:
        return
    print(
        f"app path (upload {result['upload_bytes']} B JPEG -> prepare_upload -> forward -> probabilities + FLOPs): "
        f"{result['app_path_ms']:.1f} ms; trace tables: {result['tables_ms']:.1f} ms"
    )
    if result["attribution"]:
        print(format_table(result["attribution"], ["method", "seconds", "ig_steps"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.app_path", description=__doc__.split("\n\n")[0])
    add_settings_args(parser)
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    info = machine(settings)
    result = run(settings)
    report(args, info, result, "app path at batch 1", show)


if __name__ == "__main__":
    main()
