"""The original study's age classifiers: a partly pretrained ResNet-18 and a small CPU-sized CNN.

Both map (B, 3, H, W) normalised images (channels_last is fine) to (B, 7) age-class logits.

resnet18  torchvision's ResNet-18 body. The stem (conv1, bn1) comes from the pretrained weights and is
          frozen, bn1 included: it stays in eval mode so its running statistics never move. maxpool
          and layer1..layer3 come from the pretrained weights and are fine-tuned; layer4 is always
          freshly initialised, and fc is replaced by a three-layer head with dropout.
          Without pretrained weights (`none`) the stem is trained too: a frozen random stem would
          only throw away capacity.
cnn       the original's small CNN: four conv-BN-ReLU-avgpool blocks (32, 64, 128, 256 channels)
          and a two-layer head.
cnn-max   the same network with max pooling between the blocks: the same cost, and about three
          points more accuracy at 32 px with the strong recipe (benchmarks/recipes.py, docs/recipes.md).

`build_model(name, weights, seed)` builds either one with every random initialisation drawn from
`seed` inside a forked RNG, so equal arguments give equal parameters and the global RNG is untouched.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import warnings
from collections.abc import Iterator

import torch
import torch.nn as nn
from torchvision.models import ResNet18_Weights
from torchvision.models.resnet import BasicBlock, ResNet

from .errors import SisaError

NUM_CLASSES = 7
MODEL_NAMES = ("resnet18", "cnn", "cnn-max")
DOWNLOAD_TIMEOUT_S = 10.0  # an offline machine should fail in seconds, not wait minutes for a socket

_PRETRAINED = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")  # what the pretrained weights give
_FROZEN = ("conv1.", "bn1.")


# Both are SisaErrors (one line the command lines print as it stands) and also the standard
# ValueError / RuntimeError, so callers that know nothing of sisa can still catch them.
class ModelError(SisaError, ValueError):
    """A model name, weights name, path or file that cannot be used."""


class WeightsUnavailable(SisaError, RuntimeError):
    """The ImageNet weights could not be loaded from the cache or downloaded."""


class AgeResNet18(ResNet):
    """torchvision's ResNet-18 with a frozen stem and the original study's head in place of fc."""

    def __init__(self, freeze_stem: bool = True) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2])
        self.freeze_stem = freeze_stem
        self.fc = nn.Sequential(  # type: ignore[assignment]
            nn.Linear(512, 256), nn.ReLU(inplace=True), nn.Dropout(0.3),
            nn.Linear(256, 128), nn.ReLU(inplace=True), nn.Dropout(0.1),
            nn.Linear(128, NUM_CLASSES),
        )
        for p in [*self.conv1.parameters(), *self.bn1.parameters()]:
            p.requires_grad_(not freeze_stem)
        self.train()

    def train(self, mode: bool = True) -> AgeResNet18:
        # A frozen BatchNorm must also stop updating its running statistics, which train mode would do.
        super().train(mode)
        if self.freeze_stem:
            self.bn1.eval()
        return self


class SmallCNN(nn.Module):
    """Four conv blocks, each halving the resolution (average or max pooling), then global average
    pooling and a small head."""

    def __init__(self, pool: str = "avg") -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = 3
        for c_out in (32, 64, 128, 256):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(256, 132), nn.ReLU(inplace=True), nn.Linear(132, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, 3, H, W) -> (B, 256, H/16, W/16) -> (B, 7)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ResNet-18 ImageNet weights, from the torch hub cache or downloaded into it."""
    weights = ResNet18_Weights.IMAGENET1K_V1
    filename = os.path.basename(weights.url)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return weights.get_state_dict(progress=False)
    except Exception as e:  # URLError, timeouts, hash mismatch, a truncated file: the fix is the same
        raise WeightsUnavailable(
            f"could not load the ImageNet ResNet-18 weights (looked for {cached}, then tried to download it: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); fix: connect to the internet once, "
            f"or copy {filename} into {os.path.dirname(cached)}/, or use --weights none / --weights PATH"
        ) from e


def _file_state_dict(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict in `path` and the 'file:<sha256 prefix>' that records which file it was."""
    if not os.path.isfile(path):
        raise ModelError(f"--weights {path!r} is neither auto, imagenet, none nor an existing file")
    with open(path, "rb") as f:
        data = f.read()  # read once: the hash names exactly the bytes that were loaded
    try:
        sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"--weights {path!r} is not a loadable state dict ({type(e).__name__})") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"--weights {path!r} does not hold a state dict (a mapping of names to tensors)")
    return sd, f"file:{hashlib.sha256(data).hexdigest()[:16]}"


def _load_pretrained(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Copy the stem and layer1..layer3 of a torchvision ResNet-18 state dict; layer4 and the head stay fresh."""
    wanted = {k: v for k, v in sd.items() if k.startswith(_PRETRAINED)}
    # Checkpoints older than BatchNorm's num_batches_tracked lack it; it does not affect the outputs.
    needed = {k for k in model.state_dict() if k.startswith(_PRETRAINED) and not k.endswith("num_batches_tracked")}
    missing = sorted(needed - wanted.keys())
    if missing:
        raise ModelError(f"{source} is not a ResNet-18 state dict: {len(missing)} keys missing, e.g. {missing[0]!r}")
    try:
        result = model.load_state_dict(wanted, strict=False)
    except RuntimeError as e:  # shape mismatches are raised even when strict=False
        raise ModelError(f"{source} does not fit ResNet-18: {str(e).splitlines()[-1].strip()}") from e
    if result.unexpected_keys:
        raise ModelError(f"{source} has keys ResNet-18 does not, e.g. {result.unexpected_keys[0]!r}")


def _load_full(model: nn.Module, sd: dict[str, torch.Tensor], name: str, source: str) -> None:
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        first = first if len(first) <= 200 else first[:200] + "..."
        raise ModelError(f"{source} is not a state dict of the {name} model: {first}") from e


def build_model(name: str, weights: str, seed: int) -> tuple[nn.Module, str]:
    """Build `name` ("resnet18" | "cnn" | "cnn-max") with `weights` ("auto" | "imagenet" | "none" | PATH).

    Returns (model, weights_used), weights_used being "imagenet", "none" or "file:<sha256[:16]>".
    """
    if name not in MODEL_NAMES:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    # Resolve (and possibly download) the weights first: it draws no random numbers, and a failure
    # should not cost an initialisation.
    sd: dict[str, torch.Tensor] | None = None
    if weights == "none" or (weights == "auto" and name != "resnet18"):
        used = "none"
    elif weights in ("imagenet", "auto"):
        if name != "resnet18":
            raise ModelError(f"--weights imagenet: there are no pretrained weights for the {name} model; "
                             "use none or a PATH")
        try:
            sd, used = _imagenet_state_dict(), "imagenet"
        except WeightsUnavailable as e:
            if weights == "imagenet":
                raise
            warnings.warn(f"--weights auto: falling back to random initialisation because {e}", stacklevel=2)
            used = "none"
    else:
        sd, used = _file_state_dict(weights)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: nn.Module = AgeResNet18(freeze_stem=sd is not None) if name == "resnet18" else \
            SmallCNN("max" if name == "cnn-max" else "avg")

    source = "the ImageNet weights" if used == "imagenet" else f"--weights {weights!r}"
    if sd is not None and name == "resnet18" and "fc.weight" in sd:  # torchvision's layout: fc is one Linear
        _load_pretrained(model, sd, source)
    elif sd is not None:
        _load_full(model, sd, name, source)
    return model, used


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimiser should update (the frozen stem excluded)."""
    return [p for p in model.parameters() if p.requires_grad]
