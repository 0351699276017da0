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
from .errors import SisaError, first_line
from .experiment import Options
from .layout import DEFAULT_REPORTS, DEFAULT_SUMMARIES, RunLayout, StudyLayout
from .device import wants_cuda
from .launch import SlurmOptions, choose_jobs, failure_line, make_launcher, reattach
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
POLL_SECONDS = 2.0      # how often the study looks at its jobs' records

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
    """Which phases of which runs are done, with their seconds (for resume and the report): one file
    per run (progress/<run>.json), written only by the job running that run, so runs in parallel
    never write one file. A study from before those files keeps its progress.json (read, not written)."""
    layout: StudyLayout
    done: dict = field(default_factory=dict)

    def seconds(self) -> float:
        """Seconds of every recorded phase, over all the invocations that ran them."""
        return sum(ph["seconds"] for phases in self.done.values() for ph in phases.values())

    @classmethod
    def load(cls, layout: StudyLayout) -> "Progress":
        done = read_json(layout.state) if layout.state.exists() else {}
        for path in layout.run_states():
            done[path.stem] = read_json(path)
        return cls(layout, done)

    def finished(self, run: str, phase: str) -> bool:
        return phase in self.done.get(run, {})

    def record(self, run: str, phase: str, seconds: float, **facts) -> None:
        self.done.setdefault(run, {})[phase] = {"seconds": seconds, **facts}
        write_json(self.layout.run_state(run), self.done[run])


# ---- the study ----------------------------------------------------------------------------------
class Study:
    def __init__(self, settings: Settings, opts: Options, summaries_dir: Path = DEFAULT_SUMMARIES,
                 reports_dir: Path = DEFAULT_REPORTS, overwrite: bool = False, say=print):
        self.s, self.opts = settings, opts
        self.summaries = Path(summaries_dir)
        self.layout = StudyLayout((Path(reports_dir) / settings.name).resolve())
        self.overwrite, self.say = overwrite, say
        self._unlearning_units: dict[str, int] = {}

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
        return Progress.load(L)

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
    def run(self, jobs: int | None = 1, launcher: str = "local", no_wait: bool = False,
            slurm: SlurmOptions = SlurmOptions()) -> Path | None:
        """Every unfinished phase of every run, then the report (None: --no_wait submitted jobs).

        `jobs` 1 with the local launcher: one run after another in this process; otherwise each run
        is a job (launch.py) and this process watches them; None chooses from cores and memory."""
        from .report import write_report

        started = time.perf_counter()
        with run_lock(self.layout.lock, "study.py"):
            progress = self.open()
            before = progress.seconds()            # phases of earlier invocations
            exps = self.prepare_all()
            left = {key: exp for key, exp in exps.items() if self.work(progress, exp)}
            n, threads, why = 1, 0, ""
            if launcher == "slurm":            # every run submitted at once; Slurm schedules them
                n, threads = len(left), slurm.cpus_per_job
                why = f"Slurm schedules them; --cpus_per_job {slurm.cpus_per_job}"
            elif left:
                n, threads, why = choose_jobs(jobs, len(left), next(iter(left.values())).images.nbytes,
                                              wants_cuda(self.opts.device))
            if left and (launcher != "local" or n > 1):     # else: one run after another, in this process
                self.say(f"{len(left)} run(s) to go: {n} at a time ({launcher} launcher, {why}), "
                         f"{threads} torch thread(s) each; logs in {self.layout.run_log('<run>')}")
                failures = self.launch(left, progress, n, threads, launcher, no_wait, slurm)
                if failures is None:
                    return None
                progress = Progress.load(self.layout)
                if failures:
                    raise SisaError(f"{len(failures)} of {len(left)} run(s) failed: " + "; ".join(failures) +
                                    ". The other runs are kept; rerun the same command to retry the failed ones")
            else:
                with self.bar(sum(self.work(progress, e) for e in exps.values())) as bar:
                    self.say = bar.write
                    for key, exp in exps.items():
                        self.one_run(key, exp, progress, bar)
            t = time.perf_counter()
            # the study's time: the phases of earlier invocations plus this one's wall time (its
            # phases, run here or as jobs, with preparing runs and the report), so a resumed study or
            # a regenerated report still says it
            path = write_report(self.layout, self.s, self.opts, self.summaries, progress.done,
                                seconds_total=before + time.perf_counter() - started)
            self.say(f"[{self.clock()}] report: {self.layout.report_md} ({time.perf_counter() - t:.0f} s)")
        return path

    def launch(self, left: dict, progress: Progress, jobs: int, threads: int, launcher: str, no_wait: bool,
               slurm: SlurmOptions) -> list[str] | None:
        """Run `left` as jobs, `jobs` at a time (Slurm: all submitted, Slurm schedules them), and watch
        them with one progress bar driven by the runs' records. Returns one line per failed run, or
        None when --no_wait left submitted jobs running."""
        folder = self.layout.launcher_dir
        recorded = read_json(self.layout.jobs) if self.layout.jobs.exists() else {}
        runner = make_launcher(launcher, folder, slurm)
        specs = {key: Job(self.s.to_dict(), key, self.opts, self.summaries, self.layout.root.parent, threads,
                          self.layout.run_log(exp.cfg.name), exp.cfg.name) for key, exp in left.items()}
        queue, handles, failures = list(left), {}, []
        at_once = len(queue) if launcher == "slurm" else jobs

        def submit_more() -> None:
            while queue and len(handles) < at_once:
                key = queue.pop(0)
                name = specs[key].name
                again = reattach(launcher, folder, recorded.get(name, {}).get("job_id"))
                handles[key] = again or runner.submit(run_job, specs[key])
                recorded[name] = {"launcher": launcher, "job_id": getattr(handles[key], "job_id", None),
                                  "log": str(specs[key].log), "reattached": again is not None}
            write_json(self.layout.jobs, recorded)

        units = {key: self.work(progress, exp) for key, exp in left.items()}
        try:
            submit_more()
            if no_wait:
                self.say(f"submitted {len(handles)} job(s) ({self.layout.jobs}); rerun the same command to "
                         "collect them and write the report")
                return None
            with self.bar(sum(units.values())) as bar:
                while handles:
                    time.sleep(POLL_SECONDS)
                    for key in [k for k, h in handles.items() if h.done()]:
                        line = failure_line(handles.pop(key), specs[key].name, specs[key].log)
                        if line:
                            failures.append(line)
                        bar.write(f"[{self.clock()}] " + (f"failed: {line}" if line else f"finished {specs[key].name}"))
                    submit_more()
                    now = Progress.load(self.layout)
                    left_now = sum(units[key] if key in queue else min(units[key], self.work(now, left[key]))
                                   if key in handles else 0 for key in left)
                    bar.n = max(bar.n, sum(units.values()) - left_now)   # a run's unlearning makes its partition
                    bar.refresh()                                        # newer than ours: never count backwards
            return failures
        finally:
            runner.close()

    def run_one(self, key: tuple, log) -> None:
        """A job's work (run_job): one run's unfinished phases, progress to `log`."""
        exp = self.prepare_run(key)
        progress = Progress.load(self.layout)
        with tqdm(total=self.work(progress, exp), unit="img", unit_scale=True, desc=exp.cfg.name, file=log,
                  mininterval=30, ascii=True, disable=not self.opts.progress) as bar:
            self.say = bar.write
            self.one_run(key, exp, progress, bar)

    def clock(self) -> str:
        return dt.datetime.now().strftime("%H:%M:%S")

    def prepare_all(self) -> dict:
        """Every run folder created or re-opened (faces, likelihood, partitions), in training order."""
        return {key: self.prepare_run(key, self.overwrite) for key in self.s.runs()}

    def prepare_run(self, key: tuple, overwrite: bool = False):
        """One run folder created or re-opened under its lock, an unlearning commit a crash left
        finished first; `overwrite` replaces a folder of another configuration."""
        from .commit import finish_and_report
        from .experiment import prepare

        cfg = self.s.run_config(*key)
        layout = RunLayout((Path(self.opts.checkpoints_dir) / cfg.name).resolve())
        with run_lock(layout.lock, "study.py"):
            if layout.exists():
                finish_and_report(layout, self.say)
            return prepare(cfg, dataclasses.replace(self.opts, overwrite=overwrite))

    def bar(self, total: int, **kw) -> tqdm:
        """The study's progress bar: images to train, evaluate and retrain, with an ETA."""
        return tqdm(total=total, unit="img", unit_scale=True, desc=f"study {self.s.name}",
                    disable=not self.opts.progress, dynamic_ncols=True, **kw)

    def work(self, progress: Progress, exp) -> int:
        """Images (training-step equivalents) this run still needs: training, evaluation and unlearning."""
        from .training import pending_stages, stage_work
        cfg, name = exp.cfg, exp.cfg.name
        # the records, not the files: hashing every checkpoint only to size a bar cost minutes on a GPU study
        left = sum(stage_work(exp, f, s, first) for f, s, first in pending_stages(exp, verify=False))
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
        name = exp.cfg.name
        if name not in self._unlearning_units:      # asked at every look at running jobs: computed once
            self._unlearning_units[name] = int(sum(expected_cost(p, exp.cfg)["expected_faces_x_epochs"]
                                                   for p in exp.partitions) * self.s.sample)
        return self._unlearning_units[name]

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


