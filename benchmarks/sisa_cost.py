"""SISA's own cost at the cpu preset: uniform 5x3 minus the 1x1 baseline, by training budget.

    .venv/bin/python benchmarks/sisa_cost.py --points 4:128 8:128 4:32 --out benchmarks/results/sisa-cost-cpu-DATE.json

Each point EPOCHS:BATCH is one study (`study.py --preset cpu --configs baseline uniform --no_aa
--no_control --sample 0 --epochs EPOCHS --batch_size BATCH`, all faces, the cpu preset's 3-fold k-fold
test, its SISA schedule), run in benchmarks/runs/sisa-cost/ (ignored by git; a killed benchmark resumes
where it stopped, finished studies are only read). The JSON holds, per point, the study's own numbers:
accuracy of both runs over all faces, SISA's cost (uniform - baseline) with its 95% interval, the same
for the primary gap and the per-race accuracies, each run's training and evaluation seconds, and the
machine. The cpu preset's epochs are chosen from it (docs/study.md): SISA's cost at most 5 points.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sisa.layout import StudyLayout  # noqa: E402
from sisa.store import write_json  # noqa: E402

WORK = ROOT / "benchmarks" / "runs" / "sisa-cost"


def point(text: str) -> tuple[int, int]:
    try:
        epochs, batch = map(int, text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not EPOCHS:BATCH (for example 8:128)")
    return epochs, batch


def study(epochs: int, batch: int, seed: int, limit: int | None, work: Path = WORK, extra: tuple = ()) -> tuple[dict, float]:
    """Run (or finish) the point's study in `work`; its report and the wall seconds this call took."""
    name = f"sisa-cost-e{epochs}-b{batch}" + (f"-n{limit}" if limit else "")
    cmd = [sys.executable, str(ROOT / "study.py"), "--preset", "cpu", "--configs", "baseline", "uniform", "--no_aa",
           "--no_control", "--sample", "0", "--scenarios", "none", "--folds_run", "all", "--epochs", str(epochs), "--batch_size", str(batch), "--seed", str(seed),
           "--name", name, "--reports_dir", str(work / "reports"), "--checkpoints_dir", str(work / "checkpoints"),
           "--summaries_dir", str(work / "summaries"), "--no_progress", *map(str, extra)] + \
        (["--limit", str(limit)] if limit else [])
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"sisa_cost: the study of point {epochs}:{batch} failed ({proc.returncode}); rerun to resume it")
    return json.loads(StudyLayout(work / "reports" / name).report_json.read_text()), time.perf_counter() - start


def summarise(report: dict) -> dict:
    t = report["tests"]["kfold"]
    level = {(r["statistic"], r["group"]): r for r in t["levels"]["baseline before"]}
    uni = {(r["statistic"], r["group"]): r for r in t["levels"]["uniform before"]}
    vs = [c for fam in ("vs baseline", "vs baseline, secondary") for c in t["comparisons"].get(fam, [])
          if c["run"] == "uniform"]

    def pts(r: dict) -> dict:
        return {k: round(100 * r[k], 2) for k in ("value", "ci_low", "ci_high")}
    return {
        "baseline": {"accuracy": pts(level[("accuracy_overall", None)])},
        "uniform": {"accuracy": pts(uni[("accuracy_overall", None)])},
        "accuracy_by_race": {r: {"baseline": pts(level[("accuracy", r)]), "uniform": pts(uni[("accuracy", r)])}
                             for (s, r) in level if s == "accuracy"},
        "sisa_cost": {c["statistic"] + (f" ({c['group']})" if c["group"] else ""):
                      {**{k: None if c[k] is None else round(100 * c[k], 2) for k in ("change", "ci_low", "ci_high")},
                       "outcome": c["outcome"]} for c in vs},
        "degenerate": t["degenerate"],
        "seconds": report["timings"],                 # each run's phases, every attempt included
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=point, nargs="+", default=[(4, 128), (8, 128)], help="EPOCHS:BATCH of each study")
    p.add_argument("--seed", type=int, default=0, help="the studies' seed")
    p.add_argument("--limit", type=int, default=None, help="a stratified subsample (a quick look, not the measurement)")
    p.add_argument("--out", type=Path, required=True, help="the JSON to write (points already in it are kept)")
    p.add_argument("--work", type=Path, default=WORK, help=f"where the studies live (default {WORK})")
    p.add_argument("--study_args", nargs=argparse.REMAINDER, default=[],
                   help="further study.py flags for every point (for example --data_dir DIR --folds 2), last")
    a = p.parse_args(argv)
    old = json.loads(a.out.read_text()) if a.out.exists() else {}
    rows = {r["point"]: r for r in old.get("points", [])}
    for epochs, batch in a.points:
        report, wall = study(epochs, batch, a.seed, a.limit, a.work, tuple(a.study_args))
        rows[f"{epochs}:{batch}"] = {"point": f"{epochs}:{batch}", "epochs": epochs, "batch_size": batch,
                                     "wall_seconds_this_call": round(wall, 1), "settings": report["settings"],
                                     **summarise(report)}
        out = {"what": "SISA's own cost at the cpu preset (uniform 5x3 minus the 1x1 baseline, all faces, 3-fold "
                       "k-fold test, one replicate: intervals hold the faces' error only)",
               "command": "benchmarks/sisa_cost.py " + " ".join(sys.argv[1:]),
               "date": dt.date.today().isoformat(), "machine": report["machine"], "points": sorted(rows.values(), key=lambda r: (r["batch_size"], r["epochs"]))}
        write_json(a.out, out)
        c = rows[f"{epochs}:{batch}"]["sisa_cost"].get("accuracy_overall", {})
        print(f"{epochs}:{batch}: baseline {rows[f'{epochs}:{batch}']['baseline']['accuracy']['value']}, "
              f"uniform {rows[f'{epochs}:{batch}']['uniform']['accuracy']['value']}, cost {c.get('change')} "
              f"[{c.get('ci_low')}, {c.get('ci_high')}] -> {a.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
