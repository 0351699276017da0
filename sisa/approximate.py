"""Approximate unlearning: cheap methods that start from the trained model instead of retraining it.

Exact unlearning (retraining without the faces; SISA's shard retraining) is the reference; these are
what the unlearning literature compares with it (definitions after the anchors: the NeurIPS 2023
unlearning challenge's starting kit, SCRUB by Kurmanji et al. 2023, the SalUn / Unlearn-Sparse code,
torchunlearn):

  finetune      continue training on the retained faces only (catastrophic forgetting of the rest)
  neggrad       NegGrad+: each step descends the loss on a retained batch and ascends it on a forget
                batch, alpha * L(retain) - (1 - alpha) * L(forget)
  random-label  the forget faces get a random wrong age class and are trained on with the retained
                faces (the faces' labels no longer hold)
  scrub         SCRUB: a student starting from the model and the model as a frozen teacher; max steps
                push the student's outputs away from the teacher's on forget batches (-KL), min steps
                pull them together on retained batches (KL + the task loss); max steps alternate with
                min steps during the first half of the budget, only min steps after

Every method spends a stated budget: a fraction of retraining's image-steps (epochs x training faces),
counting every image a step reads (forget and retained batches alike). The learning rate decays on a
cosine from `lr` over the budget; batches are drawn from seeded generators, so a method is a pure
function of the model, the faces and its settings. It reads only the retained and forget rows it is
given: test faces never enter. A method whose loss goes non-finite stops there and says so
(`diverged`), rather than being dropped.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .engine import augmenter
from .recipe import Recipe, log_prior, loss_fn, make_optimizer
from .seeding import torch_seed

METHODS = ("finetune", "neggrad", "random-label", "scrub")
NUM_CLASSES = 7


@dataclass(frozen=True)
class Method:
    """A method and its settings (recorded with its results)."""
    name: str
    lr: float                   # peak learning rate
    budget: float = 0.1         # share of retraining's image-steps
    batch_size: int = 128
    alpha: float = 0.99         # neggrad: weight of the retained loss
    temperature: float = 4.0    # scrub: softmax temperature of the KL terms


def _forget_labels(labels: torch.Tensor, rows: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random wrong class for each forget face."""
    shift = torch.randint(1, NUM_CLASSES, (len(rows),), generator=gen).to(labels.device)
    return (labels[rows] + shift) % NUM_CLASSES


def _kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), log_target=True,
                    reduction="batchmean") * t * t


def apply(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, retain: np.ndarray,
          forget: np.ndarray, method: Method, recipe: Recipe, epochs: int, keys: tuple) -> dict:
    """Unlearn `forget` rows from `model` in place with `method`; `retain` rows are what it keeps.
    `epochs`: retraining's epochs (the budget's unit). Returns the facts of the attempt."""
    if method.name not in METHODS:
        raise ValueError(f"method {method.name!r}: choose from {', '.join(METHODS)}")
    dev = images.device
    budget = int(method.budget * epochs * (len(retain) + len(forget)))
    gen = torch.Generator().manual_seed(torch_seed(*keys, method.name, "order"))
    aug_gen = torch.Generator(device=dev).manual_seed(torch_seed(*keys, method.name, "augment"))
    aug = augmenter(recipe, True)
    retain_t, forget_t = torch.as_tensor(retain, device=dev), torch.as_tensor(forget, device=dev)
    prior = log_prior(labels[retain_t], NUM_CLASSES) if recipe.logit_adjust else None
    opt = make_optimizer(model, recipe, method.lr)
    teacher = copy.deepcopy(model).eval() if method.name == "scrub" else None
    if method.name == "random-label":
        pool = torch.cat([retain_t, forget_t])
        pool_labels = torch.cat([labels[retain_t], _forget_labels(labels, forget_t, gen)])
    else:
        pool, pool_labels = retain_t, labels[retain_t]
    b = method.batch_size
    fb = min(b, len(forget)) if method.name in ("neggrad", "scrub") else 0

    def draw(n_rows: int, size: int) -> torch.Tensor:
        return torch.randint(n_rows, (size,), generator=gen).to(dev)

    seen, step, losses, started = 0, 0, [], time.perf_counter()
    total_steps = max(1, math.ceil(budget / (b + fb)))
    model.train()
    while seen < budget:
        for g in opt.param_groups:
            g["lr"] = method.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
        scrub_max = method.name == "scrub" and step < total_steps // 2 and step % 2 == 0
        if scrub_max:                                      # SCRUB's max step: away from the teacher on forget faces
            idx = forget_t[draw(len(forget_t), fb)]
            x = aug(images[idx], aug_gen)
            with torch.no_grad():
                t_out = teacher(x)
            loss = -_kl(model(x), t_out, method.temperature)
            seen += fb
        else:
            pick = draw(len(pool), b)
            x, y = aug(images[pool[pick]], aug_gen), pool_labels[pick]
            out = model(x)
            loss = loss_fn(out, y, recipe, prior)
            seen += b
            if method.name == "neggrad":
                f = forget_t[draw(len(forget_t), fb)]
                loss = method.alpha * loss - (1 - method.alpha) * loss_fn(model(aug(images[f], aug_gen)), labels[f],
                                                                          recipe, prior)
                seen += fb
            elif method.name == "scrub":
                with torch.no_grad():
                    t_out = teacher(x)
                loss = loss + _kl(out, t_out, method.temperature)
        if not torch.isfinite(loss):
            return {**asdict(method), "diverged": True, "at_step": step, "image_steps": seen, "budget_image_steps": budget,
                    "seconds": time.perf_counter() - started, "final_loss": None}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
    model.eval()
    return {**asdict(method), "diverged": False, "steps": step, "image_steps": seen, "budget_image_steps": budget,
            "seconds": time.perf_counter() - started, "final_loss": float(np.mean(losses[-10:])) if losses else None}
