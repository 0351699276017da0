"""SISA training: for every fold and shard, cumulative slice stages with a checkpoint after each.

Why cumulative: in SISA (Bourtoule et al.) the model of shard s after stage l has seen slices 0..l,
and stage l starts from the checkpoint of stage l-1. Unlearning a face of slice l then only needs
the checkpoint before l and a retrain of stages l..R-1 on that shard; every other shard and every
earlier stage is untouched. (The original study trained each slice alone: a bug we do not copy.)

The data is one uint8 tensor on the training device (GPU memory when there is one); a stage is a
set of row indices into it, and augmentation is batched on the same device. Every random choice
of a stage (batch order, augmentation, dropout) is seeded from (seed, fold, shard, slice), so a
stage is a pure function of its starting checkpoint and its faces: a resumed run, and a shard
retrained after unlearning, follow exactly the path an uninterrupted run from scratch would take.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoints
from .augment import augment, to_input
from .config import RunConfig
from .distributed import World
from .errors import SisaError
from .experiment import Experiment, Options
from .model import build_model, trainable_parameters
from .partition import stage_rows
from .seeding import torch_seed
from .store import append_line, sha256_names, write_json

LABEL_SMOOTHING = 0.1     # the original's cross-entropy label smoothing
LR_DROPS = (0.4, 0.6, 0.8)  # fractions of a stage after which the learning rate is x0.2 (epochs 6, 9, 12 of 15)
LR_GAMMA = 0.2


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SisaError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def stage_hash(exp: Experiment, fold: int, shard: int, slice_: int) -> tuple[np.ndarray, str]:
    """Rows of a stage and the hash of their file names (the stage's identity)."""
    rows = stage_rows(exp.partitions[fold], shard, slice_)
    return rows, sha256_names(exp.partitions[fold]["filename"].to_numpy()[rows])


def weights_arg(cfg: RunConfig, weights_used: str | None) -> str:
    """What to ask build_model for so every shard starts like the first one did."""
    if weights_used in ("imagenet", "none"):
        return weights_used
    return cfg.weights


def new_model(exp: Experiment, fold: int, shard: int, device: torch.device) -> torch.nn.Module:
    """A fresh shard model; its initial weights are resolved once per run and recorded in run.json."""
    cfg, recorded = exp.cfg, exp.manifest.get("weights_used")
    model, used = build_model(cfg.model, weights_arg(cfg, recorded), torch_seed(cfg.seed, "init", fold, shard))
    if recorded is None:
        exp.manifest["weights_used"] = used
        write_json(exp.layout.manifest, exp.manifest)
    elif used != recorded:
        raise SisaError(f"the run started from weights '{recorded}' but '{used}' was loaded now; "
                        "restore the same weights file, or start a new run")
    return model.to(device, memory_format=torch.channels_last)


def new_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(trainable_parameters(model), lr=cfg.lr)


@dataclass
class Shard:
    """A shard model mid-training, with everything a checkpoint must hold to continue it exactly."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: dict | None = None
    rng: dict | None = None


def restore(exp: Experiment, fold: int, shard: int, slice_: int, device: torch.device,
            path=None) -> Shard:
    """Shard state after stage `slice_` (-1: freshly initialised)."""
    model = new_model(exp, fold, shard, device)
    opt = new_optimizer(model, exp.cfg)
    if slice_ < 0:
        return Shard(model, opt)
    path = path or exp.layout.checkpoint(fold, shard, slice_)
    ck = checkpoints.load_checkpoint(path, exp.cfg, stage_hash(exp, fold, shard, slice_)[1], map_location=device)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    return Shard(model, opt, ck["scheduler"], ck["rng"])


def completed_slices(exp: Experiment, fold: int, shard: int) -> int:
    """How many leading stages of a shard have a valid checkpoint (damaged or stale ones are reported)."""
    for l in range(exp.cfg.num_slices):
        path = exp.layout.checkpoint(fold, shard, l)
        st = checkpoints.status(path, stage_hash(exp, fold, shard, l)[1])
        if st.state != "ok":
            if st.state in ("damaged", "stale"):
                warnings.warn(f"checkpoint {path} is {st.state} ({st.why}); retraining from slice {l}")
            return l
    return exp.cfg.num_slices


def batches(n: int, size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A random epoch order cut into batches; a trailing batch of one face joins the previous one
    (BatchNorm cannot normalise a batch of one)."""
    perm = torch.randperm(n, generator=gen)
    cuts = list(perm.split(size))
    if len(cuts) > 1 and len(cuts[-1]) == 1:
        cuts[-2:] = [torch.cat(cuts[-2:])]
    return cuts


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch (B, 3, H, W) -> (loss, logits (B, 7))."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=LABEL_SMOOTHING)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


class Trainer:
    """Trains stages on one device; holds the run's images and labels there once."""

    def __init__(self, exp: Experiment, opts: Options, bar: tqdm | None = None, logger=None):
        self.exp, self.cfg = exp, exp.cfg
        self.device = resolve_device(opts.device)
        with warnings.catch_warnings():   # the cache is a read-only memory map: shared, never written
            warnings.simplefilter("ignore", UserWarning)
            self.images = torch.from_numpy(exp.images).to(self.device)             # (N, H, W, 3) uint8
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True   # fixed shapes: let cuDNN pick its fastest kernels
        self.labels = torch.tensor(exp.table["age_class"].to_numpy(dtype=np.int64), device=self.device)  # (N,)
        self.bar, self.logger = bar, logger
        self.amp = self.device.type == "cuda"   # bf16 autocast on GPUs; CPU stays fp32 (exact, reproducible)

    def train_stage(self, state: Shard, fold: int, shard: int, slice_: int, rows: np.ndarray,
                    metrics_path) -> dict:
        """Run one slice stage in place on `state`; returns the checkpoint payload's stats."""
        cfg, dev = self.cfg, self.device
        epochs = cfg.stage_epochs(slice_)
        keys = (cfg.seed, "train", fold, shard, slice_)
        order_gen = torch.Generator().manual_seed(torch_seed(*keys, "order"))
        aug_gen = torch.Generator(device=dev).manual_seed(torch_seed(*keys, "augment"))
        torch.manual_seed(torch_seed(*keys, "dropout"))   # dropout draws from the global generator
        for group in state.optimizer.param_groups:       # every stage runs the full schedule from lr
            group["lr"] = group["initial_lr"] = cfg.lr
        milestones = sorted({max(1, round(f * epochs)) for f in LR_DROPS})
        sched = torch.optim.lr_scheduler.MultiStepLR(state.optimizer, milestones, gamma=LR_GAMMA)
        model = state.model.train()
        rows_t = torch.as_tensor(rows, device=dev)
        started = time.perf_counter()
        for epoch in range(epochs):
            t0, lr = time.perf_counter(), sched.get_last_lr()[0]
            loss_sum = torch.zeros((), device=dev)
            correct = torch.zeros((), device=dev, dtype=torch.long)
            cuts = batches(len(rows), cfg.batch_size, order_gen)
            # one host-to-device copy per epoch: a copy per batch would make the host wait for the GPU
            order = rows_t[torch.cat(cuts).to(dev)].split([len(c) for c in cuts])
            for idx in order:
                x = augment(self.images[idx], aug_gen) if cfg.augment else to_input(self.images[idx])
                y = self.labels[idx]
                loss, logits = train_step(model, state.optimizer, x, y, self.amp)
                loss_sum += loss.detach() * len(idx)     # no .item() per batch: no host sync
                correct += (logits.argmax(1) == y).sum()
                if self.bar is not None:
                    self.bar.update(len(idx))
            sched.step()
            mean_loss = loss_sum.item() / len(rows)
            if not math.isfinite(mean_loss):
                raise SisaError(f"training diverged: loss {mean_loss} in fold {fold} shard {shard} slice {slice_} "
                                f"epoch {epoch}; completed checkpoints are intact; lower --lr and rerun")
            seconds = time.perf_counter() - t0
            rec = {"fold": fold, "shard": shard, "slice": slice_, "epoch": epoch, "lr": lr,
                   "loss": mean_loss, "train_acc": correct.item() / len(rows), "faces": len(rows),
                   "seconds": seconds, "images_per_s": len(rows) / seconds}
            append_line(metrics_path, json.dumps(rec))
            if self.logger is not None:
                self.logger(rec)
            if self.bar is not None:
                self.bar.set_postfix(fold=fold, shard=shard, slice=slice_, loss=f"{mean_loss:.3f}")
        state.scheduler = sched.state_dict()
        state.rng = {"order": order_gen.get_state(), "augment": aug_gen.get_state(), "torch": torch.get_rng_state()}
        if dev.type == "cuda":
            state.rng["cuda"] = torch.cuda.get_rng_state(dev)
        return {"epochs": epochs, "seconds": time.perf_counter() - started, "faces": len(rows)}

    def save(self, state: Shard, path, fold: int, shard: int, slice_: int, rows: np.ndarray, digest: str,
             stats: dict) -> None:
        payload = {"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
                   "scheduler": state.scheduler, "rng": state.rng, "config": self.cfg.to_dict(),
                   "weights_used": self.exp.manifest["weights_used"], "fold": fold, "shard": shard,
                   "slice": slice_, "stage_hash": digest, "stage_faces": len(rows)}
        record = {"fold": fold, "shard": shard, "slice": slice_, "stage_hash": digest, "stage_faces": len(rows),
                  "epochs": stats["epochs"], "train_seconds": stats["seconds"], "device": str(self.device)}
        checkpoints.save_checkpoint(path, payload, record)

    def run_shard(self, fold: int, shard: int, first: int, start_path=None, out_path=None,
                  metrics_path=None) -> float:
        """Train stages first..R-1 of a shard from the checkpoint after stage first-1 (default: the
        run's own; unlearning passes its pending copies). Returns the seconds spent."""
        layout, exp, t0 = self.exp.layout, self.exp, time.perf_counter()
        out_path = out_path or layout.checkpoint
        state = restore(exp, fold, shard, first - 1, self.device, path=start_path)
        for l in range(first, self.cfg.num_slices):
            rows, digest = stage_hash(exp, fold, shard, l)
            stats = self.train_stage(state, fold, shard, l, rows, metrics_path or layout.metrics(fold))
            self.save(state, out_path(fold, shard, l), fold, shard, l, rows, digest, stats)
        return time.perf_counter() - t0


def stage_work(exp: Experiment, fold: int, shard: int, first: int) -> int:
    """Images processed (faces x epochs) by stages first..R-1 of a shard."""
    return sum(len(stage_rows(exp.partitions[fold], shard, l)) * exp.cfg.stage_epochs(l)
               for l in range(first, exp.cfg.num_slices))


def wandb_logger(exp: Experiment):
    try:
        import wandb
    except ImportError as e:
        raise SisaError("--wandb needs the wandb package: pip install wandb (or drop --wandb)") from e
    run = wandb.init(project="unlearning-fairness", name=exp.cfg.name, config=exp.cfg.to_dict(),
                     mode=os.environ.get("WANDB_MODE"), dir=str(exp.layout.root))
    return lambda rec: run.log({f"f{rec['fold']}/s{rec['shard']}/{k}": v for k, v in rec.items()
                                if k in ("loss", "train_acc", "lr", "images_per_s")})


def resolve_weights(exp: Experiment) -> str:
    """Resolve --weights once per run (auto -> imagenet or none) and record it in run.json."""
    if exp.manifest.get("weights_used") is None:
        new_model(exp, 0, 0, torch.device("cpu"))
    return exp.manifest["weights_used"]


def train_run(exp: Experiment, opts: Options, world: World = World()) -> None:
    """Train every incomplete (fold, shard) of this rank's share, resuming after its last valid checkpoint."""
    cfg = exp.cfg
    jobs = world.mine([(f, s) for f in range(cfg.folds) for s in range(cfg.num_shards)])
    todo = [(f, s, completed_slices(exp, f, s)) for f, s in jobs]
    done, stages = sum(first for _, _, first in todo), len(todo) * cfg.num_slices
    todo = [(f, s, first) for f, s, first in todo if first < cfg.num_slices]
    who = f"rank {world.rank}: " if world.active else ""
    if not todo:
        print(f"{who}all {stages} slice checkpoints are complete; nothing to train")
        return
    if done:
        print(f"{who}resuming: {done} of {stages} slice checkpoints complete, training the other {stages - done}")
    total = sum(stage_work(exp, f, s, first) for f, s, first in todo)
    logger = wandb_logger(exp) if opts.wandb and world.rank == 0 else None   # torchrun: rank 0 logs its shards
    with tqdm(total=total, unit="img", unit_scale=True, desc=f"{who}training",
              disable=not opts.progress or world.rank != 0, dynamic_ncols=True) as bar:
        trainer = Trainer(exp, opts, bar, logger)
        bar.write(f"{who}training on {trainer.device} ({'bf16 autocast' if trainer.amp else 'fp32'}), "
                  f"{len(todo)} shard model(s), {total:,} images in all")
        for fold, shard, first in todo:
            trainer.run_shard(fold, shard, first)
