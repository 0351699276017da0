"""Decoded faces -> model inputs: the normalisation every model sees, in training and evaluation.

The faces are uint8 (B, H, W, 3); models take float (B, 3, H, W) normalised with the ImageNet mean
and standard deviation, in channels_last memory format (the permuted bytes already have that layout,
so no copy is made for it).
"""
from __future__ import annotations

import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


_CONSTANTS: dict[tuple, torch.Tensor] = {}


def constant(name: str, values: tuple[float, ...], device: torch.device, dtype: torch.dtype,
             shape: tuple[int, ...]) -> torch.Tensor:
    """A small constant tensor, made once per (name, device, dtype) and reused.

    Making a tensor from Python numbers is a host-to-device copy, which CUDA graph capture forbids:
    the training step only reads constants made before capture (`engine.prepare_constants`)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:      # "cuda" and "cuda:0" are one device, one key
        device = torch.device("cuda", torch.cuda.current_device())
    key = (name, device, dtype)
    t = _CONSTANTS.get(key)
    if t is None:
        t = _CONSTANTS[key] = torch.tensor(values, dtype=dtype, device=device).view(shape)
    return t


def normalisation(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return (constant("imagenet-mean", IMAGENET_MEAN, device, dtype, (1, 3, 1, 1)),
            constant("imagenet-std", IMAGENET_STD, device, dtype, (1, 3, 1, 1)))


def normalise_(x: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of (B,3,H,W) in [0,1], in place."""
    mean, std = normalisation(x.device, x.dtype)
    return x.sub_(mean).div_(std)


def to_input(batch_u8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B,H,W,3) uint8 -> (B,3,H,W) float normalised, channels_last; no randomness."""
    x = batch_u8.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last).to(dtype).div_(255.0)
    return normalise_(x)


def mirror(x: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) -> the same faces mirrored left-right (flip test-time augmentation), channels_last."""
    return x.flip(3).contiguous(memory_format=torch.channels_last)
