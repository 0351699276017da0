"""The whole study in one command: train, evaluate, unlearn, cost and report every configuration.

    .venv/bin/python study.py                       # --preset auto: the best study this machine can finish
    .venv/bin/python study.py --preset cpu --replicates 10     # enough replicates to see a point
    .venv/bin/python study.py --dry_run             # the runs, images to train and an estimated time; writes nothing
    .venv/bin/python study.py --report_only --n_boot 5000   # the report again from the finished runs

Configurations (the poster's four, and a positive control):
  baseline      one monolithic model (1 shard, 1 slice)
  uniform       5 x 3 SISA, faces placed at random
  few-shards    5 x 3, high-likelihood faces in as few shards as possible (sorted, put_in shard)
  later-slices  5 x 3, high-likelihood faces in the last slices of every shard (sorted, put_in slice)
  control       the positive control: uniform 5 x 3, but every training face of one race (--control_race,
                default black) carries a random age class; built to widen the gap, which the study must see
  segregated    (optional) 5 x 3, that race's faces in as few shards as possible: the most any
                placement can do to one race's share of each shard

Each configuration is trained once per replicate (`--replicates`; each replicate its own folds, flags,
partitions and initial weights, shared by its configurations), beside a second uniform arm (A/A) and
the control at each of its doses (`--control_doses`), evaluated, costed for unlearning (expected cost under both request models, batches), served
`--sample` requests per fold (the first of one fixed request order per fold, verified), and evaluated
again. The report (report.py) then compares placements with uniform, every SISA configuration with the
baseline and each run after unlearning with itself before.

A study lives in reports/<study>/ (layout.StudyLayout): study.json (its settings), progress/<run>.json
(each run's phases, their outputs' folders and seconds), the report, figures and per-face predictions.
Its runs are ordinary run folders under --checkpoints_dir named <study>-<test>-<config>[-seed<k>], and
summaries under --summaries_dir: train.py, evaluate.py and unlearn.py work on them as on any run.
Rerunning the same command continues where it stopped.

The package, one concept per module:
  settings   configurations, presets, a study's settings and which of them make a run
  progress   each run's phases: done, where, seconds
  runner     the phases of every run, --dry_run and --report_only
  jobs       one run as a job; launch: where jobs run (local processes, Slurm through submitit)
  estimate   how long it will take
"""
from .estimate import duration, measured_rate, probe_rate
from .jobs import Job, run_job
from .progress import PHASES, Progress
from .numbers import load_study
from .runner import Study, fmt_s, throughput
from .settings import (CONFIGS, POSTER_CONFIGS, PRESET_NAMES, PRESETS, Settings, check_settings, choose_preset,
                       imagenet_weights_cached, resolve_settings)

__all__ = ["CONFIGS", "POSTER_CONFIGS", "PRESETS", "PRESET_NAMES", "PHASES", "Job", "Progress", "Settings", "Study",
           "check_settings", "choose_preset", "duration", "fmt_s", "imagenet_weights_cached", "load_study", "measured_rate",
           "probe_rate", "resolve_settings", "run_job", "throughput"]
