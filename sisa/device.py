"""Which device a process computes on: the one CUDA rule every script and torchrun rank follows.

    --device auto   CUDA when a GPU is visible, else the CPU
    --device cuda   CUDA, or a clear error when there is none
    --device cpu    the CPU (exact and bit-reproducible)
"""
from __future__ import annotations

import platform

import torch

from .errors import SisaError

DEVICES = ("auto", "cpu", "cuda")


def wants_cuda(name: str) -> bool:
    """Whether `--device name` means CUDA on this machine (no error: torchrun asks before choosing a backend)."""
    return name == "cuda" or (name == "auto" and torch.cuda.is_available())


def resolve_device(name: str) -> torch.device:
    """`--device` -> a torch.device; asking for CUDA without a GPU is a one-line error."""
    if name not in DEVICES:
        raise SisaError(f"--device {name!r} is invalid: choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise SisaError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device("cuda" if wants_cuda(name) else "cpu")


def device_name(device: torch.device) -> str:
    """What a result was measured on, for reports: the GPU's name or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
