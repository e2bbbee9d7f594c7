"""DRNet (sparse execution) vs its dense supernet vs MobileNetV2: latency and throughput.

Batch 1 runs a fixed list of test images one at a time (routes differ per image, so one
image would not be representative); larger batches run one batch of test images. Each
batch size is one round-robin ``compare``, and the FLOPs come from the traces of the same
inputs, so every ratio printed is measured in this process on these inputs.

    python -m bench.latency --batches 1,64,256
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from drnets.argtypes import positive_int, positive_ints

from .common import (
    DEFINITIONS,
    MODELS,
    Loaded,
    Settings,
    add_settings_args,
    batch_chunks,
    compare,
    eval_images,
    format_table,
    inference,
    load_model,
    machine,
    page_faults,
    prepare,
    random_init_note,
    ratio,
    report,
    settings_from_args,
    to_device,
)

PAPER = {  # Cai et al., ISBNet/DRNet on CIFAR-10 (ICLR 2020 version): share of MobileNetV2's cost
    "params_pct_of_mobilenetv2": 8.70,
    "flops_pct_of_mobilenetv2": 31.01,
}


def run(
    settings: Settings,
    batches: tuple[int, ...] = (1, 64, 256),
    images_b1: int = 16,
    models: dict[str, Loaded] | None = None,
) -> dict[str, Any]:
    """Time the three models at each batch size; returns rows plus the paper comparison."""
    models = models or {name: load_model(name) for name in MODELS}
    ready = {name: prepare(m.model, settings) for name, m in models.items()}
    data, data_note = eval_images(max(*batches, images_b1))
    rows = []
    for batch in batches:
        chunks = batch_chunks(data.images, batch, images_b1)
        inputs = {name: [to_device(c, models[name], settings) for c in chunks] for name in models}
        n_images = sum(len(c) for c in chunks)
        with inference(settings):
            traces = {name: [ready[name](x)[1] for x in inputs[name]] for name in models}
            calls = {name: _caller(ready[name], inputs[name]) for name in models}
            seconds = compare(calls, settings)
            faults = {name: page_faults(call) for name, call in calls.items()}
        rows.append({**_row(batch, n_images, seconds, traces), "page_faults_per_call": faults})
    notes = [n for n in (data_note, random_init_note(list(models.values()))) if n]
    return {
        "rows": rows,
        "paper": PAPER,
        "ours_vs_mobilenetv2": _paper_comparison(models, rows[-1]),
        "models": {name: m.source for name, m in models.items()},
        "definitions": DEFINITIONS,
        "notes": notes,
    }


def _caller(model: torch.nn.Module, inputs: list[torch.Tensor]):
    def call() -> None:
        for x in inputs:
            model(x)

    return call


def _row(batch: int, n_images: int, seconds: dict[str, float], traces: dict[str, list]) -> dict[str, Any]:
    flops = {name: float(torch.cat([t.flops for t in ts]).double().mean()) for name, ts in traces.items()}
    params = {name: float(torch.cat([t.params for t in ts]).double().mean()) for name, ts in traces.items()}
    speedup = ratio(seconds["dense"], seconds["drnet"])
    flops_ratio = ratio(flops["dense"], flops["drnet"])
    return {
        "batch": batch,
        "images": n_images,
        "ms_per_image": {name: 1e3 * s / n_images for name, s in seconds.items()},
        "images_per_s": {name: n_images / s for name, s in seconds.items()},
        "flops_mean": flops,
        "params_used_mean": params,
        "realized_speedup": speedup,
        "flops_ratio": flops_ratio,
        "efficiency": ratio(speedup, flops_ratio) if speedup and flops_ratio else None,
        "drnet_vs_mobilenetv2": ratio(seconds["mobilenetv2"], seconds["drnet"]),
        "mobilenetv2_flops_ratio": ratio(flops["mobilenetv2"], flops["drnet"]),
    }


def _paper_comparison(models: dict[str, Loaded], row: dict[str, Any]) -> dict[str, float]:
    """Our DRNet as a share of our MobileNetV2, in the paper's terms (percent)."""
    mobilenet_params = sum(p.numel() for p in models["mobilenetv2"].model.parameters())
    drnet_params = sum(p.numel() for p in models["drnet"].model.parameters())
    return {
        "params_pct_of_mobilenetv2": 100 * drnet_params / mobilenet_params,
        "params_used_pct_of_mobilenetv2": 100 * row["params_used_mean"]["drnet"] / mobilenet_params,
        "flops_pct_of_mobilenetv2": 100 * row["flops_mean"]["drnet"] / row["flops_mean"]["mobilenetv2"],
        "measured_on_batch": row["batch"],
    }


def show(result: dict[str, Any]) -> None:
    table = []
    for row in result["rows"]:
        for name in MODELS:
            table.append(
                {
                    "batch": row["batch"],
                    "model": name,
                    "ms/image": row["ms_per_image"][name],
                    "images/s": row["images_per_s"][name],
                    "MFLOPs (2xMACs)": row["flops_mean"][name] / 1e6,
                    "page faults/call": row["page_faults_per_call"][name],
                }
            )
    print(format_table(table, ["batch", "model", "ms/image", "images/s", "MFLOPs (2xMACs)", "page faults/call"]))
    print()
    keys = ["batch", "realized_speedup", "flops_ratio", "efficiency", "drnet_vs_mobilenetv2", "mobilenetv2_flops_ratio"]
    print(format_table(result["rows"], keys))
    ours = result["ours_vs_mobilenetv2"]
    print(
        f"\nDRNet as a share of MobileNetV2: params {ours['params_pct_of_mobilenetv2']:.2f}% "
        f"(used per image {ours['params_used_pct_of_mobilenetv2']:.2f}%), FLOPs {ours['flops_pct_of_mobilenetv2']:.2f}%"
        f"  | paper (CIFAR-10): params {PAPER['params_pct_of_mobilenetv2']}%, FLOPs {PAPER['flops_pct_of_mobilenetv2']}%"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    add_settings_args(parser)
    parser.add_argument("--batches", type=positive_ints, default=(1, 64, 256), help="comma-separated batch sizes")
    parser.add_argument("--images-b1", type=positive_int, default=16, help="images timed one by one at batch 1")
    parser.add_argument("--drnet", type=Path, default=None, help="time this DRNet checkpoint folder instead")
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    info = machine(settings)  # before the run: the load average must not count our own work
    models = {name: load_model(name, args.drnet if name == "drnet" else None) for name in MODELS}
    result = run(settings, args.batches, args.images_b1, models)
    report(args, info, result, "latency: DRNet vs dense supernet vs MobileNetV2", show)


if __name__ == "__main__":
    main()
