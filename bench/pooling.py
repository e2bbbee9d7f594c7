"""Stride-1 3x3 max pool: ATen's kernel vs the separable form ``drnets.ops`` uses at inference.

Times both on the map shapes of the shipped DRNet's stride-1 pooling branches (C, 2C, 4C
channels at full, half and quarter resolution), round-robin in one process, and checks
they give identical values.

    python -m bench.pooling --batches 1,64
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
import torch.nn.functional as F

from drnets.ops import max_pool_3x3_separable

from .common import (
    Settings,
    add_settings_args,
    compare,
    format_table,
    load_model,
    machine,
    print_header,
    ratio,
    settings_from_args,
)


def pool_shapes(size: int = 28) -> list[tuple[int, int]]:
    """(channels, side) of the DRNet's node maps, cell by cell (shipped model, else its fallback config)."""
    model = load_model("drnet").model
    shapes, side = [], size
    for cell in model.cells:
        if cell.reduction:
            side = (side + 1) // 2
        if (cell.channels, side) not in shapes:
            shapes.append((cell.channels, side))
    return shapes


def run(settings: Settings, batches: tuple[int, ...] = (1, 64)) -> dict[str, Any]:
    rows = []
    for batch in batches:
        for channels, side in pool_shapes():
            x = torch.randn(batch, channels, side, side, device=settings.torch_device)
            if settings.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                if not torch.equal(F.max_pool2d(x, 3, 1, 1), max_pool_3x3_separable(x)):
                    raise AssertionError(f"separable max pool differs from ATen's on {tuple(x.shape)}")
                times = compare(
                    {"aten": lambda x=x: F.max_pool2d(x, 3, 1, 1), "separable": lambda x=x: max_pool_3x3_separable(x)},
                    settings,
                )
            rows.append(
                {
                    "batch": batch,
                    "shape": f"{channels}x{side}x{side}",
                    "aten_us": times["aten"] * 1e6,
                    "separable_us": times["separable"] * 1e6,
                    "speedup": ratio(times["aten"], times["separable"]),
                }
            )
    return {"rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_settings_args(parser)
    parser.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    info = machine(settings)
    result = run(settings, tuple(int(b) for b in args.batches.split(",")))
    if args.json:
        print(json.dumps({"machine": info, **result}, indent=2))
        return
    print_header("stride-1 max pool: ATen vs separable", info, [])
    print(format_table(result["rows"], ["batch", "shape", "aten_us", "separable_us", "speedup"]))


if __name__ == "__main__":
    main()
