"""What every benchmark shares: settings, the machine record, model loading and the timer.

Timing rule: ratios are only formed from timings taken by one call of ``compare`` in one
process. ``compare`` warms every candidate up, then runs rounds in which each candidate
is called once in turn (round-robin), so a change in machine load during the run hits
all candidates alike; it reports the median of the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drnets.argtypes import non_negative_int, positive_int
from drnets.checkpoint import CheckpointError, load_checkpoint
from drnets.data import FASHION_MNIST_CLASSES, DataError, ImageSet, load_dataset, normalization, to_input
from drnets.device import describe, pick_device
from drnets.inference import for_inference, has_glibc, keep_freed_memory
from drnets.model import create_model

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("drnet", "dense", "mobilenetv2")
# The architecture the shipped checkpoints use (scripts/build_models.sh); only used when no
# checkpoint exists, so a random-init run still times the right network.
FALLBACK_CONFIGS: dict[str, dict[str, Any]] = {
    "drnet": {"channels": 12, "num_nodes": 2},
    "dense": {"channels": 12, "num_nodes": 2},
    "mobilenetv2": {},
}
DEFINITIONS = {
    "realized_speedup": "dense-supernet time / DRNet time, same inputs, same process",
    "flops_ratio": "dense-supernet FLOPs / DRNet mean FLOPs of the same runs (FLOPs = 2 x MACs, analytic)",
    "efficiency": "realized_speedup / flops_ratio (1.0 = wall-clock falls exactly as fast as FLOPs)",
    "drnet_vs_mobilenetv2": "MobileNetV2 time / DRNet time (> 1: DRNet is faster)",
    "train_speedup": "DRNet training images/s / dense-supernet training images/s",
}
GATHER_SCATTER_OPS = (
    "aten::index_select",
    "aten::index_add_",
    "aten::scatter_add_",  # index_add_ runs on it
    "aten::nonzero",
    "aten::split",
    "aten::zero_",
)


@dataclass(frozen=True)
class Settings:
    """How the benchmarks run; every field ends up in the JSON next to the numbers."""

    device: str = "cpu"
    channels_last: bool = True  # NHWC: 2-3x faster depthwise convs and pools on CPU (docs/BENCHMARKS.md)
    amp: bool = False  # float16 autocast; on by default on a GPU
    compile: bool = False  # torch.compile each model (experimental: DRNet routing breaks the graph per cell)
    warmup: int = 2  # untimed calls of every candidate before the rounds
    repeats: int = 7  # timed rounds; the median is reported
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    keep_freed_memory: bool = True  # glibc reuses freed tensor memory (drnets.inference.keep_freed_memory)
    # Models run through drnets.inference.for_inference (BN folded, in-place ReLUs, stacked routers,
    # fast pools, GPU matmul convolutions); False: the plain model under torch.inference_mode.
    fast: bool = True
    # True/False forces cuDNN on or off for every candidate; None: on, except for DRNet training
    # steps on a GPU (drnets.device.cudnn_suits_training, as `drnets train` chooses)
    cudnn: bool | None = None

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


@dataclass
class Loaded:
    """A model ready to time, and where its weights came from."""

    name: str
    model: nn.Module
    source: str  # e.g. "assets/models/drnet" or "random init"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        return self.source != "random init"


def add_settings_args(parser: argparse.ArgumentParser) -> None:
    """The flags every benchmark accepts."""
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--layout", choices=("channels_last", "nchw"), default="channels_last", help="memory format")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="autocast (default: on GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models (experimental)")
    parser.add_argument("--warmup", type=non_negative_int, default=None, help="untimed calls per candidate")
    parser.add_argument("--repeats", type=positive_int, default=None, help="timed rounds (median reported)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads")
    parser.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                        help="let glibc reuse freed memory instead of page-faulting new maps in (default: on)")  # fmt: skip
    parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True,
                        help="time the inference fast path, drnets.inference.for_inference; "
                             "--no-fast times the plain model (default: on)")  # fmt: skip
    parser.add_argument("--cudnn", action=argparse.BooleanOptionalAction, default=None,
                        help="force cuDNN on or off on a GPU (default: off only for DRNet training steps)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def settings_from_args(args: argparse.Namespace, quick: bool = False) -> Settings:
    try:
        device = str(pick_device(args.device))
    except RuntimeError as err:
        raise SystemExit(f"bench: --device {args.device!r} is not a torch device ({err})") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"bench: --device {device} asked for, but torch sees no CUDA GPU (torch {torch.__version__})")
    defaults = Settings(warmup=1, repeats=3) if quick else Settings()
    settings = Settings(
        device=device,
        channels_last=args.layout == "channels_last",
        amp=(device.startswith("cuda")) if args.amp is None else args.amp,
        compile=args.compile,
        warmup=defaults.warmup if args.warmup is None else args.warmup,
        repeats=defaults.repeats if args.repeats is None else args.repeats,
        threads=args.threads,
        keep_freed_memory=args.keep_freed_memory,
        fast=args.fast,
        cudnn=args.cudnn,
    )
    apply_process_settings(settings)
    return settings


def apply_process_settings(settings: Settings) -> None:
    """Threads, allocator, cuDNN: they hold for the whole process, so every candidate runs under the same ones."""
    if settings.cudnn is not None:
        torch.backends.cudnn.enabled = settings.cudnn
    if settings.threads:
        torch.set_num_threads(settings.threads)
    if settings.keep_freed_memory:
        keep_freed_memory()


# ---- the machine ----


def cpu_model() -> str:
    """``lscpu``'s model name (what BENCHMARKS.md quotes), else platform's guess."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The CPU's native bfloat16 instruction sets (Linux ``/proc/cpuinfo``); empty without them or elsewhere.
    With them, ``--amp`` (bf16 autocast) is worth timing on the CPU too (docs/BENCHMARKS.md)."""
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return sorted(set(line.split(":", 1)[1].split()) & {"amx_bf16", "avx512_bf16"})
    return []


def machine(settings: Settings) -> dict[str, Any]:
    """Where the numbers come from; the load average says whether other work shared the CPU."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    info = {
        "cpu": cpu_model(),
        "cpu_bf16": cpu_bf16_flags(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": describe(settings.torch_device),
        "allocator": "glibc, freed memory kept" if settings.keep_freed_memory and has_glibc() else "default",
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "load_average_1m": load,
        "loaded": bool(load is not None and load > 0.5 * cores),
        "settings": asdict(settings),
    }
    return info


