"""Run every benchmark and print one report (or one JSON object with ``--json``).

    python -m bench                  # full sizes (minutes on a 2-core CPU)
    python -m bench --quick --json   # small sizes, one JSON object with the headline numbers
    python -m bench --smoke --json   # tiny sizes for the test suite: proves it runs, numbers mean nothing

Benchmarks report; they never fail on timing. The ``goals`` list compares the headline
numbers with the targets of issue 6.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from typing import Any

from . import app_path, latency, masked, sweep, train_throughput
from .common import (
    DEFINITIONS,
    MODELS,
    add_settings_args,
    load_model,
    loaded_note,
    machine,
    print_header,
    settings_from_args,
)

BENCHMARKS = ("latency", "masked", "train", "app", "sweep")


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does in one mode."""

    batches: tuple[int, ...]
    images_b1: int
    train_batch: int
    train_steps: int | None  # None: the settings' repeats
    attribution_repeats: int | None
    sweep_limit: int | None
    sweep_thresholds: tuple[float, ...]
    sweep_repeats: int


SIZES = {
    "full": Sizes((1, 64, 256), 16, 128, None, None, None, sweep.THRESHOLDS, 1),
    "quick": Sizes((1, 64), 8, 64, 3, 1, 512, (0.0, 0.1, 0.2, 0.3), 1),
    "smoke": Sizes((1, 64), 2, 8, 1, 1, 64, (0.0, 0.1), 1),
}
# (headline key, target, "at least" | "at most"): the goals of issue 6 on a 2-core CPU.
GOALS = (
    ("efficiency_b1", 0.8, "at least"),
    ("efficiency_b64", 0.8, "at least"),
    ("app_path_ms", 150.0, "at most"),
    ("ig32_s", 2.0, "at most"),
    ("train_speedup", 1.5, "at least"),
    ("drnet_vs_mobilenetv2_b1", 1.0, "at least"),
    ("drnet_vs_mobilenetv2_b64", 1.0, "at least"),
)


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = SIZES[mode]
    settings = settings_from_args(args, quick=mode != "full")
    if mode == "smoke":
        settings = dataclasses.replace(settings, warmup=0, repeats=1)
    info = machine(settings)  # before the run: the load average must not count our own work
    only = set(args.only.split(",")) if args.only else set(BENCHMARKS)
    models = {name: load_model(name) for name in MODELS}
    results: dict[str, Any] = {}
    if "latency" in only:
        results["latency"] = latency.run(settings, sizes.batches, sizes.images_b1, models)
    if "masked" in only:
        results["masked"] = masked.run(settings, sizes.batches[:2], sizes.images_b1, models["drnet"])
    if "train" in only:
        results["train"] = train_throughput.run(settings, sizes.train_batch, sizes.train_steps, models)
    if "app" in only:
        results["app_path"] = app_path.run(settings, models["drnet"], sizes.attribution_repeats)
    if "sweep" in only:
        sweep_settings = dataclasses.replace(settings, repeats=sizes.sweep_repeats)
        results["sweep"] = sweep.run(sweep_settings, sizes.sweep_thresholds, sizes.sweep_limit, models=models)
    headline = _headline(results)
    notes = [n for n in [loaded_note(info)] if n]
    for result in results.values():
        notes += [n for n in result.get("notes", []) if n not in notes]
    return {
        **headline,
        "goals": _goals(headline),
        "definitions": DEFINITIONS,
        "mode": mode,
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "machine": info,
        "models": {name: m.source for name, m in models.items()},
        "notes": notes,
        "results": results,
    }


def _headline(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in results.get("latency", {}).get("rows", []):
        b = row["batch"]
        out[f"realized_speedup_b{b}"] = row["realized_speedup"]
        out[f"flops_ratio_b{b}"] = row["flops_ratio"]
        out[f"efficiency_b{b}"] = row["efficiency"]
        out[f"drnet_vs_mobilenetv2_b{b}"] = row["drnet_vs_mobilenetv2"]
    if "app_path" in results:
        out["app_path_ms"] = results["app_path"]["app_path_ms"]
        out["ig32_s"] = results["app_path"]["ig32_s"]
    if "train" in results:
        out["train_speedup"] = results["train"]["train_speedup"]
    return out


def _goals(headline: dict[str, Any]) -> list[dict[str, Any]]:
    goals = []
    for key, target, sense in GOALS:
        value = headline.get(key)
        met = None
        if isinstance(value, float) and math.isfinite(value):
            met = value >= target if sense == "at least" else value <= target
        goals.append({"metric": key, "target": f"{sense} {target:g}", "value": value, "met": met})
    return goals


def show(report: dict[str, Any]) -> None:
    print_header(f"drnets benchmarks ({report['mode']})", report["machine"], report["notes"])
    for key, text in report["definitions"].items():
        print(f"  {key}: {text}")
    sections = (
        ("latency", "latency / throughput: DRNet vs dense supernet vs MobileNetV2", latency.show),
        ("masked", "sparse execution vs masked reference", masked.show),
        ("train", "training throughput", train_throughput.show),
        ("app_path", "app path at batch 1", app_path.show),
        ("sweep", "threshold sweep", sweep.show),
    )
    for key, title, show_section in sections:
        if key in report["results"]:
            print(f"\n== {title}")
            show_section(report["results"][key])
    print("\n== goals (issue 6)")
    for goal in report["goals"]:
        value = "-" if goal["value"] is None else f"{goal['value']:.3g}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[goal["met"]]
        print(f"  {goal['metric']:26s} {goal['target']:>14s}  measured {value:>8s}  {verdict}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    add_settings_args(parser)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (about a minute or two on 2 cores)")
    size.add_argument("--smoke", action="store_true", help="tiny sizes for tests; the numbers mean nothing")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    if args.only and not set(args.only.split(",")) <= set(BENCHMARKS):
        parser.error(f"--only takes a comma-separated subset of {','.join(BENCHMARKS)}, got {args.only!r}")
    report = run_all(args)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        show(report)


if __name__ == "__main__":
    main()
