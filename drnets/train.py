"""Training loop for DRNets and the static baselines, on one process or under torchrun.

Recipe (ours): AdamW with a one-cycle learning rate, cross-entropy plus, for routed
models, ``cost_weight`` x the expected FLOPs fraction (router-weighted branch FLOPs
over the dense branches' FLOPs). The Gumbel-Softmax temperature anneals
geometrically from ``tau_start`` to ``tau_end``. Every epoch reseeds from
(seed, epoch, rank), so a run resumed from an epoch checkpoint repeats the
uninterrupted run bit for bit on CPU (with the same number of threads: another
thread count may sum convolutions in another order).

Under torchrun every rank takes its share of one shared permutation per epoch, DDP
averages the gradients, and at each epoch end the batch-norm running statistics are
averaged over the ranks (as timm's ``distribute_bn``) and the ranks' weights are
checked to be identical; only rank 0 writes files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from .augment import photo_augment
from .checkpoint import atomic_write, atomic_write_text, load_checkpoint, save_checkpoint
from .data import ImageSet, augment, load_dataset, normalization, to_input
from .device import cudnn_suits_training, pick_device
from .losses import budget_step, cost_ramp, training_loss
from .model import DRNet, create_model
from .photo_pool import OUTLIER, mixed, prepared_outliers, prepared_pool

STATE_FILE = "train_state.pt"
STATE_KEYS = {"model", "optimizer", "scheduler", "epoch", "history"}
# Recipe fields that may change between an interrupted run and its --resume.
RESUMABLE_CHANGES = ("out", "log_every", "data_root", "cudnn", "layout")
COST_SCALINGS = ("uniform", "confidence", "rank")
DIFFICULTY_RANKINGS = ("image", "class")  # what difficulty_loss ranks: each image, or each image's class
AUGMENTATIONS = ("crop-flip", "photo")  # photo = crop-flip, then drnets.augment.photo_augment
LAYOUTS = ("channels_last", "nchw")  # memory formats a GPU may train in (bench/ takes the same --layout)
EXECUTIONS = ("sparse", "masked")  # how a routed DRNet runs its branches in training (TrainConfig.execution)


@dataclass(frozen=True)
class TrainConfig:
    model: str = "drnet"
    data: str = "fashion-mnist"
    data_root: str | None = None
    out: str = "runs/drnet"
    epochs: int = 3
    batch_size: int = 128  # per process; the global batch under torchrun is world_size x this
    lr: float = 3e-3  # peak of the one-cycle schedule
    weight_decay: float = 1e-4
    cost_weight: float = 0.5  # lambda: weight of the expected-FLOPs term (0 = accuracy only)
    # How each image's cost term is scaled (mean 1 over the batch, so lambda keeps its meaning):
    # "uniform" charges every image the same; "confidence" by the model's detached probability
    # of its true class; "rank" by that probability's rank in the batch, linearly from
    # 1 - cost_contrast (the hardest image) to 1 + cost_contrast (the easiest), whatever the
    # probabilities' spread. A contrast above 1 pays the hardest images for spending FLOPs.
    cost_scaling: str = "uniform"
    cost_contrast: float = 1.0
    # Charge pooling branches pool_price x a 3x3 depthwise conv's FLOPs in the cost term (0 = FLOPs
    # only): they cost no FLOPs but real time, and a router told they are free prefers them.
    pool_price: float = 0.0
    # > 0 adds ``difficulty_loss``: each image's cost relative to the batch mean is pulled towards
    # 1 + spread (the batch's hardest image) ... 1 - spread (its easiest).
    difficulty_spread: float = 0.0
    difficulty_by: str = "image"  # rank images by their own confidence, or by their class's mean ("class")
    tau_start: float = 1.0  # Gumbel-Softmax temperature at the first step
    tau_end: float = 0.3  # ... and at the last step
    threshold: float = 0.1  # routing threshold used in training and stored for inference
    # Budget-conditioned DRNets (model config ``budgeted``): each step trains budgets c drawn from
    # [budget_min, budget_max] (shares of the routed branches' FLOPs) and pulls the batch-mean
    # expected cost to c, instead of the flat lambda x cost push. With ``sandwich`` every step trains
    # the largest, the smallest and one random budget, the smaller two also distilled from the
    # largest one's answers (US-Nets' sandwich rule and in-place distillation).
    budget_min: float = 0.05
    budget_max: float = 0.6
    sandwich: bool = True
    # Share of the steps before the cost term switches on (then it ramps up over a tenth of the run):
    # the branches learn something before the routers learn to cut them (Li et al. switch on at 40%).
    cost_warmup: float = 0.0
    seed: int = 0
    # Start from another checkpoint's weights wherever a name and shape match (BlockDrop learns its
    # policy on a trained backbone): a budgeted DRNet takes a softmax DRNet's stem, branches and
    # classifier; its routers, which the checkpoint lacks, start fresh.
    init_from: str | None = None
    # Knowledge distillation (Hinton et al. 2015): a trained checkpoint on the same data whose answers,
    # softened by teacher_temperature, make up teacher_weight of the loss on labelled images: the
    # shipped DRNet's last stage learns from MobileNetV2, which reads photos better (docs/MODELS.md).
    teacher: str | None = None
    teacher_weight: float = 0.5
    teacher_temperature: float = 2.0
    limit: int | None = None  # train on the first N images only (smoke tests)
    augment: str = "crop-flip"  # "photo" adds what upload preprocessing cannot undo (drnets.augment)
    # `drnets photos --split train` folders, prepared as uploads are, mixed in as this share of the
    # training set (drnets.photo_pool); photo augmentation leaves them as the upload path made them.
    photo_pool: list[str] = field(default_factory=list)
    photo_share: float = 0.25
    # Outlier exposure: `drnets nongarments` folders, prepared as uploads are, mixed in as this share
    # of the training set; their loss (weight outlier_weight) pulls the answer towards uniform.
    outlier_pool: list[str] = field(default_factory=list)
    outlier_share: float = 0.1
    outlier_weight: float = 0.5
    model_overrides: str = "{}"  # JSON dict of model-config overrides, e.g. '{"channels": 16}'
    log_every: int = 50
    # CUDA only, how to run rather than what to learn: True/False forces cuDNN's convolutions on or
    # off; None leaves them off for a routed DRNet only (drnets.device.cudnn_suits_training).
    cudnn: bool | None = None
    # CUDA only: "channels_last" (NHWC) or "nchw" maps and weights; None follows the convolutions:
    # NHWC for cuDNN, NCHW for PyTorch's own kernels, which take NCHW only. The CPU trains NCHW.
    layout: str | None = None
    # Routed DRNets: "sparse" runs each branch on the samples that kept it; "masked" runs every branch
    # on every sample times its mask (the same forward, batch norm aside: a branch's statistics come from
    # the whole batch). Masked keeps every convolution's shape fixed, so a GPU can train with cuDNN,
    # whose execution plans are built once per shape (drnets.device.cudnn_suits_training).
    execution: str = "sparse"

    def __post_init__(self) -> None:
        if self.cost_scaling not in COST_SCALINGS:
            raise ValueError(f"cost_scaling must be one of {', '.join(COST_SCALINGS)}, got {self.cost_scaling!r}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if self.execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {', '.join(EXECUTIONS)}, got {self.execution!r}")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.difficulty_by not in DIFFICULTY_RANKINGS:
            raise ValueError(
                f"difficulty_by must be one of {', '.join(DIFFICULTY_RANKINGS)}, got {self.difficulty_by!r}"
            )
        if not 0 <= self.difficulty_spread < 1:
            raise ValueError(f"difficulty_spread must lie in [0, 1), got {self.difficulty_spread}")
        if not self.cost_contrast >= 0:
            raise ValueError(f"cost_contrast must be >= 0, got {self.cost_contrast}")
        # Written "not x > 0" so that NaN is refused too.
        for name in ("lr", "tau_start", "tau_end"):  # the temperature anneals geometrically: both ends > 0
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "cost_weight", "pool_price", "outlier_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.budget_min <= self.budget_max < 1:
            raise ValueError(
                f"budgets must satisfy 0 < budget_min <= budget_max < 1, got {self.budget_min}, {self.budget_max}"
            )
        for name in ("photo_share", "outlier_share"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in (0, 1), got {getattr(self, name)}")
        if not 0 < self.teacher_weight <= 1:
            raise ValueError(f"teacher_weight must lie in (0, 1], got {self.teacher_weight}")
        if not self.teacher_temperature > 0:
            raise ValueError(f"teacher_temperature must be > 0, got {self.teacher_temperature}")
        if not 0 <= self.cost_warmup < 1:
            raise ValueError(f"cost_warmup must lie in [0, 1), got {self.cost_warmup}")

    def overrides(self) -> dict[str, Any]:
        try:
            value = json.loads(self.model_overrides)
        except json.JSONDecodeError as err:
            raise ValueError(f"--model-config must be a JSON object: {err}") from None
        if not isinstance(value, dict):
            raise ValueError("--model-config must be a JSON object, e.g. '{\"channels\": 16}'")
        return value


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed torch; on CPU also ask for deterministic kernels (the bit-exact resume guarantee).

    On a GPU determinism is not promised: the deterministic ``index_add_`` that scatters
    routed samples back is several times slower there.
    """
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)


