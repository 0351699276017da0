"""SISA training of a run folder: for every fold and shard, cumulative slice stages with a checkpoint after each.

Why cumulative: in SISA (Bourtoule et al.) the model of shard s after stage l has seen slices 0..l,
and stage l starts from the checkpoint of stage l-1. Unlearning a face of slice l then only needs
the checkpoint before l and a retrain of stages l..R-1 on that shard; every other shard and every
earlier stage is untouched. (The original study trained each slice alone: a bug we do not copy.)

The data is one uint8 tensor on the training device (GPU memory when there is one); a stage is a
set of row indices into it, trained by `engine.train_stage` (which knows nothing of run folders).
Every random choice of a stage is seeded from (seed, training seed, fold, shard, slice), so a stage
is a pure function of its starting checkpoint and its faces: a resumed run, and a shard retrained
after unlearning, follow exactly the path an uninterrupted run from scratch would take.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from . import checkpoints
from .config import RunConfig
from .device import resolve_device, resolve_precision
from .distributed import World
from .engine import (DivergedError, StagePlan, adopt_for_graphs, portable_optimizer_state, train_stage)
from .errors import SisaError
from .experiment import Experiment, Options, training_labels
from .model import build_model
from .partition import stage_hash, stage_rows
from .recipe import get_recipe, make_optimizer
from .seeding import torch_seed
from .store import append_line, read_json, write_json


def weights_arg(cfg: RunConfig, weights_used: str | None) -> str:
    """What to ask build_model for so every shard starts like the first one did."""
    if weights_used in ("imagenet", "none"):
        return weights_used
    return cfg.weights


def new_model(cfg: RunConfig, weights_used: str, fold: int, shard: int, device: torch.device) -> torch.nn.Module:
    """A fresh shard model from the run's resolved initial weights (no files written)."""
    model, used = build_model(cfg.model, weights_arg(cfg, weights_used), torch_seed(*cfg.init_keys(fold, shard)))
    if used != weights_used:
        raise SisaError(f"the run started from weights '{weights_used}' but '{used}' was loaded now; "
                        "restore the same weights file, or start a new run")
    return model.to(device, memory_format=torch.channels_last)


def run_precision(exp: Experiment, asked: str, device: torch.device) -> str:
    """The precision this process trains the run in (`--precision`, engine.StagePlan), recorded in
    run.json the first time so that `auto` keeps a resumed or unlearned run in its own numerics.
    Runs from before the flag existed trained in bf16 on CUDA and in fp32 on the CPU."""
    recorded = exp.manifest.get("precision")
    first = checkpoints.sidecar(exp.layout.checkpoint(0, 0, 0))
    if recorded is None and first.exists():
        rec = read_json(first)
        recorded = rec.get("precision") or ("bf16" if str(rec.get("device", "")).startswith("cuda") else "fp32")
    precision = resolve_precision(asked, device, recorded)
    if exp.manifest.get("precision") is None:
        exp.manifest["precision"] = recorded or precision
        write_json(exp.layout.manifest, exp.manifest)
    return precision


def resolve_weights(exp: Experiment) -> str:
    """Resolve --weights once per run (auto -> imagenet or none) and record it in run.json."""
    if exp.manifest.get("weights_used") is None:
        cfg = exp.cfg
        _, used = build_model(cfg.model, cfg.weights, torch_seed(*cfg.init_keys(0, 0)))
        exp.manifest["weights_used"] = used
        write_json(exp.layout.manifest, exp.manifest)
    return exp.manifest["weights_used"]


