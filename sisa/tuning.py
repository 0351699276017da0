"""The approximate methods' learning rates, chosen on a validation split of training faces.

Before a study applies its --methods to a replicate's 1x1 baseline, it chooses each method's learning
rate on that replicate's fold 0 without reading a test face:

  1. the fold's training faces are split, stratified by race x age class, into a tuning-training part
     A (80%) and a validation part V (20%);
  2. a 1x1 model is trained on A as the run trains its own (the tuning original);
  3. for each scenario, its forget faces at the study's largest volume that lie in A (the scenario's
     own draw for the fold, so the same people ask) are forgotten exactly, by a model trained on A
     without them (the tuning target), and by every method at each learning rate of its grid;
  4. each candidate is scored by the anchors' average gap to retraining (the SalUn / Unlearn-Sparse
     and group-robust unlearning evaluations) over four measures on the tuning split: accuracy on the
     forget faces, on the retained faces, on V (standing in for test faces), and the membership
     attack's AUC of forget vs V faces (the loss alone, threshold-free: mia.auc);
  5. the learning rate with the smallest average gap is the method's for that scenario, at every volume.

A diverged candidate is never chosen (its gap is infinite); if every candidate of a method diverges,
the middle of its grid is used and the choice says so. Everything is seeded, so the choice is a pure
function of the replicate's faces and settings, and it is recorded in the study folder
(tuning/<baseline run>.json) with every candidate's measures.
"""
from __future__ import annotations

import copy
import time

import numpy as np

from . import mia, scenarios
from .approximate import DEFAULTS, Method, apply, configured, model_logits
from .recipe import get_recipe
from .seeding import rng

VALIDATION_SHARE = 0.2
GRID = (1 / 3, 1.0, 3.0)        # multiples of each method's default learning rate (approximate.DEFAULTS)
RETAINED_SCORED = 2000          # retained faces scored per candidate (a fixed stratified sample)
MEASURES = ("forget_accuracy", "retain_accuracy", "validation_accuracy", "forget_vs_validation_auc")


