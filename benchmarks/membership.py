"""How visible is membership? The attack of sisa/mia.py on trained 1x1 runs: training faces against test faces.

    .venv/bin/python benchmarks/membership.py --runs RUN [RUN ...] --out benchmarks/results/membership-cpu-DATE.json

For each run (a folder of a trained monolith, `--num_shards 1 --num_slices 1`), every face of every fold
goes through its fold's final model; the attacks (a loss threshold and a logistic regression on loss
and confidence) are fitted on half of the training faces against half of the test faces and scored on
the other halves: the AUC of training against test faces, overall and by race, with bootstrap
intervals, and the gap between training and test accuracy. A membership attack can only judge
forgetting where this AUC is clearly above 0.5; comparing runs trained for more epochs shows how much
training makes membership visible. Nothing is trained.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sisa import mia  # noqa: E402
from sisa.approximate import fold_features  # noqa: E402
from sisa.data import RACES  # noqa: E402
from sisa.experiment import Options, open_run, versions  # noqa: E402
from sisa.layout import RunLayout  # noqa: E402
from sisa.seeding import rng  # noqa: E402
from sisa.store import write_json  # noqa: E402
from sisa.training import Trainer  # noqa: E402


def visibility(run: Path, n_boot: int, seed: int) -> dict:
    exp = open_run(RunLayout(run.resolve()), Options(device="cpu"), with_images=True)
    if exp.cfg.num_shards * exp.cfg.num_slices != 1:
        sys.exit(f"membership: {run} is not a 1x1 run")
    trainer = Trainer(exp, Options(device="cpu", progress=False))
    train, test, race_tr, race_te, acc = [], [], [], [], {"train": [], "test": []}
    for f, part in enumerate(exp.partitions):
        t = fold_features(trainer.restore(f, 0, 0).model, trainer.images, trainer.labels, part, f)
        role = part["role"].to_numpy()[t["row"]]
        X = np.stack([t["loss"], t["confidence"]], 1).astype(float)
        right = t["pred"] == part["age_class"].to_numpy()[t["row"]]
        for side, mask in (("train", role == "train"), ("test", role == "test")):
            (train if side == "train" else test).append(X[mask])
            (race_tr if side == "train" else race_te).append(part["race"].to_numpy()[t["row"]][mask])
            acc[side].append(right[mask])
    Xtr, Xte, rtr, rte = map(np.concatenate, (train, test, race_tr, race_te))
    g = rng(seed, "membership-halves")
    half_tr = g.permutation(len(Xtr)) < len(Xtr) // 2     # fit on one half of each side, score the other
    out = mia.forgetting(Xtr[half_tr], Xtr[~half_tr], Xte, rtr[~half_tr], rte, n_boot=n_boot, seed=seed)
    return {"run": run.name, "epochs": exp.cfg.epochs, "batch_size": exp.cfg.batch_size, "model": exp.cfg.model,
            "image_size": exp.cfg.image_size, "folds": exp.cfg.folds, "recipe": exp.cfg.recipe,
            "train_accuracy": float(np.concatenate(acc["train"]).mean()),
            "test_accuracy": float(np.concatenate(acc["test"]).mean()),
            "attacks": {k: {"auc_members_vs_test": v["auc_forget"], "interval": list(v["auc_forget_ci"]),
                            "by_race": {r: {"auc": x["auc_forget"], "interval": list(x["auc_forget_ci"])}
                                        for r, x in v["by_race"].items()}} for k, v in out.items()},
            "races": list(RACES)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="folders of trained 1x1 runs")
    p.add_argument("--n_boot", type=int, default=200, help="bootstrap resamples of each AUC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="the JSON to write")
    a = p.parse_args(argv)
    rows = []
    for run in a.runs:
        rows.append(visibility(run, a.n_boot, a.seed))
        r = rows[-1]
        print(f"{run.name}: {r['epochs']} epochs, train {100 * r['train_accuracy']:.1f}% / test "
              f"{100 * r['test_accuracy']:.1f}%, logistic AUC {r['attacks']['logistic']['auc_members_vs_test']:.3f} "
              f"{[round(x, 3) for x in r['attacks']['logistic']['interval']]}", flush=True)
    write_json(a.out, {"what": "membership visibility: the attack of sisa/mia.py, training faces against test faces, "
                               "on trained 1x1 runs (all folds pooled)", "command": "benchmarks/membership.py " +
                       " ".join(sys.argv[1:]), "date": dt.date.today().isoformat(), "versions": versions(), "runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
