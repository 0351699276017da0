"""Decoded faces -> model inputs: the normalisation every model sees, in training and evaluation.

The faces are uint8 (B, H, W, 3); models take float (B, 3, H, W) normalised with the ImageNet mean
and standard deviation, in channels_last memory format (the permuted bytes already have that layout,
so no copy is made for it).
"""
from __future__ import annotations

import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalise_(x: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of (B,3,H,W) in [0,1], in place."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def to_input(batch_u8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B,H,W,3) uint8 -> (B,3,H,W) float normalised, channels_last; no randomness."""
    x = batch_u8.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last).to(dtype).div_(255.0)
    return normalise_(x)


def mirror(x: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) -> the same faces mirrored left-right (flip test-time augmentation), channels_last."""
    return x.flip(3).contiguous(memory_format=torch.channels_last)
