"""How long a study will take, before it starts: images to process over a measured speed.

The speed is the study's own when it has trained a run already (its progress files record images
per second), else a few training steps of the study's network on a synthetic batch on this device
(seconds, not minutes). Evaluation and unlearning are counted in training-step equivalents
(Study.work), so one speed covers every phase. It is an estimate: start-up, augmentation and the
data cache are not in it.
"""
from __future__ import annotations

import time

WARM_STEPS, TIMED_STEPS = 3, 5    # oneDNN picks and packs its kernels over the first steps (bf16 more than fp32)
PROBE_PIXELS = 128 * 32 * 32  # a batch of at most this many pixels: 128 faces at 32 px, 8 at 128 px or more


def measured_rate(done: dict) -> float | None:
    """Images per second of the training phases a study recorded (None if none has finished)."""
    rates = [ph["train"]["images_per_s"] for ph in done.values()
             if ph.get("train", {}).get("images_per_s") and ph["train"].get("done", True)]
    rates = [r for r in rates if r == r]          # NaN: a run without metrics
    return sum(rates) / len(rates) if rates else None


def probe_rate(model: str, image_size: int, batch_size: int, device: str = "auto", precision: str = "auto") -> float:
    """Images per second of a few training steps of `model` at `image_size` on a synthetic batch."""
    import torch

    from ..device import resolve_device, resolve_precision
    from ..model import build_model
    from ..recipe import RECIPES, loss_fn, make_optimizer
    dev = resolve_device(device)
    bf16 = resolve_precision(precision, dev) == "bf16"
    net, _ = build_model(model, "none", 0)
    net = net.to(dev, memory_format=torch.channels_last)
    recipe = RECIPES["strong"]
    opt = make_optimizer(net, recipe, recipe.lr)
    batch = min(batch_size, max(8, PROBE_PIXELS // image_size ** 2))   # a probe of seconds, not minutes
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen).to(dev, memory_format=torch.channels_last)
    y = torch.randint(0, 7, (batch,), generator=gen).to(dev)

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits = net(x)
        loss = loss_fn(logits, y, recipe, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for _ in range(WARM_STEPS):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(TIMED_STEPS):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return TIMED_STEPS * batch / (time.perf_counter() - t)


def duration(seconds: float) -> str:
    """'about 3 min', 'about 5.2 h', 'about 2.1 days'."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"about {seconds / 3600:.1f} h"
    return f"about {seconds / 86400:.1f} days"
