"""Threshold sweep: accuracy vs mean FLOPs vs wall-clock on the Fashion-MNIST test set.

For each routing threshold t the DRNet classifies the test set (or its first ``--limit``
images) in batches; accuracy and FLOPs come from the traces, wall-clock from timed passes
(medians of ``--repeats`` round-robin rounds). The dense supernet and MobileNetV2 run the
same images in the same rounds as reference points.

    python -m bench.sweep                # full test set, 10,000 images
    python -m bench.sweep --limit 1000   # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from drnets.argtypes import positive_int, unit_floats
from drnets.router import RoutingPolicy

from .common import (
    MODELS,
    Loaded,
    Settings,
    add_settings_args,
    compare,
    eval_images,
    format_table,
    inference,
    load_model,
    machine,
    prepare,
    random_init_note,
    ratio,
    report,
    settings_from_args,
    to_device,
)

THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)  # as in drnets.evaluate's sweep


def run(
    settings: Settings,
    thresholds: tuple[float, ...] = THRESHOLDS,
    limit: int | None = None,
    batch_size: int = 256,
    models: dict[str, Loaded] | None = None,
) -> dict[str, Any]:
    models = models or {name: load_model(name) for name in MODELS}
    data, data_note = eval_images(limit)
    labels = data.labels.to(settings.torch_device)
    ready = {name: prepare(m.model, settings) for name, m in models.items()}
    batches = {
        name: [to_device(data.images[i : i + batch_size], m, settings) for i in range(0, len(data), batch_size)]
        for name, m in models.items()
    }
    traces: dict[str, list] = {}
    calls: dict[str, Callable[[], None]] = {}
    top_k = models["drnet"].model.default_policy.top_k
    for t in thresholds:
        key = f"drnet@{t:g}"
        calls[key] = _pass(ready["drnet"], batches["drnet"], traces, key, RoutingPolicy(t, top_k))
    for name in ("dense", "mobilenetv2"):
        calls[name] = _pass(ready[name], batches[name], traces, name)
    # Passes over the data are long: no warm-up beyond one, and the rounds the settings ask for.
    with inference(settings):
        seconds = compare(calls, dataclasses.replace(settings, warmup=min(settings.warmup, 1)))
    rows = []
    for key, secs in seconds.items():
        preds = torch.cat([t.preds for t in traces[key]])
        flops = torch.cat([t.flops for t in traces[key]]).double()
        rows.append(
            {
                "model": key.split("@")[0],
                "threshold": float(key.split("@")[1]) if "@" in key else None,
                "accuracy": float((preds == labels).double().mean()),
                "flops_mean": float(flops.mean()),
                "params_used_mean": float(torch.cat([t.params for t in traces[key]]).double().mean()),
                "ms_per_image": 1e3 * secs / len(data),
                "images_per_s": len(data) / secs,
            }
        )
    dense = next(r for r in rows if r["model"] == "dense")
    for row in rows:
        row["flops_ratio"] = ratio(dense["flops_mean"], row["flops_mean"])
        row["realized_speedup"] = ratio(dense["ms_per_image"], row["ms_per_image"])
    notes = [n for n in (data_note, random_init_note(list(models.values()))) if n]
    return {
        "images": len(data),
        "batch_size": batch_size,
        "rows": rows,
        "models": {n: m.source for n, m in models.items()},
        "notes": notes,
    }


def _pass(
    model: torch.nn.Module,
    batches: list[torch.Tensor],
    traces: dict[str, list],
    key: str,
    policy: RoutingPolicy | None = None,
) -> Callable[[], None]:
    """One pass over the data under ``policy`` (None: the model's default), keeping the traces of the
    latest pass under ``key``."""

    def call() -> None:
        traces[key] = [model(x, policy)[1] for x in batches]

    return call


def show(result: dict[str, Any]) -> None:
    table = [
        {
            **row,
            "MFLOPs (2xMACs)": row["flops_mean"] / 1e6,
            "threshold": "-" if row["threshold"] is None else row["threshold"],
        }
        for row in result["rows"]
    ]
    columns = ["model", "threshold", "accuracy", "MFLOPs (2xMACs)", "ms_per_image", "flops_ratio", "realized_speedup"]
    print(format_table(table, columns))
    print(f"\n{result['images']} test images, batch {result['batch_size']}; ratios are against the dense supernet")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split("\n\n")[0])
    add_settings_args(parser)
    parser.add_argument("--limit", type=positive_int, default=None, help="first N test images (default: all 10,000)")
    parser.add_argument(
        "--thresholds", type=unit_floats, default=tuple(THRESHOLDS), help="comma-separated, each in [0, 1]"
    )
    parser.add_argument("--batch-size", type=positive_int, default=256)
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    if args.repeats is None:
        settings = dataclasses.replace(settings, repeats=1)  # a full pass is long; one round unless asked
    info = machine(settings)
    result = run(settings, args.thresholds, args.limit, args.batch_size)
    report(args, info, result, "threshold sweep on the Fashion-MNIST test set", show)


if __name__ == "__main__":
    main()
