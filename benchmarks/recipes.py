"""Accuracy per compute of training recipes, models and image sizes: the measurement behind `--recipe strong`.

    .venv/bin/python benchmarks/recipes.py --ablations                       # the published grid (about 40 min on 2 cores)
    .venv/bin/python benchmarks/recipes.py --grid strong:cnn-max:32 original:cnn:32 --folds_run 1   # a quick look
    .venv/bin/python benchmarks/recipes.py --grid strong:cnn-max:32:fp32 strong:cnn-max:32:bf16    # precision

Protocol: the monolithic 1x1 baseline of the study (`train.py --num_shards 1 --num_slices 1 --strategy
random-kfold`), on all faces, k-fold test (every face of the run's folds tested once by the model that
did not train on it), with exactly train.py's partitions, seeds and training core (sisa.engine), so
each point is reproducible with train.py. For every (recipe, model, image size): top-1 (mean of the
age classes' accuracies, as the study) of the `random` group (all test faces) and of each race, with
95% bootstrap intervals, per-age-class accuracy, training seconds and images per second, with and
without flip test-time augmentation. Ablations of the strong recipe (`strong-no-la`: without the
logit-adjusted loss; `strong-shift`: with a shift of up to 1/16 of the face; `strong-original-aug`:
with the original's augmentations) run with `--ablations`. Results: benchmarks/results/recipes-<date>.json and a
figure of accuracy against training seconds.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sisa import stats  # noqa: E402
from sisa.config import RunConfig  # noqa: E402
from sisa.data import AGE_CLASSES, load_faces  # noqa: E402
from sisa.device import PRECISIONS, bf16_native, cpu_flags, device_name, resolve_device, resolve_precision  # noqa: E402
from sisa.engine import StagePlan, train_stage  # noqa: E402
from sisa.experiment import versions  # noqa: E402
from sisa.inputs import mirror, to_input  # noqa: E402
from sisa.layout import DEFAULT_CACHE, DEFAULT_DATA, PROJECT_ROOT  # noqa: E402
from sisa.likelihood import draw_likelihood, parse_factors  # noqa: E402
from sisa.model import build_model  # noqa: E402
from sisa.partition import build_partition  # noqa: E402
from sisa.recipe import RECIPES, get_recipe, make_optimizer  # noqa: E402
from sisa.seeding import rng, torch_seed  # noqa: E402
from sisa.store import write_json  # noqa: E402

GRID = ("original:cnn:32", "original:cnn-max:32", "strong:cnn:32", "strong:cnn-max:32", "strong:cnn-max:48")
ABLATIONS = {   # the strong recipe with one choice undone, at cnn-max 32 px
    "strong-no-la": dataclasses.replace(RECIPES["strong"], name="strong-no-la", logit_adjust=0.0),
    "strong-shift": dataclasses.replace(RECIPES["strong"], name="strong-shift", shift=1 / 16),
    "strong-original-aug": dataclasses.replace(RECIPES["strong"], name="strong-original-aug", augmentation="original"),
}


def parse_point(text: str) -> tuple[str, str, int, str]:
    """RECIPE:MODEL:SIZE[:PRECISION] (precision fp32, bf16 or auto; default: --precision)."""
    parts = text.split(":")
    return parts[0], parts[1], int(parts[2]), (parts[3] if len(parts) > 3 else "")


@torch.no_grad()
def logits_of(model: torch.nn.Module, images: torch.Tensor, rows: np.ndarray,
              precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    plain, flipped = [], []
    for idx in torch.as_tensor(rows).split(512):
        x = to_input(images[idx])
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            plain.append(model(x).float())
            flipped.append(model(mirror(x)).float())
    return torch.cat(plain).numpy(), torch.cat(flipped).numpy()


def predictions(part: pd.DataFrame, test: np.ndarray, logits: np.ndarray, fold: int) -> pd.DataFrame:
    """The evaluation's predictions table (sisa.fairness reads it) for one fold's test faces."""
    top = np.argsort(-logits, axis=1, kind="stable")[:, :2]
    sub = part.iloc[test]
    return pd.DataFrame({"fold": fold, "model": "ensemble", "filename": sub["filename"].astype(str).to_numpy(),
                         "race": sub["race"].to_numpy(), "age_class": sub["age_class"].to_numpy(),
                         "group": sub["group"].astype(str).to_numpy(), "pred1": top[:, 0], "pred2": top[:, 1]})


def summarise(pred: pd.DataFrame, n_boot: int) -> dict:
    """Top-1 of the random group and every race with 95% intervals, worst race, gap, per-class top-1."""
    faces = stats.test_faces(pred)
    reps = stats.Replicates(faces, "kfold", n_boot)
    hit = stats.hits(pred, faces)
    table = stats.level_table(stats.level_stats(reps.group_acc(hit)))
    per_class = reps.class_acc(hit)[0]                                  # the random group: every test face
    return {"top1": {g: float(table.loc[f"top1 {g}", "value"]) for g in stats.GROUPS},
            "top1_ci": {g: [float(table.loc[f"top1 {g}", "ci_low"]), float(table.loc[f"top1 {g}", "ci_high"])]
                        for g in stats.GROUPS},
            "worst_race": float(table.loc["worst race top1", "value"]),
            "gap": float(table.loc["gap (best - worst)", "value"]),
            "per_class_random": {c: float(v) for c, v in zip(AGE_CLASSES, per_class)}}


def run_point(recipe_name: str, model_name: str, size: int, a: argparse.Namespace, dev: torch.device,
              precision: str = "fp32") -> dict:
    recipe = ABLATIONS.get(recipe_name) or get_recipe(recipe_name)
    cfg = RunConfig(strategy="random-kfold", num_shards=1, num_slices=1, folds=a.folds, seed=a.seed,
                    image_size=size, model=model_name, recipe="original" if recipe.name == "original" else "strong",
                    epochs=a.epochs, batch_size=a.batch_size, weights="none").validate()
    faces = load_faces(a.data_dir, size, a.cache_dir, progress=False)
    table = pd.concat([faces.table, draw_likelihood(faces.table, parse_factors(cfg.likelihood_factors),
                                                   rng(cfg.seed, "likelihood"))], axis=1)
    images = torch.from_numpy(np.ascontiguousarray(faces.images)).to(dev)
    labels = torch.tensor(table["age_class"].to_numpy(np.int64), device=dev)
    preds = {"none": [], "flip": []}
    seconds = cpu_seconds = images_seen = 0.0
    for fold in range(a.folds_run or a.folds):
        part = build_partition(table, cfg, fold)
        train = np.flatnonzero((part["role"] == "train").to_numpy())
        test = np.flatnonzero((part["role"] == "test").to_numpy())
        model, _ = build_model(model_name, "none", torch_seed(*cfg.init_keys(fold, 0)))
        model = model.to(dev, memory_format=torch.channels_last)
        opt = make_optimizer(model, recipe, recipe.lr)
        plan = StagePlan(recipe, recipe.lr, a.epochs, a.batch_size, True, precision=precision)
        t, c = time.perf_counter(), time.process_time()
        res = train_stage(model, opt, images, labels, train, plan, cfg.stage_keys(fold, 0, 0))
        seconds += time.perf_counter() - t
        cpu_seconds += time.process_time() - c
        images_seen += len(train) * a.epochs
        plain, flipped = logits_of(model, images, test, precision)
        preds["none"].append(predictions(part, test, plain, fold))
        preds["flip"].append(predictions(part, test, (plain + flipped) / 2, fold))
        print(f"  {recipe_name} {model_name} {size}px {precision} fold {fold}: {res.seconds:.0f} s, loss {res.epochs[-1]['loss']:.3f}",
              flush=True)
    out = {"recipe": recipe_name, "model": model_name, "image_size": size, "precision": precision, "epochs": a.epochs,
           "folds_trained": a.folds_run or a.folds, "folds": a.folds, "train_faces_per_fold": int(len(train)),
           "training_seconds": seconds, "training_cpu_seconds": cpu_seconds,
           "images_per_s": images_seen / seconds, "recipe_settings": dataclasses.asdict(recipe),
           "parameters": sum(p.numel() for p in model.parameters())}
    for tta, frames in preds.items():
        out[f"tta_{tta}"] = summarise(pd.concat(frames, ignore_index=True), a.n_boot)
    out["tta_default"] = recipe.tta
    return out


def figure(points: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in points:
        s = p[f"tta_{p['tta_default']}"]
        x, y = p["training_seconds"] / p["folds_trained"], 100 * s["top1"]["random"]
        lo, hi = (100 * v for v in s["top1_ci"]["random"])
        ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="o", capsize=3)
        ax.annotate(f"{p['recipe']} {p['model']} {p['image_size']}px {p.get('precision', 'fp32')}", (x, y), fontsize=8, xytext=(5, 3),
                    textcoords="offset points")
    ax.set_xlabel("training seconds per fold (this machine)")
    ax.set_ylabel("top-1, random group (%)")
    ax.set_title("1x1 baseline, all faces, k-fold test: accuracy per compute", fontsize=10)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", nargs="+", default=list(GRID), metavar="RECIPE:MODEL:SIZE[:PRECISION]",
                   help=f"points to measure (default {' '.join(GRID)})")
    p.add_argument("--ablations", action="store_true", help=f"also {', '.join(ABLATIONS)} with cnn-max at 32 px")
    p.add_argument("--epochs", type=int, default=6, help="epochs (default 6, the CPU study's)")
    p.add_argument("--folds", type=int, default=3, help="k of the k-fold test (default 3, the CPU study's)")
    p.add_argument("--folds_run", type=int, default=None, help="train only the first N folds (default all)")
    p.add_argument("--batch_size", type=int, default=128, help="batch (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="fp32 or bf16 autocast for every point without its own :PRECISION; auto: bf16 where the device "
                        "has it in hardware (default auto)")
    p.add_argument("--data_dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--cache_dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/recipes-<date>.json)")
    a = p.parse_args(argv)
    dev = resolve_device(a.device)
    out = a.out or PROJECT_ROOT / "benchmarks" / "results" / f"recipes-{dt.date.today().isoformat()}.json"
    grid = [parse_point(g) for g in a.grid] + ([(n, "cnn-max", 32, "") for n in ABLATIONS] if a.ablations else [])
    res = {"device": device_name(dev), "cpu_flags": cpu_flags(), "bf16_in_hardware": bf16_native(dev),
           "date": dt.date.today().isoformat(), "versions": versions(),
           "protocol": {"configuration": "1x1 baseline, random-kfold", "faces": "all", "folds": a.folds,
                        "folds_trained": a.folds_run or a.folds, "epochs": a.epochs, "batch_size": a.batch_size,
                        "seed": a.seed, "n_boot": a.n_boot, "weights": "none",
                        "metric": "top-1 = mean of the 7 age classes' accuracies; random = all test faces"},
           "points": []}
    for recipe, model, size, precision in grid:
        precision = resolve_precision(precision or a.precision, dev)
        print(f"== {recipe} {model} {size}px {precision}", flush=True)
        res["points"].append(run_point(recipe, model, size, a, dev, precision))
        write_json(out, res)              # after every point: a cut-off run keeps what it measured
    figure(res["points"], out.with_suffix(".png"))
    for q in res["points"]:
        s = q[f"tta_{q['tta_default']}"]
        print(f"{q['recipe']:>13} {q['model']:>8} {q['image_size']:>3}px {q.get('precision', 'fp32')}: random {100 * s['top1']['random']:.1f} "
              f"[{100 * s['top1_ci']['random'][0]:.1f}, {100 * s['top1_ci']['random'][1]:.1f}], worst race "
              f"{100 * s['worst_race']:.1f}, {q['training_seconds'] / q['folds_trained']:.0f} s per fold, "
              f"{q['images_per_s']:,.0f} img/s")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
