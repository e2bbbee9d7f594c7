"""Photo augmentation: each image its own draw, deterministic per generator, labels' content kept."""

from __future__ import annotations

import torch

from drnets.augment import photo_augment
from drnets.data import load_dataset


def images() -> torch.Tensor:
    return load_dataset("fashion-mnist", "test").subset(64).images


def test_same_generator_same_images_and_the_format_is_kept() -> None:
    x = images()
    a = photo_augment(x, torch.Generator().manual_seed(0))
    b = photo_augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == torch.uint8
    assert not torch.equal(a, photo_augment(x, torch.Generator().manual_seed(1)))


def test_every_image_changes_but_stays_an_object_on_black() -> None:
    x = images()
    out = photo_augment(x, torch.Generator().manual_seed(0))
    changed = (out.float() - x.float()).abs().flatten(1).mean(1)
    assert torch.all(changed > 0)
    corners = torch.cat([out[:, :2, :2], out[:, -2:, -2:]], dim=1).float()
    assert corners.mean() < 40  # the background stays dark (a border sliver is faint)
    brightness = out.float().flatten(1).mean(1) / x.float().flatten(1).mean(1)
    assert brightness.median() > 0.6 and brightness.median() < 1.4
