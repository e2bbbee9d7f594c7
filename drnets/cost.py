"""Per-sample FLOPs and parameters, computed analytically from the model and the route.

Convention everywhere in drnets: FLOPs = 2 x multiply-accumulates of convolutions and
linear layers, as ``torch.utils.flop_counter.FlopCounterMode`` counts them; pooling,
batch norm, activations and additions are not counted. ``measure_flops`` runs the
counter itself so tests can check the formulas against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class CostTable:
    """Cost of every part of a network at one input size.

    Attributes:
        base_flops, base_params: stem and classifier (and, for a static network, everything).
        cell_flops, cell_params: [L] preprocessing + router of each cell, paid by every sample.
        branch_flops, branch_params: [L, E, K] cost of each candidate branch when it runs.
        branch_pooled: [L, E, K] values a pooling branch writes per sample (C x H' x W'), 0 for
            the other branches: work that FLOPs do not count, for a cost loss that prices it.
    """

    base_flops: int
    base_params: int
    cell_flops: torch.Tensor
    cell_params: torch.Tensor
    branch_flops: torch.Tensor
    branch_params: torch.Tensor
    branch_pooled: torch.Tensor

    @property
    def dense_flops(self) -> int:
        return self.base_flops + int(self.cell_flops.sum()) + int(self.branch_flops.sum())

    @property
    def dense_params(self) -> int:
        return self.base_params + int(self.cell_params.sum()) + int(self.branch_params.sum())

    def route_cost(self, ran: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cost of a route ``ran`` [B, L, E, K] -> (cell_flops [B, L], cell_params [B, L], flops [B], params [B])."""
        used = ran.detach().cpu().long()
        cell_flops = self.cell_flops + (used * self.branch_flops).sum(dim=(2, 3))
        cell_params = self.cell_params + (used * self.branch_params).sum(dim=(2, 3))
        return cell_flops, cell_params, self.base_flops + cell_flops.sum(1), self.base_params + cell_params.sum(1)

    def expected_flops_fraction(self, gates: torch.Tensor, pool_price: float = 0.0) -> torch.Tensor:
        """Differentiable cost [B]: gate-weighted branch FLOPs as a fraction of the dense branches' FLOPs.

        ``pool_price`` > 0 also charges each pooling branch ``pool_price`` x the FLOPs of a 3x3
        depthwise convolution with its output shape (18 per output value): pools do no
        multiply-adds, but on a CPU they take about as long as the convolution branches.
        """
        flops = self.branch_flops.to(gates.device, gates.dtype)
        prices = flops + (18 * pool_price) * self.branch_pooled.to(gates.device, gates.dtype)
        return (gates * prices).sum(dim=(1, 2, 3)) / flops.sum().clamp_min(1)


def static_cost_table(base_flops: int, base_params: int) -> CostTable:
    """Cost table of a network without routing (every sample pays everything)."""
    empty = torch.zeros(0, dtype=torch.long)
    no_branches = empty.view(0, 0, 0)
    return CostTable(base_flops, base_params, empty, empty, no_branches, no_branches, no_branches)


def measure_flops(model: Callable[[torch.Tensor], object], x: torch.Tensor) -> int:
    """FLOPs that FlopCounterMode observes in one forward pass of ``model`` (a module, or a function of
    the input such as ``lambda x: model(x, policy)``); only what actually ran counts."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops()
