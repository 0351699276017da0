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


# ---- precision ----------------------------------------------------------------------------------
# bf16 autocast speeds up a CPU's training step only where the CPU has bf16 instructions
# (avx512_bf16 or AMX); without them PyTorch emulates bf16 and the step is about ten times slower
# (benchmarks/results/cpu-engine-2026-12-03.json, an AVX2-only CPU). fp32 stays exact and
# bit-reproducible everywhere; bf16 is bit-reproducible too at a fixed thread count
# (tests/test_training.py and tests/test_unlearning.py, parametrised over precision).
PRECISIONS = ("auto", "fp32", "bf16")


def bf16_native(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware (a CUDA GPU with bf16, or a CPU with avx512_bf16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_precision(name: str, device: torch.device, recorded: str | None = None) -> str:
    """`--precision` -> "fp32" or "bf16" (bf16 autocast).

    auto: the precision a run recorded when it started (so a resumed or unlearned run keeps its
    numerics), else bf16 where the device has it in hardware, else fp32. An explicit bf16 on a CPU
    without bf16 instructions is allowed (the results are the same numbers) with a warning."""
    import warnings

    if name not in PRECISIONS:
        raise SisaError(f"--precision {name!r} is invalid: choose one of {', '.join(PRECISIONS)}")
    if name == "auto":
        if recorded in ("fp32", "bf16"):
            return recorded
        return "bf16" if bf16_native(device) else "fp32"
    if name == "bf16" and not bf16_native(device):
        warnings.warn(f"--precision bf16 on a {device.type.upper()} without bf16 instructions is emulated "
                      "(about ten times slower than fp32 on such a CPU); --precision auto picks fp32 here")
    if recorded in ("fp32", "bf16") and name != recorded:
        warnings.warn(f"this run was trained in {recorded}; continuing it in {name} mixes precisions "
                      "(checkpoint records say which stage used which)")
    return name


def cpu_flags() -> list[str]:
    """The CPU's vector and matrix extensions that matter to PyTorch (for benchmark records)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