@dataclass(frozen=True)
class Job:
    """One run of a study as a worker process (or a Slurm job) receives it: everything pickles."""
    settings: dict                   # the study's Settings.to_dict()
    key: tuple                       # (test, configuration, seed index)
    opts: Options
    summaries_dir: Path
    reports_dir: Path
    threads: int                     # torch threads of this job
    log: Path                        # reports/<study>/logs/<run>.log
    name: str                        # the run's name


def run_job(job: Job) -> str:
    """A job's entry point (launch.py runs it in a worker process or a Slurm job): every unfinished
    phase of one run, its output in the run's log. On failure the traceback goes to the log and a
    one-line error to the study (an exception that pickles, whatever the original was)."""
    import contextlib
    import os
    import traceback

    import torch
    torch.set_num_threads(job.threads)
    job.log.parent.mkdir(parents=True, exist_ok=True)
    with open(job.log, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {job.name}: pid {os.getpid()} on {os.uname().nodename}, "
              f"{job.threads} torch thread(s)")
        try:
            Study(Settings.from_dict(job.settings), job.opts, job.summaries_dir, job.reports_dir,
                  say=print).run_one(job.key, log)
        except BaseException as e:
            traceback.print_exc()
            raise SisaError(f"{type(e).__name__}: {first_line(e)}") from None
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {job.name}: done")
    return job.name


def throughput(layout: RunLayout, folds: int) -> float:
    """Training images per second over every epoch of a run's folds."""
    from .store import read_jsonl
    recs = [r for f in range(folds) for r in read_jsonl(layout.metrics(f))]
    secs = sum(r["seconds"] for r in recs)
    return sum(r["faces"] for r in recs) / secs if secs else float("nan")


def fmt_s(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
