"""Run the whole study in one command: train, evaluate, compare, unlearn and report, with phase timings.

    python3 benchmarks/study.py                                  # full settings (a GPU job)
    python3 benchmarks/study.py --image_size 128 --weights none  # what fits a GPU without internet
    python3 benchmarks/study.py --cpu_small                      # a CPU-sized version, labelled as such

The configurations are the poster's: baseline (1x1), uniform (random-balanced 5x3), few shards
(sorted-balanced --put_in shard) and later slices (sorted-balanced --put_in slice); --test kfold runs
the same four with k-fold test sets. Each configuration is trained, evaluated and, for the SISA
ones, served --sample unlearning requests per fold; then the runs are compared with the baseline and
the unlearning report is written. Everything a phase takes (data load, training, evaluation,
unlearning) is timed and written to --out as JSON with the device name.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sisa.config import RunConfig  # noqa: E402
import pandas as pd  # noqa: E402

from sisa.evaluation import compare, composition_shares, evaluate_run  # noqa: E402
from sisa.experiment import Options, open_run, prepare, versions  # noqa: E402
from sisa.layout import (DEFAULT_CACHE, DEFAULT_CHECKPOINTS, DEFAULT_DATA, DEFAULT_SUMMARIES,  # noqa: E402
                         PROJECT_ROOT, RunLayout)
from sisa.store import read_jsonl, run_lock, write_json, write_text  # noqa: E402
from sisa.training import resolve_device, train_run  # noqa: E402
from sisa import plots, unlearning  # noqa: E402

CONFIGS = {
    "baseline": dict(strategy="random-{test}", num_shards=1, num_slices=1),
    "uniform": dict(strategy="random-{test}", num_shards=5, num_slices=3),
    "few-shards": dict(strategy="sorted-{test}", put_in="shard", num_shards=5, num_slices=3),
    "later-slices": dict(strategy="sorted-{test}", put_in="slice", num_shards=5, num_slices=3),
}
BATCH_SIZES = (5, 20)   # requests served together, for the expected cost of batches
CPU_SMALL = dict(image_size=32, model="cnn", epochs=3, folds=2, limit=3000, test_per_cell=4, test_random=28)


def device_name(device: str) -> str:
    import platform

    import torch
    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def throughput(layout) -> float:
    """Images per second over every training epoch of the run (all folds, shards, slices)."""
    recs = [r for f in sorted(layout.root.glob("fold-*/metrics.jsonl")) for r in read_jsonl(f)]
    secs = sum(r["seconds"] for r in recs)
    return sum(r["faces"] for r in recs) / secs if secs else float("nan")


def run_config(tag: str, cfg: RunConfig, opts: Options, summaries: Path, n_boot: int, sample: int) -> dict:
    """Train, evaluate and (for SISA runs) unlearn one configuration; returns what each phase took."""
    out = {"tag": tag, "run": cfg.name, "config": cfg.to_dict()}
    layout_root = Path(opts.checkpoints_dir) / cfg.name
    layout_root.mkdir(parents=True, exist_ok=True)
    with run_lock(layout_root / "LOCK", "benchmarks/study.py"):
        t = time.perf_counter()
        exp = prepare(cfg, opts)
        out["seconds_data_and_partitions"] = time.perf_counter() - t
        t = time.perf_counter()
        train_run(exp, opts)
        out["seconds_training"] = time.perf_counter() - t
        out["training_images_per_s"] = throughput(exp.layout)
        t = time.perf_counter()
        summary, fair = evaluate_run(exp.layout, opts, summaries, n_boot=n_boot, overwrite=True)
        out["seconds_evaluation"] = time.perf_counter() - t
        out["summary"] = summary.name
        tidy = pd.read_csv(summary.results_csv)
        ens = tidy[(tidy["model"] == "ensemble") & (tidy["age_class"] == "all") & (tidy["metric"] == "top1")]
        out["top1"] = ens.groupby("group")["value"].mean().to_dict()
        singles = tidy[(tidy["model"] != "ensemble") & (tidy["age_class"] == "all") & (tidy["metric"] == "top1")]
        out["top1_single_shard_mean"] = singles.groupby("group")["value"].mean().to_dict()
        out["composition"] = composition_shares(exp.partitions).to_dict(orient="index")
        out["fairness"] = fair["value"].to_dict()
        out["fairness_ci"] = {k: [fair.loc[k, "ci_low"], fair.loc[k, "ci_high"]] for k in fair.index}
        out["expected_unlearning"] = [unlearning.expected_cost(p, cfg) for p in exp.partitions]
        if cfg.num_shards * cfg.num_slices > 1:   # requests gathered and served together (no training)
            out["expected_unlearning_batches"] = {
                str(k): [unlearning.expected_batch_cost(p, cfg, k, 1000, cfg.seed, f) for f, p in enumerate(exp.partitions)]
                for k in BATCH_SIZES if all(k <= (q["role"] == "train").sum() for q in exp.partitions)}
        if sample and cfg.num_shards * cfg.num_slices > 1 and not read_jsonl(exp.layout.unlearning_log):
            t = time.perf_counter()
            plan = {k: unlearning.sample_requests(p, sample, cfg.seed, k) for k, p in enumerate(exp.partitions)}
            out["unlearning_requests"] = [r for _, _, r in unlearning.serve_plan(exp.layout, opts, plan)]
            out["seconds_unlearning"] = time.perf_counter() - t
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), help="which configurations (default all four)")
    p.add_argument("--test", choices=("balanced", "kfold"), default="balanced", help="test-set strategy (default balanced)")
    p.add_argument("--image_size", type=int, default=200, help="px (default 200, the original's)")
    p.add_argument("--model", default="resnet18", help="resnet18 or cnn (default resnet18)")
    p.add_argument("--weights", default="auto", help="auto, imagenet, none or a PATH (default auto)")
    p.add_argument("--epochs", type=int, default=15, help="epochs per slice stage (default 15)")
    p.add_argument("--folds", type=int, default=5, help="folds (default 5)")
    p.add_argument("--limit", type=int, default=None, help="stratified subsample of faces (default all; 0: all, also with --cpu_small)")
    p.add_argument("--test_per_cell", type=int, default=9, help="balanced test faces per cell (default 9)")
    p.add_argument("--test_random", type=int, default=63, help="balanced extra random test faces (default 63)")
    p.add_argument("--seed", type=int, default=0, help="the study's seed (default 0)")
    p.add_argument("--cpu_small", action="store_true", help=f"CPU-sized settings: {CPU_SMALL}")
    p.add_argument("--sample", type=int, default=5, help="unlearning requests per fold on each SISA run (default 5; 0: none)")
    p.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--deadline", type=float, default=None, help="seconds: start no new configuration after this")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--data_dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--cache_dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--checkpoints_dir", type=Path, default=DEFAULT_CHECKPOINTS)
    p.add_argument("--summaries_dir", type=Path, default=DEFAULT_SUMMARIES)
    p.add_argument("--prefix", default="study", help="run-name prefix (default study)")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/study-<date>.json)")
    p.add_argument("--no_progress", action="store_true")
    a = p.parse_args(argv)
    settings = dict(image_size=a.image_size, model=a.model, weights=a.weights, epochs=a.epochs, folds=a.folds,
                    limit=a.limit, test_per_cell=a.test_per_cell, test_random=a.test_random, seed=a.seed)
    if a.cpu_small:   # CPU-sized defaults; flags given explicitly still win
        settings.update({k: v for k, v in CPU_SMALL.items() if getattr(a, k) == p.get_default(k)})
    if not settings["limit"]:
        settings["limit"] = None   # 0 asks for every face
    opts = Options(data_dir=a.data_dir, cache_dir=a.cache_dir, checkpoints_dir=a.checkpoints_dir,
                   progress=not a.no_progress, device=a.device)
    size = settings["image_size"]
    label = "CPU-sized version (not the full study)" if a.cpu_small else "full settings" if (
        size == 200 and settings["folds"] == 5 and settings["epochs"] == 15 and not settings["limit"]) else "reduced settings"
    started = time.perf_counter()
    result = {"label": label, "device": device_name(a.device), "date": dt.date.today().isoformat(),
              "settings": settings, "test": a.test, "versions": versions(), "configs": []}
    out = a.out or PROJECT_ROOT / "benchmarks" / "results" / f"study-{dt.date.today().isoformat()}.json"
    for tag in a.configs:
        if a.deadline and time.perf_counter() - started > a.deadline:
            result.setdefault("skipped_for_deadline", []).append(tag)
            continue
        c = {k: (v.format(test=a.test) if isinstance(v, str) else v) for k, v in CONFIGS[tag].items()}
        name = f"{a.prefix}-{tag}-{a.test}-{size}px"
        cfg = RunConfig(**{**settings, **c, "run_name": name})
        print(f"== {tag}: {name}", flush=True)
        result["configs"].append(run_config(tag, cfg, opts, a.summaries_dir, a.n_boot, a.sample))
        result["seconds_total"] = time.perf_counter() - started
        write_json(out, result)      # after every configuration: a cut-off run still leaves its results
    names = [c["summary"] for c in result["configs"]]
    if len(names) > 1 and result["configs"][0]["tag"] == "baseline":
        side, changes, fig = compare(names, a.summaries_dir, a.n_boot)
        result["compare"] = {"side": json.loads(side.to_json()), "changes": json.loads(changes.to_json(orient="records")),
                             "figure": str(fig)}
    exps = [open_run(RunLayout((Path(a.checkpoints_dir) / c["run"]).resolve()), opts, with_images=False)
            for c in result["configs"]]
    gaps = {c["run"]: c["fairness"]["gap (best - worst)"] for c in result["configs"]}
    table = unlearning.cost_report(exps, gaps)
    stem = Path(a.summaries_dir) / f"{a.prefix}-{a.test}-{size}px-unlearning"
    write_text(stem.with_suffix(".csv"), table.to_csv(index=False))
    plots.cost_chart(table, stem.with_suffix(".png"))
    result["unlearning_report"] = json.loads(table.to_json(orient="records"))
    result["seconds_total"] = time.perf_counter() - started
    write_json(out, result)
    print(table.round(4).to_string(index=False))
    print(f"study ({label}) on {result['device']}: {result['seconds_total']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
