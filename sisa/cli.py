"""Shared command-line pieces: flag definitions with their help, and the one-line error exit.

Every flag's help says what it means and its default. Bad values are one line on stderr and a
non-zero exit: usage mistakes exit 2 (argparse), problems with files or runs exit 1 (SisaError).
"""
from __future__ import annotations

import argparse

import sys
import warnings
from pathlib import Path
from typing import Callable

from .config import ENGINES, MODELS, PUT_IN, RECIPE_LR, RECIPE_NAMES, SLICE_EPOCHS, STRATEGIES, RunConfig
from .device import PRECISIONS
from .errors import SisaError
from .experiment import Options
from .layout import DEFAULT_CACHE, DEFAULT_CHECKPOINTS, DEFAULT_DATA, DEFAULT_SUMMARIES


D = RunConfig()   # the defaults, in one place


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line ('train.py: error: ...') instead of a usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(kind: type, low: float | None, what: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"{text!r} must be >= {low}")
        return value
    return parse


positive_int = _number(int, 1, "a whole number")
count = _number(int, 0, "a whole number")
positive_float = _number(float, 1e-12, "a number")


def share(text: str) -> float:
    """A fraction above 0 and at most 1 (--control_doses, --forget)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0 and at most 1 (0.05 for 5%)")
    return v


def existing_file(text: str) -> Path:
    p = Path(text)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not an existing file")
    return p


def add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("experiment (saved in the run's config.json)")
    g.add_argument("--num_shards", type=positive_int, default=D.num_shards,
                   help=f"S: disjoint shards, one model each; 1 with --num_slices 1 is the monolithic baseline (default {D.num_shards})")
    g.add_argument("--num_slices", type=positive_int, default=D.num_slices,
                   help=f"R: cumulative slices per shard, a checkpoint after each (default {D.num_slices})")
    g.add_argument("--strategy", choices=STRATEGIES, default=D.strategy, metavar="STRATEGY",
                   help=f"<placement>-<test set>, one of {', '.join(STRATEGIES)} (default {D.strategy})")
    g.add_argument("--control_race", choices=("white", "black", "asian", "indian", "other"), default=D.control_race,
                   help="the race of the diagnostics: whose faces go first with segregated placement, and whose "
                        f"training labels --label_noise corrupts (default {D.control_race})")
    g.add_argument("--label_noise", type=_number(float, 0.0, "a fraction"), default=D.label_noise,
                   help="a positive control: this fraction of --control_race's training faces get a random age class "
                        f"(test labels untouched; default {D.label_noise})")
    g.add_argument("--put_in", choices=PUT_IN, default=D.put_in,
                   help="with sorted or segregated placement: the faces placed first (high likelihood, or "
                        "--control_race's) fill as few 'shard's as possible, or the last 'slice's of every shard; "
                        f"random placement takes only slice (default {D.put_in})")
    g.add_argument("--folds", type=positive_int, default=D.folds,
                   help=f"K repetitions of the whole experiment, each with its own test set and partition (default {D.folds})")
    g.add_argument("--folds_run", type=positive_int, default=None,
                   help="with a kfold test: train and test only the first N of the K folds (default: all K)")
    g.add_argument("--test_per_cell", type=count, default=D.test_per_cell,
                   help=f"balanced test set: faces per race x age-class cell (default {D.test_per_cell})")
    g.add_argument("--test_random", type=count, default=D.test_random,
                   help=f"balanced test set: extra faces at random, group 'random' (default {D.test_random})")
    g.add_argument("--seed", type=count, default=D.seed, help=f"the one seed of every random choice (default {D.seed})")
    g.add_argument("--training_seed", type=count, default=None,
                   help="another training run (initial weights, batch order, augmentation, dropout) on the same "
                        "partitions and test faces (default: none, training draws from --seed)")
    g.add_argument("--limit", type=positive_int, default=None,
                   help="use a subsample of N faces stratified by race x age class, for quick runs (default: all faces)")
    g.add_argument("--image_size", type=_number(int, 16, "a whole number"), default=D.image_size,
                   help=f"side of the square faces in px (default {D.image_size}, the original's)")
    g.add_argument("--likelihood_factors", default=D.likelihood_factors,
                   help=f"factors of the GDPR knowledge k, comma-separated from age,gender,race, or none (default {D.likelihood_factors})")
    g.add_argument("--recipe", choices=RECIPE_NAMES, default=D.recipe, help=recipe_help())
    g.add_argument("--model", choices=MODELS, default=D.model,
                   help="resnet18: the original's ResNet-18 classifier; cnn: its small 4-conv net for CPU runs; "
                        f"cnn-max: that net with max pooling, better at 32 px (default {D.model})")
    g.add_argument("--weights", default=D.weights,
                   help="auto: ImageNet weights if they can be had, else random with a warning; imagenet: fail without "
                        f"them; none: random; PATH: a local state dict (default {D.weights})")
    g.add_argument("--epochs", type=positive_int, default=D.epochs, help=f"epochs per slice stage (default {D.epochs})")
    g.add_argument("--slice_epochs", choices=SLICE_EPOCHS, default=D.slice_epochs,
                   help=f"full: --epochs in every stage; sisa: about 2E/(R+1) per stage, as the SISA paper (default {D.slice_epochs})")
    g.add_argument("--batch_size", type=positive_int, default=D.batch_size, help=f"training batch per shard model (default {D.batch_size})")
    g.add_argument("--lr", type=positive_float, default=None,
                   help="peak learning rate (default: the recipe's, " +
                        ", ".join(f"{k} {v:g}" for k, v in RECIPE_LR.items()) + ")")
    g.add_argument("--no_augment", action="store_true", help="train on plain normalised faces, without the recipe's augmentations (default off: the recipe's)")
    g.add_argument("--run_name", default=D.run_name,
                   help="folder name under --checkpoints_dir (default <strategy>-<put_in>-<S>x<R>)")


def recipe_help() -> str:
    """--recipe's help, the strong recipe's augmentation read from the recipe itself (so it cannot drift)."""
    from .recipe import RECIPES

    strong = RECIPES["strong"]
    augment = (f"a horizontal flip and a shift of up to {strong.shift:g} of the face" if strong.shift
               else "a horizontal flip as the only augmentation (no shift)")
    tta = "flip test-time augmentation" if strong.tta == "flip" else "no test-time augmentation"
    return (f"original: the poster's Adam, step schedule and augmentations, bit for bit; strong: AdamW, one-cycle, "
            f"logit-adjusted loss, {augment}, {tta} (docs/recipes.md; default {D.recipe})")


def add_option_args(p: argparse.ArgumentParser, new_run: bool = True, engine: bool = False,
                    images_for: str | None = None) -> None:
    """Where and how; `new_run` False (evaluate, unlearn): the data defaults to what the run recorded,
    and `images_for` says what the command reads the images for."""
    if not (new_run or images_for):
        raise ValueError("a command on an existing run says what it reads the images for (images_for)")
    g = p.add_argument_group("where and how (not part of the run's identity)")
    if new_run:
        g.add_argument("--data_dir", type=Path, default=DEFAULT_DATA, help=f"folder of UTKFace images (default {DEFAULT_DATA})")
        g.add_argument("--cache_dir", type=Path, default=DEFAULT_CACHE, help=f"decoded-image cache (default {DEFAULT_CACHE})")
        g.add_argument("--strict_data", action="store_true", help="any bad data file is fatal instead of skipped and reported (default off)")
    else:
        g.add_argument("--data_dir", type=Path, default=None,
                       help=f"folder of UTKFace images, {images_for} (default: the run's own, from run.json)")
        g.add_argument("--cache_dir", type=Path, default=None, help="decoded-image cache (default: the run's own, from run.json)")
    g.add_argument("--checkpoints_dir", type=Path, default=DEFAULT_CHECKPOINTS, help=f"where run folders live (default {DEFAULT_CHECKPOINTS})")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when available (default auto)")
    add_precision_arg(g)
    if new_run or engine:
        g.add_argument("--engine", choices=ENGINES, default="eager",
                       help="eager: every step launched from Python; graphs: each shard's step captured and replayed "
                            "as a CUDA graph (CUDA only; on a CPU it falls back to eager) (default eager)")
    g.add_argument("--no_progress", action="store_true", help="no progress bars, for logs (default off: bars on)")


def add_precision_arg(g) -> None:
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="fp32, or bf16 autocast; auto: training and unlearning keep the precision the run recorded, and "
                        "otherwise bf16 where the device computes it in hardware (CUDA, CPUs with avx512_bf16 or AMX), "
                        "else fp32 (default auto)")


def add_summaries_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--summaries_dir", type=Path, default=DEFAULT_SUMMARIES, help=f"where summaries go (default {DEFAULT_SUMMARIES})")


def config_from_args(a: argparse.Namespace) -> RunConfig:
    return RunConfig(image_size=a.image_size, limit=a.limit, likelihood_factors=a.likelihood_factors,
                     strategy=a.strategy, put_in=a.put_in, control_race=a.control_race, num_shards=a.num_shards, num_slices=a.num_slices,
                     folds=a.folds, folds_run=a.folds_run, test_per_cell=a.test_per_cell, test_random=a.test_random, seed=a.seed,
                     training_seed=a.training_seed, recipe=a.recipe, model=a.model, weights=a.weights,
                     epochs=a.epochs, slice_epochs=a.slice_epochs, batch_size=a.batch_size, lr=a.lr,
                     augment=not a.no_augment, label_noise=a.label_noise, run_name=a.run_name)


def options_from_args(a: argparse.Namespace) -> Options:
    return Options(data_dir=a.data_dir, cache_dir=a.cache_dir,
                   checkpoints_dir=a.checkpoints_dir, strict_data=getattr(a, "strict_data", False),
                   overwrite=getattr(a, "overwrite", False), progress=not a.no_progress, device=a.device,
                   engine=getattr(a, "engine", "eager"), precision=getattr(a, "precision", "auto"),
                   wandb=getattr(a, "wandb", False))


def run_main(main: Callable[[list[str] | None], int | None], prog: str, argv: list[str] | None = None,
             exit: bool = True) -> int:
    """Run a script's main(argv): SisaError -> one line on stderr, exit 1; Ctrl-C -> exit 130.

    `exit=False` returns the status instead of exiting (the tests call the scripts in-process)."""
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        code = main(argv) or 0
    except SisaError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; completed checkpoints are kept, rerun the same command to resume",
              file=sys.stderr)
        code = 130
    except SystemExit as e:      # argparse: a usage error (2) or --help (0)
        code = e.code if isinstance(e.code, int) else 1
    if exit:
        sys.exit(code)
    return code
