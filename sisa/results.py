"""RESULTS.md, made from files the code wrote: committed study reports and benchmark JSONs.

    .venv/bin/python -m sisa.results --out RESULTS.md          # the committed sets (RESULTS_SOURCES below)
    .venv/bin/python -m sisa.results --check                   # does RESULTS.md match them? (the tests run this)

Nothing in RESULTS.md is typed by hand: each section is rendered from its source file, so the
numbers it quotes are the numbers in reports/<study>/report.json and benchmarks/results/*.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .layout import PROJECT_ROOT, StudyLayout
from .report import chg, config_title, family, find, interval, level, pct, render, runs, secs, table
from .stats import Contrast

# The committed sets, in the order RESULTS.md shows them.
RESULTS_SOURCES = {
    "reports": ["reports/published/cpu-replicated", "reports/published/cpu-forget", "reports/published/cpu-approx",
                "reports/published/cpu"],
    # the previous CPU set (original recipe) and its rerun with the strong recipe, per test kind
    "recipe_reruns": [("benchmarks/results/cpu-study-all-2026-11-27/study-kfold.json", "reports/published/cpu-e6-full"),
                      ("benchmarks/results/cpu-study-all-2026-11-27/study-balanced.json",
                       "reports/published/cpu-e6-full-balanced")],
    "recipes": "benchmarks/results/recipes-cpu-2026-11-29.json",
    "fresh_clones": "benchmarks/results/fresh-clone-cpu-*.json",
    "gpu_2026_11_27": ["benchmarks/results/h200-2026-11-27/study-baseline-uniform.json",
                       "benchmarks/results/h200-2026-11-27/study-later-slices.json"],
}

INTRO = """# Results: does SISA unlearning with likelihood-based placement change fairness?

