"""The originals' augmentation of event frames (their ``autoaugment.SNNAugmentWide`` plus a flip).

Applied to a training batch ``[B, T, 2, H, W]`` on the device, before mixup, as all six DVS
training scripts do: first a horizontal flip of each sample (p = 0.5), then for each sample one
operation drawn uniformly from

    identity, shear-x, translate-x, translate-y, rotate, cutout

with a magnitude drawn from 31 evenly spaced bins and a random sign. One transform moves all T
frames and both polarity channels of a sample together; pixels moved in from outside are 0.

Random numbers come from torch's default CPU generator in the originals' order (all flips, then
per sample: operation, magnitude bin, sign, and for cutout the erasing parameters), so a seeded
run is reproducible and matches the original code draw for draw.
"""
from __future__ import annotations

import math

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

BINS = 31
# name -> (magnitude bins, signed). Order matters: it is the index drawn.
OPS: dict[str, tuple[torch.Tensor, bool]] = {
    "Identity": (torch.tensor(0.0), False),
    "ShearX": (torch.linspace(-0.3, 0.3, BINS), True),        # shear angle degrees(m), m in radians
    "TranslateX": (torch.linspace(-5.0, 5.0, BINS), True),    # pixels, truncated to int
    "TranslateY": (torch.linspace(-5.0, 5.0, BINS), True),
    "Rotate": (torch.linspace(-30.0, 30.0, BINS), True),      # degrees
    "Cutout": (torch.linspace(1.0, 30.0, BINS), True),        # magnitude unused: erasing draws its own size
}
NEAREST = InterpolationMode.NEAREST


def cutout(x: torch.Tensor) -> torch.Tensor:
    """Zero one square covering 0.1%-11% of the frame, the same square in every frame/channel.

    torchvision's ``RandomErasing(p=1, scale=(0.001, 0.11), ratio=(1, 1))`` draw for draw: the
    p-check, area fraction, log-aspect (always 0), then the top-left corner.
    """
    H, W = x.shape[-2:]
    torch.rand(1)                                        # RandomErasing's p test (p = 1)
    area = H * W * torch.empty(1).uniform_(0.001, 0.11).item()
    aspect = math.exp(torch.empty(1).uniform_(0.0, 0.0).item())
    h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
    if not (h < H and w < W):
        return x  # torchvision retries up to 10 times; with these sizes the first try always fits
    i = int(torch.randint(0, H - h + 1, size=(1,)).item())
    j = int(torch.randint(0, W - w + 1, size=(1,)).item())
    x = x.clone()
    x[..., i:i + h, j:j + w] = 0
    return x


def draw_op() -> tuple[str, float]:
    """An operation and its signed magnitude: uniform over OPS, then a bin, then a sign."""
    names = list(OPS)
    name = names[int(torch.randint(len(names), (1,)).item())]
    bins, signed = OPS[name]
    m = float(bins[torch.randint(len(bins), (1,), dtype=torch.long)].item()) if bins.ndim > 0 else 0.0
    if signed and torch.randint(2, (1,)):
        m = -m
    return name, m


def augment_sample(x: torch.Tensor) -> torch.Tensor:
    """One random operation on one sample ``[T, 2, H, W]``."""
    return apply_op(x, *draw_op())


def apply_op(x: torch.Tensor, name: str, m: float) -> torch.Tensor:
    if name == "Identity":
        return x
    if name == "Cutout":
        return cutout(x)
    if name == "ShearX":
        return TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(m), 0.0],
                         interpolation=NEAREST, fill=None)
    if name == "TranslateX":
        return TF.affine(x, angle=0.0, translate=[int(m), 0], scale=1.0, shear=[0.0, 0.0],
                         interpolation=NEAREST, fill=None)
    if name == "TranslateY":
        return TF.affine(x, angle=0.0, translate=[0, int(m)], scale=1.0, shear=[0.0, 0.0],
                         interpolation=NEAREST, fill=None)
    return TF.rotate(x, m, interpolation=NEAREST, fill=None)   # Rotate


def augment_batch(images: torch.Tensor) -> torch.Tensor:
    """Flip (p = 0.5) every sample, then apply one random operation to every sample."""
    flipped = torch.stack([x.flip(-1) if torch.rand(1) < 0.5 else x for x in images])
    return torch.stack([augment_sample(x) for x in flipped])