@dataclass
class Shard:
    """A shard model mid-training, with everything a checkpoint must hold to continue it exactly."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: dict | None = None      # the recipe's schedule and the step the last stage reached
    rng: dict | None = None
    graphs: dict | None = None         # the graphs engine's captured step for this model


def completed_slices(exp: Experiment, fold: int, shard: int, verify: bool = True) -> int:
    """How many leading stages of a shard have a valid checkpoint (damaged or stale ones are reported).
    `verify=False`: as their records say, without hashing the files (for estimates only)."""
    states = checkpoints.shard_statuses(exp.layout, exp.partitions[fold], fold, shard, exp.cfg.num_slices,
                                        verify=verify)
    done = checkpoints.leading_ok(states)
    if verify and done < len(states) and states[done].state in ("damaged", "stale"):
        path = exp.layout.checkpoint(fold, shard, done)
        warnings.warn(f"checkpoint {path} is {states[done].state} ({states[done].why}); retraining from slice {done}")
    return done


def stage_work(exp: Experiment, fold: int, shard: int, first: int) -> int:
    """Images processed (faces x epochs) by stages first..R-1 of a shard."""
    return sum(len(stage_rows(exp.partitions[fold], shard, l)) * exp.cfg.stage_epochs(l)
               for l in range(first, exp.cfg.num_slices))


class Trainer:
    """Trains stages of a run on one device; holds the run's images and labels there once."""

    def __init__(self, exp: Experiment, opts: Options, bar: tqdm | None = None, logger=None):
        self.exp, self.cfg = exp, exp.cfg
        self.recipe = get_recipe(exp.cfg.recipe)
        self.device = resolve_device(opts.device)
        self.engine = opts.engine
        if self.engine == "graphs" and self.device.type != "cuda":
            warnings.warn("--engine graphs needs a CUDA GPU; training eagerly on the CPU")
            self.engine = "eager"
        with warnings.catch_warnings():   # the cache is a read-only memory map: shared, never written
            warnings.simplefilter("ignore", UserWarning)
            self.images = torch.from_numpy(exp.images).to(self.device)             # (N, H, W, 3) uint8
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True   # fixed shapes: let cuDNN pick its fastest kernels
        self.labels = torch.tensor(training_labels(exp.table, exp.cfg), device=self.device)   # (N,) int64
        self.bar, self.logger = bar, logger
        self.precision = run_precision(exp, opts.precision, self.device)
        self.threads = torch.get_num_threads()   # bit-identical results need the same thread count
        self.lr_tensor = torch.tensor(self.cfg.lr, device=self.device) if self.engine == "graphs" else None

    def describe(self) -> str:
        return (f"training on {self.device} ({'bf16 autocast' if self.precision == 'bf16' else 'fp32'}, "
                f"{self.threads} thread(s), {self.engine} engine), "
                f"recipe {self.recipe.name}")

    def restore(self, fold: int, shard: int, slice_: int, path=None) -> Shard:
        """Shard state after stage `slice_` (-1: freshly initialised)."""
        exp, graphs = self.exp, self.engine == "graphs"
        model = new_model(exp.cfg, exp.manifest["weights_used"], fold, shard, self.device)
        opt = make_optimizer(model, self.recipe, self.cfg.lr, capturable=graphs, lr_tensor=self.lr_tensor)
        state = Shard(model, opt, graphs={} if graphs else None)
        if slice_ < 0:
            return state
        path = path or exp.layout.checkpoint(fold, shard, slice_)
        ck = checkpoints.load_checkpoint(path, exp.cfg, stage_hash(exp.partitions[fold], shard, slice_),
                                         map_location=self.device)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if graphs:
            adopt_for_graphs(opt, self.lr_tensor)
        state.scheduler, state.rng = ck["scheduler"], ck["rng"]
        return state

    def train_stage(self, state: Shard, fold: int, shard: int, slice_: int, rows: np.ndarray,
                    metrics_path) -> dict:
        """Run one slice stage in place on `state`; returns the stage's facts for its checkpoint record."""
        cfg = self.cfg
        plan = StagePlan(self.recipe, cfg.lr, cfg.stage_epochs(slice_), cfg.batch_size, cfg.augment, self.engine,
                         self.precision)

        def on_epoch(rec: dict) -> None:
            rec = {"fold": fold, "shard": shard, "slice": slice_, **rec}
            append_line(metrics_path, json.dumps(rec))
            if self.logger is not None:
                self.logger(rec)
            if self.bar is not None:
                self.bar.set_postfix(fold=fold, shard=shard, slice=slice_, loss=f"{rec['loss']:.3f}")

        try:
            result = train_stage(state.model, state.optimizer, self.images, self.labels, rows, plan,
                                 cfg.stage_keys(fold, shard, slice_), on_batch=self.bar.update if self.bar else None,
                                 on_epoch=on_epoch, graphs=state.graphs)
        except DivergedError as e:
            raise SisaError(f"training diverged: loss {e.loss} in fold {fold} shard {shard} slice {slice_} "
                            f"epoch {e.epoch}; completed checkpoints are intact; lower --lr and rerun") from None
        state.scheduler, state.rng = result.schedule, result.rng
        return {"epochs": len(result.epochs), "seconds": result.seconds, "faces": len(rows)}

    def save(self, state: Shard, path, fold: int, shard: int, slice_: int, digest: str, stats: dict) -> None:
        payload = {"model": state.model.state_dict(), "optimizer": portable_optimizer_state(state.optimizer),
                   "scheduler": state.scheduler, "rng": state.rng, "config": self.cfg.to_dict(),
                   "weights_used": self.exp.manifest["weights_used"], "stage_hash": digest}
        record = {"fold": fold, "shard": shard, "slice": slice_, "stage_hash": digest, "stage_faces": stats["faces"],
                  "epochs": stats["epochs"], "train_seconds": stats["seconds"], "device": str(self.device),
                  "engine": self.engine, "precision": self.precision, "threads": self.threads}
        checkpoints.save_checkpoint(path, payload, record)

    def run_shard(self, fold: int, shard: int, first: int, start_path=None, out_path=None,
                  metrics_path=None) -> None:
        """Train stages first..R-1 of a shard from the checkpoint after stage first-1 (default: the
        run's own; unlearning passes its pending copies)."""
        layout, part = self.exp.layout, self.exp.partitions[fold]
        out_path = out_path or layout.checkpoint
        state = self.restore(fold, shard, first - 1, path=start_path)
        for l in range(first, self.cfg.num_slices):
            rows = stage_rows(part, shard, l)
            stats = self.train_stage(state, fold, shard, l, rows, metrics_path or layout.metrics(fold))
            self.save(state, out_path(fold, shard, l), fold, shard, l, stage_hash(part, shard, l), stats)