def seed_epoch(cfg: TrainConfig, epoch: int, rank: int) -> torch.Generator:
    """Reseed the global RNG (Gumbel noise) and return this rank's augmentation generator.

    Every rank draws the same Gumbel noise stream; augmentation differs per rank.
    """
    torch.manual_seed(cfg.seed * 1000 + epoch)
    return torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 31 + rank)


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
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> torch.Tensor:
    """This rank's sample order for an epoch: one shared permutation, split round-robin."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g)
    per_rank = math.ceil(n / world)
    order = torch.cat([order, order[: per_rank * world - n]])  # pad so every rank gets equal batches
    return order[rank::world]


def make_batch(
    data: ImageSet,
    idx: torch.Tensor,
    gen: torch.Generator,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augmentation: str = "crop-flip",
    photos_from: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented, normalised inputs [B, C, H, W] and labels [B] for the samples ``idx``; samples
    from ``photos_from`` on are prepared photos and get no photo augmentation."""
    images = augment(data.images[idx], gen)
    if augmentation == "photo":
        plain = idx < (photos_from if photos_from is not None else len(data))
        images[plain] = photo_augment(images[plain], gen)
    return to_input(images, mean, std), data.labels[idx]


def build_model(cfg: TrainConfig, data: ImageSet) -> nn.Module:
    """The model the recipe trains, sized to the data; call after ``seed_everything``."""
    overrides = {"in_channels": data.images.shape[-1], "num_classes": len(data.class_names), **cfg.overrides()}
    if cfg.model == "drnet":
        overrides.setdefault("threshold", cfg.threshold)
    return create_model(cfg.model, **overrides)


