"""Shared fixtures: tiny models, and batches whose samples really take different routes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

# The smallest DRNet that still has two reduction cells; a forward pass takes milliseconds on one core.
TINY = {"channels": 4, "num_cells": 3, "num_nodes": 2}


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., nn.Module]:
    """Factory: a tiny model in eval mode, seeded.

    A freshly initialised RouterNet gives every input nearly uniform gates, so all samples
    would take one route. With ``spread=True`` (default for dynamic DRNets) the router
    weights are redrawn from N(0, 1), which makes the gates, and so the routes, differ per input.
    """
    from drnets.model import create_model

    def make(name: str = "drnet", seed: int = 0, spread: bool = True, **config) -> nn.Module:
        torch.manual_seed(seed)
        model = create_model(name, **({**TINY, **config} if name != "mobilenetv2" else config)).eval()
        if spread and getattr(model.config, "dynamic", False):
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for cell in model.cells:
                    for p in cell.router.parameters():
                        p.copy_(torch.randn(p.shape, generator=generator))
        return model

    return make


@pytest.fixture(scope="session")
def mixed_batch() -> Callable[..., torch.Tensor]:
    """Factory: ``n`` images of ``shape`` with different brightness and contrast (so different pooled router inputs)."""

    def make(shape: tuple[int, int, int] = (1, 28, 28), n: int = 6, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        scale = torch.linspace(0.5, 3.0, n).view(-1, 1, 1, 1)
        shift = torch.linspace(-1.0, 1.0, n).view(-1, 1, 1, 1)
        return torch.randn(n, *shape, generator=generator) * scale + shift

    return make