def wandb_logger(exp: Experiment):
    try:
        import wandb
    except ImportError as e:
        raise SisaError("--wandb needs the wandb package: pip install wandb (or drop --wandb)") from e
    run = wandb.init(project="unlearning-fairness", name=exp.cfg.name, config=exp.cfg.to_dict(),
                     mode=os.environ.get("WANDB_MODE"), dir=str(exp.layout.root))
    return lambda rec: run.log({f"f{rec['fold']}/s{rec['shard']}/{k}": v for k, v in rec.items()
                                if k in ("loss", "train_acc", "lr", "images_per_s")})


def pending_stages(exp: Experiment, world: World = World(), verify: bool = True) -> list[tuple[int, int, int]]:
    """(fold, shard, first incomplete slice) of this rank's share of the run's shards, all of them.
    `verify=False` reads the checkpoint records only (a progress bar's total), never hashing a file."""
    cfg = exp.cfg
    jobs = world.mine([(f, s) for f in range(cfg.n_folds) for s in range(cfg.num_shards)])
    return [(f, s, completed_slices(exp, f, s, verify)) for f, s in jobs]


def train_run(exp: Experiment, opts: Options, world: World = World(), bar: tqdm | None = None) -> None:
    """Train every incomplete (fold, shard) of this rank's share, resuming after its last valid checkpoint.

    `bar`: an outer progress bar to advance (study.py's); by default this function shows its own."""
    cfg = exp.cfg
    if exp.manifest.get("weights_used") is None:
        if world.active:
            raise SisaError("the run's initial weights are not resolved; rank 0 resolves them before training")
        resolve_weights(exp)
    todo = pending_stages(exp, world)
    done, stages = sum(first for _, _, first in todo), len(todo) * cfg.num_slices
    todo = [(f, s, first) for f, s, first in todo if first < cfg.num_slices]
    who = f"rank {world.rank}: " if world.active else ""
    say = bar.write if bar is not None else print
    if not todo:
        say(f"{who}all {stages} slice checkpoints are complete; nothing to train")
        return
    if done:
        say(f"{who}resuming: {done} of {stages} slice checkpoints complete, training the other {stages - done}")
    total = sum(stage_work(exp, f, s, first) for f, s, first in todo)
    logger = wandb_logger(exp) if opts.wandb and world.rank == 0 else None   # torchrun: rank 0 logs its shards
    own = bar is None
    bar = bar or tqdm(total=total, unit="img", unit_scale=True, desc=f"{who}training",
                      disable=not opts.progress or world.rank != 0, dynamic_ncols=True)
    try:
        trainer = Trainer(exp, opts, bar, logger)
        bar.write(f"{who}{trainer.describe()}, {len(todo)} shard model(s), {total:,} images in all")
        for fold, shard, first in todo:
            trainer.run_shard(fold, shard, first)
    finally:
        if own:
            bar.close()