def warm_start(model: nn.Module, checkpoint: str) -> list[str]:
    """Copy ``checkpoint``'s weights into ``model`` wherever a name and shape match; returns the names
    of ``model``'s tensors left as initialised. Refuses a checkpoint of another architecture."""
    loaded = load_checkpoint(checkpoint)
    if type(loaded.model) is not type(model):
        raise ValueError(f"--init-from {checkpoint}: it holds a {loaded.name}, not a {type(model).__name__}")
    source, target = loaded.model.state_dict(), model.state_dict()
    matched = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    return [k for k in target if k not in matched]


def load_teacher(
    checkpoint: str, class_names: list[str], mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> nn.Module:
    """``--teacher``'s model, frozen in eval mode; refuses one trained on other classes or normalisation,
    whose answers would not be about these images."""
    loaded = load_checkpoint(checkpoint, device)
    if loaded.class_names != list(class_names):
        raise ValueError(
            f"--teacher {checkpoint}: its classes {loaded.class_names} are not the data's {list(class_names)}"
        )
    seen = (loaded.training.get("mean"), loaded.training.get("std"))
    if seen != (list(mean), list(std)):
        raise ValueError(
            f"--teacher {checkpoint}: trained on inputs normalised by {seen}, not {(list(mean), list(std))}"
        )
    loaded.model.requires_grad_(False)
    return loaded.model


def build_optimizer(cfg: TrainConfig, model: nn.Module, total_steps: int):
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps)
    return optimizer, scheduler


