"""Attributions explain the route the image really took, and never touch the shared model."""

import pytest
import torch

from drnets.attribution import METHOD_NOTES, METHODS, attribute
from drnets.model import create_model
from drnets.router import RoutingPolicy


@pytest.fixture(scope="module")
def drnet():
    torch.manual_seed(0)
    return create_model("drnet", channels=4, num_cells=3, num_nodes=2).eval()


MIXED = RoutingPolicy(threshold=0.15)  # a mixed route: some branches skipped


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_a_normalised_map(drnet, method):
    x = torch.randn(1, 1, 28, 28)
    result = attribute(drnet, x, method, policy=MIXED, ig_steps=8)
    assert result.heatmap.shape == (28, 28)
    assert result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0
    assert result.heatmap.max() == pytest.approx(1.0)
    assert result.note == METHOD_NOTES[method]
    assert result.target == int(drnet(x, MIXED)[0].argmax())


def test_integrated_gradients_is_complete_on_the_frozen_route(drnet):
    """IG's attributions sum to f(x) - f(baseline) when the route is held fixed."""
    x = torch.randn(1, 1, 28, 28)
    result = attribute(drnet, x, "integrated_gradients", policy=MIXED, ig_steps=64, baseline=-0.8)
    assert result.delta is not None and result.delta < 1e-2


def test_shared_model_is_left_untouched(drnet):
    before = {k: v.clone() for k, v in drnet.state_dict().items()}
    for method in METHODS:
        attribute(drnet, torch.randn(1, 1, 28, 28), method, policy=MIXED, ig_steps=4)
    assert all(torch.equal(before[k], v) for k, v in drnet.state_dict().items())
    assert not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in drnet.modules())
    assert not drnet.training


def test_baseline_model_supported():
    model = create_model("mobilenetv2", width_mult=0.25).eval()
    result = attribute(model, torch.randn(1, 1, 28, 28), "gradcam")
    assert result.heatmap.shape == (28, 28)


def test_bad_requests_are_refused(drnet):
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribute(drnet, torch.randn(1, 1, 28, 28), "lime")
    with pytest.raises(ValueError, match="one image"):
        attribute(drnet, torch.randn(2, 1, 28, 28), "saliency")
