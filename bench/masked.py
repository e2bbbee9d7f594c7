"""Sparse execution vs the masked reference: what gathering and scattering samples costs.

The masked reference (``model(x, policy, execution="masked")``, the plain DRNet) runs every
branch on every sample and multiplies by gate x mask; sparse execution runs each branch only on
the samples that kept it, gathering them before and scatter-adding after. Both give the same
outputs. The sparse candidate is the model the other benchmarks time: the fast path
(``drnets.inference.for_inference``) by default, so the ratio also holds what the fast path
saves; ``--no-fast`` times the plain model's sparse execution, like against like. With
torch.profiler we measure the share of the sparse pass spent in the gather/scatter ops
themselves. A third candidate runs the sparse forward with every branch skipped (a forced empty
route): the work every image pays whatever its route (stem, cell preprocessing, routers,
classifier), which no routing can save.

    python -m bench.masked --batches 1,64
    python -m bench.masked --batches 1,64 --no-fast
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from drnets.argtypes import positive_int, positive_ints

from .common import (
    GATHER_SCATTER_OPS,
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
    place,
    prepare,
    random_init_note,
    ratio,
    report,
    settings_from_args,
    to_device,
)


def run(
    settings: Settings, batches: tuple[int, ...] = (1, 64), images_b1: int = 16, loaded: Loaded | None = None
) -> dict[str, Any]:
    loaded = loaded or load_model("drnet")
    plain = place(loaded.model, settings)  # only the plain model has the masked reference
    model = prepare(loaded.model, dataclasses.replace(settings, compile=False))  # eager, like the reference
    policy = loaded.model.default_policy
    data, data_note = eval_images(max(*batches, images_b1))
    rows = []
    for batch in batches:
        chunks = batch_chunks(data.images, batch, images_b1)
        inputs = [to_device(c, loaded, settings) for c in chunks]
        n_images = sum(len(c) for c in chunks)
        with inference(settings):
            traces = [model(x, policy)[1] for x in inputs]
            nothing = torch.zeros_like(traces[0].ran[:1])  # [1, L, E, K]: every branch skipped
            fixed_flops = float(model(inputs[0], policy, nothing)[1].flops[0])
            calls = {
                "sparse": _caller(model, inputs, policy),
                "masked": _caller(plain, inputs, policy, execution="masked"),
                "no_branches": _caller(model, inputs, policy, nothing),
            }
            seconds = compare(calls, settings)
            share = _gather_scatter_share(calls["sparse"])
        rows.append(_row(batch, n_images, seconds, traces, share, fixed_flops))
    notes = [n for n in (data_note, random_init_note([loaded])) if n]
    return {
        "rows": rows,
        "model": loaded.source,
        "sparse_path": "fast" if settings.fast else "plain",
        "gather_scatter_ops": list(GATHER_SCATTER_OPS),
        "notes": notes,
    }


def _caller(model: torch.nn.Module, inputs: list[torch.Tensor], *args: Any, **kwargs: Any) -> Callable[[], None]:
    """One timed call: ``model(x, *args, **kwargs)`` for every input."""

    def call() -> None:
        for x in inputs:
            model(x, *args, **kwargs)

    return call


def _gather_scatter_share(call) -> float:
    """Percent of the profiled (CPU-side) op time spent in gather/scatter ops."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    moved = sum(e.self_cpu_time_total for e in events if e.key in GATHER_SCATTER_OPS)
    return 100.0 * moved / total if total else 0.0


def _row(
    batch: int, n_images: int, seconds: dict[str, float], traces: list, share: float, fixed_flops: float
) -> dict[str, Any]:
    ran = torch.cat([t.ran for t in traces])  # [N, L, E, K]
    flops = float(torch.cat([t.flops for t in traces]).double().mean())
    if batch > 1:
        users = ran.sum(0)
        partial = float(((users > 0) & (users < batch)).double().mean())
    else:
        partial = 0.0
    speedup = ratio(seconds["masked"], seconds["sparse"])
    flops_ratio = ratio(traces[0].dense_flops, flops)
    return {
        "batch": batch,
        "sparse_ms_per_image": 1e3 * seconds["sparse"] / n_images,
        "masked_ms_per_image": 1e3 * seconds["masked"] / n_images,
        "masked_over_sparse": speedup,
        "flops_ratio": flops_ratio,
        "efficiency": ratio(speedup, flops_ratio) if speedup and flops_ratio else None,
        "branches_ran_pct": 100 * float(ran.double().mean()),
        "partial_branches_pct": 100 * partial,
        "gather_scatter_pct_of_sparse": share,
        "every_image_pct_of_sparse_time": 100 * seconds["no_branches"] / seconds["sparse"],
        "every_image_pct_of_flops": 100 * fixed_flops / flops,
    }


def show(result: dict[str, Any]) -> None:
    keys = [
        "batch",
        "sparse_ms_per_image",
        "masked_ms_per_image",
        "masked_over_sparse",
        "flops_ratio",
        "efficiency",
        "branches_ran_pct",
        "partial_branches_pct",
        "gather_scatter_pct_of_sparse",
        "every_image_pct_of_sparse_time",
        "every_image_pct_of_flops",
    ]
    print(format_table(result["rows"], keys))
    path = "fast path (drnets.inference)" if result["sparse_path"] == "fast" else "plain model"
    print(
        f"\nsparse: the {path}; masked: the plain model. "
        "masked_over_sparse = masked time / sparse time; flops_ratio = all-branches FLOPs / routed FLOPs; "
        "partial_branches_pct = (cell, edge, branch) slots run on part of the batch (these need gather/scatter); "
        f"gather/scatter ops: {', '.join(result['gather_scatter_ops'])} (CPU-side profiler time); "
        "every_image_* = the same forward with every branch skipped (stem, preprocessing, routers, classifier), "
        "as a share of the sparse pass's time and of its FLOPs"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.masked", description=__doc__.split("\n\n")[0])
    add_settings_args(parser)
    parser.add_argument("--batches", type=positive_ints, default=(1, 64), help="comma-separated batch sizes")
    parser.add_argument("--images-b1", type=positive_int, default=16, help="images timed one by one at batch 1")
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    info = machine(settings)
    result = run(settings, args.batches, args.images_b1)
    report(args, info, result, "masked reference vs sparse execution (DRNet)", show)


if __name__ == "__main__":
    main()
