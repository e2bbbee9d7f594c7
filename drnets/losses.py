"""The training loss: cross-entropy plus what teaches the routers to spend compute well.

A flat lambda x expected cost (``training_loss``, with per-image scaling and the difficulty term),
or, for budget-conditioned DRNets, the batch-mean expected cost pulled to budgets drawn per step
(``budget_step``: the sandwich rule with in-place distillation, US-Nets). Costs are the router-weighted
branch FLOPs as a fraction of the dense branches' FLOPs (``CostTable.expected_flops_fraction``).
Images labelled ``OUTLIER`` (outlier exposure) take no cross-entropy: ``outlier_loss`` pulls their
answers towards uniform, and they pay for compute like every other image. With a teacher checkpoint,
labelled images also learn its softened answers (``label_loss``, knowledge distillation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .model import DRNet
from .photo_pool import OUTLIER
from .router import RoutingPolicy

if TYPE_CHECKING:
    from .train import TrainConfig


def training_loss(
    model: nn.Module,
    logits: torch.Tensor,
    trace,
    labels: torch.Tensor,
    cfg: TrainConfig,
    h: int,
    w: int,
    teacher_logits: torch.Tensor | None = None,
):
    """(loss to minimise, cross-entropy part); ``model`` may be wrapped in DDP."""
    known = labels != OUTLIER
    ce = F.cross_entropy(logits[known], labels[known])
    loss = label_loss(ce, logits, labels, teacher_logits, cfg) + cfg.outlier_weight * outlier_loss(logits, labels)
    core = model.module if hasattr(model, "module") else model
    if isinstance(core, DRNet) and core.config.dynamic and cfg.cost_weight > 0:
        cost = core.cost_table(h, w).expected_flops_fraction(trace.gates, cfg.pool_price).float()  # [B]
        loss = loss + cfg.cost_weight * (cost[known] * cost_scale(logits[known], labels[known], cfg)).mean()
        if cfg.difficulty_spread > 0:
            loss = loss + difficulty_loss(
                cost[known], logits[known], labels[known], cfg.difficulty_spread, cfg.difficulty_by
            )
    return loss, ce


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 x KL(teacher || student), both softened by temperature T (Hinton et al. 2015); the T^2 keeps
    the gradients' scale whatever T is."""
    student = (logits.float() / temperature).log_softmax(1)
    teacher = (teacher_logits.float() / temperature).softmax(1)
    return F.kl_div(student, teacher, reduction="batchmean") * temperature**2


def label_loss(
    ce: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    cfg: TrainConfig,
) -> torch.Tensor:
    """The labelled images' loss: the cross-entropy, or, with a teacher's answers, (1 - w) x it plus
    w x the distillation loss, w = ``cfg.teacher_weight``."""
    if teacher_logits is None:
        return ce
    known = labels != OUTLIER
    kd = distillation_loss(logits[known], teacher_logits[known], cfg.teacher_temperature)
    return (1 - cfg.teacher_weight) * ce + cfg.teacher_weight * kd


