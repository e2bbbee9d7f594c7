"""3x3 pooling branches: ATen's kernels vs the forms the inference fast path uses on a CPU.

Stride-1 max pool vs its separable form (a row max then a column max), and average pool
(stride 1 and 2, ``count_include_pad=False``) vs a depthwise convolution of 1/9s whose border
windows are rescaled to their real-pixel counts. Times each pair on the shipped DRNet's node-map
shapes (C, 2C, 4C channels at full, half and quarter resolution), round-robin in one process,
and checks that the two agree (max: identical; average: equal up to float rounding). The
``fast_path_uses`` column says which of the two ``drnets.inference.FastPool`` picks for that map
(``SEPARABLE_MIN_PIXELS``, ``DEPTHWISE_MIN_PIXELS``): "fast" next to a speedup below 1 says a
threshold is too low, "aten" next to one above 1 that it is too high.

    python -m bench.pooling --batches 1,64
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from drnets.argtypes import positive_ints
from drnets.inference import FastPool, avg_pool_3x3_depthwise, max_pool_3x3_separable

from .common import (
    Settings,
    add_settings_args,
    compare,
    format_table,
    load_model,
    machine,
    ratio,
    report,
    settings_from_args,
)


def pool_shapes(size: int = 28) -> list[tuple[int, int, int]]:
    """(channels, side, stride) of the maps the DRNet's pooling branches read, cell by cell: node maps
    at stride 1, and a reduction cell's inputs at stride 2 (shipped model, else its fallback config)."""
    model = load_model("drnet").model
    shapes, side = [], size
    for cell in model.cells:
        if cell.reduction:
            shapes.append((cell.channels, side, 2))
            side = (side + 1) // 2
        shapes.append((cell.channels, side, 1))
    return list(dict.fromkeys(shapes))


# (pool, stride, ATen's kernel, the inference form, whether the two must agree bit for bit)
POOLS: tuple[tuple[str, int, Callable[..., torch.Tensor], Callable[..., torch.Tensor], bool], ...] = (
    ("max", 1, lambda x: F.max_pool2d(x, 3, 1, 1), max_pool_3x3_separable, True),
    *(
        (
            "avg",
            stride,
            functools.partial(F.avg_pool2d, kernel_size=3, stride=stride, padding=1, count_include_pad=False),
            functools.partial(avg_pool_3x3_depthwise, stride=stride),
            False,
        )
        for stride in (1, 2)
    ),
)


def run(settings: Settings, batches: tuple[int, ...] = (1, 64)) -> dict[str, Any]:
    rows = []
    for batch in batches:
        for channels, side, map_stride in pool_shapes():
            x = torch.randn(batch, channels, side, side, device=settings.torch_device)
            if settings.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for pool, stride, aten, fast, exact in (p for p in POOLS if p[1] == map_stride):
                with torch.inference_mode():
                    expected, got = aten(x), fast(x)
                    same = torch.equal(expected, got) if exact else torch.allclose(expected, got, atol=1e-5)
                    if not same:
                        raise AssertionError(f"{pool} pool (stride {stride}) differs from ATen's on {tuple(x.shape)}")
                    times = compare({"aten": lambda a=aten, x=x: a(x), "fast": lambda f=fast, x=x: f(x)}, settings)
                rows.append(
                    {
                        "batch": batch,
                        "pool": f"{pool} s{stride}",
                        "shape": f"{channels}x{side}x{side}",
                        "aten_us": times["aten"] * 1e6,
                        "fast_us": times["fast"] * 1e6,
                        "speedup": ratio(times["aten"], times["fast"]),
                        "fast_path_uses": "fast" if _picks_fast_form(pool, stride, x) else "aten",
                    }
                )
    return {"rows": rows, "forms": {"max s1": "separable", "avg s1": "depthwise conv", "avg s2": "depthwise conv"}}


def _picks_fast_form(pool: str, stride: int, x: torch.Tensor) -> bool:
    """Whether ``FastPool`` runs the other form on ``x``."""
    module = torch.nn.MaxPool2d(3, stride, 1) if pool == "max" else torch.nn.AvgPool2d(3, stride, 1)
    return FastPool(module).takes_fast_form(x)


def show(result: dict[str, Any]) -> None:
    print(format_table(result["rows"], ["batch", "pool", "shape", "aten_us", "fast_us", "speedup", "fast_path_uses"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pooling", description=__doc__.split("\n\n")[0])
    add_settings_args(parser)
    parser.add_argument("--batches", type=positive_ints, default=(1, 64), help="comma-separated batch sizes")
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    info = machine(settings)
    result = run(settings, args.batches)
    report(args, info, result, "3x3 pools: ATen vs the inference forms (max s1: separable; avg: depthwise conv)", show)


if __name__ == "__main__":
    main()
