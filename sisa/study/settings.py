"""What a study computes: its configurations, presets and settings, and which settings make a run.

A study's settings fall in three kinds, and only the first makes a run what it is:
  run settings       image size, model, recipe, epochs, folds, folds run, shards, ...: a change retrains every
                     run (study.py asks for --overwrite, or another --name); so does a smaller
                     --sample, while a larger one serves the further requests on top (one fixed draw)
  which runs         --replicates, --configs, --control, --control_doses, --aa, --test: adding
                     replicates or configurations adds runs and reuses every finished one;
                     dropping them leaves their folders alone
  analysis only      --n_boot, --reference_race: the report is rendered again, nothing is retrained

Replicates. Replicate r draws its own fold assignment, likelihood flags, partitions and initial
weights from a seed of its own (replicate_seed: replicate 0 is --seed itself, so a one-replicate
study has the runs it always had); every configuration of replicate r shares them, so contrasts are
paired within a replicate and replicated across them (intervals.py).

Arms and doses. uniform-b is a second uniform placement (RunConfig.arm 1: another placement draw on
the same folds, flags and training keys): uniform-b against uniform is the study's A/A contrast,
whose truth is no change. The positive control comes at graded doses of label noise on the
--control_race's training faces (--control_doses; 1.0 is the configuration named control, 0.25 is
control-25), so the report can say the smallest effect it detects.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import RunConfig
from ..data import RACES
from ..errors import SisaError
from ..seeding import rng

CONFIGS = {
    "baseline": dict(placement="random", put_in="slice", sisa=False),
    "uniform": dict(placement="random", put_in="slice", sisa=True),
    "uniform-b": dict(placement="random", put_in="slice", sisa=True, arm=1),
    "few-shards": dict(placement="sorted", put_in="shard", sisa=True),
    "later-slices": dict(placement="sorted", put_in="slice", sisa=True),
    "control": dict(placement="random", put_in="slice", sisa=True, label_noise=1.0),
    "segregated": dict(placement="segregated", put_in="shard", sisa=True),
}
POSTER_CONFIGS = ("baseline", "uniform", "few-shards", "later-slices")
CHOOSABLE = ("baseline", "uniform", "few-shards", "later-slices", "segregated")    # --configs; the arms and doses follow

# Each preset is complete; flags override any of it. The cpu preset was chosen by measurement
# (benchmarks/recipes.py and the study's own timings, docs/recipes.md and docs/study.md); its epochs
# are the fewest that keep SISA's own accuracy cost near 5 points (benchmarks/sisa_cost.py)
PRESETS = {
    "poster": dict(image_size=200, model="resnet18", weights="auto", recipe="original", epochs=15,
                   slice_epochs="full", folds=5, tests=("balanced",), test_per_cell=9, test_random=63,
                   batch_size=128, replicates=1, sample=5, control=True),
    "gpu": dict(image_size=128, model="resnet18", weights="none", recipe="strong", epochs=15,
                slice_epochs="sisa", folds=5, tests=("kfold",), test_per_cell=9, test_random=63,
                batch_size=128, replicates=1, sample=5, control=True),
    "cpu": dict(image_size=32, model="cnn-max", weights="none", recipe="strong", epochs=12,
                slice_epochs="sisa", folds=3, folds_run=1, tests=("kfold",), test_per_cell=4, test_random=28,
                batch_size=128, replicates=1, sample=1, control=True, scenarios=("group:black",), forget=(0.05,)),
}
PRESET_NAMES = ("auto", *PRESETS)
ANALYSIS_FIELDS = ("n_boot", "reference_race")                       # change the report only
RUNS_FIELDS = ("tests", "replicates", "configs", "control", "control_doses", "aa",   # change which runs there are
               "scenarios", "forget", "methods")                                           # ... or which requests they serve
LABEL_FIELDS = ("name", "preset")                             # name the study; the same values under another preset are the same study


@dataclass(frozen=True)
class Settings:
    """What a study computes (saved as study.json)."""
    name: str
    preset: str
    image_size: int
    model: str
    weights: str
    recipe: str
    epochs: int
    slice_epochs: str
    folds: int
    tests: tuple[str, ...]
    test_per_cell: int
    test_random: int
    batch_size: int
    replicates: int
    sample: int
    control: bool
    configs: tuple[str, ...] = POSTER_CONFIGS
    control_doses: tuple[float, ...] = (1.0,)   # label noise on the control race: a control run per dose
    aa: bool = True                             # the A/A arm: uniform-b, a second uniform placement
    reference_race: str | None = None           # the race every gap is measured against (None: --control_race)
    scenarios: tuple[str, ...] = ()             # request scenarios (scenarios.py), each served at every --forget volume
    forget: tuple[float, ...] = ()              # volumes: fractions of each fold's training faces, nested
    methods: tuple[str, ...] = ()               # approximate unlearning of the baseline (approximate.py)
    num_shards: int = 5
    num_slices: int = 3
    control_race: str = "black"
    seed: int = 0
    limit: int | None = None
    lr: float | None = None
    n_boot: int = 1000
    likelihood_factors: str = "gender,race"
    folds_run: int | None = None                # kfold test: train and test only the first N of the K folds (None: all)

    @property
    def reference(self) -> str:
        return self.reference_race or self.control_race

    @property
    def controls(self) -> dict[str, float]:
        """{configuration: dose} of the positive control's runs."""
        return {control_tag(d): d for d in sorted(self.control_doses)} if self.control else {}

    @property
    def all_configs(self) -> tuple[str, ...]:
        """Every configuration: the chosen ones, the A/A arm beside uniform, the control's doses."""
        tags = [c for c in self.configs if c in CHOOSABLE]
        if self.aa and "uniform" in tags:
            tags.insert(tags.index("uniform") + 1, "uniform-b")
        return (*tags, *self.controls)

    @property
    def scenario_configs(self) -> tuple[str, ...]:
        """The configurations that serve the scenarios: the chosen ones (not the A/A arm or the control)."""
        return tuple(c for c in self.configs if c in CHOOSABLE) if self.scenarios else ()

    def scenario_run(self, test: str, tag: str, replicate: int, scenario: str) -> str:
        """The run folder that serves a scenario: a clone of the trained run (experiment.clone_run)."""
        from ..scenarios import parse
        return f"{self.run_name(test, tag, replicate)}-{parse(scenario).tag}"

    def method_summary(self, test: str, replicate: int, scenario: str, method: str, volume: float) -> str:
        """The summary of an approximate method applied to the baseline for a scenario's volume."""
        return self.volume_summary(f"{self.scenario_run(test, 'baseline', replicate, scenario)}-{method}", volume)

    @staticmethod
    def volume_summary(scenario_run: str, volume: float) -> str:
        """The summary of a scenario's run once a volume is forgotten: <run>-<scenario>-forget5 for 5%."""
        return f"{scenario_run}-forget{100 * volume:g}"

    def config(self, tag: str) -> dict:
        if tag in self.controls:
            return dict(placement="random", put_in="slice", sisa=True, label_noise=self.controls[tag])
        return CONFIGS[tag]

    def run_config(self, test: str, tag: str, replicate: int) -> RunConfig:
        c = self.config(tag)
        sisa = c["sisa"]
        return RunConfig(image_size=self.image_size, limit=self.limit, likelihood_factors=self.likelihood_factors,
                         strategy=f"{c['placement']}-{test}", put_in=c["put_in"], control_race=self.control_race,
                         label_noise=c.get("label_noise", 0.0), arm=c.get("arm", 0),
                         num_shards=self.num_shards if sisa else 1, num_slices=self.num_slices if sisa else 1,
                         folds=self.folds, folds_run=self.folds_run if test == "kfold" else None, test_per_cell=self.test_per_cell, test_random=self.test_random,
                         seed=replicate_seed(self.seed, replicate), recipe=self.recipe, model=self.model,
                         weights=self.weights, epochs=self.epochs, slice_epochs=self.slice_epochs,
                         batch_size=self.batch_size, lr=self.lr, run_name=self.run_name(test, tag, replicate))

    def run_name(self, test: str, tag: str, replicate: int) -> str:
        return f"{self.name}-{test}-{tag}" + (f"-rep{replicate}" if replicate else "")

    def runs(self) -> list[tuple[str, str, int]]:
        """(test, configuration, replicate) of every run, replicate by replicate (a study stopped early
        has whole replicates)."""
        return [(t, c, r) for t in self.tests for r in range(self.replicates) for c in self.all_configs]

    def run_changes(self, old: "Settings") -> list[str]:
        """'field: old -> new' for every run setting that differs: each one retrains every run."""
        skip = set(ANALYSIS_FIELDS) | set(RUNS_FIELDS) | set(LABEL_FIELDS)
        if self.sample > old.sample:    # requests are drawn in one fixed order per fold: more is served on top
            skip.add("sample")
        return [f"{f.name}: {getattr(old, f.name)!r} -> {getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                if f.name not in skip and getattr(old, f.name) != getattr(self, f.name)]

    def other_changes(self, old: "Settings") -> list[str]:
        """The changes that reuse every finished run (more or fewer runs, another bootstrap)."""
        fields = (*RUNS_FIELDS, *ANALYSIS_FIELDS, *(("sample",) if self.sample > old.sample else ()))
        return [f"{f}: {_show(getattr(old, f))} -> {_show(getattr(self, f))}" for f in fields
                if getattr(old, f) != getattr(self, f)]

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "tests": list(self.tests), "configs": list(self.configs),
                "control_doses": list(self.control_doses), "scenarios": list(self.scenarios), "forget": list(self.forget), "methods": list(self.methods)}

    @classmethod
    def from_dict(cls, d: dict, fallback: "Settings | None" = None) -> "Settings":
        """Settings from study.json. A file from an older version may lack fields (taken from `fallback`,
        else the defaults) or hold ones this version dropped (ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {**(fallback.to_dict() if fallback else {}), **{k: v for k, v in d.items() if k in names}}
        if "folds_run" not in d:        # a study from before --folds_run ran every fold
            values["folds_run"] = None
        missing = sorted(names - set(values) - {f.name for f in dataclasses.fields(cls)
                                                if f.default is not dataclasses.MISSING})
        if missing:
            raise SisaError(f"study.json lacks {', '.join(missing)} (written by another version); pass --overwrite "
                            "to start the study again, or --name for a separate study")
        return cls(**{**values, "tests": tuple(values["tests"]), "configs": tuple(values.get("configs", POSTER_CONFIGS)),
                      "control_doses": tuple(values.get("control_doses", (1.0,))),
                      "scenarios": tuple(values.get("scenarios", ())), "forget": tuple(values.get("forget", ())),
                      "methods": tuple(values.get("methods", ()))})


def command_line(s: Settings) -> str:
    """The study.py command that makes these settings: the preset, the name, and a flag for every
    setting that differs from the preset's."""
    base = Settings(name=s.name, preset=s.preset, **{**PRESETS[s.preset], "tests": tuple(PRESETS[s.preset]["tests"]),
                                                     **{k: tuple(v) for k, v in PRESETS[s.preset].items()
                                                        if isinstance(v, list)}})
    flags = {"tests": "--test", "replicates": "--replicates"}
    out = [".venv/bin/python study.py", f"--preset {s.preset}", f"--name {s.name}"]
    for f in dataclasses.fields(s):
        k, v, d = f.name, getattr(s, f.name), getattr(base, f.name)
        if k in ("name", "preset") or v == d:
            continue
        if k in ("aa", "control"):
            out.append(f"--{k}" if v else f"--no_{k}")
        elif k == "tests":
            out.append(f"--test {'both' if len(v) > 1 else v[0]}")
        elif k == "scenarios" and not v:
            out.append("--scenarios none")
        elif k in ("forget", "methods", "control_doses") and not v:
            continue                                   # follows --scenarios none / needs nothing
        elif k == "folds_run" and v is None:
            out.append("--folds_run all")
        elif isinstance(v, tuple):
            out.append(f"{flags.get(k, '--' + k)} " + " ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v))
        elif v is not None:
            out.append(f"{flags.get(k, '--' + k)} {v}")
    return " ".join(out)


def replicate_seed(seed: int, replicate: int) -> int:
    """Replicate r's seed: --seed itself for replicate 0, a value drawn from (seed, r) otherwise."""
    return seed if replicate == 0 else int(rng(seed, "replicate", replicate).integers(2 ** 31))


def control_tag(dose: float) -> str:
    """The control configuration of a dose: control (1.0), control-25 (0.25)."""
    return "control" if dose == 1.0 else f"control-{round(100 * dose):g}"


def _show(v) -> str:
    return "/".join(map(str, v)) if isinstance(v, (tuple, list)) else repr(v)


def choose_preset(preset: str, device: str) -> tuple[str, str]:
    """(preset, why) for `--preset auto`: the poster's settings on CUDA with the ImageNet weights at
    hand, the GPU preset on CUDA without them, the CPU preset otherwise."""
    if preset != "auto":
        return preset, "asked for"
    from ..device import wants_cuda
    if not wants_cuda(device):
        return "cpu", "no CUDA GPU here: the CPU preset (--dry_run estimates its time on this machine)"
    if imagenet_weights_cached():
        return "poster", "a CUDA GPU and the ImageNet ResNet-18 weights are here: the poster's settings"
    return "gpu", ("a CUDA GPU but no ImageNet weights in the torch cache (no internet needed then): the GPU "
                   "preset trains from random weights with the strong recipe")


def imagenet_weights_path() -> str:
    """Where torchvision keeps the ImageNet ResNet-18 weights (the poster preset's starting point)."""
    import os

    import torch
    from torchvision.models import ResNet18_Weights
    url = ResNet18_Weights.IMAGENET1K_V1.url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def imagenet_weights_cached() -> bool:
    import os
    return os.path.exists(imagenet_weights_path())


def resolve_settings(preset: str, overrides: dict, name: str | None) -> Settings:
    base = dict(PRESETS[preset])
    base.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(base["tests"], str):
        base["tests"] = ("balanced", "kfold") if base["tests"] == "both" else (base["tests"],)
    base["tests"] = tuple(base["tests"])
    if base.get("folds_run") == 0:          # --folds_run all
        base["folds_run"] = None
    if tuple(base.get("scenarios") or ()) == ("none",):   # --scenarios none: no scenario, so no volume either
        base["scenarios"] = ()
        if overrides.get("forget") is None:
            base["forget"] = ()
    base["configs"] = tuple(base.get("configs") or POSTER_CONFIGS)
    for f in ("scenarios", "forget", "control_doses", "methods"):
        if f in base:
            base[f] = tuple(base[f])
    s = Settings(name=name or preset, preset=preset, **base)
    check_settings(s)
    return s


def check_settings(s: Settings) -> None:
    """One clear line for settings that contradict each other; every run's config is validated too."""
    if s.folds_run is not None and not 1 <= s.folds_run <= s.folds:
        raise SisaError(f"--folds_run {s.folds_run} is invalid: give a number of folds from 1 to --folds ({s.folds}), or all")
    if s.replicates < 1:
        raise SisaError(f"--replicates {s.replicates} is invalid: train each configuration at least once (--replicates 1)")
    bad = [d for d in s.control_doses if not 0 < d <= 1]
    if bad:
        raise SisaError(f"--control_doses {bad[0]} is invalid: a dose is the share of the control race's training faces "
                        "relabelled, above 0 and at most 1")
    if s.reference_race is not None and s.reference_race not in RACES:
        raise SisaError(f"--reference_race {s.reference_race!r} is invalid: choose from {', '.join(RACES)}")
    if "baseline" not in s.configs:
        raise SisaError("--configs must include baseline: every SISA configuration is compared with it")
    if "uniform" not in s.configs and len(set(s.configs) - {"baseline"}) > 0:
        raise SisaError("--configs must include uniform: placements are compared with uniform SISA")
    unknown = [c for c in s.configs if c not in CHOOSABLE]
    if unknown:
        raise SisaError(f"--configs {unknown[0]!r} is invalid: choose from {', '.join(CHOOSABLE)} (uniform-b and the "
                        "control's doses follow --aa, --control and --control_doses)")
    if bool(s.scenarios) != bool(s.forget):
        raise SisaError("--scenarios and --forget go together: who asks and how many (for example --scenarios random "
                        "group:black --forget 0.01 0.05)")
    if s.methods and not s.scenarios:
        raise SisaError("--methods need --scenarios and --forget: which faces to forget, approximately and exactly")
    from ..approximate import METHODS
    bad = [m for m in s.methods if m not in METHODS]
    if bad:
        raise SisaError(f"--methods {bad[0]!r} is invalid: choose from {', '.join(METHODS)}")
    from ..scenarios import parse
    for text in s.scenarios:
        parse(text)
    bad = [v for v in s.forget if not 0 < v <= 1]
    if bad:
        raise SisaError(f"--forget {bad[0]} is invalid: a volume is a fraction of the training faces above 0 and at "
                        "most 1 (0.05 for 5%)")
    if s.num_shards * s.num_slices < 2:
        raise SisaError("a study needs SISA configurations of more than one part: raise --num_shards or --num_slices")
    if s.sample and s.sample * s.num_shards * s.num_slices > 10 ** 6:
        raise SisaError(f"--sample {s.sample} is too large")
    if s.preset == "poster" and s.weights == "auto" and not imagenet_weights_cached():
        raise SisaError(f"--preset poster starts from the ImageNet ResNet-18 weights, which are not at "
                        f"{imagenet_weights_path()} (nothing is downloaded); put them there, or pass --weights none "
                        "to train the poster's settings from random weights")
    for test, tag, k in s.runs():
        s.run_config(test, tag, k).validate()
