"""The whole study in one command, on the machine at hand: train, evaluate, unlearn, cost and report.

    .venv/bin/python study.py                                   # --preset auto: cpu without CUDA, gpu/poster with it
    .venv/bin/python study.py --preset cpu --seeds 3 --test both   # the CPU set of RESULTS.md
    .venv/bin/python study.py --preset poster                   # the original's settings (a GPU job)

It trains the poster's four configurations (baseline 1x1, uniform, few shards, later slices) and a
positive control, evaluates them, serves --sample unlearning requests per fold (verified), evaluates
again, compares placements with uniform SISA and everything with the baseline, and writes
reports/<study>/report.md and report.json. Rerunning the same command continues where it stopped.
"""
from pathlib import Path

from sisa.cli import Parser, add_precision_arg, count, positive_float, positive_int, run_main, share
from sisa.config import MODELS, RECIPE_NAMES, SLICE_EPOCHS
from sisa.study.launch import LAUNCHERS
from sisa.layout import DEFAULT_CACHE, DEFAULT_CHECKPOINTS, DEFAULT_DATA, DEFAULT_REPORTS, DEFAULT_SUMMARIES


def get_args_parser() -> Parser:
    from sisa.study.settings import CHOOSABLE, PRESET_NAMES, PRESETS
    p = Parser(description=__doc__.split("\n")[0], epilog="See docs/study.md (and README.md for the quick start).")
    p.add_argument("--preset", choices=PRESET_NAMES, default="auto",
                   help="auto: poster on CUDA with the ImageNet weights at hand, gpu on CUDA without them, cpu otherwise; "
                        + "; ".join(f"{k}: {v['image_size']} px {v['model']}, {v['recipe']} recipe, {v['epochs']} epochs, "
                                    + (f"{v['folds_run']} of {v['folds']} folds" if v.get('folds_run') else f"{v['folds']} folds") + f", {'/'.join(v['tests'])} test" for k, v in PRESETS.items())
                        + " (default auto)")
    p.add_argument("--name", default=None, help="study name: reports/<name>/ and run names <name>-... (default: the preset)")
    g = p.add_argument_group("override the preset (any of them)")
    g.add_argument("--image_size", type=positive_int, help="side of the faces in px")
    g.add_argument("--model", choices=MODELS, help="the shard models' architecture")
    g.add_argument("--weights", help="auto, imagenet, none or a PATH (as train.py)")
    g.add_argument("--recipe", choices=RECIPE_NAMES, help="training recipe (as train.py)")
    g.add_argument("--epochs", type=positive_int, help="epochs per slice stage")
    g.add_argument("--slice_epochs", choices=SLICE_EPOCHS, help="full or sisa (as train.py)")
    g.add_argument("--folds", type=positive_int, help="folds (k of the k-fold test)")
    g.add_argument("--folds_run", type=folds_run_arg, metavar="N|all",
                   help="k-fold test: train and test only the first N of the k folds, or all (the cpu preset runs 1 of "
                        "3: replicates, not folds, carry its intervals)")
    g.add_argument("--test", dest="tests", choices=("balanced", "kfold", "both"), help="test set(s)")
    g.add_argument("--test_per_cell", type=count, help="balanced test: faces per race x age class")
    g.add_argument("--test_random", type=count, help="balanced test: extra random faces")
    g.add_argument("--batch_size", type=positive_int, help="batch per shard model")
    g.add_argument("--lr", type=positive_float, help="peak learning rate (default: the recipe's)")
    g.add_argument("--replicates", "--seeds", dest="replicates", type=positive_int,
                   help="replicates: each draws its own folds, likelihood flags, partitions and initial weights, shared by "
                        "every configuration of the replicate (paired); intervals come from their spread (default 1; "
                        "--seeds is an older name)")
    g.add_argument("--sample", type=count, help="unlearning requests served per fold and SISA run (0: none)")
    c = g.add_mutually_exclusive_group()
    c.add_argument("--control", dest="control", action="store_true", default=None,
                   help="include the positive control (default: as the preset, which includes it)")
    c.add_argument("--no_control", dest="control", action="store_false", help="leave the positive control out")
    g.add_argument("--control_doses", type=share, nargs="+",
                   help="the positive control's doses: shares of the control race's training faces given a random age "
                        "class, one run per dose, so the report says the smallest effect it detects (default 1.0)")
    a = g.add_mutually_exclusive_group()
    a.add_argument("--aa", dest="aa", action="store_true", default=None,
                   help="include uniform-b, a second uniform placement: the A/A contrast that calibrates the study (default)")
    a.add_argument("--no_aa", dest="aa", action="store_false", help="leave the A/A arm out")
    g.add_argument("--scenarios", nargs="+", metavar="SCENARIO",
                   help="who asks to be forgotten, each served at every --forget volume on a copy of every chosen "
                        "configuration's trained runs (the 1x1 baseline is retrained from scratch without the faces): "
                        "likelihood, random, group:RACE or group:RACE:AGE, or none (default: the preset's; the cpu "
                        "preset serves group:black at 0.05)")
    g.add_argument("--forget", type=share, nargs="+", metavar="VOLUME",
                   help="with --scenarios: fractions of each fold's training faces to forget, nested and served in "
                        "steps, each evaluated (for example 0.01 0.05 0.1; default: the preset's)")
    g.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="approximate unlearning of the 1x1 baseline for every scenario and volume, against its exact "
                        "retraining, with membership inference by race: finetune, neggrad, random-label, scrub "
                        "(default: none)")
    g.add_argument("--reference_race", choices=("white", "black", "asian", "indian", "other"),
                   help="the race every gap is measured against, fixed before the data are seen (default: --control_race)")
    g.add_argument("--configs", nargs="+", choices=list(CHOOSABLE), default=None,
                   help="configurations (default: baseline uniform few-shards later-slices; segregated is optional; the A/A "
                        "arm uniform-b and the control's doses follow --aa, --control and --control_doses)")
    g.add_argument("--num_shards", type=positive_int, help="shards of the SISA configurations (default 5)")
    g.add_argument("--num_slices", type=positive_int, help="slices of the SISA configurations (default 3)")
    g.add_argument("--control_race", choices=("white", "black", "asian", "indian", "other"),
                   help="the race of the positive control (label noise) and of the segregated placement (default black)")
    g.add_argument("--seed", type=count, help="the study's seed (default 0)")
    g.add_argument("--limit", type=positive_int, help="a stratified subsample of N faces (default: all)")
    g.add_argument("--n_boot", type=positive_int, help="bootstrap resamples (default 1000)")
    w = p.add_argument_group("where and how")
    w.add_argument("--data_dir", type=Path, default=DEFAULT_DATA, help=f"UTKFace images (default {DEFAULT_DATA})")
    w.add_argument("--cache_dir", type=Path, default=DEFAULT_CACHE, help=f"decoded-image cache (default {DEFAULT_CACHE})")
    w.add_argument("--checkpoints_dir", type=Path, default=DEFAULT_CHECKPOINTS, help=f"run folders (default {DEFAULT_CHECKPOINTS})")
    w.add_argument("--summaries_dir", type=Path, default=DEFAULT_SUMMARIES, help=f"summaries (default {DEFAULT_SUMMARIES})")
    w.add_argument("--reports_dir", type=Path, default=DEFAULT_REPORTS, help=f"study folders (default {DEFAULT_REPORTS})")
    w.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when available (default auto)")
    add_precision_arg(w)
    w.add_argument("--engine", choices=("eager", "graphs"), default="eager",
                   help="training steps: eager, or graphs (CUDA graphs; falls back to eager on a CPU) (default eager)")
    j = p.add_argument_group("jobs: runs side by side, or on a Slurm cluster (see docs/performance.md)")
    j.add_argument("--jobs", type=jobs_arg, default=None, metavar="N|auto",
                   help="runs at once as separate processes, torch threads split between them; 1: one after another "
                        "in this process; auto: one per two cores as free memory allows (one at a time on a GPU), printed; "
                        "with --launcher slurm every run is submitted and Slurm schedules them (default auto)")
    j.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local: processes on this machine; slurm: one Slurm job per run through submitit; "
                        "submitit-local: submitit's local executor, the Slurm path tried on this machine (default local)")
    j.add_argument("--no_wait", action="store_true",
                   help="with --launcher slurm: submit the runs and return; the same command again collects them "
                        "(finished runs are never redone) and writes the report")
    j.add_argument("--slurm_partition", default=None, help="Slurm partition of every job (default: the cluster's)")
    j.add_argument("--gpus_per_job", type=count, default=0, help="GPUs per Slurm job (default 0)")
    j.add_argument("--cpus_per_job", type=positive_int, default=4,
                   help="CPUs per Slurm job, also its torch threads (default 4)")
    j.add_argument("--mem_gb", type=positive_int, default=16, help="memory per Slurm job in GB (default 16)")
    j.add_argument("--time_min", type=positive_int, default=240, help="time limit per Slurm job in minutes (default 240)")
    j.add_argument("--slurm_extra", nargs="+", default=[], metavar="KEY=VALUE",
                   help="other submitit slurm_ parameters, e.g. account=myproj qos=normal (default none)")
    w.add_argument("--overwrite", action="store_true",
                   help="replace a study folder (and its runs) made with other run settings instead of stopping; "
                        "more seeds or configurations, or another --n_boot, need no --overwrite: finished runs are reused")
    m = w.add_mutually_exclusive_group()
    m.add_argument("--dry_run", action="store_true",
                   help="print the runs, what each has left, the images to process and an estimated time; write nothing")
    m.add_argument("--report_only", action="store_true",
                   help="render the report again from the finished runs (e.g. another --n_boot); train nothing")
    w.add_argument("--no_progress", action="store_true", help="no progress bar (one line per finished phase remains)")
    return p