def steps_per_epoch(n: int, world_size: int, batch_size: int) -> int:
    return math.ceil(math.ceil(n / world_size) / batch_size)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def average_buffers(model: nn.Module, world_size: int) -> None:
    """Average batch-norm running statistics over the ranks (integer counters stay integers).

    One all-reduce per dtype: a tiny model has hundreds of buffers, and one collective each
    would cost more than the epoch.
    """
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buffer in model.buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    for dtype, buffers in by_dtype.items():
        flat = torch.cat([b.detach().reshape(-1) for b in buffers])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat / world_size if dtype.is_floating_point else flat // world_size
        for buffer, part in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
            buffer.copy_(part.view_as(buffer))


def _check_ranks_agree(model: nn.Module, epoch: int) -> None:
    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, weights_digest(model))
    if len(set(digests)) != 1:
        raise RuntimeError(f"DDP ranks hold different weights after epoch {epoch}: {digests}")


def _save_state(path: Path, model: nn.Module, optimizer, scheduler, epoch: int, history: list[dict], cfg) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": torch.tensor(epoch),
        "history": json.dumps(history),
        "recipe": json.dumps(asdict(cfg)),
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_state(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no {STATE_FILE} in {path.parent}; start without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never runs pickled code
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:  # truncated or foreign
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"--resume: {path} is not a readable drnets training state: {reason}") from None
    if not isinstance(state, dict) or not set(state) >= STATE_KEYS:
        raise ValueError(f"--resume: {path} is not a readable drnets training state: expected {sorted(STATE_KEYS)}")
    saved = json.loads(state.get("recipe", "{}"))
    changed = [k for k, v in asdict(cfg).items() if k in saved and saved[k] != v and k not in RESUMABLE_CHANGES]
    if changed:
        diffs = ", ".join(f"{k}: {saved[k]!r} -> {getattr(cfg, k)!r}" for k in changed)
        raise ValueError(f"--resume with a different recipe than the interrupted run ({diffs}); use the same flags")
    return state


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train one model; returns the final epoch's metrics. Writes ``cfg.out/`` on rank 0."""
    ctx = DistributedContext()
    cudnn_before = torch.backends.cudnn.enabled  # fit() sets the flag for its model; the caller's comes back
    try:
        _, history = fit(cfg, ctx, resume, progress)
        return history[-1] if history else {}
    finally:
        torch.backends.cudnn.enabled = cudnn_before
        ctx.close()


