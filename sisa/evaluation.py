"""Evaluate a trained run: shard logits on each fold's test faces, the ensemble, summaries, figures.

    .venv/bin/python evaluate.py --run_dir sorted-balanced-slice-5x3
    .venv/bin/python evaluate.py --compare baseline-1x1 random-balanced-slice-5x3 sorted-balanced-slice-5x3

Logits are saved per fold with the digests of the checkpoints that produced them, for the faces as
they are and mirrored, so evaluating again (another aggregation, with or without flip test-time
augmentation, more bootstrap samples) needs no model and no GPU until a checkpoint changes (after
unlearning, say).
"""
from __future__ import annotations

import datetime as dt
import io
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import checkpoints, fairness, plots
from .aggregation import AGGREGATIONS, rank, scores
from .config import TTA
from .data import RACES
from .device import resolve_device, resolve_precision
from .errors import SisaError
from .experiment import Experiment, Options, open_run, versions
from .inputs import mirror, to_input
from .layout import RunLayout, SummaryLayout
from .model import build_model
from .partition import stage_hash
from .store import write_bytes, write_json, write_text

# Faces per forward pass (twice that with their mirror images). Small on a CPU: at 64 faces the
# activations stay in the caches, 1.7x the images per second of 256 (benchmarks/cpu_engine.py);
# large on a GPU, which needs the parallelism.
EVAL_BATCH = {"cpu": 64, "cuda": 512}


def resolve_tta(tta: str, recipe: str) -> str:
    if tta not in TTA:
        raise SisaError(f"--tta {tta!r} is invalid: choose one of {', '.join(TTA)}")
    if tta != "auto":
        return tta
    from .recipe import get_recipe
    return get_recipe(recipe).tta


def _test_rows(exp: Experiment, fold: int) -> np.ndarray:
    return np.flatnonzero((exp.partitions[fold]["role"] == "test").to_numpy())


@torch.inference_mode()
def shard_logits(exp: Experiment, fold: int, device: torch.device, shards: list[int],
                 mirrored: bool, precision: str = "fp32") -> tuple[np.ndarray, np.ndarray | None]:
    """(len(shards), n_test, 7) logits of those shards' final models on the fold's test faces, and
    (`mirrored`) on the same faces mirrored left-right, for flip test-time augmentation. A face and
    its mirror go through the model in one batch (a model in eval mode treats every face alone)."""
    images = torch.from_numpy(exp.images[_test_rows(exp, fold)]).to(device)   # (n_test, H, W, 3): a copy
    batches = torch.arange(len(images), device=device).split(EVAL_BATCH.get(device.type, 256))
    last = exp.cfg.num_slices - 1
    plain, flipped = [], []
    for shard in shards:
        path = exp.layout.checkpoint(fold, shard, last)
        ck = checkpoints.load_checkpoint(path, exp.cfg, stage_hash(exp.partitions[fold], shard, last))
        model, _ = build_model(exp.cfg.model, "none", 0)     # architecture only: the weights come from ck
        model.load_state_dict(ck["model"])
        model = model.to(device, memory_format=torch.channels_last).eval()
        a, b = [], []
        for i, idx in enumerate(batches):
            x = to_input(images[idx])
            if mirrored:
                x = torch.cat([x, mirror(x)]).contiguous(memory_format=torch.channels_last)
            if i == 0:
                model = inference_model(model, x, precision)      # traced on the first batch
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(x).float().cpu()
            a.append(out[:len(idx)])
            if mirrored:
                b.append(out[len(idx):])
        plain.append(torch.cat(a).numpy())
        flipped.append(torch.cat(b).numpy() if mirrored else np.zeros_like(plain[-1]))
    return np.stack(plain), (np.stack(flipped) if mirrored else None)


def inference_model(model: torch.nn.Module, example: torch.Tensor, precision: str) -> torch.nn.Module:
    """On a CPU in fp32: a frozen TorchScript copy of the model, its convolutions, batch norms and
    ReLUs fused and its weights prepacked by oneDNN (1.4x the images per second of eager on the
    development machine; logits equal to about 1e-6). Anywhere else, or if this PyTorch cannot make
    one (TorchScript is deprecated), the model as it is."""
    if example.device.type != "cpu" or precision != "fp32":
        return model
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, example)))
    except Exception:
        return model


def _final_digests(exp: Experiment, fold: int) -> list[str]:
    last = exp.cfg.num_slices - 1
    return [checkpoints.status(exp.layout.checkpoint(fold, s, last)).record["digest"] for s in range(exp.cfg.num_shards)]