def loaded_note(info: dict[str, Any]) -> str | None:
    if info["loaded"]:
        return (
            f"the machine was loaded (1-minute load average {info['load_average_1m']:.1f} on {info['cores']} cores): "
            "absolute times are inflated and noisy; same-process ratios are less affected"
        )
    return None


# ---- models and data ----


def find_checkpoint(name: str) -> Path | None:
    """The shipped weights, else the training run's, else None."""
    for path in (ROOT / "assets" / "models" / name, ROOT / "runs" / name / "model"):
        if (path / "config.json").is_file():
            return path
    return None


def load_model(name: str, checkpoint: Path | None = None) -> Loaded:
    """Trained weights when they exist; otherwise a random init that says so loudly.

    ``checkpoint`` names a folder to time instead of the shipped one; it must hold a ``name`` model.
    """
    if checkpoint is not None:
        try:
            return _load(name, checkpoint)
        except CheckpointError as err:
            raise SystemExit(f"bench: cannot use {checkpoint}: {err}") from None
    path = find_checkpoint(name)
    if path is not None:
        try:
            return _load(name, path)
        except CheckpointError as err:
            print(f"bench: cannot use {path}: {err}; falling back to a random init", file=sys.stderr)
    torch.manual_seed(0)
    model = create_model(name, **FALLBACK_CONFIGS[name]).eval()
    mean, std = normalization("fashion-mnist", 1)
    return Loaded(name, model, "random init", mean, std, list(FASHION_MNIST_CLASSES))


def _load(name: str, path: Path) -> Loaded:
    ckpt = load_checkpoint(path)
    if ckpt.name != name:
        raise CheckpointError(f"it holds a {ckpt.name!r} model, not a {name!r} one")
    training = ckpt.training
    mean = tuple(training.get("mean", ())) or normalization("fashion-mnist", 1)[0]
    std = tuple(training.get("std", ())) or normalization("fashion-mnist", 1)[1]
    where = str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)
    return Loaded(name, ckpt.model, where, mean, std, ckpt.class_names, training)


def random_init_note(models: list[Loaded]) -> str | None:
    untrained = [m.name for m in models if not m.trained]
    if not untrained:
        return None
    note = f"RANDOM INIT for {', '.join(untrained)} (no checkpoint in assets/models/ or runs/*/model): accuracy is meaningless"
    if "drnet" in untrained:
        note += (
            "; an untrained router gives every branch about the same weight, so the DRNet runs (almost) every "
            "branch and its FLOPs ratio is about 1: these numbers say nothing about trained routing"
        )
    else:
        note += "; timing of a static network does not depend on its weights"
    return note


