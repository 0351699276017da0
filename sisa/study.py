"""The whole study in one command: train, evaluate, unlearn, cost and report every configuration.

    python3 study.py                       # --preset auto: the best study this machine can finish
    python3 study.py --preset cpu --seeds 3 --test both

Configurations (the poster's four, and a positive control):
  baseline      one monolithic model (1 shard, 1 slice)
  uniform       5 x 3 SISA, faces placed at random
  few-shards    5 x 3, high-likelihood faces in as few shards as possible (sorted, put_in shard)
  later-slices  5 x 3, high-likelihood faces in the last slices of every shard (sorted, put_in slice)
  control       the positive control: uniform 5 x 3, but every training face of one race (--control_race,
                default black) carries a random age class; built to widen the gap, which the study must see
  segregated    (optional) 5 x 3, that race's faces in as few shards as possible: the most any
                placement can do to one race's share of each shard

Each configuration is trained once per training seed (`--seeds`; same partitions and test faces),
evaluated, costed for unlearning (expected cost under both request models, batches), served
`--sample` requests per fold (drawn by likelihood, verified), and evaluated again. The report
(report.py) then compares placements with uniform, every SISA configuration with the baseline and
each run after unlearning with itself before.

A study lives in reports/<study>/ (layout.StudyLayout): study.json (its settings: rerunning with other
settings is an error unless --overwrite), progress.json (finished phases and their seconds), the
report, figures and per-face predictions. Its runs are ordinary run folders under --checkpoints_dir
named <study>-<test>-<config>[-seed<k>], and summaries under --summaries_dir: train.py, evaluate.py
and unlearn.py work on them as on any run. Rerunning the same command continues where it stopped.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .config import RunConfig
from .errors import SisaError
from .experiment import Options
from .layout import DEFAULT_REPORTS, DEFAULT_SUMMARIES, RunLayout, StudyLayout
from .store import read_json, run_lock, write_json

CONFIGS = {
    "baseline": dict(placement="random", put_in="slice", sisa=False),
    "uniform": dict(placement="random", put_in="slice", sisa=True),
    "few-shards": dict(placement="sorted", put_in="shard", sisa=True),
    "later-slices": dict(placement="sorted", put_in="slice", sisa=True),
    "control": dict(placement="random", put_in="slice", sisa=True, label_noise=1.0),
    "segregated": dict(placement="segregated", put_in="shard", sisa=True),
}
POSTER_CONFIGS = ("baseline", "uniform", "few-shards", "later-slices")

# Each preset is complete; flags override any of it. The cpu preset was chosen by measurement
# (benchmarks/recipes.py and the study's own timings, README "Recipes" and "The study").
PRESETS = {
    "poster": dict(image_size=200, model="resnet18", weights="auto", recipe="original", epochs=15,
                   slice_epochs="full", folds=5, tests=("balanced",), test_per_cell=9, test_random=63,
                   batch_size=128, seeds=1, sample=5, control=True),
    "gpu": dict(image_size=128, model="resnet18", weights="none", recipe="strong", epochs=15,
                slice_epochs="sisa", folds=5, tests=("kfold",), test_per_cell=9, test_random=63,
                batch_size=128, seeds=1, sample=5, control=True),
    "cpu": dict(image_size=32, model="cnn-max", weights="none", recipe="strong", epochs=4,
                slice_epochs="sisa", folds=3, tests=("kfold",), test_per_cell=4, test_random=28,
                batch_size=128, seeds=1, sample=1, control=True),
}
PRESET_NAMES = ("auto", *PRESETS)


@dataclass(frozen=True)
class Settings:
    """What a study computes (its identity, saved as study.json)."""
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
    seeds: int
    sample: int
    control: bool
    configs: tuple[str, ...] = POSTER_CONFIGS
    num_shards: int = 5
    num_slices: int = 3
    control_race: str = "black"
    seed: int = 0
    limit: int | None = None
    lr: float | None = None
    n_boot: int = 1000
    likelihood_factors: str = "gender,race"

    @property
    def all_configs(self) -> tuple[str, ...]:
        return (*self.configs, "control") if self.control and "control" not in self.configs else self.configs

    def run_config(self, test: str, tag: str, seed_index: int) -> RunConfig:
        c = CONFIGS[tag]
        sisa = c["sisa"]
        return RunConfig(image_size=self.image_size, limit=self.limit, likelihood_factors=self.likelihood_factors,
                         strategy=f"{c['placement']}-{test}", put_in=c["put_in"], control_race=self.control_race,
                         label_noise=c.get("label_noise", 0.0),
                         num_shards=self.num_shards if sisa else 1, num_slices=self.num_slices if sisa else 1,
                         folds=self.folds, test_per_cell=self.test_per_cell, test_random=self.test_random,
                         seed=self.seed, training_seed=seed_index or None, recipe=self.recipe, model=self.model,
                         weights=self.weights, epochs=self.epochs, slice_epochs=self.slice_epochs,
                         batch_size=self.batch_size, lr=self.lr, run_name=self.run_name(test, tag, seed_index))

    def run_name(self, test: str, tag: str, seed_index: int) -> str:
        return f"{self.name}-{test}-{tag}" + (f"-seed{seed_index}" if seed_index else "")

    def runs(self) -> list[tuple[str, str, int]]:
        """(test, configuration, seed index) of every run, in the order they are trained."""
        return [(t, c, k) for t in self.tests for c in self.all_configs for k in range(self.seeds)]

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "tests": list(self.tests), "configs": list(self.configs)}

    @classmethod
    def from_dict(cls, d: dict) -> "Settings":
        return cls(**{**d, "tests": tuple(d["tests"]), "configs": tuple(d["configs"])})


def choose_preset(preset: str, device: str) -> tuple[str, str]:
    """(preset, why) for `--preset auto`: the poster's settings on CUDA with the ImageNet weights at
    hand, the GPU preset on CUDA without them, the CPU preset otherwise."""
    if preset != "auto":
        return preset, "asked for"
    from .device import wants_cuda
    if not wants_cuda(device):
        return "cpu", "no CUDA GPU here: the CPU preset finishes in about a quarter of an hour on 2 cores"
    if imagenet_weights_cached():
        return "poster", "a CUDA GPU and the ImageNet ResNet-18 weights are here: the poster's settings"
    return "gpu", ("a CUDA GPU but no ImageNet weights in the torch cache (no internet needed then): the GPU "
                   "preset trains from random weights with the strong recipe")


def imagenet_weights_cached() -> bool:
    import os

    import torch
    from torchvision.models import ResNet18_Weights
    url = ResNet18_Weights.IMAGENET1K_V1.url
    return os.path.exists(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url)))


def resolve_settings(preset: str, overrides: dict, name: str | None) -> Settings:
    base = dict(PRESETS[preset])
    base.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(base["tests"], str):
        base["tests"] = ("balanced", "kfold") if base["tests"] == "both" else (base["tests"],)
    base["tests"] = tuple(base["tests"])
    base["configs"] = tuple(base.get("configs") or POSTER_CONFIGS)
    s = Settings(name=name or preset, preset=preset, **base)
    check_settings(s)
    return s


def check_settings(s: Settings) -> None:
    """One clear line for settings that contradict each other; every run's config is validated too."""
    if s.seeds < 1:
        raise SisaError(f"--seeds {s.seeds} is invalid: train each configuration at least once (--seeds 1)")
    if "baseline" not in s.configs:
        raise SisaError("--configs must include baseline: every SISA configuration is compared with it")
    if "uniform" not in s.configs and len(set(s.configs) - {"baseline"}) > 0:
        raise SisaError("--configs must include uniform: placements are compared with uniform SISA")
    unknown = [c for c in s.configs if c not in CONFIGS]
    if unknown:
        raise SisaError(f"--configs {unknown[0]!r} is invalid: choose from {', '.join(CONFIGS)}")
    if s.num_shards * s.num_slices < 2:
        raise SisaError("a study needs SISA configurations of more than one part: raise --num_shards or --num_slices")
    if s.sample and s.sample * s.num_shards * s.num_slices > 10 ** 6:
        raise SisaError(f"--sample {s.sample} is too large")
    for test, tag, k in s.runs():
        s.run_config(test, tag, k).validate()


