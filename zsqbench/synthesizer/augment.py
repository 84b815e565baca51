"""Batched RandomResizedCrop + horizontal flip in torch (torchvision cannot be a dependency of the core).

Every image of the batch gets its own crop and flip, drawn at once and applied with one ``affine_grid`` /
``grid_sample`` call — no per-image Python loop, and differentiable w.r.t. the images (IntraQ's local object
reinforcement optimises through it).

Like torchvision's ``RandomResizedCrop``: the crop's area fraction is U(scale), its aspect ratio log-uniform in
``ratio``, up to 10 tries to fit it inside the image, else the whole image; the crop is resized back to the input
size bilinearly. Unlike torchvision, crop boxes are continuous (not rounded to whole pixels) and sampled with
border padding, so a crop never reads outside the image.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TRIES = 10


def _uniform(n: int, lo: float, hi: float, like: torch.Tensor, generator: torch.Generator | None,
             tries: int | None = None) -> torch.Tensor:
    shape = (n,) if tries is None else (n, tries)
    return torch.empty(shape, device=like.device, dtype=like.dtype).uniform_(lo, hi, generator=generator)


def random_resized_crop_flip(x: torch.Tensor, scale: tuple[float, float] = (0.08, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): an independent random resized crop, then a flip with probability ``flip_p``,
    for every image."""
    b = x.shape[0]
    area = _uniform(b, scale[0], scale[1], x, generator, TRIES)
    aspect = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), x, generator, TRIES).exp()
    w, h = (area * aspect).sqrt(), (area / aspect).sqrt()  # fractions of the image width and height
    fits = (w <= 1) & (h <= 1)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first try that fits, as torchvision takes
    ok = fits.any(1)
    one = torch.ones((), device=x.device, dtype=x.dtype)
    w = torch.where(ok, w.gather(1, first).squeeze(1), one)
    h = torch.where(ok, h.gather(1, first).squeeze(1), one)
    cx = _uniform(b, 0.0, 1.0, x, generator) * (1 - w) + w / 2  # crop centre, in [0, 1] image coordinates
    cy = _uniform(b, 0.0, 1.0, x, generator) * (1 - h) + h / 2
    flip = _uniform(b, 0.0, 1.0, x, generator) < flip_p
    sign = torch.where(flip, -one, one)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w * sign, zero, 2 * cx - 1], 1),
                         torch.stack([zero, h, 2 * cy - 1], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
