"""Where a model's inference time goes: torch.profiler, grouped into kinds of work.

Groups: convolutions (which carry all the FLOPs), pools, batch norm, activations,
gather/scatter (sparse execution's own overhead), everything else (routers, gating,
concatenation, bookkeeping). Ops per forward is a proxy for Python/dispatch overhead.

    python -m bench.breakdown --model drnet --batches 1,64
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from torch.profiler import ProfilerActivity, profile

from drnets.argtypes import positive_int, positive_ints

from .common import (
    GATHER_SCATTER_OPS,
    MODELS,
    Settings,
    add_settings_args,
    eval_images,
    inference,
    load_model,
    machine,
    prepare,
    print_header,
    random_init_note,
    settings_from_args,
    to_device,
)

GROUPS = {
    "convolution": ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward", "aten::_nnpack_spatial_convolution"),
    "pooling": ("aten::max_pool2d_with_indices", "aten::avg_pool2d", "aten::max_pool2d", "aten::maximum"),
    "batch_norm": ("aten::native_batch_norm", "aten::_native_batch_norm_legit_no_training"),
    "activation": ("aten::clamp_min", "aten::relu", "aten::hardtanh", "aten::clamp"),
    "gather_scatter": GATHER_SCATTER_OPS,
}


def run(
    settings: Settings,
    model_name: str = "drnet",
    batches: tuple[int, ...] = (1, 64),
    images_b1: int = 16,
    rows: int = 15,
) -> dict[str, Any]:
    loaded = load_model(model_name)
    model = prepare(loaded.model, settings)
    data, _ = eval_images(max(*batches, images_b1))
    results = []
    for batch in batches:
        chunks = [data.images[i : i + 1] for i in range(images_b1)] if batch == 1 else [data.images[:batch]]
        inputs = [to_device(c, loaded, settings) for c in chunks]
        with inference(settings):
            for x in inputs:  # warm-up
                model(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for x in inputs:
                    model(x)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        grouped = {g: sum(e.self_cpu_time_total for e in events if e.key in keys) for g, keys in GROUPS.items()}
        grouped["other"] = total - sum(grouped.values())
        results.append(
            {
                "batch": batch,
                "ms_per_forward": total / len(inputs) / 1e3,
                "ops_per_forward": sum(e.count for e in events) / len(inputs),
                "share_pct": {g: 100 * v / total for g, v in grouped.items()},
                "table": events.table(sort_by="self_cpu_time_total", row_limit=rows),
            }
        )
    return {
        "model": model_name,
        "source": loaded.source,
        "rows": results,
        "notes": [n for n in [random_init_note([loaded])] if n],
    }


def show(result: dict[str, Any]) -> None:
    for row in result["rows"]:
        shares = ", ".join(f"{g} {v:.0f}%" for g, v in row["share_pct"].items())
        print(
            f"\n-- {result['model']} batch {row['batch']}: {row['ms_per_forward']:.2f} ms of op time per forward "
            f"(profiler self time), {row['ops_per_forward']:.0f} aten ops per forward"
        )
        print(f"   {shares}")
        print(row["table"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__.split("\n\n")[0])
    add_settings_args(parser)
    parser.add_argument("--model", choices=MODELS, default="drnet")
    parser.add_argument("--batches", type=positive_ints, default=(1, 64), help="comma-separated batch sizes")
    parser.add_argument("--rows", type=positive_int, default=15, help="ops listed per table")
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    info = machine(settings)
    result = run(settings, args.model, args.batches, rows=args.rows)
    if args.json:
        print(json.dumps({"machine": info, **result}, indent=2))
        return
    print_header(f"profile: {args.model} inference", info, result["notes"])
    show(result)


if __name__ == "__main__":
    main()
