"""Evaluation: accuracy and per-image cost of a checkpoint on a data set, and the threshold sweep.

Everything is computed from the routing traces of one pass over the data (a pass per
sweep threshold): statistics are reductions of the trace tensors, so the 10k-image
test set never becomes a 10k x L x E x K table. The result is the ``eval.json`` the
app reads; FLOPs are 2 x MACs throughout.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .argtypes import open_unit_float, positive_int, unit_float
from .checkpoint import Checkpoint, atomic_write_text, load_checkpoint
from .data import DATASETS, ImageSet, load_dataset, normalization, to_input
from .device import pick_device
from .inference import for_inference
from .model import is_routed, policy_with
from .router import RoutingPolicy
from .routing_stats import routing_stats
from .trace import RoutingTrace

# Thresholds of the accuracy/FLOPs sweep; the model's own threshold is added to them.
# Gate weights of K=7 branches average 1/7 ~ 0.14, so the grid is densest below 0.3.
SWEEP_THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
NUM_EXTREMES = 5  # cheapest and most expensive images kept in eval.json
SWEEP_COLUMNS = ("threshold", "accuracy", "flops_mean", "params_used_mean")
# Budgets of the sweep of a DRNet with budget-conditioned routers (at its own threshold); its own
# budget is added to them. Its sweep rows and sweep.csv gain a "budget" column.
SWEEP_BUDGETS = (0.03, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6)


class EvaluationError(ValueError):
    """A checkpoint and a data set (or options) that do not fit together."""


def check_compatible(checkpoint: Checkpoint, data: ImageSet) -> None:
    """Refuse a data set whose channels or classes the checkpoint was not built for."""
    config = checkpoint.model.config
    channels = data.images.shape[-1]
    if channels != config.in_channels:
        raise EvaluationError(
            f"the checkpoint takes {config.in_channels}-channel images but data set {data.name!r} has {channels} "
            "channels; evaluate it on the data set it was trained on"
        )
    if len(data.class_names) != config.num_classes:
        raise EvaluationError(
            f"the checkpoint predicts {config.num_classes} classes but data set {data.name!r} has "
            f"{len(data.class_names)}; evaluate it on the data set it was trained on"
        )
    expected = checkpoint.training.get("input_size")
    if expected and list(expected[1:]) != list(data.images.shape[1:3]):
        raise EvaluationError(
            f"the checkpoint was trained on {expected[1]}x{expected[2]} images but data set {data.name!r} has "
            f"{data.images.shape[1]}x{data.images.shape[2]}"
        )


@torch.no_grad()
def run_traces(
    model: torch.nn.Module,
    data: ImageSet,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
    policy: RoutingPolicy | None = None,
) -> RoutingTrace:
    """One inference pass over ``data`` under ``policy``; the traces of every batch joined (on the CPU)."""
    device = next(model.parameters()).device
    traces = []
    for start in range(0, len(data), batch_size):
        x = to_input(data.images[start : start + batch_size], tuple(mean), tuple(std)).to(device)
        traces.append(model(x, policy)[1])
    return RoutingTrace.concat(traces)


def _summary(trace: RoutingTrace, labels: torch.Tensor) -> dict[str, float]:
    return {
        "accuracy": float((trace.preds.cpu() == labels).double().mean()),
        "flops_mean": float(trace.flops.double().mean()),
        "params_used_mean": float(trace.params.double().mean()),
    }


def _per_class(trace: RoutingTrace, labels: torch.Tensor, class_names: list[str]) -> list[dict[str, Any]]:
    frame = pd.DataFrame(
        {
            "index": labels.numpy(),
            "correct": (trace.preds.cpu() == labels).numpy(),
            "flops": trace.flops.numpy(),
            "params": trace.params.numpy(),
        }
    )
    stats = frame.groupby("index").agg(
        n=("correct", "size"),
        accuracy=("correct", "mean"),
        flops_mean=("flops", "mean"),
        params_used_mean=("params", "mean"),
    )
    return [
        {
            "class": class_names[int(index)],
            "index": int(index),
            "n": int(row.n),
            "accuracy": float(row.accuracy),
            "flops_mean": float(row.flops_mean),
            "params_used_mean": float(row.params_used_mean),
        }
        for index, row in stats.iterrows()
    ]


def _difficulty(per_class: list[dict[str, Any]], trace: RoutingTrace, labels: torch.Tensor) -> dict[str, Any]:
    """Do easy inputs cost less? Classes ranked by accuracy, split in an easier and a harder half.

    ``easy_classes_flops_mean`` / ``hard_classes_flops_mean``: mean FLOPs per image of each half;
    ``accuracy_flops_correlation``: Pearson r across classes (negative = easy classes cheaper;
    None when it is undefined); ``correct_flops_mean`` / ``wrong_flops_mean``: per image.
    """
    ranked = sorted(per_class, key=lambda r: -r["accuracy"])
    easy, hard = ranked[: len(ranked) // 2], ranked[len(ranked) // 2 :]

    def mean_flops(rows: list[dict[str, Any]]) -> float | None:
        n = sum(r["n"] for r in rows)
        return sum(r["flops_mean"] * r["n"] for r in rows) / n if n else None

    accuracy = np.array([r["accuracy"] for r in per_class])
    flops = np.array([r["flops_mean"] for r in per_class])
    defined = len(per_class) >= 3 and accuracy.std() > 0 and flops.std() > 0
    correct = (trace.preds.cpu() == labels).numpy()
    image_flops = trace.flops.double().numpy()
    return {
        "easy_classes": [r["class"] for r in easy],
        "easy_classes_flops_mean": mean_flops(easy),
        "hard_classes_flops_mean": mean_flops(hard),
        "accuracy_flops_correlation": float(np.corrcoef(accuracy, flops)[0, 1]) if defined else None,
        "correct_flops_mean": float(image_flops[correct].mean()) if correct.any() else None,
        "wrong_flops_mean": float(image_flops[~correct].mean()) if (~correct).any() else None,
    }


def _branch_usage(trace: RoutingTrace, labels: torch.Tensor, class_names: list[str]) -> tuple[list[dict], list[dict]]:
    """Per (class, cell, branch) and per (cell, branch): share of (sample, edge) pairs where the branch ran."""
    n, cells, edges, k = trace.ran.shape
    if n == 0 or cells == 0:
        return [], []
    ran_per_sample = trace.ran.sum(dim=2).double().reshape(n, cells * k)  # [N, L*K]: edges that ran the branch
    present = torch.unique(labels)
    one_hot = (labels.view(-1, 1) == present.view(1, -1)).double()  # [N, classes present]
    per_class = (one_hot.T @ ran_per_sample) / (one_hot.sum(0).view(-1, 1) * edges)  # [classes present, L*K]
    per_class = per_class.view(len(present), cells, k)
    by_class = [
        {
            "class": class_names[int(c)],
            "cell": cell,
            "branch": trace.branch_names[b],
            "usage": float(per_class[i, cell, b]),
        }
        for i, c in enumerate(present)
        for cell in range(cells)
        for b in range(k)
    ]
    per_cell = ran_per_sample.view(n, cells, k).mean(0) / edges  # [L, K]
    by_cell = [
        {"cell": cell, "branch": trace.branch_names[b], "usage": float(per_cell[cell, b])}
        for cell in range(cells)
        for b in range(k)
    ]
    return by_class, by_cell


def _pixels(image: torch.Tensor) -> list:
    """uint8 [H, W, C] -> nested lists, [H][W] for grayscale, [H][W][C] otherwise."""
    array = image.numpy()
    return (array[..., 0] if array.shape[-1] == 1 else array).tolist()


def _extremes(trace: RoutingTrace, data: ImageSet) -> dict[str, list[dict[str, Any]]]:
    # Stable sorts: among equal costs (static models) the lowest indices come first.
    flops = trace.flops.numpy()
    cheapest, dearest = np.argsort(flops, kind="stable"), np.argsort(-flops, kind="stable")
    preds = trace.preds.cpu()

    def item(i: int) -> dict[str, Any]:
        return {
            "index": i,
            "label": int(data.labels[i]),
            "pred": int(preds[i]),
            "flops": int(trace.flops[i]),
            "pixels": _pixels(data.images[i]),
        }

    return {
        "cheapest": [item(int(i)) for i in cheapest[:NUM_EXTREMES]],
        "most_expensive": [item(int(i)) for i in dearest[:NUM_EXTREMES]],
    }


def evaluate(
    checkpoint: Checkpoint,
    data: ImageSet,
    threshold: float | None = None,
    top_k: int | None = None,
    batch_size: int = 256,
    *,
    split: str = "test",
    sweep: Sequence[float] | None = SWEEP_THRESHOLDS,
    budget: float | None = None,
) -> dict[str, Any]:
    """Accuracy, per-image cost and routing statistics of ``checkpoint`` on ``data``.

    Args:
        threshold, top_k: routing policy for DRNets (default: the checkpoint's own);
            static models (MobileNetV2) accept neither.
        split: recorded in the result only.
        sweep: thresholds to also evaluate (routed DRNets only; the policy's own
            threshold is added); None or empty skips the sweep. A DRNet with budget-conditioned
            routers sweeps ``SWEEP_BUDGETS`` instead, at its threshold.
        budget: the budget a budget-conditioned DRNet runs at (default: its own).

    Returns:
        The ``eval.json`` dict: totals (``accuracy``, ``flops_mean``/``p50``/``p90``/``p99``/
        ``min``/``max``, ``params_used_mean``, ``dense_flops``, ``dense_params``), ``per_class``
        rows, ``difficulty`` (do easy classes and correctly classified images cost less),
        ``branch_usage`` per (class, cell, branch) and ``cell_usage`` per (cell, branch) as
        the share of (image, edge) pairs that ran the branch, the 5 cheapest and 5 most
        expensive images with their pixels (``extremes``), ``routing`` (distinct routes, edges
        that vary, FLOPs spread, route-class information: see ``drnets.routing_stats``; None
        for static models) and the ``sweep`` rows.

    Example:
        >>> result = evaluate(load_checkpoint("assets/models/drnet"), load_dataset("fashion-mnist", "test"))
    """
    check_compatible(checkpoint, data)
    if len(data) == 0:
        raise EvaluationError(f"data set {data.name!r} has no images to evaluate")
    routed = is_routed(checkpoint.model)
    policy = policy_with(checkpoint.model, threshold, top_k, budget)  # refuses settings a static model cannot take
    model = for_inference(checkpoint.model)
    channels = data.images.shape[-1]
    default_mean, default_std = normalization(data.name, channels)
    mean = checkpoint.training.get("mean", default_mean)
    std = checkpoint.training.get("std", default_std)
    started = time.perf_counter()
    trace = run_traces(model, data, mean, std, batch_size, policy)
    seconds = time.perf_counter() - started
    sweep_rows = []
    if policy is not None and routed and sweep:
        if policy.budget is not None:
            points = [replace(policy, budget=c) for c in sorted({*SWEEP_BUDGETS, policy.budget})]
        else:
            points = [replace(policy, threshold=t) for t in sorted({*sweep, policy.threshold})]
        for point in points:
            swept = trace if point == policy else run_traces(model, data, mean, std, batch_size, point)
            row = {"threshold": float(point.threshold), **_summary(swept, data.labels)}
            sweep_rows.append(row if point.budget is None else {"budget": point.budget, **row})
    flops = trace.flops.double().numpy()
    totals = _summary(trace, data.labels)
    by_class, by_cell = _branch_usage(trace, data.labels, checkpoint.class_names)
    per_class = _per_class(trace, data.labels, checkpoint.class_names)
    return {
        "model": checkpoint.name,
        "dataset": data.name,
        "split": split,
        "n": len(data),
        "threshold": policy.threshold if policy else None,
        "top_k": policy.top_k if policy else None,
        "budget": policy.budget if policy else None,
        "accuracy": totals["accuracy"],
        "flops_mean": totals["flops_mean"],
        "flops_p50": float(np.percentile(flops, 50)),
        "flops_p90": float(np.percentile(flops, 90)),
        "flops_p99": float(np.percentile(flops, 99)),
        "flops_min": int(flops.min()),
        "flops_max": int(flops.max()),
        "params_used_mean": totals["params_used_mean"],
        "dense_flops": int(trace.dense_flops),
        "dense_params": int(trace.dense_params),
        "seconds": seconds,
        "per_class": per_class,
        "difficulty": _difficulty(per_class, trace, data.labels),
        "branch_usage": by_class,
        "cell_usage": by_cell,
        "extremes": _extremes(trace, data),
        "routing": routing_stats(trace.ran, trace.flops, data.labels) if routed else None,
        "sweep": sweep_rows,
    }


def sweep_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    columns = (["budget"] if rows and "budget" in rows[0] else []) + list(SWEEP_COLUMNS)
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def format_summary(result: dict[str, Any]) -> str:
    """A readable report: totals, per-class accuracy and FLOPs (cheapest class first), the sweep."""
    m = 1e6
    lines = [
        f"{result['model']} on {result['dataset']} {result['split']} ({result['n']} images)"
        + (f", threshold {result['threshold']}" if result["threshold"] is not None else "")
        + (f", top-k {result['top_k']}" if result["top_k"] is not None else ""),
        f"accuracy            {result['accuracy']:.4f}",
        (
            f"MFLOPs (2×MACs)     mean {result['flops_mean'] / m:.3f}  p50 {result['flops_p50'] / m:.3f}  "
            f"p90 {result['flops_p90'] / m:.3f}  p99 {result['flops_p99'] / m:.3f}  "
            f"min {result['flops_min'] / m:.3f}  max {result['flops_max'] / m:.3f}"
        ),
        (
            f"                    dense network {result['dense_flops'] / m:.3f} "
            f"({result['flops_mean'] / result['dense_flops']:.1%} used on average)"
        ),
        (
            f"params used         mean {result['params_used_mean']:,.0f} of {result['dense_params']:,} "
            f"({result['params_used_mean'] / result['dense_params']:.1%})"
        ),
        f"time                {result['seconds']:.1f} s",
        "",
        "per class, cheapest first:",
        f"  {'class':<14} {'n':>6} {'accuracy':>9} {'MFLOPs (2×MACs)':>16} {'vs mean':>8}",
    ]
    for row in sorted(result["per_class"], key=lambda r: r["flops_mean"]):
        lines.append(
            f"  {row['class']:<14} {row['n']:>6} {row['accuracy']:>9.4f} {row['flops_mean'] / m:>16.3f} "
            f"{row['flops_mean'] / result['flops_mean'] - 1:>+8.1%}"
        )
    if difficulty := describe_difficulty(result.get("difficulty")):
        lines += ["", *difficulty]
    if routing := result.get("routing"):
        spread = routing["flops_p90_p10"]
        lines += [
            "",
            f"routes              {routing['distinct_routes']} distinct, the most common taken by "
            f"{routing['top_route_share']:.1%} of images",
            f"edges that vary     {routing['edges_varying']} of {routing['edges']} "
            f"(>= {routing['edge_vary_min_share']:.0%} of images leave the edge's usual branch set)",
            f"MFLOPs spread       p10 {routing['flops_p10'] / m:.3f}  p90 {routing['flops_p90'] / m:.3f}"
            + (f"  p90/p10 {spread:.3f}" if spread is not None else ""),
            f"route-class info    {routing['route_class_information_bits']:.3f} bits of "
            f"{routing['class_entropy_bits']:.3f} (class entropy)",
        ]
    if result["sweep"]:
        knob = "budget" if "budget" in result["sweep"][0] else "threshold"
        lines += [
            "",
            f"{knob} sweep:",
            f"  {knob:>9} {'accuracy':>9} {'MFLOPs (2×MACs)':>16} {'params used':>12}",
        ]
        for row in result["sweep"]:
            lines.append(
                f"  {row[knob]:>9.2f} {row['accuracy']:>9.4f} {row['flops_mean'] / m:>16.3f} "
                f"{row['params_used_mean']:>12,.0f}"
            )
    return "\n".join(lines)


def describe_difficulty(difficulty: dict[str, Any] | None) -> list[str]:
    """'Easy classes cheaper?' in one or two sentences (the CLI summary and the app's explorer);
    nothing for a static model, whose cost never varies."""
    m = 1e6
    if not difficulty or difficulty["easy_classes_flops_mean"] is None or difficulty["hard_classes_flops_mean"] is None:
        return []
    easy, hard = difficulty["easy_classes_flops_mean"], difficulty["hard_classes_flops_mean"]
    if easy == hard:
        return []
    r = difficulty["accuracy_flops_correlation"]
    verdict = "cheaper" if easy < hard else "dearer"
    lines = [
        f"Easy classes {verdict}: the more accurate half ({', '.join(difficulty['easy_classes'])}) "
        f"{easy / m:.3f} MFLOPs per image, the rest {hard / m:.3f} ({easy / hard - 1:+.1%})"
        + (f"; accuracy-FLOPs correlation across classes {r:+.2f}" if r is not None else "")
        + ".",
    ]
    if difficulty["correct_flops_mean"] is not None and difficulty["wrong_flops_mean"] is not None:
        lines.append(
            f"Correctly classified images {difficulty['correct_flops_mean'] / m:.3f} MFLOPs on average, "
            f"misclassified ones {difficulty['wrong_flops_mean'] / m:.3f}."
        )
    return lines


def write_results(out: Path, result: dict[str, Any]) -> list[Path]:
    """Write ``eval.json`` (and ``sweep.csv`` when there is a sweep) atomically into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "eval.json", json.dumps(result, indent=1))
    written = [out / "eval.json"]
    if result["sweep"]:
        atomic_write_text(out / "sweep.csv", sweep_csv(result["sweep"]))
        written.append(out / "sweep.csv")
    return written


def cmd_eval(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint, map_location=pick_device(args.device))
    name = args.data or checkpoint.training.get("dataset", "fashion-mnist")
    data = load_dataset(name, args.split, args.data_root).subset(args.limit)
    result = evaluate(
        checkpoint, data, args.threshold, args.top_k, args.batch_size,
        split=args.split, sweep=SWEEP_THRESHOLDS if args.sweep else None, budget=args.budget,
    )  # fmt: skip
    written = write_results(Path(args.out), result) if args.out else []
    print(json.dumps(result) if args.json else format_summary(result))
    if written and not args.json:
        print("\nwrote " + ", ".join(map(str, written)))
    return 0


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("no CUDA GPU is available here")
    return text


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``drnets eval``."""
    p = sub.add_parser("eval", help="accuracy, per-image FLOPs, routing statistics and the threshold sweep")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--data", choices=DATASETS, default=None, help="data set (default: the one it was trained on)")
    p.add_argument("--data-root", default=None, help="data folder (default: the Debian Fashion-MNIST files)")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N images")
    p.add_argument("--threshold", type=unit_float, default=None, help="routing threshold t (default: the model's)")
    p.add_argument("--top-k", type=positive_int, default=None, help="keep at most k branches per edge")
    p.add_argument("--budget", type=open_unit_float, default=None,
                   help="share of the routed branches' FLOPs to aim at (DRNets with budget-conditioned routers)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument(
        "--device", type=_device, default=None, help="cpu, cuda, cuda:1, ... (default: the GPU if there is one)"
    )
    p.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True,
                   help=f"also evaluate thresholds {', '.join(map(str, SWEEP_THRESHOLDS))} (DRNets)")  # fmt: skip
    p.add_argument("--out", default=None, help="folder to write eval.json (and sweep.csv) into")
    p.add_argument("--json", action="store_true", help="print the eval.json content instead of a summary")
    p.set_defaults(func=cmd_eval)
