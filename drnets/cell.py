"""The dynamic cell: every edge carries all candidate branches, and each branch runs
only on the samples of the batch whose router selected it.

Layout (DARTS, our choice for the paper's "graph of transformation nodes"): two
inputs s0, s1 (outputs of the two previous cells), N intermediate nodes, node j sums
the edges (i -> j) for every earlier state i, and the cell output concatenates the N
intermediate nodes. Edge e = (src, dst) is enumerated node by node, source by source.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .ops import FactorizedReduce, ReLUConvBN, create_branch, param_count
from .router import RoutingPolicy, Router, StaticRouter, recalibrate, select

Execution = Literal["sparse", "masked"]


def cell_edges(num_nodes: int) -> list[tuple[int, int]]:
    """Edges (src, dst) of a cell; states 0 and 1 are the inputs, 2.. the intermediate nodes."""
    return [(src, node + 2) for node in range(num_nodes) for src in range(node + 2)]


class Cell(nn.Module):
    """One DRNet cell with its own router.

    Args:
        c_pp, c_p: channels of the cell's two inputs (two cells back, one cell back).
        c: channels of every intermediate node.
        reduction: stride 2 on edges leaving the inputs (halves the resolution).
        reduction_prev: the previous cell reduced, so s0 is at twice s1's resolution.
        num_nodes: intermediate nodes N; the cell outputs N * c channels.
        branches: candidate branch names on every edge (order = the gate's last axis).
        router_hidden: hidden width of the router MLP.
        dynamic: instance-aware router if True, else one learned weight table for all inputs.
    """

    def __init__(
        self,
        c_pp: int,
        c_p: int,
        c: int,
        reduction: bool,
        reduction_prev: bool,
        num_nodes: int,
        branches: tuple[str, ...],
        router_hidden: int,
        dynamic: bool = True,
    ):
        super().__init__()
        self.reduction, self.channels, self.num_nodes = reduction, c, num_nodes
        self.branch_names = branches
        self.edges = cell_edges(num_nodes)
        self.preprocess0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0)
        self.branches = nn.ModuleList(
            nn.ModuleList(create_branch(name, c, self.edge_stride(src)) for name in branches) for src, _ in self.edges
        )
        num_edges, num_branches = len(self.edges), len(branches)
        self.router = (
            Router(2 * c, router_hidden, num_edges, num_branches) if dynamic else StaticRouter(num_edges, num_branches)
        )

    def edge_stride(self, src: int) -> int:
        return 2 if self.reduction and src < 2 else 1

    @property
    def out_channels(self) -> int:
        return self.num_nodes * self.channels

    def route(
        self, s0: torch.Tensor, s1: torch.Tensor, policy: RoutingPolicy, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate weights [B, E, K] and the run mask [B, E, K] for preprocessed inputs."""
        weights = recalibrate(self.router(s0, s1), temperature, self.training)
        return weights, select(weights.detach(), policy)

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        policy: RoutingPolicy,
        temperature: float = 1.0,
        forced_ran: torch.Tensor | None = None,
        execution: Execution = "sparse",
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (cell output [B, N*c, H', W'], gate weights [B, E, K], ran mask [B, E, K]).

        ``forced_ran`` ([B or 1, E, K] bool) replaces the router's selection, e.g. to keep
        the route of a real image fixed while attribution methods perturb it.
        """
        s0, s1 = self.preprocess0(s0), self.preprocess1(s1)
        weights, ran = self.route(s0, s1, policy, temperature)
        if forced_ran is not None:
            ran = forced_ran.to(ran.device).expand_as(ran)
        run = self._run_sparse if execution == "sparse" else self._run_masked
        return run([s0, s1], weights, ran), weights, ran

    def _node_shape(self, s1: torch.Tensor) -> tuple[int, ...]:
        b, _, h, w = s1.shape
        stride = 2 if self.reduction else 1
        return (b, self.channels, (h - 1) // stride + 1, (w - 1) // stride + 1)

    def _run_sparse(self, states: list[torch.Tensor], weights: torch.Tensor, ran: torch.Tensor) -> torch.Tensor:
        """Run each kept branch on exactly the samples that kept it; skipped branches are never called."""
        batch = states[0].shape[0]
        ran_cpu = ran.cpu()
        counts = ran_cpu.sum(dim=0).tolist()  # [E][K]: one host sync per cell, not per branch
        node_shape = self._node_shape(states[1])
        edge = 0
        for _ in range(self.num_nodes):
            node = None
            for src in range(len(states)):
                x = states[src]
                for k, branch in enumerate(self.branches[edge]):
                    n = counts[edge][k]
                    if n == 0:
                        continue
                    if n == batch:
                        y = branch(x) * weights[:, edge, k].view(-1, 1, 1, 1)
                        node = y if node is None else node + y
                    else:
                        idx = ran_cpu[:, edge, k].nonzero().squeeze(1).to(x.device)
                        y = branch(x.index_select(0, idx)) * weights[idx, edge, k].view(-1, 1, 1, 1)
                        base = node if node is not None else x.new_zeros(node_shape)
                        node = base.index_add(0, idx, y)
                edge += 1
            states.append(node if node is not None else states[1].new_zeros(node_shape))
        return torch.cat(states[2:], dim=1)

    def _run_masked(self, states: list[torch.Tensor], weights: torch.Tensor, ran: torch.Tensor) -> torch.Tensor:
        """Reference: every branch on every sample, multiplied by weight x mask. Slow, obviously right."""
        gate = weights * ran.to(weights.dtype)
        edge = 0
        for _ in range(self.num_nodes):
            node = 0
            for src in range(len(states)):
                for k, branch in enumerate(self.branches[edge]):
                    node = node + branch(states[src]) * gate[:, edge, k].view(-1, 1, 1, 1)
                edge += 1
            states.append(node)
        return torch.cat(states[2:], dim=1)

    def fixed_params(self) -> int:
        """Parameters touched by every sample: preprocessing and router."""
        return param_count(self.preprocess0) + param_count(self.preprocess1) + param_count(self.router)