def fit(
    cfg: TrainConfig, ctx: DistributedContext, resume: bool = False, progress: bool = True
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The training loop; returns the trained model and one metrics row per epoch."""
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"epochs and batch size must be >= 1, got {cfg.epochs} and {cfg.batch_size}")
    out = Path(cfg.out)
    state = _load_state(out / STATE_FILE, cfg) if resume else None  # fail before the data loads
    seed_everything(cfg.seed, ctx.device)
    data = load_dataset(cfg.data, "train", cfg.data_root).subset(cfg.limit)
    channels, h, w = data.images.shape[-1], data.images.shape[1], data.images.shape[2]
    photos_from = len(data)
    if cfg.photo_pool:
        data = mixed(data, prepared_pool(cfg.photo_pool, (channels, h, w), data.class_names), cfg.photo_share)
    if cfg.outlier_pool:
        outliers = prepared_outliers(cfg.outlier_pool, (channels, h, w), data.class_names)
        data = mixed(data, outliers, cfg.outlier_share)
    mean, std = normalization(cfg.data, channels)
    model = build_model(cfg, data).to(ctx.device)
    teacher = load_teacher(cfg.teacher, data.class_names, mean, std, ctx.device) if cfg.teacher else None
    torch.backends.cudnn.enabled = (
        cfg.cudnn if cfg.cudnn is not None else cudnn_suits_training(model, ctx.device, cfg.execution)
    )
    nhwc = ctx.device.type == "cuda" and (cfg.layout == "channels_last" if cfg.layout else torch.backends.cudnn.enabled)
    if nhwc:
        model = model.to(memory_format=torch.channels_last)
    per_epoch = steps_per_epoch(len(data), ctx.world_size, cfg.batch_size)
    total_steps = per_epoch * cfg.epochs
    optimizer, scheduler = build_optimizer(cfg, model, total_steps)
    start_epoch, history = 0, []
    if state is None and cfg.init_from:
        warm_start(model, cfg.init_from)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = int(state["epoch"]), json.loads(state["history"])
    net: nn.Module = model
    if ctx.world_size > 1:
        # Skipped branches get no gradient in a step: DDP must not wait for them. Buffers are
        # averaged once per epoch instead of broadcast from rank 0 at every forward.
        net = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True, forward_sync_buffers=False)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "args.json", json.dumps(asdict(cfg), indent=2))
    # bfloat16 needs no loss scaling; older GPUs fall back to float16 with a GradScaler.
    amp_dtype = torch.bfloat16 if ctx.device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    use_amp = ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    routed = isinstance(model, DRNet)
    budgeted = routed and model.config.budgeted

    def autocast() -> torch.autocast:
        return torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=use_amp)

    for epoch in range(start_epoch, cfg.epochs):
        gen = seed_epoch(cfg, epoch, ctx.rank)
        order = epoch_order(len(data), cfg.seed, epoch, ctx.rank, ctx.world_size)
        net.train()
        # ce loss sum, correct, labelled seen, flops sum, all seen; on the device so a step never waits for the GPU
        sums = torch.zeros(5, dtype=torch.float64, device=ctx.device)
        started = time.perf_counter()
        bar = tqdm(range(per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (progress and ctx.is_main))
        for i in bar:
            batch = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x, y = make_batch(data, batch, gen, mean, std, cfg.augment, photos_from)
            x, y = x.to(ctx.device), y.to(ctx.device)
            if nhwc:
                x = x.contiguous(memory_format=torch.channels_last)
            step = epoch * per_epoch + i
            temperature = temperature_at(step, total_steps, cfg.tau_start, cfg.tau_end)
            policy = replace(model.default_policy, temperature=temperature) if routed else None
            optimizer.zero_grad(set_to_none=True)
            soft = None
            if teacher is not None:
                with torch.no_grad(), autocast():
                    soft = teacher(x)[0]
            if budgeted:
                ramp = cost_ramp(step, total_steps, cfg.cost_warmup)
                logits, trace, ce = budget_step(net, x, y, policy, cfg, ramp, scaler.scale, autocast, (h, w), soft)
            else:
                with autocast():
                    logits, trace = net(x, policy, execution=cfg.execution) if routed else net(x, policy)
                    loss, ce = training_loss(net, logits, trace, y, cfg, h, w, soft)
                scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            with torch.no_grad():
                labelled = (y != OUTLIER).sum().double()
                sums += torch.stack([
                    ce.double() * labelled, (logits.argmax(1) == y).sum().double(), labelled,
                    trace.flops.double().sum().to(ctx.device), torch.tensor(float(len(y)), dtype=torch.float64, device=ctx.device),
                ])  # fmt: skip
            if i % cfg.log_every == 0 and progress and ctx.is_main:
                bar.set_postfix(
                    loss=f"{sums[0] / sums[2]:.3f}",
                    acc=f"{sums[1] / sums[2]:.3f}",
                    mflops=f"{sums[3] / sums[4] / 1e6:.1f}",
                )
        if ctx.world_size > 1:
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)  # log the whole epoch, not rank 0's share
            average_buffers(model, ctx.world_size)
            _check_ranks_agree(model, epoch + 1)
        loss_sum, correct, labelled, flops_sum, seen = sums.cpu().tolist()
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / labelled,
            "train_acc": correct / labelled,
            "train_flops_mean": flops_sum / seen,
            "seconds": time.perf_counter() - started,
            "lr": scheduler.get_last_lr()[0],
            "temperature": temperature if routed else None,
            "weights_sha256": weights_digest(model),
        }
        history.append(row)
        if ctx.is_main:
            _save_state(out / STATE_FILE, model, optimizer, scheduler, epoch + 1, history, cfg)
            save_checkpoint(
                out / "model", model, cfg.model, data.class_names,
                {"dataset": cfg.data, "mean": list(mean), "std": list(std), "input_size": [channels, h, w],
                 "epochs_done": epoch + 1, "history": history, "recipe": asdict(cfg), "world_size": ctx.world_size},
            )  # fmt: skip
            # Rewritten whole from the history, so a kill between the saves never loses a row.
            atomic_write_text(out / "log.csv", _csv(history))
    return model, history


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    columns = list(dict.fromkeys(key for row in rows for key in row))  # rows of older runs may lack a column
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
