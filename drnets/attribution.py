"""Attributions (Captum) for routed and static models, with the DRNet route frozen.

Hard gates have zero gradient and Integrated Gradients' interpolated inputs would take
other routes, so every method here runs the DRNet with ``forced_route`` set to the
route the real image took: the maps explain the network that actually ran.
Each call works on a private copy of the model, so a model shared between app sessions
never carries Captum hooks and attributions do not lock it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency
from torch import nn

from .model import DRNet, MobileNetV2
from .router import RoutingPolicy

METHODS = ("saliency", "gradcam", "integrated_gradients", "occlusion")
METHOD_NOTES = {
    "saliency": "How much each pixel's small change moves the class score (absolute input gradient).",
    "gradcam": "Which regions the last feature maps use for this class (Grad-CAM on the last cell every image passes through).",
    "integrated_gradients": "Each pixel's share of the score, summed along a path from a black image; "
    "the delta says how far the shares are from adding up exactly.",
    "occlusion": "How much the score drops when a 4x4 patch is blacked out: slow, but needs no gradients.",
}


@dataclass
class Attribution:
    method: str
    target: int
    heatmap: np.ndarray  # [H, W] in [0, 1]
    delta: float | None  # Integrated Gradients' convergence delta, else None
    seconds: float
    note: str


def gradcam_layer(model: nn.Module) -> nn.Module:
    """A layer every image passes through: the BN that ends the last cell's preprocessing (whose ReLU
    the model applies ahead of it, see ``DRNet.forward_features``), or MobileNetV2's last block."""
    if isinstance(model, DRNet):
        return model.cells[-1].preprocess1.op[-1]
    if isinstance(model, MobileNetV2):
        return model.features[-2]
    raise TypeError(f"no Grad-CAM layer known for {type(model).__name__}")


def _normalise(attr: torch.Tensor) -> np.ndarray:
    heat = attr.detach().abs().sum(dim=1)[0].float()  # [H, W]
    peak = heat.max()
    return (heat / peak if peak > 0 else heat).cpu().numpy()


def attribute(
    model: nn.Module,
    x: torch.Tensor,
    method: str,
    target: int | None = None,
    *,
    policy: RoutingPolicy | None = None,
    baseline: float = 0.0,
    ig_steps: int = 32,
    internal_batch_size: int = 16,
) -> Attribution:
    """Explain the model's score for ``target`` (default: its prediction) on one image.

    Args:
        model: a DRNet or MobileNetV2 (never modified: a private copy is used).
        x: one normalised image [1, C, H, W].
        method: one of ``METHODS``.
        policy: the routing policy that chose the route the maps explain (default: the model's own).
        baseline: the reference input value for Integrated Gradients and Occlusion, in the
            normalised space (pass ``-mean / std`` for a black image).
    Returns:
        An ``Attribution`` whose heatmap is scaled to [0, 1].

    Example:
        >>> att = attribute(model, x, "saliency")  # doctest: +SKIP
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"attribute explains one image [1, C, H, W], got shape {tuple(x.shape)}")
    started = time.perf_counter()
    local = copy.deepcopy(model).eval()
    with torch.no_grad():
        logits, trace = local(x, policy)
    target = int(logits.argmax(1)) if target is None else target
    route = trace.ran if isinstance(local, DRNet) else None

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return local(inputs, policy, forced_route=route)[0]

    attr, delta = _run(
        method, forward, local, x.clone().requires_grad_(True), target, baseline, ig_steps, internal_batch_size
    )
    if method == "gradcam":
        attr = LayerAttribution.interpolate(attr.clamp_min(0), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return Attribution(method, target, _normalise(attr), delta, time.perf_counter() - started, METHOD_NOTES[method])


def _run(
    method: str,
    forward: Callable[[torch.Tensor], torch.Tensor],
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    baseline: float,
    ig_steps: int,
    internal_batch_size: int,
) -> tuple[torch.Tensor, float | None]:
    if method == "saliency":
        return Saliency(forward).attribute(x, target=target, abs=True), None
    if method == "gradcam":
        return LayerGradCam(forward, gradcam_layer(model)).attribute(x, target=target), None
    if method == "integrated_gradients":
        attr, delta = IntegratedGradients(forward).attribute(
            x,
            baselines=torch.full_like(x, baseline),
            target=target,
            n_steps=ig_steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
        return attr, float(delta.abs().max())
    channels = x.shape[1]
    occlusion = Occlusion(forward).attribute(
        x, sliding_window_shapes=(channels, 4, 4), strides=(channels, 2, 2), target=target,
        baselines=baseline, perturbations_per_eval=64,
    )  # fmt: skip
    return occlusion, None