def folds_run_arg(text: str) -> int:
    """--folds_run: a whole number >= 1, or all (0: every fold, stored as None)."""
    return 0 if text == "all" else positive_int(text)


def jobs_arg(text: str) -> int | None:
    """--jobs: a whole number >= 1, or auto (None: chosen from the machine)."""
    return None if text == "auto" else positive_int(text)


OVERRIDES = ("image_size", "model", "weights", "recipe", "epochs", "slice_epochs", "folds", "folds_run", "tests", "test_per_cell",
             "test_random", "batch_size", "lr", "replicates", "sample", "control", "control_doses", "aa", "reference_race",
             "scenarios", "forget", "methods", "configs", "num_shards", "num_slices", "control_race", "seed", "limit", "n_boot")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from sisa.device import resolve_device, wants_cuda
    from sisa.experiment import Options
    from sisa.errors import SisaError
    from sisa.study.launch import SlurmOptions
    from sisa.study import Study, choose_preset, duration, resolve_settings

    resolve_device(args.device)                   # --device cuda without a GPU: one line, before anything runs
    preset, why = choose_preset(args.preset, args.device)
    settings = resolve_settings(preset, {k: getattr(args, k) for k in OVERRIDES}, args.name)
    print(f"study {settings.name}: preset {preset} ({why})")
    opts = Options(data_dir=args.data_dir, cache_dir=args.cache_dir, checkpoints_dir=args.checkpoints_dir,
                   progress=not args.no_progress, device=args.device, engine=args.engine,
                   precision=args.precision)
    if args.no_wait and args.launcher != "slurm":
        raise SisaError("--no_wait goes with --launcher slurm (local jobs end with this process); drop it")
    if args.no_wait and (args.dry_run or args.report_only):
        raise SisaError("--no_wait submits jobs, which --dry_run and --report_only never do; drop --no_wait")
    slurm = SlurmOptions(args.slurm_partition, args.gpus_per_job, args.cpus_per_job, args.mem_gb, args.time_min,
                         tuple(args.slurm_extra))
    study = Study(settings, opts, args.summaries_dir, args.reports_dir, args.overwrite)
    if args.dry_run:
        study.dry_run()
        return 0
    if args.report_only:
        print(f"report: {study.report_only()} (and report.json, figures and per-face predictions beside it)")
        return 0
    if preset in ("gpu", "poster") and not wants_cuda(args.device):
        e = study.estimate()          # days of work on a CPU: say so before starting them
        print(f"warning: --preset {preset} on a CPU: {e['images']:,} images at about {e['images_per_s']:,.0f}/s, "
              f"{duration(e['seconds'])}; --preset cpu is the study made for a CPU (--dry_run to see any preset's plan)")
    report = study.run(args.jobs, args.launcher, args.no_wait, slurm)
    if report is not None:
        print(f"report: {report} (and report.json, figures and per-face predictions beside it)")
    return 0


if __name__ == "__main__":
    run_main(main, "study.py")
