"""A PNG grid of synthetic images, one row per class — written with zlib, so no imaging library is needed."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch

GAP = 2  # white pixels between tiles


def class_grid(images: torch.Tensor, labels: torch.Tensor, num_classes: int, mean, std,
               per_class: int = 8) -> torch.Tensor:
    """(N, C, H, W) normalised images -> (C, rows*H', cols*W') uint8 grid in pixel space: row k holds the first
    ``per_class`` images labelled k (blank where a class has fewer)."""
    images, labels = images.detach().float().cpu(), labels.cpu()
    c, h, w = images.shape[1:]
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    rows = num_classes
    grid = torch.full((c, rows * (h + GAP) + GAP, per_class * (w + GAP) + GAP), 255, dtype=torch.uint8)
    for k in range(num_classes):  # one row per class: at most num_classes slices, not a per-image loop
        tiles = images[labels == k][:per_class]
        if not len(tiles):
            continue
        pixels = ((tiles * std_t + mean_t).clamp(0, 1) * 255).round().to(torch.uint8)  # (n, c, h, w)
        top = GAP + k * (h + GAP)
        padded = torch.full((len(tiles), c, h, w + GAP), 255, dtype=torch.uint8)
        padded[..., :w] = pixels
        strip = padded.permute(1, 2, 0, 3).reshape(c, h, -1)[..., : len(tiles) * (w + GAP) - GAP]
        grid[:, top: top + h, GAP: GAP + strip.shape[-1]] = strip
    return grid


def write_png(path: Path, pixels: torch.Tensor) -> None:
    """Write a (1|3, H, W) uint8 tensor as an 8-bit greyscale or RGB PNG."""
    c, h, w = pixels.shape
    if c not in (1, 3):
        raise ValueError(f"PNG needs 1 or 3 channels, got {c}")
    rows = pixels.permute(1, 2, 0).reshape(h, w * c).numpy()
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(h))  # filter type 0 per scanline

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                           + chunk(b"IEND", b""))
