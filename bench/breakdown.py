"""Where a model's time goes: torch.profiler, grouped into kinds of work.

Groups: convolutions (which carry all the FLOPs), pools, batch norm, activations,
gather/scatter (sparse execution's own overhead), everything else (routers, gating,
concatenation, bookkeeping). Ops per call is a proxy for Python/dispatch overhead.
Inference forwards run the model the settings give: the fast path (``drnets.inference``) by
default, the plain model with ``--no-fast`` (where the batch norms show).
``--train`` profiles training steps as bench.train_throughput runs them (forward, loss,
backward, optimiser step) instead of inference forwards: on a GPU its table shows whether
convolutions spend their time building cuDNN plans (docs/BENCHMARKS.md).

    python -m bench.breakdown --model drnet --batches 1,64
    python -m bench.breakdown --train --batches 256
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from drnets.argtypes import positive_int, positive_ints
from drnets.data import ImageSet

from .common import (
    GATHER_SCATTER_OPS,
    MODELS,
    Loaded,
    Settings,
    add_settings_args,
    batch_chunks,
    eval_images,
    inference,
    load_model,
    machine,
    prepare,
    random_init_note,
    report,
    settings_from_args,
    synchronize,
    to_device,
)
from .train_throughput import trainer

TRAIN_STEPS = 3  # profiled training steps per batch size, after one warm-up step

GROUPS = {
    "convolution": (
        "aten::mkldnn_convolution",
        "aten::_slow_conv2d_forward",
        "aten::_nnpack_spatial_convolution",
        "aten::cudnn_convolution",
        "aten::_conv_depthwise2d",
        "aten::convolution_backward",
        # the fast path's ungrouped convolutions on a GPU (matrix products; addmm stays with the routers)
        "aten::mm",
        "aten::bmm",
        "aten::im2col",
    ),
    "pooling": (
        "aten::max_pool2d_with_indices",
        "aten::avg_pool2d",
        "aten::max_pool2d",
        "aten::maximum",
        "aten::max_pool2d_with_indices_backward",
        "aten::avg_pool2d_backward",
    ),
    "batch_norm": (
        "aten::native_batch_norm",
        "aten::_native_batch_norm_legit_no_training",
        "aten::native_batch_norm_backward",
    ),
    "activation": (
        "aten::clamp_min",
        "aten::clamp_min_",
        "aten::relu",
        "aten::relu_",
        "aten::hardtanh",
        "aten::hardtanh_",
        "aten::clamp",
        "aten::clamp_",
        "aten::threshold_backward",
    ),
    "gather_scatter": GATHER_SCATTER_OPS,
}


def run(
    settings: Settings,
    model_name: str = "drnet",
    batches: tuple[int, ...] = (1, 64),
    images_b1: int = 16,
    rows: int = 15,
    train: bool = False,
) -> dict[str, Any]:
    loaded = load_model(model_name)
    data, _ = eval_images(max(*batches, images_b1))
    cuda = settings.device.startswith("cuda")
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    forward = None if train else prepare(loaded.model, settings)
    results = []
    for batch in batches:
        calls = (
            _training_steps(loaded, settings, data, batch)
            if train
            else _forwards(forward, loaded, settings, data, batch, images_b1)
        )
        calls[0]()  # warm-up
        synchronize(settings)
        with profile(activities=activities) as prof:
            for call in calls:
                call()
            synchronize(settings)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        grouped = {g: sum(e.self_cpu_time_total for e in events if e.key in keys) for g, keys in GROUPS.items()}
        grouped["other"] = total - sum(grouped.values())
        results.append(
            {
                "batch": batch,
                "ms_per_call": total / len(calls) / 1e3,
                "ops_per_call": sum(e.count for e in events) / len(calls),
                "share_pct": {g: 100 * v / total for g, v in grouped.items()},
                "table": events.table(sort_by="self_cpu_time_total", row_limit=rows),
            }
        )
    return {
        "model": model_name,
        "source": loaded.source,
        "work": "training step" if train else "forward",
        "rows": results,
        "notes": [n for n in [random_init_note([loaded])] if n],
    }


def _forwards(
    model: nn.Module, loaded: Loaded, settings: Settings, data: ImageSet, batch: int, images_b1: int
) -> list[Callable[[], None]]:
    """Inference forwards: ``images_b1`` single images at batch 1, else one batch."""
    chunks = batch_chunks(data.images, batch, images_b1)

    def forward(x: torch.Tensor) -> None:
        with inference(settings):
            model(x)

    return [functools.partial(forward, to_device(c, loaded, settings)) for c in chunks]


def _training_steps(loaded: Loaded, settings: Settings, data: ImageSet, batch: int) -> list[Callable[[], None]]:
    step = trainer(loaded, settings, {})
    x = to_device(data.images[:batch], loaded, settings)
    labels = data.labels[:batch].to(settings.torch_device)
    return [functools.partial(step, x, labels)] * TRAIN_STEPS


def show(result: dict[str, Any]) -> None:
    for row in result["rows"]:
        shares = ", ".join(f"{g} {v:.0f}%" for g, v in row["share_pct"].items())
        print(
            f"\n-- {result['model']} batch {row['batch']}: {row['ms_per_call']:.2f} ms of op time per {result['work']} "
            f"(profiler self time), {row['ops_per_call']:.0f} aten ops per {result['work']}"
        )
        print(f"   {shares}")
        print(row["table"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__.split("\n\n")[0])
    add_settings_args(parser)
    parser.add_argument("--model", choices=MODELS, default="drnet")
    parser.add_argument("--batches", type=positive_ints, default=(1, 64), help="comma-separated batch sizes")
    parser.add_argument("--rows", type=positive_int, default=15, help="ops listed per table")
    parser.add_argument("--train", action="store_true", help="profile training steps instead of inference forwards")
    args = parser.parse_args(argv)
    if args.train and min(args.batches) < 2:
        parser.error("--train needs batches of at least 2 (batch norm in training mode)")
    settings = settings_from_args(args)
    info = machine(settings)
    result = run(settings, args.model, args.batches, rows=args.rows, train=args.train)
    report(args, info, result, f"profile: {args.model} {'training' if args.train else 'inference'}", show)


if __name__ == "__main__":
    main()