def fold_logits(exp: Experiment, fold: int, opts: Options, tta: str = "none", precision: str = "fp32") -> np.ndarray:
    """(S, n_test, 7) shard logits of a fold; with flip test-time augmentation, the mean of the logits
    of each face and of its mirror image. A shard's saved logits are used when they came from its
    current checkpoint (and hold the mirrored ones if needed); only the others are computed (after
    unlearning: the retrained shards) and the fold's file is rewritten."""
    path, digests = exp.layout.logits(fold), _final_digests(exp, fold)
    device = resolve_device(opts.device)
    names = exp.partitions[fold]["filename"].to_numpy()[_test_rows(exp, fold)].astype(str)
    S, need_flip = exp.cfg.num_shards, tta == "flip"
    plain, flipped = np.zeros((S, len(names), 7), np.float32), np.zeros((S, len(names), 7), np.float32)
    has_flip, have = np.zeros(S, bool), []
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                made_in = str(z["precision"]) if "precision" in z.files else precision   # older files: as now
                if list(z["filenames"]) == list(names) and len(z["checkpoint_digests"]) == S and made_in == precision:
                    kept = [s for s in range(S) if z["checkpoint_digests"][s] == digests[s]]
                    plain[kept], flipped[kept], has_flip[kept] = z["shard_logits"][kept], \
                        z["shard_logits_flip"][kept], z["has_flip"][kept]
                    have = [s for s in kept if has_flip[s] or not need_flip]
        except Exception:
            have = []   # damaged, or of an older layout: recompute
    todo = [s for s in range(S) if s not in have]
    if todo:
        if exp.images.size == 0:
            raise LookupError("images needed")
        new_plain, new_flip = shard_logits(exp, fold, device, todo, need_flip, precision)
        plain[todo] = new_plain
        if need_flip:
            flipped[todo], has_flip[todo] = new_flip, True
        else:
            has_flip[todo] = False
        buf = io.BytesIO()
        np.savez(buf, shard_logits=plain, shard_logits_flip=flipped, has_flip=has_flip, filenames=names,
                 checkpoint_digests=np.array(digests), precision=np.array(precision), **{f"ensemble_{m}": scores(plain, m) for m in AGGREGATIONS})
        write_bytes(path, buf.getvalue())
    return (plain + flipped) / 2 if need_flip else plain


def predictions(exp: Experiment, fold: int, logits: np.ndarray, aggregation: str) -> pd.DataFrame:
    """One row per (model, test face) of a fold: the ensemble's and each shard model's top-2."""
    part = exp.partitions[fold].iloc[_test_rows(exp, fold)]
    base = pd.DataFrame({"fold": fold, "filename": part["filename"].astype(str).to_numpy(),
                         "race": part["race"].to_numpy(), "age_class": part["age_class"].to_numpy(),
                         "group": part["group"].astype(str).to_numpy()})
    frames = []
    for model, score in [("ensemble", scores(logits, aggregation))] + \
                        [(f"shard-{s}", logits[s]) for s in range(len(logits))]:
        top = rank(score)
        frames.append(base.assign(model=model, pred1=top[:, 0], pred2=top[:, 1]))
    return pd.concat(frames, ignore_index=True)


def composition_shares(partitions: list[pd.DataFrame]) -> pd.DataFrame:
    """Share of each race among high- and low-likelihood training faces, pooled over folds."""
    train = pd.concat([p[(p["role"] == "train") & ~p["forgotten"]] for p in partitions])
    rows = {}
    for label, sel in (("high unlearning likelihood", train["high_likelihood"]),
                       ("low unlearning likelihood", ~train["high_likelihood"])):
        sub = train[sel]
        rows[label] = {**{r: float((sub["race"] == i).mean()) if len(sub) else np.nan for i, r in enumerate(RACES)},
                       "share": float(sel.mean())}
    return pd.DataFrame(rows).T


def summary_name(exp: Experiment) -> str:
    forgotten = set()
    for p in exp.partitions:
        forgotten |= set(p.loc[p["forgotten"], "filename"])
    return exp.cfg.name + (f"-unlearned{len(forgotten)}" if forgotten else "")


