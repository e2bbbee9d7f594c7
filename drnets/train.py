"""Training loop for DRNets and the static baselines, on one process or under torchrun.

Recipe (ours): AdamW with a one-cycle learning rate, cross-entropy plus, for routed
models, ``cost_weight`` x the expected FLOPs fraction (router-weighted branch FLOPs
over the dense branches' FLOPs). The Gumbel-Softmax temperature anneals
geometrically from ``tau_start`` to ``tau_end``. Every epoch reseeds from
(seed, epoch), so a run resumed from an epoch checkpoint repeats the uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .checkpoint import atomic_write, atomic_write_text, save_checkpoint
from .data import ImageSet, augment, load_dataset, normalization, to_input
from .model import DRNet, create_model
from .device import pick_device

STATE_FILE = "train_state.pt"


@dataclass(frozen=True)
class TrainConfig:
    model: str = "drnet"
    data: str = "fashion-mnist"
    data_root: str | None = None
    out: str = "runs/drnet"
    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-3  # peak of the one-cycle schedule
    weight_decay: float = 1e-4
    cost_weight: float = 0.5  # lambda: weight of the expected-FLOPs term (0 = accuracy only)
    tau_start: float = 1.0  # Gumbel-Softmax temperature at the first step
    tau_end: float = 0.3  # ... and at the last step
    threshold: float = 0.1  # routing threshold used in training and stored for inference
    seed: int = 0
    limit: int | None = None  # train on the first N images only (smoke tests)
    model_overrides: str = "{}"  # JSON dict of model-config overrides, e.g. '{"channels": 16}'
    log_every: int = 50

    def overrides(self) -> dict[str, Any]:
        try:
            value = json.loads(self.model_overrides)
        except json.JSONDecodeError as err:
            raise ValueError(f"--model-config must be a JSON object: {err}") from None
        if not isinstance(value, dict):
            raise ValueError("--model-config must be a JSON object, e.g. '{\"channels\": 16}'")
        return value


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def temperature_at(step: int, total: int, start: float, end: float) -> float:
    """Geometric annealing from ``start`` to ``end`` over ``total`` steps."""
    return start * (end / start) ** (step / max(1, total - 1))


class DistributedContext:
    """Rank, world size and device; set up from torchrun's environment when present."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = pick_device()
        if self.world_size > 1:
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.world_size > 1:
            dist.destroy_process_group()


def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> torch.Tensor:
    """This rank's sample order for an epoch: one shared permutation, split round-robin."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g)
    per_rank = math.ceil(n / world)
    order = torch.cat([order, order[: per_rank * world - n]])  # pad so every rank gets equal batches
    return order[rank::world]


def _loss(model: nn.Module, logits: torch.Tensor, trace, labels: torch.Tensor, cfg: TrainConfig, h: int, w: int):
    ce = F.cross_entropy(logits, labels)
    core = model.module if hasattr(model, "module") else model
    if isinstance(core, DRNet) and core.config.dynamic and cfg.cost_weight > 0:
        cost = core.cost_table(h, w).expected_flops_fraction(trace.gates).mean()
        return ce + cfg.cost_weight * cost, ce
    return ce, ce


def _save_state(path: Path, model: nn.Module, optimizer, scheduler, epoch: int, history: list[dict]) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": torch.tensor(epoch),
        "history": json.dumps(history),
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train one model; returns the final epoch's metrics. Writes ``cfg.out/`` on rank 0."""
    ctx = DistributedContext()
    try:
        return _train(cfg, ctx, resume, progress)
    finally:
        ctx.close()


def _train(cfg: TrainConfig, ctx: DistributedContext, resume: bool, progress: bool) -> dict[str, Any]:
    out = Path(cfg.out)
    seed_everything(cfg.seed)
    data = load_dataset(cfg.data, "train", cfg.data_root).subset(cfg.limit)
    channels = data.images.shape[-1]
    mean, std = normalization(cfg.data, channels)
    overrides = {"in_channels": channels, "num_classes": len(data.class_names), **cfg.overrides()}
    if cfg.model in ("drnet",):
        overrides.setdefault("threshold", cfg.threshold)
    model = create_model(cfg.model, **overrides).to(ctx.device)
    if ctx.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = math.ceil(math.ceil(len(data) / ctx.world_size) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps)
    start_epoch, history = 0, []
    state_path = out / STATE_FILE
    if resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"--resume: no {STATE_FILE} in {out}; start without --resume")
        state = torch.load(state_path, map_location="cpu", weights_only=True)  # never runs pickled code
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = int(state["epoch"]), json.loads(state["history"])
    net: nn.Module = model
    if ctx.world_size > 1:
        # Skipped branches get no gradient in a step: DDP must not wait for them.
        net = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "args.json", json.dumps(asdict(cfg), indent=2))
    use_amp = ctx.device.type == "cuda"
    h, w = data.images.shape[1:3]
    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(cfg.seed * 1000 + epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 31 + ctx.rank)
        order = epoch_order(len(data), cfg.seed, epoch, ctx.rank, ctx.world_size)
        net.train()
        sums = {"loss": 0.0, "correct": 0, "seen": 0, "flops": 0.0}
        started = time.perf_counter()
        batches = range(0, len(order), cfg.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (progress and ctx.is_main))
        for i, start in enumerate(bar):
            idx = order[start : start + cfg.batch_size]
            x = to_input(augment(data.images[idx], gen), mean, std)
            x, y = x.to(ctx.device), data.labels[idx].to(ctx.device)
            if ctx.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            if isinstance(model, DRNet):
                model.temperature = temperature_at(epoch * steps_per_epoch + i, total_steps, cfg.tau_start, cfg.tau_end)
            with torch.autocast(ctx.device.type, enabled=use_amp):
                logits, trace = net(x)
                loss, ce = _loss(net, logits, trace, y, cfg, h, w)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            sums["loss"] += ce.item() * len(y)
            sums["correct"] += int((logits.argmax(1) == y).sum())
            sums["seen"] += len(y)
            sums["flops"] += float(trace.flops.float().sum())
            if i % cfg.log_every == 0:
                bar.set_postfix(
                    loss=f"{sums['loss'] / sums['seen']:.3f}",
                    acc=f"{sums['correct'] / sums['seen']:.3f}",
                    mflops=f"{sums['flops'] / sums['seen'] / 1e6:.1f}",
                )
        row = {
            "epoch": epoch + 1,
            "train_loss": sums["loss"] / sums["seen"],
            "train_acc": sums["correct"] / sums["seen"],
            "train_flops_mean": sums["flops"] / sums["seen"],
            "seconds": time.perf_counter() - started,
            "lr": scheduler.get_last_lr()[0],
            "temperature": getattr(model, "temperature", None),
        }
        history.append(row)
        if ctx.is_main:
            _save_state(state_path, model, optimizer, scheduler, epoch + 1, history)
            save_checkpoint(
                out / "model", model.cpu(), cfg.model, data.class_names,
                {"dataset": cfg.data, "mean": list(mean), "std": list(std), "input_size": [channels, h, w],
                 "epochs_done": epoch + 1, "history": history, "recipe": asdict(cfg), "world_size": ctx.world_size},
            )  # fmt: skip
            model.to(ctx.device)
            _append_csv(out / "log.csv", row)
    return history[-1] if history else {}


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
