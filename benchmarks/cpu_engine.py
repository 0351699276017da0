"""The CPU engine, measured in one run: step variants, the whole train.py path, evaluation, threads vs jobs.

    .venv/bin/python benchmarks/cpu_engine.py                  # everything (about 15 min on 2 cores)
    .venv/bin/python benchmarks/cpu_engine.py --quick          # steps and profiles only (about 2 min)

All on the cpu preset's network (cnn-max, 32 px, batch 128, the strong recipe's AdamW):
  steps      one optimisation step on a synthetic batch: fp32 or bf16 autocast, contiguous or
             channels_last; rounds interleaved so that a machine's drift hits every variant alike;
             ratios against plain fp32 (contiguous), the baseline the engine is judged by
  train.py   the whole command (start-up, augmentation, batch gathering included) on all faces,
             1x1, 3 folds x 2 epochs, images per second of its own wall time, against the plain fp32
             step measured in this same run
  sisa run   train.py and evaluate.py on the cpu preset's uniform 5x3 run (3 folds, 4 epochs, sisa
             slice epochs, flip test-time augmentation): evaluation's wall time as a share of training's
  jobs       the step in two 1-thread processes side by side (their sum) against one 2-thread process
  profile    where a training stage's and an evaluation's time goes (torch.profiler, by kind of op)
Results: benchmarks/results/cpu-engine-<date>.json, with the CPU's name, flags and thread count.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sisa.device import bf16_native, cpu_flags, device_name  # noqa: E402
from sisa.experiment import versions  # noqa: E402
from sisa.layout import DEFAULT_CACHE, DEFAULT_DATA  # noqa: E402
from sisa.store import write_json  # noqa: E402
from sisa.model import build_model  # noqa: E402
from sisa.recipe import RECIPES, loss_fn, make_optimizer  # noqa: E402

RECIPE = RECIPES["strong"]
VARIANTS = {"fp32": (False, False), "fp32_channels_last": (False, True), "bf16": (True, False),
            "bf16_channels_last": (True, True)}


def step_fn(bf16: bool, channels_last: bool, batch: int = 128, size: int = 32):
    """A closure running one training step of a fresh cnn-max on a fixed synthetic batch."""
    model, _ = build_model("cnn-max", "none", 0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = make_optimizer(model, RECIPE, RECIPE.lr)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).contiguous(memory_format=fmt)
    y = torch.randint(0, 7, (batch,), generator=gen)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = loss_fn(logits, y, RECIPE, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def rate(step, seconds: float, batch: int = 128, warm: int = 3) -> float:
    """Images per second of `step` over at least `seconds` (after `warm` steps)."""
    for _ in range(warm):
        step()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds or n < 2:
        step()
        n += 1
    return n * batch / (time.perf_counter() - t)


def steps_table(rounds: int, seconds: float) -> dict:
    fns = {name: step_fn(*flags) for name, flags in VARIANTS.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            samples[name].append(rate(fn, seconds, warm=3 if r == 0 else 1))
        print(f"  steps round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[-1]:,.0f}" for n, v in samples.items()),
              flush=True)
    base = statistics.median(samples["fp32"])
    return {name: {"images_per_s": statistics.median(v), "samples": v, "vs_fp32": statistics.median(v) / base}
            for name, v in samples.items()}


def run(cmd: list, log: Path) -> tuple[float, str]:
    """Wall seconds and output of a command (the project's own scripts, this interpreter)."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, *map(str, cmd)], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}); see {log}")
    return seconds, proc.stdout


def images_in_all(stdout: str) -> int:
    m = re.search(r"([\d,]+) images in all", stdout)
    if not m:
        raise SystemExit("train.py did not print its 'N images in all' line")
    return int(m.group(1).replace(",", ""))


def whole_train(a: argparse.Namespace, tmp: Path, baseline_step: float) -> dict:
    """train.py on all faces, 1x1, 3 folds x 2 epochs, against the plain fp32 step."""
    flags = ["--num_shards", 1, "--num_slices", 1, "--strategy", "random-kfold", "--folds", 3, "--image_size", 32,
             "--model", "cnn-max", "--recipe", "strong", "--epochs", 2, "--checkpoints_dir", tmp / "ck",
             "--data_dir", a.data_dir, "--cache_dir", a.cache_dir, "--no_progress", "--precision", a.precision]
    out = {}
    for rep in range(a.train_repeats):
        seconds, stdout = run(["train.py", *flags, "--run_name", f"whole-{rep}"], tmp / f"whole-{rep}.log")
        n = images_in_all(stdout)
        loop = epoch_seconds(tmp / "ck" / f"whole-{rep}")
        fp32_now = rate(step_fn(False, False), a.step_seconds)       # the baseline right beside it
        out.setdefault("runs", []).append({"seconds": seconds, "images": n, "images_per_s": n / seconds,
                                           "epoch_seconds": loop, "loop_images_per_s": n / loop,
                                           "plain_fp32_step_images_per_s": fp32_now,
                                           "vs_plain_fp32_step": n / seconds / fp32_now,
                                           "loop_vs_plain_fp32_step": n / loop / fp32_now})
        print(f"  train.py 1x1: {n:,} images in {seconds:.0f} s = {n / seconds:,.0f} img/s ({loop:.0f} s in its epochs: "
              f"{n / loop:,.0f} img/s); plain fp32 step {fp32_now:,.0f} img/s: {n / seconds / fp32_now:.2f}x "
              f"({n / loop / fp32_now:.2f}x without start-up)", flush=True)
    out["vs_plain_fp32_step"] = statistics.median(r["vs_plain_fp32_step"] for r in out["runs"])
    out["loop_vs_plain_fp32_step"] = statistics.median(r["loop_vs_plain_fp32_step"] for r in out["runs"])
    out["baseline_from_steps_table"] = baseline_step
    return out


def epoch_seconds(run_dir: Path) -> float:
    """Seconds a run spent inside its training epochs (its metrics records): train.py's time less start-up."""
    from sisa.config import RunConfig
    from sisa.layout import RunLayout
    from sisa.store import read_json, read_jsonl
    layout = RunLayout(run_dir)
    folds = RunConfig.from_dict(read_json(layout.config)).n_folds
    return sum(r["seconds"] for f in range(folds) for r in read_jsonl(layout.metrics(f)))


def sisa_run(a: argparse.Namespace, tmp: Path) -> dict:
    """The cpu preset's uniform 5x3 run (its epochs and folds): train.py, then evaluate.py (flip TTA), wall times."""
    from sisa.study.settings import PRESETS
    cpu = PRESETS["cpu"]
    folds = ["--folds", cpu["folds"]] + (["--folds_run", cpu["folds_run"]] if cpu.get("folds_run") else [])
    flags = ["--num_shards", 5, "--num_slices", 3, "--strategy", "random-kfold", *folds, "--image_size", 32,
             "--model", "cnn-max", "--recipe", "strong", "--epochs", cpu["epochs"], "--slice_epochs", "sisa",
             "--checkpoints_dir", tmp / "ck", "--data_dir", a.data_dir, "--cache_dir", a.cache_dir, "--no_progress",
             "--precision", a.precision]
    train_s, stdout = run(["train.py", *flags, "--run_name", "uniform"], tmp / "sisa-train.log")
    eval_s, _ = run(["evaluate.py", "--run_dir", tmp / "ck" / "uniform", "--summaries_dir", tmp / "sum",
                     "--no_progress", "--precision", a.precision], tmp / "sisa-eval.log")
    print(f"  sisa 5x3: training {train_s:.0f} s, evaluation {eval_s:.0f} s = {eval_s / train_s:.0%} of training",
          flush=True)
    return {"train_seconds": train_s, "evaluate_seconds": eval_s, "evaluate_share_of_training": eval_s / train_s,
            "train_images": images_in_all(stdout), "epochs": cpu["epochs"], "folds": cpu["folds"],
            "folds_run": cpu.get("folds_run")}


JOBS_CHILD = """
import sys, time, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from benchmarks.cpu_engine import rate, step_fn
print(rate(step_fn(False, True), {seconds}))
"""


def threads_vs_jobs(seconds: float) -> dict:
    """Two 1-thread processes side by side versus one 2-thread process (fp32, channels_last)."""
    def spawn(threads: int) -> subprocess.Popen:
        code = JOBS_CHILD.format(root=str(ROOT), threads=threads, seconds=seconds)
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    out = {}
    for rep in range(2):
        one = float(spawn(2).communicate()[0].strip().splitlines()[-1])
        pair = [spawn(1), spawn(1)]
        both = [float(p.communicate()[0].strip().splitlines()[-1]) for p in pair]
        out.setdefault("one_process_2_threads", []).append(one)
        out.setdefault("two_processes_1_thread_sum", []).append(sum(both))
        print(f"  jobs: one 2-thread process {one:,.0f} img/s, two 1-thread processes {sum(both):,.0f} img/s",
              flush=True)
    out["ratio_jobs_vs_threads"] = statistics.median(
        j / t for j, t in zip(out["two_processes_1_thread_sum"], out["one_process_2_threads"]))
    return out


KINDS = (("convolution", ("conv",)), ("batch norm", ("batch_norm",)), ("activation and pooling", ("relu", "threshold", "pool")),
         ("linear layers", ("addmm", "mm", "linear")), ("optimizer", ("adam", "foreach", "lerp", "addcdiv", "sqrt")),
         ("loss", ("cross_entropy", "log_softmax", "nll")),
         ("batch gathering and augmentation", ("index", "gather", "pad", "flip", "rand", "where", "cat")),
         ("normalisation and copies", ("copy", "sub", "div", "to", "permute", "contiguous", "mul", "add")))


def by_kind(prof) -> dict:
    """Self CPU time of the profiled ops, grouped by what they do (shares of the total)."""
    totals: dict[str, float] = {}
    for ev in prof.key_averages():
        name = ev.key.lower()
        kind = next((k for k, keys in KINDS if any(s in name for s in keys)), "other")
        totals[kind] = totals.get(kind, 0.0) + ev.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {k: {"seconds": v / 1e6, "share": v / whole} for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def profiles(a: argparse.Namespace) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from sisa.data import load_faces
    from sisa.engine import StagePlan, train_stage
    from sisa.inputs import mirror, to_input
    faces = load_faces(a.data_dir, 32, a.cache_dir, progress=False)
    images = torch.from_numpy(np.array(faces.images[:4096]))
    labels = torch.tensor(faces.table["age_class"].to_numpy(np.int64)[:4096])
    model, _ = build_model("cnn-max", "none", 0)
    model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, RECIPE, RECIPE.lr)
    plan = StagePlan(RECIPE, RECIPE.lr, 1, 128, True, precision="fp32")
    n = min(2048, len(images))
    train_stage(model, opt, images, labels, np.arange(min(512, n)), plan, (0, 0, 0))         # warm up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_stage(model, opt, images, labels, np.arange(n), plan, (0, 0, 1))
    train = by_kind(prof)
    model.eval()
    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.inference_mode():
        for idx in torch.arange(n).split(64):
            x = to_input(images[idx])
            model(torch.cat([x, mirror(x)]).contiguous(memory_format=torch.channels_last))
    evaluation = by_kind(prof)
    for what, table in (("training stage", train), ("evaluation (flip TTA)", evaluation)):
        print(f"  profile, {what}: " + ", ".join(f"{k} {100 * v['share']:.0f}%" for k, v in table.items()), flush=True)
    return {"training_stage": train, "evaluation": evaluation}


def markdown(res: dict, source: str) -> str:
    """docs/performance.md's table of a result file: every number read from it (tests check the README holds this)."""
    steps = res["steps"]
    label = {"fp32": "fp32, contiguous", "fp32_channels_last": "fp32, channels_last",
             "bf16": "bf16 autocast, contiguous", "bf16_channels_last": "bf16 autocast + channels_last"}
    lines = [f"**{res['device']}** ({'with' if res['bf16_in_hardware'] else 'without'} bf16 instructions; "
             f"flags {', '.join(res['cpu_flags']) or 'unknown'}), {res['date']}, `{source}`:", "",
             "| training step (synthetic batch) | img/s | vs plain fp32 |", "|---|---|---|"]
    lines += [f"| {label[k]} | {v['images_per_s']:,.0f} | {v['vs_fp32']:.2f}x |" for k, v in steps.items()]
    if "train_py" in res:
        t = res["train_py"]
        run = t["runs"][0]
        lines += ["", "| whole command, measured in the same run | result |", "|---|---|",
                  f"| `train.py` 1x1, all faces, 3 folds x 2 epochs | {run['images_per_s']:,.0f} img/s = "
                  f"**{t['vs_plain_fp32_step']:.2f}x** the plain fp32 step beside it |"]
        if "loop_vs_plain_fp32_step" in t:
            lines.append(f"| the same, inside its training epochs (start-up left out) | {run['loop_images_per_s']:,.0f} img/s = "
                         f"**{t['loop_vs_plain_fp32_step']:.2f}x** |")
    if "sisa_run" in res:
        r = res["sisa_run"]
        which = (f"{r['epochs']} epochs, {r['folds_run']} of {r['folds']} folds" if r.get("folds_run") else
                 f"{r.get('epochs', 4)} epochs, {r.get('folds', 3)} folds")
        lines.append(f"| cpu preset's uniform 5x3 run ({which}): evaluation (flip TTA) against training | "
                     f"{r['evaluate_seconds']:.0f} s / {r['train_seconds']:.0f} s = **{r['evaluate_share_of_training']:.0%}** |")
    if "jobs" in res:
        j = res["jobs"]
        lines.append(f"| two 1-thread processes side by side against one 2-thread process (fp32, channels_last) | "
                     f"{statistics.median(j['two_processes_1_thread_sum']):,.0f} / "
                     f"{statistics.median(j['one_process_2_threads']):,.0f} img/s = **{j['ratio_jobs_vs_threads']:.2f}x** |")
    prof = res["profile"]["training_stage"]
    lines += ["", "Where a training stage's time goes (torch.profiler, self CPU time): " +
              ", ".join(f"{k} {100 * v['share']:.0f}%" for k, v in prof.items() if v["share"] >= 0.005) + "."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="steps and profiles only (no train.py, evaluate.py or jobs)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the step table (default 3)")
    p.add_argument("--step_seconds", type=float, default=6.0, help="seconds per step measurement (default 6)")
    p.add_argument("--train_repeats", type=int, default=1, help="train.py 1x1 runs (default 1)")
    p.add_argument("--precision", default="auto", help="train.py's and evaluate.py's --precision (default auto)")
    p.add_argument("--data_dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--cache_dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/cpu-engine-<date>.json)")
    p.add_argument("--markdown", type=Path, default=None, metavar="JSON",
                   help="print docs/performance.md's table of an earlier result and stop")
    a = p.parse_args(argv)
    if a.markdown:
        path = a.markdown.resolve()
        print(markdown(json.loads(path.read_text()),
                       path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)))
        return 0
    cpu = torch.device("cpu")
    res = {"device": device_name(cpu), "cpu_flags": cpu_flags(), "bf16_in_hardware": bf16_native(cpu),
           "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "date": dt.date.today().isoformat(),
           "versions": versions(), "network": "cnn-max, 32 px, batch 128, strong recipe (AdamW)",
           "precision_asked": a.precision}
    out = a.out or ROOT / "benchmarks" / "results" / f"cpu-engine-{res['date']}.json"
    print(f"{res['device']}; bf16 in hardware: {res['bf16_in_hardware']}", flush=True)
    res["steps"] = steps_table(a.rounds, a.step_seconds)
    res["profile"] = profiles(a)
    if not a.quick:
        with tempfile.TemporaryDirectory(prefix="cpu-engine-") as tmp:
            res["train_py"] = whole_train(a, Path(tmp), res["steps"]["fp32"]["images_per_s"])
            res["sisa_run"] = sisa_run(a, Path(tmp))
        res["jobs"] = threads_vs_jobs(a.step_seconds * 2)
    write_json(out, res, sort_keys=False)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
