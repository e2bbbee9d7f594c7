"""Where a forward's wall-clock goes, part by part, in the DRNet and the dense supernet.

Parts: the stem, the cells' preprocessing, the router MLPs and the head (work every image pays,
the same modules in both models), each kind of branch, and the rest (gating and summing the
branches, concatenation, the ReLU of each state, routing decisions, gather/scatter). Each part's
calls are wrapped in timers on a private copy of the model the settings give (the fast path,
``drnets.inference.for_inference``, by default; ``--no-fast``: the plain model). The last column
answers the question a kernel change raises for the efficiency figure (realized speedup / FLOPs
ratio): if one part ran twice as fast in both models, where would efficiency go? A part raises it
only when it is a larger share of the DRNet's time than of the dense supernet's: the every-image
parts, and avg pools for the shipped DRNet; speeding a kind of branch the dense supernet runs far
more often lowers it, however much time it saves both (docs/BENCHMARKS.md). The timers add a few
microseconds per call, more to the dense supernet (7x the branch calls): read the shares, and take
efficiency from bench.latency.

    python -m bench.parts --batches 1,64
    python -m bench.parts --drnet runs/NAME/model   # your own DRNet against the shipped dense supernet
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drnets.argtypes import positive_ints
from drnets.inference import FastDRNet
from drnets.model import DRNet
from drnets.router import Router

from .common import (
    Settings,
    add_settings_args,
    batch_chunks,
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
    synchronize,
    to_device,
)

MODELS = ("drnet", "dense")
REST = "rest"


def timed_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """(part, module, method): the calls ``module.method(...)`` that together run every timed part of a
    forward of ``model`` (a DRNet or its fast twin) exactly once, none nested.

    Branches are named by kind, with "/s2" where they stride. The fast twin rectifies each state once
    before the cells read it, so its preprocessing is timed through ``rectified``.
    """
    fast = isinstance(model, FastDRNet)
    plain: DRNet = model.plain if fast else model
    stacked = model.routers if fast else None
    yield "stem", model.stem, "forward"
    if stacked is not None:  # every cell's router in one call
        yield "router MLPs", stacked, "forward"
    for cell, plain_cell in zip(model.cells, plain.cells, strict=True):
        for pre in (cell.preprocess0, cell.preprocess1):
            yield "preprocessing", pre, "rectified" if fast else "forward"
        if stacked is None and isinstance(plain_cell.router, Router):
            yield from (("router MLPs", m, "forward") for m in (plain_cell.router.fc1, plain_cell.router.fc2))
        for (src, _), candidates in zip(plain_cell.edges, cell.branches, strict=True):
            suffix = "/s2" if plain_cell.edge_stride(src) == 2 else ""
            for name, branch in zip(plain_cell.branch_names, candidates, strict=True):
                yield name + suffix, branch, "forward"
    yield from (("head", m, "forward") for m in (plain.global_pool, plain.classifier))


@contextlib.contextmanager
def timed_parts(model: nn.Module, settings: Settings, seconds: dict[str, float]) -> Iterator[None]:
    """Adds each timed call's wall-clock to ``seconds[part]`` while open (an instance attribute shadows
    the method; ``nn.Module.__call__`` finds a shadowed ``forward`` too)."""
    wrapped = []

    def timer(part: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            synchronize(settings)
            start = time.perf_counter()
            out = method(*args, **kwargs)
            synchronize(settings)
            seconds[part] += time.perf_counter() - start
            return out

        return timed

    for part, module, method in timed_modules(model):
        module.__dict__[method] = timer(part, getattr(module, method))
        wrapped.append((module, method))
    try:
        yield
    finally:
        for module, method in wrapped:
            del module.__dict__[method]


def run(
    settings: Settings, batches: tuple[int, ...] = (1, 64), images_b1: int = 16, drnet: Path | None = None
) -> dict[str, Any]:
    """``drnet``: a DRNet checkpoint folder to split instead of the shipped one."""
    settings = dataclasses.replace(settings, compile=False)  # the timers wrap eager modules
    loaded = {name: load_model(name, drnet if name == "drnet" else None) for name in MODELS}
    models = {name: prepare(loaded[name].model, settings) for name in MODELS}
    data, data_note = eval_images(max(*batches, images_b1))
    rows = []
    for batch in batches:
        chunks = batch_chunks(data.images, batch, images_b1)
        inputs = {name: [to_device(c, loaded[name], settings) for c in chunks] for name in MODELS}
        with inference(settings):
            traces = [models["drnet"](x)[1] for x in inputs["drnet"]]
            rounds = _timed_rounds(models, inputs, settings)
        flops = float(torch.cat([t.flops for t in traces]).double().mean())
        rows.append(_summary(batch, len(chunks) * chunks[0].shape[0], rounds, ratio(traces[0].dense_flops, flops)))
    notes = [n for n in (data_note, random_init_note(list(loaded.values()))) if n]
    return {"rows": rows, "models": {n: loaded[n].source for n in MODELS}, "notes": notes}


def _timed_rounds(
    models: dict[str, nn.Module], inputs: dict[str, list[torch.Tensor]], settings: Settings
) -> dict[str, list[dict[str, float]]]:
    """Per model, per timed round: seconds per part, plus "total" for the whole forward. Round-robin,
    like ``bench.common.compare``, so load changes hit both models alike."""

    def forward(name: str) -> Callable[[], None]:
        def call() -> None:
            for x in inputs[name]:
                models[name](x)

        return call

    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    for name in models:
        for _ in range(settings.warmup):
            forward(name)()
    for _ in range(max(1, settings.repeats)):
        for name, model in models.items():
            seconds: dict[str, float] = defaultdict(float)
            with timed_parts(model, settings, seconds):
                start = time.perf_counter()
                forward(name)()
                synchronize(settings)
                seconds["total"] = time.perf_counter() - start
            rounds[name].append(dict(seconds))
    return rounds


def _summary(
    batch: int, n_images: int, rounds: dict[str, list[dict[str, float]]], flops_ratio: float | None
) -> dict[str, Any]:
    """Efficiency at this batch, and one row per part: median ms per image in each model, shares, and
    efficiency if that part ran 2x faster."""

    def median_ms(name: str, key: str) -> float:
        return 1e3 * statistics.median(r.get(key, 0.0) for r in rounds[name]) / n_images

    total = {name: median_ms(name, "total") for name in MODELS}
    parts = sorted({k for name in MODELS for r in rounds[name] for k in r} - {"total"})
    per_part = {k: {name: median_ms(name, k) for name in MODELS} for k in parts}
    rest = {name: total[name] - sum(per_part[k][name] for k in parts) for name in MODELS}

    def efficiency(saved: dict[str, float]) -> float | None:
        """(dense / DRNet time) / FLOPs ratio, with ``saved`` ms per image taken off each model."""
        speedup = ratio(total["dense"] - saved["dense"], total["drnet"] - saved["drnet"])
        return ratio(speedup, flops_ratio) if speedup and flops_ratio else None

    measured = efficiency({name: 0.0 for name in MODELS})
    part_rows = []
    for part, ms in [*per_part.items(), (REST, rest)]:
        # The rest is a different mix in each model (the dense supernet gates 7x the branches): no one factor.
        faster = efficiency({name: ms[name] / 2 for name in MODELS}) if part != REST else None
        part_rows.append(
            {
                "part": part,
                "drnet_ms_per_image": ms["drnet"],
                "drnet_pct": 100 * ms["drnet"] / total["drnet"],
                "dense_ms_per_image": ms["dense"],
                "dense_pct": 100 * ms["dense"] / total["dense"],
                "efficiency_if_2x_faster": faster,
            }
        )
    return {
        "batch": batch,
        "drnet_ms_per_image": total["drnet"],
        "dense_ms_per_image": total["dense"],
        "flops_ratio": flops_ratio,
        "efficiency": measured,
        "parts": sorted(part_rows, key=lambda r: -r["drnet_ms_per_image"]),
    }


def show(result: dict[str, Any]) -> None:
    columns = [
        "part",
        "drnet_ms_per_image",
        "drnet_pct",
        "dense_ms_per_image",
        "dense_pct",
        "efficiency_if_2x_faster",
    ]
    for row in result["rows"]:
        print()
        print(format_table([row], ["batch", "drnet_ms_per_image", "dense_ms_per_image", "flops_ratio", "efficiency"]))
        print(format_table(row["parts"], columns))
    print(
        "\nrest: gating and summing, concatenation, state ReLUs, routing decisions, gather/scatter. "
        "efficiency_if_2x_faster: (dense time / DRNet time) / FLOPs ratio with that part at half its time in both"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.parts", description=__doc__.split("\n\n")[0])
    add_settings_args(parser)
    parser.add_argument("--batches", type=positive_ints, default=(1, 64), help="comma-separated batch sizes")
    parser.add_argument("--drnet", type=Path, default=None, help="split this DRNet checkpoint folder instead")
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    info = machine(settings)
    result = run(settings, args.batches, drnet=args.drnet)
    report(args, info, result, "wall-clock per part of a forward: DRNet vs dense supernet", show)


if __name__ == "__main__":
    main()