Made by `.venv/bin/python -m sisa.results --out RESULTS.md` from the committed study reports (`reports/published/`) and
benchmark files (`benchmarks/results/`); a test checks that this file matches them. Every study below
is one command (`study.py`, shown with each); its report folder also holds the per-face predictions
of every run, so any other contrast can be computed without retraining.
"""


def _fmt(c: Contrast) -> str:
    return f"{chg(c.change)} points {interval(c.ci_low, c.ci_high, True)}, {c.verdict}"


def summary_section(report_dirs: list[Path]) -> str:
    """What the studies answer, sentence by sentence, every number taken from their report.json."""
    lines = ["## What the studies answer", ""]
    for d in report_dirs:
        data = json.loads(StudyLayout(d).report_json.read_text())
        s = data["settings"]
        if data.get("format") == 2:          # a study of replicates
            from .study.report import summary_lines
            lines += summary_lines(data)
            continue
        for test, t in data["tests"].items():
            where = (f"`{s['name']}`, {test} test ({t['faces']['tested']:,} test faces, {s['seeds']} training seed(s) per "
                     f"configuration)")
            lv = t["levels"]
            placed = family(t, "placement vs uniform")
            lines.append(f"- **{where}.**" + (
                f" Placement versus uniform SISA, the change of the gap between the other races and {placed[0].worst}: "
                + "; ".join(f"{config_title(run)} {_fmt(find(placed, run, 'gap (others - worst)'))}" for run in runs(placed))
                + "." if placed else " No placement was run."))
            control = family(t, "control vs uniform")
            if control:
                lines.append(f"  The positive control (every {s['control_race']} training face given a random age class): "
                             f"{_fmt(find(control, 'control', 'gap (others - worst)'))}; its {s['control_race']} accuracy "
                             f"{_fmt(find(control, 'control', 'worst race'))}.")
            base = find(family(t, "vs baseline"), "uniform", "worst race")
            lines.append(f"  Accuracy (random group): baseline {pct(level(lv['baseline'], 'top1', 'random')['value'])}%, "
                         f"uniform {pct(level(lv['uniform'], 'top1', 'random')['value'])}%; SISA costs the baseline's worst "
                         f"race {_fmt(base)} (uniform − baseline).")
            after = family(t, "after vs before unlearning")
            if after:
                verdicts = ", ".join(f"{c.run} {_fmt(c)}" for c in after if c.statistic == "gap (others - worst)")
                lines.append(f"  After the served requests ({s['sample']} per fold), the change of each run's gap: {verdicts}.")
            u = t["unlearning"]
            lines.append("  Expected speed-up of a request over retraining the 1x1 model, shared / independent request "
                         "model: " + "; ".join(f"{tag} {u[tag]['expected']['shared']['speedup_vs_baseline']:.2f}x / "
                                             f"{u[tag]['expected']['independent']['speedup_vs_baseline']:.2f}x"
                                             for tag in ("uniform", "few-shards", "later-slices") if tag in u) + ".")
    lines += ["", "Inconclusive is not *equal*: each verdict gives the change its test would have detected. The "
              "sections below have every table, interval and figure.", ""]
    return "\n".join(lines)


def recipes_section(path: Path) -> str:
    """The recipe benchmark: accuracy per compute of recipe x model x image size (1x1 baseline, k-fold)."""
    d = json.loads(path.read_text())
    p = d["protocol"]
    rows = []
    for q in d["points"]:
        s = q[f"tta_{q['tta_default']}"]
        lo, hi = s["top1_ci"]["random"]
        rows.append([q["recipe"], q["model"], f"{q['image_size']} px", f"{pct(s['top1']['random'])} {interval(lo, hi)}",
                     *(pct(s["top1"][r]) for r in ("white", "black", "asian", "indian", "other")),
                     pct(s["worst_race"]), q["tta_default"], f"{q['training_seconds'] / q['folds_trained']:.0f} s",
                     f"{q['images_per_s']:,.0f}"])
    return "\n".join([
        "## Recipes: accuracy per CPU-second", "",
        f"`.venv/bin/python benchmarks/recipes.py --ablations` on {d['device']} ({d['date']}): the 1x1 baseline of the study on "
        f"all faces, {p['folds']}-fold test (every face tested once), {p['epochs']} epochs, batch {p['batch_size']}, "
        f"random initial weights, seed {p['seed']}; {p['metric']}. 95% bootstrap interval for the random group "
        f"({p['n_boot']} resamples). Seconds are training time per fold on that machine (other work ran beside some "
        f"points: compare them roughly). Source: `{path.relative_to(PROJECT_ROOT).as_posix()}`.", "",
        table(["recipe", "model", "size", "random", "white", "black", "asian", "indian", "other", "worst race",
               "test-time aug.", "s per fold", "img/s"], rows), ""])


def rerun_section(pairs: list[tuple[Path, Path]]) -> str:
    """The previous CPU set (original recipe) against the same study with the strong recipe: the same
    folds, epochs, schedule, test protocol and configurations, per group and configuration, with the time."""
    parts = ["## The strong recipe against the previous CPU set", ""]
    for old_path, report_dir in pairs:
        old = json.loads(old_path.read_text())
        new = json.loads(StudyLayout(report_dir).report_json.read_text())
        test = old["test"]
        levels = new["tests"][test]["levels"]
        tags = [c["tag"] for c in old["configs"] if c["tag"] in levels]
        rows = []
        for g in ("random", "white", "black", "asian", "indian", "other"):
            cells = []
            for t in tags:
                before = next(c for c in old["configs"] if c["tag"] == t)["top1"][g]
                after = level(levels[t], "top1", g)["value"]
                cells.append(f"{pct(before)} → {pct(after)} ({100 * (after - before):+.1f})")
            rows.append([g, *cells])
        s, o = new["settings"], old["settings"]
        tested = new["tests"][test]["faces"]["tested"]
        flags = f" --test {test} --test_per_cell {s['test_per_cell']} --test_random {s['test_random']}" \
            if test == "balanced" else ""
        parts += [
            f"### {test} test", "",
            f"The {test} CPU set of 2026-11-27 (original recipe, `{o['model']}`, {o['image_size']} px, {o['epochs']} "
            f"epochs per stage with `--slice_epochs full`, {o['folds']} folds, all faces; "
            f"`{old_path.relative_to(PROJECT_ROOT).as_posix()}`) rerun with the same folds, epochs, schedule, "
            f"test protocol ({tested:,} test faces over the folds) and configurations, and the strong recipe (`{s['model']}`, "
            f"{s['seeds']} training seed(s)): `.venv/bin/python study.py --preset cpu --epochs {s['epochs']} --slice_epochs {s['slice_epochs']} "
            f"--no_control --sample {s['sample']}{flags} --name {s['name']}` (report: "
            f"`{StudyLayout(report_dir).report_md.relative_to(PROJECT_ROOT).as_posix()}`). Top-1 in %, before → after "
            "(change in points):", "",
            table(["group", *tags], rows), "",
            f"Time on the 2-core machine: {old['seconds_total'] / 60:.0f} min for the previous set (training, "
            f"evaluation, unlearning), {new['seconds_total'] / 60:.0f} min for the rerun (the same, plus the second "
            "evaluation after unlearning and the report).", ""]
    return "\n".join(parts)


def fresh_clone_section(paths: list[Path]) -> str:
    """The quick start timed from fresh clones (benchmarks/fresh_clone.py), newest first."""
    rows = []
    for p in sorted(paths, reverse=True):
        d = json.loads(p.read_text())
        b, c = d["baseline_random_top1"], d["control_gap_change"]
        pr = d.get("protocol")
        what = "–" if not pr else (
            f"{pr['epochs']} epochs, {pr['folds_run'] or pr['folds']} of {pr['folds']} folds, {pr['configurations']} "
            f"configurations" + "".join(f", {sc} at {', '.join(f'{100 * v:g}%' for v in pr['forget'])}" for sc in pr["scenarios"]))
        rows.append([d["date"], f"`{d['commit'][:7]}`", d["machine"]["device"], what, f"{d['study_wall_s'] / 60:.1f} min",
                     f"{pct(b['value'])} {interval(b['ci_low'], b['ci_high'])} "
                     + ("all faces" if b.get("statistic") == "accuracy_overall" else "random group, mean over classes"),
                     f"{chg(c['change'])} {interval(c['ci_low'], c['ci_high'], True)} {c['verdict']} "
                     + ("age-standardised gap" if c.get("statistic") == "gap_accuracy_standardised" else
                        "mean-over-classes gap") if c else "–",
                     f"`{p.relative_to(PROJECT_ROOT).as_posix()}`"])
    return "\n".join([
        "## The quick start, timed from fresh clones", "",
        "`./setup.sh && .venv/bin/python study.py` in a new clone (`.venv/bin/python benchmarks/fresh_clone.py`): the wall "
        "time of `study.py` (its preset chosen by `auto`; `setup.sh` not included), the report's baseline accuracy "
        "(%, on all faces or, in studies before replicates, the original's mean over age classes of the random group) "
        "and the positive control's change of the gap (points; the age-standardised gap, or before replicates the "
        "original's). Rows before 2026-12-04 ran the former preset (4 epochs, all three folds, no scenario).", "",
        table(["date", "commit", "machine", "what it ran (– : not recorded)", "study.py wall time", "baseline accuracy",
               "control: change of the gap", "source"], rows), ""])


def old_gpu_section(paths: list[Path]) -> str:
    """The partial GPU set of 2026-11-27 (old code, original recipe), from its study JSONs: accuracy
    and gap levels only; its runs kept no per-face predictions, so no contrast can be computed."""
    configs = [c for p in paths for c in json.loads(p.read_text())["configs"]]
    d0 = json.loads(paths[0].read_text())
    rows = []
    for g in ("white", "black", "asian", "indian", "other"):
        rows.append([g, *(f"{pct(c['fairness'][f'top1 {g}'])} {interval(*c['fairness_ci'][f'top1 {g}'])}" for c in configs)])
    for stat in ("gap (best - worst)", "worst race top1"):
        rows.append([stat, *(pct(c["fairness"][stat]) for c in configs)])
    rows.append(["training", *(f"{secs(c['seconds_training'])}, {c['training_images_per_s']:,.0f} img/s" for c in configs)])
    s = d0["settings"]
    return "\n".join([
        "## Earlier GPU set (2026-11-27, before this round's recipe and statistics)", "",
        f"{d0['device']}, the original recipe, ResNet-18 from random weights, {s['image_size']} px, {s['epochs']} epochs per "
        f"stage, {s['folds']} fold, the balanced test set of 378 faces (63 per race). Made by the previous "
        "`benchmarks/study.py`; its runs kept no per-face predictions, so the placement-versus-uniform contrasts and "
        "the seed-aware intervals of this round cannot be computed for it, and it had no positive control. Its "
        "intervals resample test faces only (the models held fixed); the gap and worst-race levels are shown without "
        "their percentile intervals, which are biased for order statistics. With 63 faces per race one face moves a "
        "race by 1.6 points: read it as accuracy levels, not as an answer. Sources: "
        + ", ".join(f"`{p.relative_to(PROJECT_ROOT).as_posix()}`" for p in paths) + ".", "",
        table(["group", *(c["tag"] for c in configs)], rows), ""])


def study_section(report_dir: Path, root: Path = PROJECT_ROOT) -> str:
    data = json.loads(StudyLayout(report_dir).report_json.read_text())
    s = data["settings"]
    if data.get("format") == 2:                  # a study of replicates
        from .study.report import render as render2
        from .study.settings import Settings, command_line
        prefix = f"{report_dir.relative_to(root).as_posix()}/"
        body = render2(data)
        for figs in data.get("figures", {}).values():
            for path in figs.values():
                body = body.replace(f"]({path})", f"]({prefix}{path})")
        body = "\n".join("#" + line if line.startswith("#") else line for line in body.splitlines()) + "\n"
        md = StudyLayout(report_dir).report_md.relative_to(root).as_posix()
        command = command_line(Settings.from_dict(s))
        return body.replace("\n", f"\n\n`{command}` writes `reports/{s['name']}/` (the committed report: `{md}`)\n", 1)
    command = [".venv/bin/python study.py", f"--preset {s['preset']}", f"--name {s['name']}"]
    if s["seeds"] > 1:
        command.append(f"--seeds {s['seeds']}")
    if list(s["tests"]) != ["kfold"]:
        command.append(f"--test {'both' if len(s['tests']) > 1 else s['tests'][0]}")
    body = render(data, figure_prefix=f"{report_dir.relative_to(PROJECT_ROOT).as_posix()}/", heading=2)
    md = StudyLayout(report_dir).report_md.relative_to(PROJECT_ROOT).as_posix()
    return body.replace("\n", f"\n\n`{' '.join(command)}` writes `reports/{s['name']}/` (the committed report: `{md}`)\n", 1)


def build(root: Path = PROJECT_ROOT, sources: dict = RESULTS_SOURCES) -> str:
    parts = [INTRO]
    present = [root / d for d in [*sources["reports"], *(new for _, new in sources["recipe_reruns"])]
               if StudyLayout(root / d).report_json.exists()]
    if present:
        parts.append(summary_section(present))
    for d in sources["reports"]:
        if StudyLayout(root / d).report_json.exists():
            parts.append(study_section(root / d, root))
    reruns = [(root / old, root / new) for old, new in sources["recipe_reruns"]
              if StudyLayout(root / new).report_json.exists()]
    if reruns:
        parts.append(rerun_section(reruns))
    clones = sorted(root.glob(sources["fresh_clones"]))
    if clones:
        parts.append(fresh_clone_section(clones))
    if (root / sources["recipes"]).exists():
        parts.append(recipes_section(root / sources["recipes"]))
    parts.append(old_gpu_section([root / p for p in sources["gpu_2026_11_27"]]))
    return "\n".join(parts).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help="write here (default: print)")
    p.add_argument("--check", action="store_true", help="exit 1 unless RESULTS.md is what its sources make")
    a = p.parse_args(argv)
    text = build()
    if a.check:
        current = (PROJECT_ROOT / "RESULTS.md").read_text()
        if current != text:
            print("RESULTS.md differs from what its sources make: run .venv/bin/python -m sisa.results --out RESULTS.md",
                  file=sys.stderr)
            return 1
        print("RESULTS.md matches its sources")
        return 0
    if a.out:
        a.out.write_text(text)
        print(f"wrote {a.out}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
