"""Training throughput: images/s of DRNet vs its dense supernet (and MobileNetV2 for context).

One timed call is one full training step as ``drnets.train`` takes it: forward in train
mode (Gumbel-Softmax routing at the temperature the run ended with), the recipe's loss
(cross-entropy + cost term for the DRNet), backward, AdamW step. Steps of the models are
interleaved round-robin; weights start from the checkpoints when present (only the
speed is measured, the copies are thrown away).

    python -m bench.train_throughput --batch 128
    python -m bench.train_throughput --models drnet --cudnn   # one model, cuDNN forced on (GPU)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch

from drnets.argtypes import positive_int
from drnets.device import cudnn_enabled, cudnn_suits_training
from drnets.losses import training_loss
from drnets.model import DRNet
from drnets.train import TrainConfig, build_optimizer

from .common import (
    MODELS,
    Loaded,
    Settings,
    add_settings_args,
    autocast,
    compare,
    eval_images,
    format_table,
    load_model,
    machine,
    random_init_note,
    ratio,
    report,
    settings_from_args,
    to_device,
)


def run(
    settings: Settings, batch: int = 128, steps: int | None = None, models: dict[str, Loaded] | None = None
) -> dict[str, Any]:
    """Images/s per model; ``steps`` overrides settings.repeats (timed steps per model)."""
    models = models or {name: load_model(name) for name in MODELS}
    data, data_note = eval_images(batch)
    timing = settings if steps is None else dataclasses.replace(settings, repeats=steps)
    calls, flops = {}, {}
    for name, loaded in models.items():
        x = to_device(data.images[:batch], loaded, settings)
        labels = data.labels[:batch].to(settings.torch_device)
        calls[name] = functools.partial(trainer(loaded, settings, flops), x, labels)
    seconds = compare(calls, timing)
    rows = [
        {
            "model": name,
            "images_per_s": batch / seconds[name],
            "ms_per_step": 1e3 * seconds[name],
            "forward_mflops_per_image": flops[name] / 1e6,
        }
        for name in models
    ]
    notes = [n for n in (data_note, random_init_note(list(models.values()))) if n]
    return {
        "batch": batch,
        "rows": rows,
        "train_speedup": ratio(seconds["dense"], seconds["drnet"]) if {"dense", "drnet"} <= seconds.keys() else None,
        "temperature": _temperature(models["drnet"]) if "drnet" in models else None,
        "models": {name: m.source for name, m in models.items()},
        "notes": notes,
    }


def _temperature(loaded: Loaded) -> float:
    """The Gumbel-Softmax temperature the run ended with (the router is sparsest there)."""
    history = loaded.training.get("history") or [{}]
    recipe = loaded.training.get("recipe") or {}
    temperature = history[-1].get("temperature")
    return float(recipe.get("tau_end", TrainConfig.tau_end) if temperature is None else temperature)


def trainer(
    loaded: Loaded, settings: Settings, flops: dict[str, float]
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A closure running one optimisation step on a private train-mode copy; it records
    the step's mean forward FLOPs per image in ``flops[name]``."""
    model = copy.deepcopy(loaded.model).train().to(settings.torch_device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # As drnets.train: every DRNet (the dense supernet too) routes under a policy carrying the temperature.
    policy = (
        dataclasses.replace(model.default_policy, temperature=_temperature(loaded))
        if isinstance(model, DRNet)
        else None
    )
    saved = loaded.training.get("recipe") or {}
    recipe = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})
    optimizer, _ = build_optimizer(recipe, model, total_steps=10**6)
    scaler = torch.amp.GradScaler(enabled=settings.amp and settings.device.startswith("cuda"))
    use_cudnn = cudnn_suits_training(model, settings.torch_device) if settings.cudnn is None else settings.cudnn

    def step(x: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with cudnn_enabled(use_cudnn):
            with autocast(settings):
                logits, trace = model(x, policy)
                loss, _ = training_loss(model, logits, trace, labels, recipe, x.shape[-2], x.shape[-1])
            scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        flops[loaded.name] = float(trace.flops.double().mean())

    return step


def model_names(text: str) -> tuple[str, ...]:
    """argparse type: a comma-separated, non-empty subset of MODELS."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",")))
    if not names or not set(names) <= set(MODELS):
        raise argparse.ArgumentTypeError(f"must be a comma-separated subset of {','.join(MODELS)}, got {text!r}")
    return names


def show(result: dict[str, Any]) -> None:
    print(format_table(result["rows"], ["model", "images_per_s", "ms_per_step", "forward_mflops_per_image"]))
    if result["train_speedup"] is None:
        return
    print(
        f"\ntrain_speedup (DRNet images/s / dense images/s) = {result['train_speedup']:.3g} at batch {result['batch']}, "
        f"Gumbel temperature {result['temperature']}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.train_throughput", description=__doc__.split("\n\n")[0])
    add_settings_args(parser)
    parser.add_argument("--batch", type=positive_int, default=128, help="training batch size (the recipe's default)")
    parser.add_argument("--models", type=model_names, default=MODELS, help=f"subset of {','.join(MODELS)}")
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    info = machine(settings)
    result = run(settings, args.batch, models={name: load_model(name) for name in args.models})
    report(args, info, result, "training throughput: DRNet vs dense supernet", show)


if __name__ == "__main__":
    main()