def evaluate_run(layout: RunLayout, opts: Options, summaries_dir: Path, aggregation: str = "sum_logits",
                 allow_partial: bool = False, overwrite: bool = False, name: str | None = None,
                 n_boot: int = 1000, tta: str = "auto") -> tuple[SummaryLayout, pd.DataFrame]:
    """Evaluate a run (the caller holds its lock) into summaries; nothing is written unless all of it
    could be computed. With `overwrite`, the summaries of this name are replaced, per-fold pickles of
    another fold count included."""
    exp = open_run(layout, opts, with_images=False)
    tta = resolve_tta(tta, exp.cfg.recipe)
    precision = resolve_precision(opts.precision, resolve_device(opts.device))   # resolved (and warned) once
    folds = checkpoints.usable_folds(layout, exp.cfg, exp.partitions, "evaluate", allow_partial=allow_partial,
                                     fix="finish it with train.py, or pass --allow_partial to evaluate only the "
                                         "complete folds")
    out = SummaryLayout(Path(summaries_dir), name or summary_name(exp))
    existing = [p for p in out.all_files(len(folds)) if p.exists()] + \
        [p for p in out.fold_pickles() if p not in out.all_files(len(folds))]
    if existing and not overwrite:
        raise SisaError(f"summaries for {out.name} exist already ({existing[0].name}, ...); pass --overwrite "
                        "to replace them or --name to write them under another name")
    # --- compute everything first; write only when all of it succeeded --------------------------
    logits = {}
    for fold in folds:
        try:
            logits[fold] = fold_logits(exp, fold, opts, tta, precision)
        except LookupError:
            exp = open_run(layout, opts, with_images=True)   # images are only needed for new logits
            logits[fold] = fold_logits(exp, fold, opts, tta, precision)
    pred = pd.concat([predictions(exp, f, logits[f], aggregation) for f in folds], ignore_index=True)
    tidy = fairness.tidy_metrics(pred)
    aggregated = aggregation_table(exp, folds, logits)
    per_fold, mean, square = fairness.original_summaries(tidy)
    fair = fairness.fairness_table(pred, exp.cfg.test_kind, n_boot)
    info = {"run": exp.cfg.name, "run_dir": str(layout.root), "summary": out.name, "aggregation": aggregation,
            "tta": tta, "recipe": exp.cfg.recipe, "training_precision": exp.manifest.get("precision"),
            "evaluation_precision": precision,
            "folds_evaluated": folds, "folds_in_run": exp.cfg.n_folds, "test_kind": exp.cfg.test_kind,
            "weights_used": exp.manifest.get("weights_used"),
            "faces_forgotten": {f"fold-{f}": int(exp.partitions[f]["forgotten"].sum()) for f in folds},
            "unlearning_requests_served": sum(int(exp.partitions[f]["forgotten"].sum()) for f in folds),
            "n_boot": n_boot, "config": exp.cfg.to_dict(),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "versions": versions()}
    tidy_out = fairness.plain(tidy.assign(run=out.name))
    # --- write ----------------------------------------------------------------------------------
    summaries_dir.mkdir(parents=True, exist_ok=True)
    for stale in out.fold_pickles():          # of another fold count: they would mix into readers' globs
        if stale not in out.all_files(len(folds)):
            stale.unlink()
    for k, (fold, summary) in enumerate(zip(folds, per_fold), start=1):
        write_bytes(out.fold(k, len(folds)), pickle.dumps(summary))
    write_bytes(out.mean, pickle.dumps(mean))
    write_bytes(out.square, pickle.dumps(square))
    write_text(out.results_csv, tidy_out.to_csv(index=False))
    write_bytes(out.results_pickle, pickle.dumps(tidy_out))
    write_text(out.fairness_csv, fair.to_csv())
    write_text(out.predictions, pred.to_csv(index=False))
    write_bytes(out.logits, logits_file(exp, folds, logits, tta))
    write_text(out.aggregations, aggregated.to_csv())
    write_json(out.info, info)
    decrease = fair["value"].filter(like="decrease").rename(lambda s: s.split()[1])
    plots.bar_chart({out.name: mean[0]}, {out.name: decrease}, out.bars)
    plots.heatmap(square, out.name, out.heatmap)
    plots.composition_chart(composition_shares([exp.partitions[f] for f in folds]), out.composition_png,
                            f"{out.name}: race shares of the training faces (pooled over folds)")
    return out, fair


def aggregation_table(exp: Experiment, folds: list[int], logits: dict[int, np.ndarray]) -> pd.DataFrame:
    """Top-1 per group (mean over folds) of the ensemble under every aggregation, and of the single
    shard models: their mean, lowest and highest. Rows: sum_logits, vote, mean_softmax, shard mean,
    shard min, shard max; columns: random and the races."""
    frames = []
    for f in folds:
        base = predictions(exp, f, logits[f], AGGREGATIONS[0])
        shards = base[base["model"] != "ensemble"]
        ens = base[base["model"] == "ensemble"]
        for m in AGGREGATIONS:
            top = rank(scores(logits[f], m))
            frames.append(ens.assign(model=m, pred1=top[:, 0], pred2=top[:, 1]))
        frames.append(shards)
    tidy = fairness.tidy_metrics(pd.concat(frames, ignore_index=True))
    top1 = tidy[(tidy["age_class"] == "all") & (tidy["metric"] == "top1")].groupby(["model", "group"])["value"].mean()
    by = top1.unstack()
    shard_rows = by.loc[[i for i in by.index if i.startswith("shard-")]]
    table = pd.concat([by.loc[list(AGGREGATIONS)], shard_rows.mean().rename("shard mean").to_frame().T,
                       shard_rows.min().rename("shard min").to_frame().T, shard_rows.max().rename("shard max").to_frame().T])
    table.index.name = "model"
    return table[[g for g in ("random", *RACES) if g in table.columns]]


def logits_file(exp: Experiment, folds: list[int], logits: dict[int, np.ndarray], tta: str) -> bytes:
    """The logits behind a summary: (S, F, 7) per shard model for every test face of the folds (flip
    test-time augmentation applied when used), with each face's fold and file name."""
    names = np.concatenate([exp.partitions[f]["filename"].to_numpy()[_test_rows(exp, f)].astype(str) for f in folds])
    fold = np.concatenate([np.full(logits[f].shape[1], f) for f in folds])
    buf = io.BytesIO()
    np.savez_compressed(buf, shard_logits=np.concatenate([logits[f] for f in folds], axis=1).astype(np.float32),
                        fold=fold, filename=names, tta=np.array(tta))
    return buf.getvalue()
