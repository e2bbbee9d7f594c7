"""What the DRNet's parts cost at the input size, with every branch on: per cell, per branch."""

from __future__ import annotations

import pandas as pd

from app.models import ModelSet


def dense_cell_flops(models: ModelSet) -> list[int] | None:
    """FLOPs of each DRNet cell with every branch on, at the input size."""
    model = models.drnet()
    if model is None:
        return None
    _, h, w = models.input_size
    table = model.cost_table(h, w)
    return (table.cell_flops + table.branch_flops.sum(dim=(1, 2))).tolist()


def branch_costs(models: ModelSet, cell: int = 0) -> pd.DataFrame:
    """FLOPs and params of each candidate branch on the first edge of one cell (teaching mode)."""
    model = models.drnet()
    _, h, w = models.input_size
    table = model.cost_table(h, w)
    return pd.DataFrame(
        {
            "branch": list(model.config.branches),
            "flops": table.branch_flops[cell, 0].tolist(),
            "params": table.branch_params[cell, 0].tolist(),
        }
    )


def cells_table(models: ModelSet) -> pd.DataFrame:
    """One row per DRNet cell: its kind, width, edges and what it costs with every branch on (teaching mode)."""
    model = models.drnet()
    return pd.DataFrame(
        {
            "cell": range(len(model.cells)),
            "kind": ["reduction (½ size, 2× channels)" if c.reduction else "normal" for c in model.cells],
            "channels": [c.channels for c in model.cells],
            "edges": [len(c.edges) for c in model.cells],
            "branches": [len(c.branch_names) for c in model.cells],
            "FLOPs, all on": dense_cell_flops(models),
        }
    )
