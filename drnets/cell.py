"""The dynamic cell: every edge carries all candidate branches, and each branch runs
only on the samples of the batch whose router selected it.

Layout (DARTS, our choice for the paper's "graph of transformation nodes"): two
inputs s0, s1 (outputs of the two previous cells), N intermediate nodes, node j sums
the edges (i -> j) for every earlier state i, and the cell output concatenates the N
intermediate nodes. Edge e = (src, dst) is enumerated node by node, source by source.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from .ops import FactorizedReduce, ReLUConvBN, create_branch, param_count
from .router import Router, RoutingPolicy, StaticRouter, branch_scale, gate_values, select

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
        context_channels: if set, the router reads a context map with that many channels
            (the stem output, pooled once by the model) instead of the cell's own inputs; see
            ``DRNetConfig.router_input``.
        router_grid: the router pools what it reads onto a router_grid x router_grid layout.
        router_relu: the router rectifies what it reads before pooling.
        gate: "softmax" or "sigmoid" (``drnets.router.GATES``).
        budgeted: the router reads the policy's budget.
        open_bias: initial bias of every gate logit (> 0 starts sigmoid gates open).
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
        context_channels: int | None = None,
        router_grid: int = 1,
        router_relu: bool = False,
        gate: str = "softmax",
        budgeted: bool = False,
        open_bias: float = 0.0,
    ):
        super().__init__()
        self.reduction, self.channels, self.num_nodes, self.gate = reduction, c, num_nodes, gate
        self.branch_names = branches
        self.edges = cell_edges(num_nodes)
        self.preprocess0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0)
        self.branches = nn.ModuleList(
            nn.ModuleList(create_branch(name, c, self.edge_stride(src)) for name in branches) for src, _ in self.edges
        )
        num_edges, num_branches = len(self.edges), len(branches)
        self.router = (
            Router(
                context_channels or 2 * c,
                router_hidden,
                num_edges,
                num_branches,
                router_grid,
                router_relu,
                budgeted,
                open_bias,
            )  # fmt: skip
            if dynamic
            else StaticRouter(num_edges, num_branches)
        )

    def edge_stride(self, src: int) -> int:
        return 2 if self.reduction and src < 2 else 1

    @property
    def out_channels(self) -> int:
        return self.num_nodes * self.channels

    def route(self, logits: torch.Tensor, policy: RoutingPolicy) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate values [B, E, K] and the run mask [B, E, K] from the router's logits."""
        gates = gate_values(logits, self.gate, policy.temperature, self.training)
        return gates, select(gates.detach(), policy)

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        policy: RoutingPolicy,
        forced_ran: torch.Tensor | None = None,
        execution: Execution = "sparse",
        context: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (cell output [B, N*c, H', W'], gate values [B, E, K], ran mask [B, E, K]).

        ``forced_ran`` ([B or 1, E, K] bool) replaces the router's selection, e.g. to keep
        the route of a real image fixed while attribution methods perturb it. ``context``
        is what a stem-reading router reads: the stem output already through ``pool_maps``.
        """
        s0, s1 = self.preprocess0(s0), self.preprocess1(s1)
        if context is not None:
            logits = self.router.logits(context, policy.budget)
        else:
            logits = self.router(s0, s1, budget=policy.budget)
        gates, ran = self.route(logits, policy)
        if forced_ran is not None:
            ran = forced_ran.to(ran.device).expand_as(ran)
        scale = branch_scale(gates, ran, self.gate)
        if execution == "masked":
            return self._run_masked([s0, s1], scale, ran), gates, ran
        return run_sparse(self, [s0, s1], scale, ran), gates, ran

    def node_shape(self, s1: torch.Tensor) -> tuple[int, ...]:
        b, _, h, w = s1.shape
        stride = 2 if self.reduction else 1
        return (b, self.channels, (h - 1) // stride + 1, (w - 1) // stride + 1)

    def _run_masked(self, states: list[torch.Tensor], scale: torch.Tensor, ran: torch.Tensor) -> torch.Tensor:
        """Reference: every branch on every sample, multiplied by weight x mask. Slow, obviously right."""
        gate = scale * ran.to(scale.dtype)
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


BranchCall = Callable[[int, int, torch.Tensor, bool], torch.Tensor]


def run_sparse(
    cell: Cell,
    states: list[torch.Tensor],
    scale: torch.Tensor,
    ran: torch.Tensor,
    call: BranchCall | None = None,
) -> torch.Tensor:
    """Run each kept branch of ``cell`` on exactly the samples that kept it; skipped branches are never called.

    Per node, the branches every sample kept run first on the whole batch and seed the sum in
    place (no zero tensor, no gather, weight multiply fused into ``addcmul_``); branches only some
    samples kept gather those rows, run, and scatter-add back. The whole cell costs one host sync
    (the route) and, only for a mixed batch, one ``nonzero`` for every branch's sample indices.

    ``scale`` [B, E, K] multiplies each kept branch's output (``drnets.router.branch_scale``).
    ``call(edge, k, x, private)`` runs branch k of an edge on x; ``private`` says x is a gathered
    copy no one else reads. The default calls the cell's own branches; ``drnets.inference`` passes
    its folded ones.
    """
    call = call or (lambda edge, k, x, private: cell.branches[edge][k](x))
    batch, num_branches = states[0].shape[0], len(cell.branch_names)
    counts, samples = _route_plan(ran, states[0].device)
    # In the maps' dtype: under autocast the maps are half precision while softmax gives float32,
    # and index_add_ needs one dtype on both sides.
    gate = scale.to(states[1].dtype).flatten(1).t()[:, :, None, None, None].unbind(0)  # E*K views [B, 1, 1, 1]
    node_shape, edge = cell.node_shape(states[1]), 0
    for _ in range(cell.num_nodes):
        node = None
        partial = []
        for src in range(len(states)):
            for k in range(num_branches):
                i = edge * num_branches + k
                if counts[i] == batch:
                    y = call(edge, k, states[src], False)
                    node = y * gate[i] if node is None else node.addcmul_(y, gate[i])
                elif counts[i] > 0:
                    partial.append((src, edge, k, i))
            edge += 1
        for src, e, k, i in partial:
            idx = samples[i]
            y = call(e, k, _gather(states[src], idx), True) * gate[i].index_select(0, idx)
            node = _scatter_add_(_zeros(node_shape, states[1]) if node is None else node, idx, y)
        states.append(node if node is not None else _zeros(node_shape, states[1]))
    return torch.cat(states[2:], dim=1)


def _route_plan(ran: torch.Tensor, device: torch.device) -> tuple[list[int], tuple[torch.Tensor, ...]]:
    """Per branch (flattened edge * K + k): how many samples run it, and which ones (sorted).

    The indices are only built when some branch runs on part of the batch (never at batch 1).
    """
    by_branch = ran.cpu().flatten(1).t()  # [E*K, B]; the cell's one host sync
    counts = by_branch.sum(1).tolist()
    batch = by_branch.shape[1]
    if all(n in (0, batch) for n in counts):
        return counts, ()
    samples = by_branch.nonzero()[:, 1].to(device)  # grouped by branch, ascending sample
    return counts, samples.split(counts)


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[idx]`` along the batch, keeping x's memory format.

    On a channels_last tensor the batch is indexed through its contiguous NHWC view:
    ``index_select`` on the NCHW-strided view returns NCHW and ``index_add_`` into it is
    several times slower (measured, torch 2.13 CPU).
    """
    if _is_channels_last(x):
        return x.permute(0, 2, 3, 1).index_select(0, idx).permute(0, 3, 1, 2)
    return x.index_select(0, idx)


def _scatter_add_(node: torch.Tensor, idx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``node[idx] += y`` in place (node is always a tensor the cell allocated); returns node."""
    if _is_channels_last(node):
        node.permute(0, 2, 3, 1).index_add_(0, idx, y.permute(0, 2, 3, 1))
    else:
        node.index_add_(0, idx, y)
    return node


def _zeros(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A zero node map in ``like``'s memory format, so channels_last runs stay channels_last."""
    fmt = torch.channels_last if _is_channels_last(like) else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt).zero_()
