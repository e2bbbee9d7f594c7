"""The routing trace: the one record every view, statistic, benchmark and export reads.

Batched tensors, no per-sample Python objects: ``gates[B, L, E, K]`` holds the gate
weight of every (sample, cell, edge, branch), ``ran`` whether that branch was computed,
and the cost tensors what each sample actually paid. ``to_frames`` turns it into tidy
pandas tables (one row per observation) for Plotly Express, CSV and groupby.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch


@dataclass
class RoutingTrace:
    """What one forward pass did, per sample.

    Attributes:
        logits: [B, classes].
        gates: [B, L, E, K] gate weights (L cells, E edges per cell, K branches); keeps
            its autograd graph in training so the cost loss can reach the router.
        ran: [B, L, E, K] bool, True where the branch was computed for that sample.
        cell_flops, cell_params: [B, L] cost of each cell (preprocessing, router, branches that ran).
        flops, params: [B] whole-network cost: stem, cells, classifier. FLOPs = 2 x MACs.
        dense_flops, dense_params: what the same network costs with every branch on.
        branch_names: K names; edges: E (src, dst) pairs; reduction: L flags.
    """

    logits: torch.Tensor
    gates: torch.Tensor
    ran: torch.Tensor
    cell_flops: torch.Tensor
    cell_params: torch.Tensor
    flops: torch.Tensor
    params: torch.Tensor
    dense_flops: int
    dense_params: int
    branch_names: tuple[str, ...] = ()
    edges: tuple[tuple[int, int], ...] = ()
    reduction: tuple[bool, ...] = ()

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.detach().float().softmax(dim=-1)

    @property
    def preds(self) -> torch.Tensor:
        return self.logits.detach().argmax(dim=-1)

    def __len__(self) -> int:
        return self.logits.shape[0]

    def select(self, index: torch.Tensor | slice | list[int]) -> RoutingTrace:
        """The trace of a subset of the samples (same cells, same costs)."""
        fields = ("logits", "gates", "ran", "cell_flops", "cell_params", "flops", "params")
        picked = {name: getattr(self, name)[index] for name in fields}
        return RoutingTrace(
            **picked,
            dense_flops=self.dense_flops,
            dense_params=self.dense_params,
            branch_names=self.branch_names,
            edges=self.edges,
            reduction=self.reduction,
        )

    @staticmethod
    def concat(traces: list[RoutingTrace]) -> RoutingTrace:
        """Join traces of batches of the same model (e.g. a whole evaluation set)."""
        first = traces[0]
        fields = ("logits", "gates", "ran", "cell_flops", "cell_params", "flops", "params")
        joined = {name: torch.cat([getattr(t, name).detach().cpu() for t in traces]) for name in fields}
        return RoutingTrace(
            **joined,
            dense_flops=first.dense_flops,
            dense_params=first.dense_params,
            branch_names=first.branch_names,
            edges=first.edges,
            reduction=first.reduction,
        )

    def samples_frame(self, class_names: list[str] | None = None, sample_ids: list[str] | None = None) -> pd.DataFrame:
        """One row per sample: prediction, its probability, and the cost it paid."""
        probs = self.probs.cpu()
        preds = probs.argmax(dim=-1)
        n = len(self)
        frame = pd.DataFrame(
            {
                "sample": sample_ids or list(range(n)),
                "pred": preds.tolist(),
                "probability": probs.max(dim=-1).values.tolist(),
                "flops": self.flops.cpu().tolist(),
                "params": self.params.cpu().tolist(),
                "dense_flops": [self.dense_flops] * n,
                "dense_params": [self.dense_params] * n,
            }
        )
        frame["flops_fraction"] = frame["flops"] / self.dense_flops
        if class_names:
            frame["pred_name"] = [class_names[i] for i in frame["pred"]]
        return frame

    def cells_frame(self, sample_ids: list[str] | None = None) -> pd.DataFrame:
        """One row per (sample, cell): what each cell cost that sample."""
        b, cells = self.cell_flops.shape
        ids = sample_ids or list(range(b))
        return pd.DataFrame(
            {
                "sample": [ids[i] for i in range(b) for _ in range(cells)],
                "cell": list(range(cells)) * b,
                "reduction": [self.reduction[c] for c in range(cells)] * b,
                "flops": self.cell_flops.cpu().flatten().tolist(),
                "params": self.cell_params.cpu().flatten().tolist(),
                "branches_ran": self.ran.sum(dim=(2, 3)).cpu().flatten().tolist(),
            }
        )

    def branches_frame(self, sample_ids: list[str] | None = None) -> pd.DataFrame:
        """One row per (sample, cell, edge, branch): gate weight and whether it ran."""
        b, cells, e, k = self.ran.shape
        ids = sample_ids or list(range(b))
        index = pd.MultiIndex.from_product(
            [range(b), range(cells), range(e), range(k)], names=["sample_index", "cell", "edge", "branch_index"]
        )
        frame = index.to_frame(index=False)
        frame["sample"] = [ids[i] for i in frame["sample_index"]]
        frame["reduction"] = [self.reduction[c] for c in frame["cell"]]
        frame["branch"] = [self.branch_names[i] for i in frame["branch_index"]]
        frame["src"] = [self.edges[i][0] for i in frame["edge"]]
        frame["dst"] = [self.edges[i][1] for i in frame["edge"]]
        frame["gate"] = self.gates.detach().float().cpu().flatten().numpy()
        frame["ran"] = self.ran.cpu().flatten().numpy()
        return frame.drop(columns=["sample_index", "branch_index"])