def outlier_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy from the uniform distribution to the answers on ``OUTLIER`` images (0 without
    any): the model learns to be unsure of what it has no class for (Hendrycks et al. 2019)."""
    outliers = labels == OUTLIER
    if not outliers.any():
        return logits.new_zeros(())
    return -logits[outliers].float().log_softmax(1).mean()


def cost_ramp(step: int, total: int, warmup: float) -> float:
    """0 before ``warmup`` x total steps, then linearly to 1 over the next tenth of the run."""
    return min(1.0, max(0.0, (step / max(1, total) - warmup) / 0.1)) if warmup > 0 else 1.0


def step_budgets(cfg: TrainConfig) -> list[float]:
    """The budgets one step trains, largest first (from the global RNG, which each epoch reseeds)."""
    c = cfg.budget_min + (cfg.budget_max - cfg.budget_min) * float(torch.rand(()))
    return [cfg.budget_max, cfg.budget_min, c] if cfg.sandwich else [c]


def budget_loss(
    model: nn.Module,
    logits: torch.Tensor,
    trace,
    labels: torch.Tensor,
    budget: float,
    largest: torch.Tensor | None,
    cfg: TrainConfig,
    ramp: float,
    h: int,
    w: int,
    teacher_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, cross-entropy) of one budget's pass: labels (and the largest budget's answers, for every
    budget but the largest; else a teacher checkpoint's answers, if any), outliers, the batch-mean
    expected cost pulled to ``budget``, and the difficulty term."""
    known = labels != OUTLIER
    ce = F.cross_entropy(logits[known], labels[known])
    if largest is not None:
        kd = F.kl_div(logits.float().log_softmax(1), largest.float().softmax(1), reduction="batchmean")
        loss = 0.5 * (ce + kd)
    else:
        loss = label_loss(ce, logits, labels, teacher_logits, cfg)
    loss = loss + cfg.outlier_weight * outlier_loss(logits, labels)
    core = model.module if hasattr(model, "module") else model
    cost = core.cost_table(h, w).expected_flops_fraction(trace.gates, cfg.pool_price).float()  # [B]
    loss = loss + ramp * cfg.cost_weight * (cost.mean() - budget) ** 2
    if cfg.difficulty_spread > 0:
        loss = loss + ramp * difficulty_loss(
            cost[known], logits[known], labels[known], cfg.difficulty_spread, cfg.difficulty_by
        )
    return loss, ce


def budget_step(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    policy: RoutingPolicy,
    cfg: TrainConfig,
    ramp: float,
    scale: Callable[[torch.Tensor], torch.Tensor],
    autocast: Callable[[], Any],
    size: tuple[int, int],
    teacher_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """One step's passes, one per budget of ``step_budgets``, each backpropagated before the next (one
    graph in memory at a time); the gradients add up for one optimizer step. Returns the largest
    budget's (logits, trace, cross-entropy) for the logs."""
    largest = None
    for budget in step_budgets(cfg):
        with autocast():
            logits, trace = net(x, replace(policy, budget=budget), execution=cfg.execution)
            inplace = largest[0] if largest is not None else None
            loss, ce = budget_loss(net, logits, trace, y, budget, inplace, cfg, ramp, *size, teacher_logits)
        scale(loss).backward()
        if largest is None:
            largest = (logits.detach(), trace, ce.detach())
    return largest


def label_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B]: the model's (detached) probability of each image's label, its confidence."""
    return logits.detach().float().softmax(1).gather(1, labels[:, None]).squeeze(1)


def confidence_rank(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] in [0, 1]: each image's rank in the batch by ``label_probability``; 1 = most confident."""
    return label_probability(logits, labels).argsort().argsort().float() / max(len(labels) - 1, 1)


def class_confidence_rank(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] in [0, 1]: the rank of each image's class among the batch's classes by the model's mean
    (detached) probability of the label; every image of a class gets its class's rank, 1 = easiest."""
    p_true = label_probability(logits, labels)
    classes, index = labels.unique(return_inverse=True)
    class_mean = torch.zeros(len(classes), device=p_true.device).index_add_(0, index, p_true)
    class_mean = class_mean / torch.bincount(index, minlength=len(classes)).float()
    return (class_mean.argsort().argsort().float() / max(len(classes) - 1, 1))[index]


def difficulty_loss(
    cost: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, spread: float, by: str = "image"
) -> torch.Tensor:
    """Pull each image's cost, relative to the batch mean, towards 1 + spread for the hardest image
    (or class, ``by="class"``) of the batch down to 1 - spread for the easiest: the router is asked
    to spend where the model struggles, and must tell such inputs apart to do so."""
    rank = class_confidence_rank(logits, labels) if by == "class" else confidence_rank(logits, labels)
    target = 1 + spread * (1 - 2 * rank)
    return ((cost / cost.mean().detach().clamp_min(1e-6) - target) ** 2).mean()


def cost_scale(logits: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Per-image multiplier [B] (mean 1) on the cost term: how much easy images pay relative to hard ones."""
    if cfg.cost_scaling == "uniform":
        return torch.ones(len(labels), device=logits.device)
    if cfg.cost_scaling == "confidence":
        p_true = label_probability(logits, labels)
        return p_true / p_true.mean().clamp_min(1e-6)
    return 1 + cfg.cost_contrast * (2 * confidence_rank(logits, labels) - 1)