# ---- progress ---------------------------------------------------------------------------------
@dataclass
class Progress:
    """progress.json: which phases of which runs are done, with their seconds (for resume and the report)."""
    path: Path
    done: dict = field(default_factory=dict)
    recorded_now: float = 0.0       # seconds of the phases this process ran

    def seconds(self) -> float:
        """Seconds of every recorded phase, over all the invocations that ran them."""
        return sum(ph["seconds"] for phases in self.done.values() for ph in phases.values())

    @classmethod
    def load(cls, path: Path) -> "Progress":
        return cls(path, read_json(path) if path.exists() else {})

    def finished(self, run: str, phase: str) -> bool:
        return phase in self.done.get(run, {})

    def record(self, run: str, phase: str, seconds: float, **facts) -> None:
        self.done.setdefault(run, {})[phase] = {"seconds": seconds, **facts}
        self.recorded_now += seconds
        write_json(self.path, self.done)


# ---- the study ----------------------------------------------------------------------------------
class Study:
    def __init__(self, settings: Settings, opts: Options, summaries_dir: Path = DEFAULT_SUMMARIES,
                 reports_dir: Path = DEFAULT_REPORTS, overwrite: bool = False, say=print):
        self.s, self.opts = settings, opts
        self.summaries = Path(summaries_dir)
        self.layout = StudyLayout((Path(reports_dir) / settings.name).resolve())
        self.overwrite, self.say = overwrite, say

    # -- the study folder ---------------------------------------------------------------------
    def open(self) -> Progress:
        """Create the study folder, or re-open it if it holds the same settings."""
        L = self.layout
        if L.settings.exists():
            old = read_json(L.settings)
            if old != self.s.to_dict():
                if not self.overwrite:
                    diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in self.s.to_dict().items() if old.get(k) != v]
                    raise SisaError(f"study folder {L.root} holds another study ({'; '.join(diff)}); pass --overwrite "
                                    "to delete it and its runs and start again, or --name for a separate study")
                self._clear(Settings.from_dict(old))
        elif L.root.exists() and any(p.name != "LOCK" for p in L.root.iterdir()):
            if not self.overwrite:
                raise SisaError(f"{L.root} exists but is not a study folder (no study.json); move it away or pass "
                                "--overwrite")
            self._clear(None)
        L.root.mkdir(parents=True, exist_ok=True)
        write_json(L.settings, self.s.to_dict())
        return Progress.load(L.state)

    def _clear(self, old: Settings | None) -> None:
        """--overwrite: remove the study folder's contents and the old study's run folders."""
        for p in self.layout.root.iterdir():
            if p.name != "LOCK":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        if old is not None:
            for test, tag, k in old.runs():
                run = Path(self.opts.checkpoints_dir) / old.run_name(test, tag, k)
                if (run / "config.json").exists():
                    shutil.rmtree(run)

    # -- phases ------------------------------------------------------------------------------
    def run(self) -> Path:
        from .report import write_report

        started = time.perf_counter()
        with run_lock(self.layout.lock, "study.py"):
            progress = self.open()
            exps = self.prepare_all()
            total = sum(self.work(progress, e) for e in exps.values())
            with tqdm(total=total, unit="img", unit_scale=True, desc=f"study {self.s.name}",
                      disable=not self.opts.progress, dynamic_ncols=True) as bar:
                self.say = bar.write
                for key, exp in exps.items():
                    self.one_run(key, exp, progress, bar)
                t = time.perf_counter()
                # the study's time: every phase, whichever invocation ran it, plus this one's overhead
                # (preparing runs, the report), so a resumed study or a regenerated report still says it
                overhead = time.perf_counter() - started - progress.recorded_now
                path = write_report(self.layout, self.s, self.opts, self.summaries, progress.done,
                                    seconds_total=progress.seconds() + overhead)
                bar.write(f"[{self.clock()}] report: {self.layout.report_md} ({time.perf_counter() - t:.0f} s)")
        return path

    def clock(self) -> str:
        return dt.datetime.now().strftime("%H:%M:%S")

    def prepare_all(self) -> dict:
        """Every run folder created or re-opened (faces, likelihood, partitions), in training order."""
        from .commit import finish_and_report
        from .experiment import prepare

        exps = {}
        for test, tag, k in self.s.runs():
            cfg = self.s.run_config(test, tag, k)
            layout = RunLayout((Path(self.opts.checkpoints_dir) / cfg.name).resolve())
            with run_lock(layout.lock, "study.py"):
                if layout.exists():
                    finish_and_report(layout, self.say)
                exps[(test, tag, k)] = prepare(cfg, dataclasses.replace(self.opts, overwrite=self.overwrite))
        return exps

    def work(self, progress: Progress, exp) -> int:
        """Images (training-step equivalents) this run still needs: training, evaluation and unlearning."""
        from .training import pending_stages, stage_work
        cfg, name = exp.cfg, exp.cfg.name
        left = sum(stage_work(exp, f, s, first) for f, s, first in pending_stages(exp))
        tested = sum(int((p["role"] == "test").sum()) for p in exp.partitions)
        if not progress.finished(name, "evaluate"):
            left += self.eval_units(cfg, tested)
        if cfg.num_shards * cfg.num_slices > 1 and self.s.sample and \
                not progress.finished(name, "evaluate after unlearning"):   # only the retrained shards run again
            left += self.eval_units(cfg, tested) * min(cfg.num_shards, self.s.sample) // cfg.num_shards
        if cfg.num_shards * cfg.num_slices > 1 and self.s.sample and not progress.finished(name, "unlearning"):
            left += self.unlearning_units(exp)
        return left

    @staticmethod
    def eval_units(cfg: RunConfig, tested: int) -> int:
        return tested * cfg.num_shards * 2 // 3     # forward passes (faces x shards x 2 for the mirror) ~ 1/3 step

    def unlearning_units(self, exp) -> int:
        from .unlearning import expected_cost
        return int(sum(expected_cost(p, exp.cfg)["expected_faces_x_epochs"] for p in exp.partitions) * self.s.sample)

    def one_run(self, key: tuple, exp, progress: Progress, bar) -> None:
        from .commit import finish_and_report
        from .evaluation import evaluate_run, summary_name
        from .training import resolve_weights, train_run
        from .unlearning import sample_requests, serve_plan, verify

        test, tag, k = key
        cfg, name, L = exp.cfg, exp.cfg.name, exp.layout
        sisa = cfg.num_shards * cfg.num_slices > 1
        with run_lock(L.lock, "study.py"):
            finish_and_report(L, bar.write)
            if not progress.finished(name, "train"):
                t = time.perf_counter()
                resolve_weights(exp)
                train_run(exp, self.opts, bar=bar)
                progress.record(name, "train", time.perf_counter() - t, images_per_s=throughput(L, cfg.folds))
                self.say(f"[{self.clock()}] trained {name} ({cfg.folds} fold(s) x {cfg.num_shards} x {cfg.num_slices}) "
                         f"in {fmt_s(progress.done[name]['train']['seconds'])}")
            if not progress.finished(name, "evaluate"):
                t = time.perf_counter()
                out, _ = evaluate_run(L, self.opts, self.summaries, overwrite=True, name=name, n_boot=self.s.n_boot)
                bar.update(self.eval_units(cfg, sum(int((p["role"] == "test").sum()) for p in exp.partitions)))
                progress.record(name, "evaluate", time.perf_counter() - t, summary=out.name)
                self.say(f"[{self.clock()}] evaluated {name} in {fmt_s(progress.done[name]['evaluate']['seconds'])}")
            if not sisa or not self.s.sample:
                return
            if not progress.finished(name, "unlearning"):
                t = time.perf_counter()
                from .experiment import open_run
                exp = open_run(L, self.opts, with_images=False)
                plan = {f: sample_requests(p, self.s.sample - int(p["forgotten"].sum()), cfg.seed, f)
                        for f, p in enumerate(exp.partitions) if int(p["forgotten"].sum()) < self.s.sample}
                served = [r for _, _, r in serve_plan(L, self.opts, plan, bar=bar)] if plan else []
                exp = open_run(L, self.opts, with_images=False)
                bad = [r for r in verify(exp) if not r["ok"]]
                if bad:
                    raise SisaError(f"run {name} fails verification after unlearning ({bad[0]['detail']}); "
                                    "retrain it with train.py and rerun the study")
                progress.record(name, "unlearning", time.perf_counter() - t, requests=len(served), verified=True)
                self.say(f"[{self.clock()}] {name}: served and verified {self.s.sample} request(s) per fold in "
                         f"{fmt_s(progress.done[name]['unlearning']['seconds'])}")
            if not progress.finished(name, "evaluate after unlearning"):
                t = time.perf_counter()
                from .experiment import open_run
                after = summary_name(open_run(L, self.opts, with_images=False))
                evaluate_run(L, self.opts, self.summaries, overwrite=True, name=after, n_boot=self.s.n_boot)
                tested = sum(int((p["role"] == "test").sum()) for p in exp.partitions)
                bar.update(self.eval_units(cfg, tested) * min(cfg.num_shards, self.s.sample) // cfg.num_shards)
                progress.record(name, "evaluate after unlearning", time.perf_counter() - t, summary=after)
                self.say(f"[{self.clock()}] evaluated {after} in "
                         f"{fmt_s(progress.done[name]['evaluate after unlearning']['seconds'])}")


def throughput(layout: RunLayout, folds: int) -> float:
    """Training images per second over every epoch of a run's folds."""
    from .store import read_jsonl
    recs = [r for f in range(folds) for r in read_jsonl(layout.metrics(f))]
    secs = sum(r["seconds"] for r in recs)
    return sum(r["faces"] for r in recs) / secs if secs else float("nan")


def fmt_s(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