def split(part, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(A, V): the rows of fold 0's training faces for tuning-training and validation, stratified by
    race x age class, V about VALIDATION_SHARE of each cell."""
    train = np.flatnonzero((part["role"] == "train").to_numpy())
    cells = (part["race"].to_numpy()[train] * 10 + part["age_class"].to_numpy()[train])
    g = rng(seed, "tuning-split")
    val = []
    for c in np.unique(cells):
        rows = train[cells == c]
        val.extend(g.choice(rows, size=int(round(VALIDATION_SHARE * len(rows))), replace=False))
    val = np.sort(np.asarray(val, dtype=int))
    return np.setdiff1d(train, val), val


def measures(model, trainer, forget: np.ndarray, retain: np.ndarray, val: np.ndarray, mirrored: bool) -> dict:
    """The four measures of a model on the tuning split (accuracies in %, the AUC in [0, 1])."""
    labels = trainer.labels.cpu().numpy()
    out, losses = {}, {}
    for key, rows in (("forget", forget), ("retain", retain), ("validation", val)):
        logits = model_logits(model, trainer.images, rows, mirrored)
        out[f"{key}_accuracy"] = float(100 * np.mean(logits.argmax(1) == labels[rows]))
        losses[key] = mia.features(logits, labels[rows])[:, 0]
    out["forget_vs_validation_auc"] = mia.auc(-losses["forget"], -losses["validation"])   # low loss: a member
    return out


def average_gap(m: dict, target: dict) -> float:
    """The anchors' average gap to retraining, the AUC in points like the accuracies."""
    scale = {"forget_vs_validation_auc": 100.0}
    return float(np.mean([abs(m[k] - target[k]) * scale.get(k, 1.0) for k in MEASURES]))


def grid(method: str) -> list[float]:
    return [DEFAULTS[method]["lr"] * x for x in GRID]


def tune(exp, trainer, scenario_names: list[str], volume: float, methods: list[str], seed: int,
         metrics_path, say=print) -> dict:
    """Choose every method's learning rate for every scenario on fold 0 of a 1x1 run (module doc).
    Returns what tuning/<run>.json holds."""
    cfg, part, started = exp.cfg, exp.partitions[0], time.perf_counter()
    from .evaluation import resolve_tta
    mirrored = resolve_tta("auto", cfg.recipe) == "flip"
    a_rows, v_rows = split(part, seed)
    names = part["filename"].to_numpy()
    state = trainer.restore(0, 0, -1)                           # fresh weights, as the run's own
    trainer.train_stage(state, 0, 0, 0, a_rows, metrics_path)
    original = state.model
    say(f"tuning: original trained on {len(a_rows):,} faces (validation {len(v_rows):,})")
    out = {"run": cfg.name, "fold": 0, "volume": volume, "validation_share": VALIDATION_SHARE,
           "tuning_faces": int(len(a_rows)), "validation_faces": int(len(v_rows)), "grid_multiples": list(GRID),
           "measures": list(MEASURES), "scenarios": {}}
    in_a = np.zeros(len(part), bool)
    in_a[a_rows] = True
    for name in scenario_names:
        gone = set(scenarios.forget_set(part, scenarios.parse(name), volume, seed, 0))
        is_gone = np.isin(names, list(gone)) & in_a
        forget, retain = np.flatnonzero(is_gone), np.flatnonzero(in_a & ~is_gone)
        scored = np.sort(rng(seed, "tuning-retained", name).choice(retain, size=min(RETAINED_SCORED, len(retain)),
                                                                  replace=False))
        target_state = trainer.restore(0, 0, -1)
        trainer.train_stage(target_state, 0, 0, 0, retain, metrics_path)
        target = measures(target_state.model, trainer, forget, scored, v_rows, mirrored)
        entry = {"forget_faces": int(len(forget)), "target": target,
                 "original": measures(original, trainer, forget, scored, v_rows, mirrored), "methods": {}}
        for m in methods:
            cands = []
            for lr in grid(m):
                model = copy.deepcopy(original)
                facts = apply(model, trainer.images, trainer.labels, retain, forget, configured(m, cfg.batch_size, lr),
                              get_recipe(cfg.recipe),
                              cfg.epochs, (*cfg.stage_keys(0, 0, 0), "tuning", name))
                got = None if facts["diverged"] else measures(model, trainer, forget, scored, v_rows, mirrored)
                cands.append({"lr": lr, "diverged": facts["diverged"], "measures": got,
                              "average_gap": None if got is None else average_gap(got, target)})
            ok = [c for c in cands if c["average_gap"] is not None]
            best = min(ok, key=lambda c: c["average_gap"]) if ok else cands[len(cands) // 2]
            entry["methods"][m] = {"candidates": cands, "lr": best["lr"],
                                   "why": "smallest average gap to the tuning target" if ok else
                                   "every candidate diverged: the grid's middle"}
            say(f"tuning: {name}, {m}: lr {best['lr']:.2g}"
                + (f" (average gap {best['average_gap']:.2f})" if ok else " (every candidate diverged)"))
        out["scenarios"][name] = entry
    out["seconds"] = time.perf_counter() - started
    return out


def missing(tuning: dict | None, scenario_names, methods) -> list[tuple[str, str]]:
    """(scenario, method) pairs a tuning record lacks."""
    have = (tuning or {}).get("scenarios", {})
    return [(s, m) for s in scenario_names for m in methods if m not in have.get(s, {}).get("methods", {})]


def chosen(tuning: dict, scenario: str, method: str, batch_size: int) -> Method:
    """The method with the learning rate tuning chose for the scenario."""
    return configured(method, batch_size, tuning["scenarios"][scenario]["methods"][method]["lr"])
