"""RouterNet: per-input importance weights for every candidate branch of a cell.

The paper (Cai et al., "Dynamic Routing Networks") gives each branch an instance-wise
weight, recalibrates the weights with Gumbel-Softmax and bypasses branches of
insignificant weight. The router shape (pool -> FC -> ReLU -> FC) and the selection
rules below are our choices, documented in README "What we fill in".

Two kinds of gate (``GATES``): "softmax", the paper's recalibration, one distribution over an
edge's branches; "sigmoid", one independent gate per branch (ConvNet-AIG, Li et al.'s dynamic
routing), which cannot collapse into one branch per edge the way an annealed softmax does. A
router may also read a budget c (the share of the routed branches' FLOPs to spend): every gate
logit moves by a learned multiple of logit(c), so one set of weights serves every budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class RoutingPolicy:
    """How gate weights become run/skip decisions at inference.

    A frozen value passed to ``forward``, never state on a shared model, so one set of weights
    serves every session and every sweep point at once.

    threshold: keep a branch if its weight >= threshold (0 keeps every branch).
    top_k: if set, additionally keep at most the k heaviest branches of each edge.
    temperature: Gumbel-Softmax temperature in training (the trainer anneals it); unused at inference.
    budget: for budget-conditioned routers, the share c in (0, 1) of the routed branches' FLOPs to
        aim at (None: the model's own default); other routers ignore it.
    """

    threshold: float = 0.1
    top_k: int | None = None
    temperature: float = 1.0
    budget: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.budget is not None and not 0.0 < self.budget < 1.0:
            raise ValueError(f"budget must lie in (0, 1), got {self.budget}")


GATES = ("softmax", "sigmoid")


def gate_values(logits: torch.Tensor, kind: str, temperature: float, training: bool) -> torch.Tensor:
    """Gate values [B, E, K] in [0, 1] from router logits.

    softmax: Gumbel-Softmax in training, softmax at inference (``recalibrate``). sigmoid: each branch
    on its own; logistic noise in training makes the hard decision a sample (a Gumbel-sigmoid at
    ``temperature``, as ConvNet-AIG), so a gate that is off still gets tried now and then.
    """
    if kind == "softmax":
        return recalibrate(logits, temperature, training)
    if training:
        u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
        logits = logits + torch.log(u) - torch.log1p(-u)
    return torch.sigmoid(logits / temperature)


def branch_scale(gates: torch.Tensor, ran: torch.Tensor, kind: str) -> torch.Tensor:
    """What each kept branch's output is multiplied by [B, E, K].

    softmax: its gate weight (the paper). sigmoid: the hard decision, with the gate's gradient passed
    straight through (value ran + g - g), so training and inference sum the same maps; divided by the
    number of branches K, so that an edge with every gate open starts at the scale a fresh softmax router
    gives (K branches of weight 1/K), not K times it.
    """
    if kind == "softmax":
        return gates
    return (ran.to(gates.dtype) + gates - gates.detach()) / gates.shape[-1]


def budget_logit(budget: float) -> float:
    """logit(c): the input a budget-conditioned router shifts its gates by."""
    return math.log(budget / (1 - budget))


def recalibrate(logits: torch.Tensor, temperature: float, training: bool) -> torch.Tensor:
    """Gate weights [B, E, K] from router logits: Gumbel-Softmax in training, softmax at inference."""
    if training and temperature > 0:
        return F.gumbel_softmax(logits, tau=temperature, hard=False, dim=-1)
    return logits.softmax(dim=-1)


def select(weights: torch.Tensor, policy: RoutingPolicy) -> torch.Tensor:
    """Bool mask [B, E, K] of the branches to run; a pure function of the weights."""
    keep = weights >= policy.threshold
    if policy.top_k is not None and policy.top_k < weights.shape[-1]:
        top = weights.topk(policy.top_k, dim=-1).indices
        in_top = torch.zeros_like(keep).scatter_(-1, top, True)
        keep = keep & in_top
    return keep


def pool_maps(maps: tuple[torch.Tensor, ...], grid: int, relu: bool = False) -> torch.Tensor:
    """What a router reads [B, sum of C * grid^2]: each map (rectified if ``relu``) averaged over a
    grid x grid layout.

    Stem-reading routers all read the same pooled stem, so the model pools it once for every cell.
    Without the ReLU, the average of a convolution + BN map is an affine function of the region's
    mean brightness (up to borders): one number per region, whatever the channel count.
    """
    return torch.cat([F.adaptive_avg_pool2d(F.relu(m) if relu else m, grid).flatten(1) for m in maps], dim=1)


class Router(nn.Module):
    """Instance-aware router: average-pooled feature maps -> MLP -> logits [B, E, K].

    ``grid`` > 1 pools each map onto a grid x grid layout instead of one average, so the
    router sees where things are (a shoe's silhouette is not a shirt's), not only how much.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        num_edges: int,
        num_branches: int,
        grid: int = 1,
        relu: bool = False,
        budgeted: bool = False,
        open_bias: float = 0.0,
    ):
        super().__init__()
        self.num_edges, self.num_branches, self.grid, self.relu = num_edges, num_branches, grid, relu
        self.fc1 = nn.Linear(in_channels * grid * grid, hidden)
        self.fc2 = nn.Linear(hidden, num_edges * num_branches)
        if open_bias:  # sigmoid gates start open (ConvNet-AIG, Li et al.): every branch learns before any is cut
            nn.init.constant_(self.fc2.bias, open_bias)
        # How far each gate's logit moves per unit of logit(budget); learned, starting at 1.
        self.budget_scale = nn.Parameter(torch.ones(num_edges * num_branches)) if budgeted else None

    def forward(self, *maps: torch.Tensor, budget: float | None = None) -> torch.Tensor:
        """Logits from the feature maps it reads (the stem output, or the cell inputs)."""
        return self.logits(pool_maps(maps, self.grid, self.relu), budget)

    def logits(self, pooled: torch.Tensor, budget: float | None = None) -> torch.Tensor:
        """Logits [B, E, K] from maps already pooled by ``pool_maps`` with this router's grid, shifted by
        the budget where the router reads one."""
        logits = self.fc2(F.relu(self.fc1(pooled)))
        if self.budget_scale is not None and budget is not None:
            logits = logits + self.budget_scale * budget_logit(budget)
        return logits.view(-1, self.num_edges, self.num_branches)

    def flops(self) -> int:
        return 2 * (self.fc1.in_features * self.fc1.out_features + self.fc2.in_features * self.fc2.out_features)


class StaticRouter(nn.Module):
    """Input-independent logits (a DARTS-style mixed op): the dense supernet's 'router'."""

    def __init__(self, num_edges: int, num_branches: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(num_edges, num_branches))

    def forward(self, *maps: torch.Tensor, budget: float | None = None) -> torch.Tensor:
        return self.logits(maps[0])

    def logits(self, pooled: torch.Tensor, budget: float | None = None) -> torch.Tensor:
        """The same logits for each of the batch's inputs (``pooled`` only gives the batch size)."""
        return self.alpha.unsqueeze(0).repeat(pooled.shape[0], 1, 1)  # not a view: FlopCounterMode needs a grad_fn

    def flops(self) -> int:
        return 0
