"""Training recipes: optimizer, learning-rate schedule, loss and augmentation, by name.

    original  the study's recipe, kept for comparisons with the poster: Adam (lr 6e-4), the learning
              rate x0.2 after 40%, 60% and 80% of each stage's epochs, cross-entropy with label
              smoothing 0.1, the original's augmentations (sisa.augment.augment), no test-time
              augmentation.
    strong    a from-scratch recipe chosen by measurement (benchmarks/recipes.py, docs/recipes.md):
              AdamW (lr 2e-3, weight decay 5e-4 on weights, none on biases and norms), a one-cycle
              schedule stepped per batch over each stage, label smoothing 0.1, logit-adjusted
              cross-entropy (Menon et al. 2021: the logits are offset by the log class prior of the
              stage's own faces, which trains for the mean of the age classes' accuracies, the
              metric the study reports), a horizontal flip as the only augmentation (a shift of
              1/16 or 1/32 of the face, the original's augmentations, measured worse at the CPU
              study's budget), and flip test-time augmentation in evaluate.py.

A schedule is a pure function of (stage epochs, batches per epoch, step): every stage runs the whole
schedule from its start, so a stage depends only on its starting checkpoint and its faces, and the
schedule state a checkpoint records (the step reached) is enough to explain it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import RECIPE_LR
from .errors import SisaError
from .model import trainable_parameters


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str           # "adam" | "adamw"
    lr: float                # default peak learning rate (--lr overrides)
    weight_decay: float      # AdamW decoupled decay on weight matrices and kernels (not biases, norms)
    schedule: str            # "steps": x0.2 after 40/60/80% of the epochs | "one_cycle": per batch
    label_smoothing: float
    logit_adjust: float      # tau: the loss sees logits + tau * log(class prior of the stage's faces)
    augmentation: str        # "original" | "flip_shift" (what --no_augment turns off)
    shift: float             # flip_shift: largest shift as a fraction of the face (0: a flip only)
    tta: str                 # evaluate.py's default test-time augmentation: "none" | "flip"


RECIPES = {
    "original": Recipe("original", "adam", RECIPE_LR["original"], 0.0, "steps", 0.1, 0.0, "original", 0.0, "none"),
    "strong": Recipe("strong", "adamw", RECIPE_LR["strong"], 5e-4, "one_cycle", 0.1, 1.0, "flip_shift", 0.0, "flip"),
}
STEP_DROPS = (0.4, 0.6, 0.8)   # "steps": fractions of a stage after which the lr is x0.2 (epochs 6, 9, 12 of 15)
STEP_GAMMA = 0.2
WARMUP = 0.25                  # "one_cycle": share of the stage spent rising to the peak
START_DIV, END_DIV = 25.0, 1e4  # "one_cycle": starts at peak/25, ends at peak/25/1e4 (torch's OneCycleLR)


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise SisaError(f"--recipe {name!r} is invalid: choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters, weight decay on matrices and kernels only (biases and norms stay free)."""
    train = trainable_parameters(model)         # the frozen stem of a pretrained ResNet-18 stays out
    if not weight_decay:
        return [{"params": train}]
    return [{"params": [p for p in train if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in train if p.ndim <= 1], "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, recipe: Recipe, lr: float, capturable: bool = False,
                   lr_tensor: torch.Tensor | None = None) -> torch.optim.Optimizer:
    """The recipe's optimizer over the model's trainable parameters.

    `capturable` and `lr_tensor` (a device tensor the learning rate is written into) are for CUDA
    graphs; the optimizer's state dict is the same either way once exported (see engine)."""
    rate = lr_tensor if lr_tensor is not None else lr
    if recipe.optimizer == "adam":
        return torch.optim.Adam(param_groups(model, 0.0), lr=rate, capturable=capturable)
    return torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=rate, weight_decay=recipe.weight_decay,
                             capturable=capturable)


def steps_milestones(epochs: int) -> list[int]:
    return sorted({max(1, round(f * epochs)) for f in STEP_DROPS})


def lr_at(recipe: Recipe, lr: float, epochs: int, batches_per_epoch: int, epoch: int, batch: int) -> float:
    """Learning rate of batch `batch` of epoch `epoch` in a stage of `epochs` epochs."""
    if recipe.schedule == "steps":
        # Chained as torch's MultiStepLR does (lr * 0.2, then * 0.2 again), so runs stay bit for bit.
        rate = lr
        for m in steps_milestones(epochs):
            if epoch >= m:
                rate = rate * STEP_GAMMA
        return rate
    total = max(1, epochs * batches_per_epoch)
    step = epoch * batches_per_epoch + batch
    warm = max(1, round(WARMUP * total))
    low, end = lr / START_DIV, lr / START_DIV / END_DIV
    if step < warm:
        return low + (lr - low) * (1 - math.cos(math.pi * step / warm)) / 2
    t = (step - warm) / max(1, total - 1 - warm)   # the last batch runs at the final rate, as in torch
    return end + (lr - end) * (1 + math.cos(math.pi * min(1.0, t))) / 2


def log_prior(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(classes,) log of the class shares among `labels`, each count plus one (no log 0 for a class
    a stage happens not to hold)."""
    counts = torch.bincount(labels, minlength=classes).to(torch.float32) + 1.0
    return (counts / counts.sum()).log()


def loss_fn(logits: torch.Tensor, y: torch.Tensor, recipe: Recipe, prior: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy with the recipe's label smoothing, on logit-adjusted logits when tau > 0."""
    z = logits.float()
    if recipe.logit_adjust and prior is not None:
        z = z + recipe.logit_adjust * prior
    return F.cross_entropy(z, y, label_smoothing=recipe.label_smoothing)