def place(model: nn.Module, settings: Settings) -> nn.Module:
    """A private, eval-mode copy of the plain model on the device, in the chosen layout."""
    model = copy.deepcopy(model).eval().to(settings.torch_device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def prepare(model: nn.Module, settings: Settings) -> nn.Module:
    """What the benchmarks time: a private copy (``place``), through ``for_inference`` when the fast
    path is on, optionally compiled. Either way it is called ``model(x, policy) -> (logits, trace)``."""
    model = place(model, settings)
    if settings.fast:
        model = for_inference(model)
    if settings.compile:
        model = torch.compile(model)
    return model


def eval_images(limit: int | None = None) -> tuple[ImageSet, str | None]:
    """Fashion-MNIST test images (routes depend on the input, so noise would mislead)."""
    try:
        return load_dataset("fashion-mnist", "test").subset(limit), None
    except (DataError, OSError) as err:
        n = limit or 256
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 28, 28, 1), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (n,), generator=g)
        note = f"Fashion-MNIST not found ({err}); timing uses random pixels, accuracy is meaningless"
        return ImageSet(images, labels, list(FASHION_MNIST_CLASSES), "random"), note


def batch_chunks(images: torch.Tensor, batch: int, images_b1: int) -> list[torch.Tensor]:
    """What one timed call runs: ``images_b1`` images one at a time at batch 1 (one image would be one
    route), else the first ``batch`` images as one batch."""
    return [images[i : i + 1] for i in range(images_b1)] if batch == 1 else [images[:batch]]


def to_device(images: torch.Tensor, loaded: Loaded, settings: Settings) -> torch.Tensor:
    """uint8 [B, H, W, C] -> the model's normalised input on the device, in the chosen layout."""
    x = to_input(images, loaded.mean, loaded.std).to(settings.torch_device)
    return x.contiguous(memory_format=torch.channels_last) if settings.channels_last else x


@contextlib.contextmanager
def inference(settings: Settings) -> Iterator[None]:
    """No autograd, plus autocast when AMP is on (the fast path runs under inference mode itself;
    the plain model needs this)."""
    with torch.inference_mode(), autocast(settings):
        yield


def autocast(settings: Settings) -> contextlib.AbstractContextManager:
    if not settings.amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if settings.device.startswith("cuda") else torch.bfloat16
    return torch.autocast(settings.torch_device.type, dtype=dtype)


# ---- timing ----


def synchronize(settings: Settings) -> None:
    if settings.device.startswith("cuda"):
        torch.cuda.synchronize()


def compare(candidates: dict[str, Callable[[], Any]], settings: Settings) -> dict[str, float]:
    """Median seconds per call of each candidate, measured round-robin in this process."""
    for fn in candidates.values():
        for _ in range(settings.warmup):
            fn()
    synchronize(settings)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(max(1, settings.repeats)):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            synchronize(settings)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def page_faults(fn: Callable[[], Any]) -> int | None:
    """Minor page faults the process takes during one call of ``fn``: memory the allocator had handed back
    to the kernel and has to fault in again (None where ``getrusage`` does not exist)."""
    try:
        import resource
    except ImportError:
        return None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


# ---- output ----


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain fixed-width table (floats to 3 significant digits)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.4g}"
        return "-" if value is None else str(value)

    body = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    result: dict[str, Any],
    title: str,
    show: Callable[[dict[str, Any]], None],
) -> None:
    """What every script prints: one JSON object with the machine record (``--json``), else a header and
    ``show``'s tables."""
    if args.json:
        print(json.dumps({"machine": info, **result}, indent=2))
        return
    print_header(title, info, result.get("notes", []))
    show(result)


def print_header(title: str, info: dict[str, Any], notes: list[str]) -> None:
    print(f"== {title}")
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
        f"{info['device']}, {info['date_utc']} UTC, load {info['load_average_1m']}"
    )
    s = info["settings"]
    print(
        f"settings: layout {'channels_last' if s['channels_last'] else 'NCHW'}, amp {s['amp']}, compile {s['compile']}, "
        f"warm-up {s['warmup']}, repeats {s['repeats']} (median), allocator {info['allocator']}, "
        f"{'fast path (drnets.inference)' if s['fast'] else 'plain model (--no-fast)'}"
    )
    if info.get("cpu_bf16") and not s["amp"] and s["device"] == "cpu":
        print(f"NOTE: this CPU computes bf16 natively ({', '.join(info['cpu_bf16'])}); --amp times bf16 autocast")
    for note in notes:
        print(f"NOTE: {note}")
