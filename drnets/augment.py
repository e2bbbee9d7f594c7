"""Training augmentation for what upload preprocessing cannot undo.

A phone photo reaches the model through ``drnets.upload`` (segmentation, crop, straightening,
Fashion-MNIST form), but what comes out still differs from a Fashion-MNIST image: the crop is a
little loose or tight, a residual tilt remains, brightness and contrast follow the lighting, JPEG
and downscaling blur it, the sensor adds noise, and the mask leaves a sliver of background or cuts
a piece of the garment. ``photo_augment`` draws each of these per image, on the whole batch at once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SCALE = (0.75, 1.1)  # object size relative to the frame; preprocessing fits the longest side, loosely
MAX_TILT_DEG = 12.0  # residual tilt after straightening (the photo set's range)
MAX_SHIFT = 0.08  # of the frame, each axis
CONTRAST = (0.6, 1.3)
BRIGHTNESS = (0.7, 1.15)
BLUR_P, NOISE_P, MASK_P = 0.3, 0.5, 0.25  # share of images that get each imperfection
MAX_NOISE = 0.06  # standard deviation, on [0, 1] pixels


def photo_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 [B, H, W, C] -> uint8 [B, H, W, C], each image with its own draw of every imperfection."""
    x = images.permute(0, 3, 1, 2).float().div_(255)  # [B, C, H, W]
    b = x.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, *shape, generator=generator)

    x = _affine(x, uniform(*SCALE), uniform(-MAX_TILT_DEG, MAX_TILT_DEG), uniform(-MAX_SHIFT, MAX_SHIFT, 2))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(*CONTRAST).view(b, 1, 1, 1) + mean * uniform(*BRIGHTNESS).view(b, 1, 1, 1)
    blurred = _blur(x)
    x = torch.where((torch.rand(b, generator=generator) < BLUR_P).view(b, 1, 1, 1), blurred, x)
    noisy = torch.rand(b, generator=generator) < NOISE_P
    sigma = uniform(0.0, MAX_NOISE).view(b, 1, 1, 1) * noisy.view(b, 1, 1, 1)
    x = x + sigma * torch.randn(x.shape, generator=generator)
    x = _imperfect_mask(x, torch.rand(b, generator=generator) < MASK_P, generator)
    return x.clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1)


def _affine(x: torch.Tensor, scale: torch.Tensor, tilt_deg: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Scale about the centre, rotate and shift each image; the background stays black."""
    angle = tilt_deg * math.pi / 180
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale  # the grid maps output to input
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _blur(x: torch.Tensor) -> torch.Tensor:
    """3x3 Gaussian blur (sigma 0.8): downscaling and JPEG softness."""
    k = torch.tensor([0.2, 0.6, 0.2])
    kernel = (k[:, None] * k[None, :] / (k.sum() ** 2)).to(x.dtype)
    c = x.shape[1]
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(c, 1, 3, 3), groups=c)


def _imperfect_mask(x: torch.Tensor, which: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For the chosen images, either a faint sliver of background left along one border, or a piece of
    the object cut away: what a segmentation mask gets wrong."""
    b, _, h, w = x.shape
    out = x.clone()
    for i in which.nonzero().flatten().tolist():
        size = int(torch.randint(2, max(3, h // 4), (1,), generator=generator))
        if torch.rand(1, generator=generator) < 0.5:  # background sliver along one border
            level = 0.1 + 0.25 * float(torch.rand(1, generator=generator))
            side = int(torch.randint(4, (1,), generator=generator))
            region = [(slice(None), slice(0, size), slice(None)), (slice(None), slice(h - size, h), slice(None)),
                      (slice(None), slice(None), slice(0, size)), (slice(None), slice(None), slice(w - size, w))][side]  # fmt: skip
            out[i][region] = torch.maximum(out[i][region], torch.full_like(out[i][region], level))
        else:  # a piece of the object cut away
            top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
            out[i, :, top : top + size, left : left + size] = 0
    return out
