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
import io
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .engine import augmenter
from .recipe import Recipe, log_prior, loss_fn, make_optimizer
from .seeding import torch_seed
from .store import write_bytes, write_json, write_text

METHODS = ("finetune", "neggrad", "random-label", "scrub")
NUM_CLASSES = 7
# Each method's settings: a tenth of retraining's image-steps; the centre of its learning-rate grid for
# AdamW after the anchors' defaults, gradient ascent ten times gentler than descent (it diverges
# otherwise). A study chooses the learning rate from the grid on a validation split (tuning.py)
DEFAULTS = {"finetune": dict(lr=1e-3), "neggrad": dict(lr=1e-4, alpha=0.99), "random-label": dict(lr=1e-3),
            "scrub": dict(lr=5e-4, temperature=4.0)}


@dataclass(frozen=True)
class Method:
    """A method and its settings (recorded with its results)."""
    name: str
    lr: float                   # peak learning rate
    budget: float = 0.1         # share of retraining's image-steps
    batch_size: int = 128
    alpha: float = 0.99         # neggrad: weight of the retained loss
    temperature: float = 4.0    # scrub: softmax temperature of the KL terms


def configured(name: str, batch_size: int = 128, lr: float | None = None) -> Method:
    """The method with its settings (DEFAULTS), at learning rate `lr` when given (a study's: tuning.py)."""
    return Method(name, batch_size=batch_size, **{**DEFAULTS[name], **({} if lr is None else {"lr": lr})})


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


# ---- on a run: a fold's monolith unlearned, evaluated, and its faces' features for the attack ----
def model_logits(model: torch.nn.Module, images: torch.Tensor, rows: np.ndarray, mirrored: bool = False,
                 batch: int = 512) -> np.ndarray:
    """(len(rows), 7) logits of one model on rows of the images (eval mode); with `mirrored`, the mean
    of each face's and its mirror image's (flip test-time augmentation, as evaluate.py)."""
    from .inputs import mirror, to_input
    model.eval()
    out = []
    with torch.no_grad():
        for idx in torch.as_tensor(rows, device=images.device).split(batch):
            x = to_input(images[idx])
            z = model(x).float()
            if mirrored:
                z = (z + model(mirror(x)).float()) / 2
            out.append(z.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, NUM_CLASSES), np.float32)


def features_table(logits: np.ndarray, labels: np.ndarray, fold: int, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per face of a fold: its row, the attack's features (mia.features) and the model's top-1."""
    from .mia import features
    f = features(logits, labels)
    return {"fold": np.full(len(rows), fold, np.uint8), "row": rows.astype(np.int32), "loss": f[:, 0].astype(np.float32),
            "confidence": f[:, 1].astype(np.float32), "pred": logits.argmax(1).astype(np.uint8)}


def concat_tables(tables: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}


def fold_features(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, part, fold: int) -> dict:
    """The features of every face of a fold (training, forgotten and test) under one model."""
    rows = np.arange(len(part))
    return features_table(model_logits(model, images, rows), labels.cpu().numpy()[rows], fold, rows)


def write_features(path, table: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **table)
    write_bytes(path, buf.getvalue())


def run_features(exp, trainer, summary) -> None:
    """The features of every face of every fold under a monolith run's final models, beside its summary."""
    last = exp.cfg.num_slices - 1
    tables = [fold_features(trainer.restore(f, 0, last).model, trainer.images, trainer.labels, exp.partitions[f], f)
              for f in range(exp.cfg.n_folds)]
    write_features(summary.features, concat_tables(tables))


def unlearn_run(exp, trainer, scenario: str, volume: float, method: Method, summary, seed: int) -> dict:
    """A method applied to a monolith run's final model of every fold, forgetting a scenario's volume
    (scenarios.forget_set, the faces exact unlearning forgets); the test faces' predictions and logits
    written as a summary (predictions.csv, logits.npz, info.json) and every face's features beside it.
    The run itself is not changed. Returns the method's facts, summed over folds."""
    import datetime as dt

    import pandas as pd

    from . import scenarios
    from .evaluation import _test_rows, logits_file, predictions, resolve_tta
    from .recipe import get_recipe
    cfg, sc = exp.cfg, scenarios.parse(scenario)
    if cfg.num_shards * cfg.num_slices != 1:
        raise ValueError("approximate methods start from the 1x1 monolith")
    mirrored = resolve_tta("auto", cfg.recipe) == "flip"
    logits, tables, facts = {}, [], []
    for f, part in enumerate(exp.partitions):
        gone = set(scenarios.forget_set(part, sc, volume, seed, f))
        train = (part["role"] == "train").to_numpy()
        is_gone = part["filename"].isin(gone).to_numpy()
        model = trainer.restore(f, 0, 0).model
        facts.append(apply(model, trainer.images, trainer.labels, np.flatnonzero(train & ~is_gone),
                           np.flatnonzero(is_gone), method, get_recipe(cfg.recipe), cfg.epochs,
                           (*cfg.stage_keys(f, 0, 0), "approximate")))
        logits[f] = model_logits(model, trainer.images, _test_rows(exp, f), mirrored)[None]
        tables.append(fold_features(model, trainer.images, trainer.labels, part, f))
    pred = pd.concat([predictions(exp, f, logits[f], "sum_logits") for f in logits], ignore_index=True)
    out = {**asdict(method), "diverged": any(x["diverged"] for x in facts),
           "image_steps": int(sum(x["image_steps"] for x in facts)), "seconds": float(sum(x["seconds"] for x in facts)),
           "folds": facts}
    summary.root.mkdir(parents=True, exist_ok=True)
    write_text(summary.predictions, pred.to_csv(index=False))
    write_bytes(summary.logits, logits_file(exp, list(logits), logits, "flip" if mirrored else "none"))
    write_features(summary.features, concat_tables(tables))
    write_json(summary.info, {"run": cfg.name, "summary": summary.name, "scenario": scenario, "volume": volume,
                              "method": out, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    return out
