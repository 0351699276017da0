"""The resolved configuration of a run: one frozen dataclass, saved as JSON in the run folder and
inside every checkpoint, so a run can always be explained from its folder alone.

Only settings that change *what is computed* live here. Settings that change only *how* or *where*
(device, data folder, progress bars, wandb) are run-time options and may differ between the first
run and a resume.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SisaError

PLACEMENTS = ("random", "sorted", "segregated")  # how training faces are ordered into shards/slices
TEST_KINDS = ("random", "balanced", "kfold")  # how each fold's test set is drawn
STRATEGIES = tuple(f"{p}-{t}" for p in PLACEMENTS for t in TEST_KINDS)
PUT_IN = ("shard", "slice")
MODELS = ("resnet18", "cnn", "cnn-max")
SLICE_EPOCHS = ("full", "sisa")
RECIPE_LR = {"original": 6e-4, "strong": 2e-3}  # each recipe's default peak learning rate (see recipe.py)
RECIPE_NAMES = tuple(RECIPE_LR)
ENGINES = ("eager", "graphs")
TTA = ("auto", "none", "flip")           # evaluate.py's test-time augmentation (auto: the recipe's choice)            # how a training step runs (engine.py); not part of a run's identity
_RACES = ("white", "black", "asian", "indian", "other")   # as data.RACES (config imports nothing heavy)
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class RunConfig:
    # --- data -------------------------------------------------------------------------------
    image_size: int = 200                   # side of the square decoded faces in px (the original's 200)
    limit: int | None = None                # stratified subsample of this many faces for quick runs; None = all
    likelihood_factors: str = "gender,race"  # factors of the knowledge k (original: gender,race; 'age' too; '' = none)
    # --- partition --------------------------------------------------------------------------
    strategy: str = "random-balanced"       # <placement>-<test set>: placement random|sorted|segregated, test random|balanced|kfold
    put_in: str = "slice"                   # sorted/segregated placement: those faces fill few 'shard's or the last
                                            # 'slice's; random placement has nothing to put first: 'slice' only
    control_race: str = "black"             # the race of the diagnostics: segregated placement, label noise
    num_shards: int = 5                     # S disjoint shards, one model each (baseline: 1)
    num_slices: int = 3                     # R cumulative slices per shard, a checkpoint after each (baseline: 1)
    folds: int = 5                          # K repetitions, each with its own test set and partition
    folds_run: int | None = None            # kfold test: train and test only the first N of the K folds (None: all K);
                                            # fold k's test and training faces are the same whatever N is
    test_per_cell: int = 9                  # balanced test set: faces per (race, age class) cell
    test_random: int = 63                   # balanced test set: extra faces drawn at random (group "random")
    seed: int = 0                           # the one seed every random choice derives from
    training_seed: int | None = None        # None: training draws from --seed; N: another training run (init,
                                            # order, augmentation, dropout) on the same partitions and test faces
    # --- model and training -----------------------------------------------------------------
    recipe: str = "original"                # original (the poster's, bit for bit) | strong (see recipe.py)
    model: str = "resnet18"                 # resnet18 (the original's classifier) | cnn (its small CNN) | cnn-max
    weights: str = "auto"                   # auto | imagenet | none | PATH to a state dict
    epochs: int = 15                        # epochs per slice stage (the original's 15)
    slice_epochs: str = "full"              # full: every stage gets --epochs; sisa: about 2E/(R+1) per stage
    batch_size: int = 128                   # training batch size per shard model
    lr: float | None = None                 # peak learning rate; None: the recipe's (original 6e-4, strong 2e-3)
    augment: bool = True                    # the recipe's augmentations (off: plain normalised images)
    label_noise: float = 0.0                # the positive control: this fraction of --control_race's training faces
                                            # get a random age class (test labels are never touched)
    arm: int = 0                            # another draw of the placement on the same folds, flags and training
                                            # keys (a study's A/A arm: two uniform placements); 0 keeps the old keys
    run_name: str = ""                      # folder name under checkpoints/; '' = <strategy>-<put_in>-<S>x<R>

    def __post_init__(self) -> None:
        if self.lr is None and self.recipe in RECIPE_LR:   # a bad recipe is reported by validate()
            object.__setattr__(self, "lr", RECIPE_LR[self.recipe])

    # ---- derived ---------------------------------------------------------------------------
    def stage_keys(self, fold: int, shard: int, slice_: int) -> tuple:
        """The seed keys of one stage's random streams (batch order, augmentation, dropout)."""
        return (self.seed, "train", *self._training(), fold, shard, slice_)

    def init_keys(self, fold: int, shard: int) -> tuple:
        """The seed keys of a shard model's initial weights."""
        return (self.seed, "init", *self._training(), fold, shard)

    def _training(self) -> tuple:
        # None keeps the keys of runs made before training seeds existed, so they resume bit for bit
        return () if self.training_seed is None else ("training-seed", self.training_seed)

    @property
    def recorded(self) -> bool:
        """Whether this is the configuration a run folder recorded (from_dict, as_recorded): such a run
        was valid when it was made, so rules added since (random placement with put_in shard) hold
        for new runs only, and an older run still opens, resumes and unlearns."""
        return self.__dict__.get("_recorded", False)

    def as_recorded(self, config_json: Path) -> "RunConfig":
        """The configuration the run folder's `config.json` recorded when it is this very one (a resume),
        else self."""
        try:
            old = RunConfig.from_dict(json.loads(config_json.read_text()))
        except (OSError, ValueError, TypeError, SisaError):
            return self          # no run there, or one that opening it will explain
        return old if old == self else self

    @property
    def n_folds(self) -> int:
        """The folds this run computes: the first --folds_run of the K folds, or all K."""
        return self.folds_run or self.folds

    @property
    def placement(self) -> str:
        return self.strategy.split("-", 1)[0]

    @property
    def test_kind(self) -> str:
        return self.strategy.split("-", 1)[1]

    @property
    def name(self) -> str:
        return self.run_name or f"{self.strategy}-{self.put_in}-{self.num_shards}x{self.num_slices}"

    def stage_epochs(self, slice_index: int) -> int:
        """Epochs of slice stage `slice_index`.

        'sisa' follows Bourtoule et al.: stage l sees (l+1)/R of the shard, so ~2E/(R+1) epochs per
        stage make the whole sliced shard cost about what E epochs over the shard cost once.
        """
        if self.slice_epochs == "full":
            return self.epochs
        return max(1, round(2 * self.epochs / (self.num_slices + 1)))

    def validate(self) -> "RunConfig":
        """Raise SisaError naming the first bad value and how to fix it; return self when fine."""
        def bad(flag: str, value: Any, fix: str) -> SisaError:
            return SisaError(f"--{flag} {value!r} is invalid: {fix}")

        if self.strategy not in STRATEGIES:
            raise bad("strategy", self.strategy, f"choose one of {', '.join(STRATEGIES)}")
        if self.control_race not in _RACES:
            raise bad("control_race", self.control_race, f"choose one of {', '.join(_RACES)}")
        if not 0 <= self.label_noise <= 1:
            raise bad("label_noise", self.label_noise, "give a fraction between 0 and 1")
        if self.put_in not in PUT_IN:
            raise bad("put_in", self.put_in, "choose shard or slice")
        if self.put_in == "shard" and self.placement == "random" and not self.recorded:
            raise bad("put_in", self.put_in, "random placement puts no faces first, so 'shard' would change nothing "
                      f"(and name the run as if it did); leave --put_in at slice, or choose a placement that puts faces "
                      f"first: --strategy sorted-{self.test_kind} or segregated-{self.test_kind}")
        if self.recipe not in RECIPE_NAMES:
            raise bad("recipe", self.recipe, f"choose one of {', '.join(RECIPE_NAMES)}")
        if self.model not in MODELS:
            raise bad("model", self.model, f"choose one of {', '.join(MODELS)}")
        if self.weights == "imagenet" and self.model != "resnet18":
            raise bad("weights", self.weights, f"there are no pretrained weights for the {self.model} model; use none or a PATH")
        if self.weights not in ("auto", "imagenet", "none") and not self.recorded and not Path(self.weights).is_file():
            raise bad("weights", self.weights, "no such file; give the path of a saved state dict, or auto, imagenet "
                      "or none")
        if self.slice_epochs not in SLICE_EPOCHS:
            raise bad("slice_epochs", self.slice_epochs, "choose full or sisa")
        for flag in ("num_shards", "num_slices", "folds", "epochs", "batch_size", "image_size"):
            if getattr(self, flag) < 1:
                raise bad(flag, getattr(self, flag), "it must be a whole number >= 1")
        if self.image_size < 16:
            raise bad("image_size", self.image_size, "faces smaller than 16 px cannot be classified; use >= 16")
        for flag in ("test_per_cell", "test_random"):
            if getattr(self, flag) < 0:
                raise bad(flag, getattr(self, flag), "it must be >= 0")
        if self.test_kind == "kfold" and self.folds < 2:
            raise bad("folds", self.folds, "a kfold test set needs --folds >= 2")
        if self.folds_run is not None:
            if self.test_kind != "kfold":
                raise bad("folds_run", self.folds_run, "it runs the first N folds of a k-fold test; with a "
                          f"{self.test_kind} test set each fold is its own repetition, so lower --folds instead")
            if not 1 <= self.folds_run <= self.folds:
                raise bad("folds_run", self.folds_run, f"give a number of folds from 1 to --folds ({self.folds})")
        if self.test_kind != "kfold" and self.test_per_cell == 0 and self.test_random == 0:
            raise SisaError("the test set would be empty: set --test_per_cell or --test_random above 0")
        if self.limit is not None and self.limit < 1:
            raise bad("limit", self.limit, "give a number of faces >= 1, or leave it out for all faces")
        if self.arm < 0:
            raise bad("arm", self.arm, "it must be a whole number >= 0")
        if self.training_seed is not None and self.training_seed < 0:
            raise bad("training_seed", self.training_seed, "it must be a whole number >= 0")
        if self.lr is None or not self.lr > 0:
            raise bad("lr", self.lr, "the learning rate must be > 0")
        if self.run_name and not _NAME_OK.match(self.run_name):
            raise bad("run_name", self.run_name, "use letters, digits and . _ + - only (no slashes)")
        from .likelihood import parse_factors  # late import: likelihood depends on nothing here
        parse_factors(self.likelihood_factors)
        return self

    # ---- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SisaError(f"run config has unknown fields {sorted(unknown)}: it was written by "
                            "another version of this project; retrain or use that version")
        cfg = cls(**d)
        object.__setattr__(cfg, "_recorded", True)   # not a field: not saved, not compared
        return cfg

    def differences(self, other: "RunConfig") -> list[str]:
        """Human-readable 'field: old -> new' for every field that differs."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b[k]]
