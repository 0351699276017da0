"""Print the markdown tables of RESULTS.md from a study's outputs.

    python3 benchmarks/results_tables.py --study benchmarks/results/<study>.json [more.json] \
        --summaries_dir summaries

It reads the study JSON(s) written by benchmarks/study.py (fairness with intervals, unlearning costs,
composition) and the summaries evaluate.py wrote (per-face predictions, for the paired comparison
with the baseline), and prints: top-1 per group next to the poster's numbers, the amplification
answer per strategy, the unlearning cost per request, and the slice composition.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sisa.data import RACES  # noqa: E402
from sisa.evaluation import compare, composition_shares, load_summary  # noqa: E402
from sisa.experiment import Options, open_run  # noqa: E402
from sisa.layout import RunLayout  # noqa: E402

POSTER = {  # top-1 % on the poster (mean of 5 runs, ImageNet weights, 200 px)
    "random": {"baseline": 66.3, "uniform": 61.6, "few-shards": 61.9, "later-slices": 60.0},
    "white": {"baseline": 75.9, "uniform": 71.4, "few-shards": 71.1, "later-slices": 68.9},
    "black": {"baseline": 64.4, "uniform": 56.8, "few-shards": 59.7, "later-slices": 59.4},
    "asian": {"baseline": 64.4, "uniform": 62.5, "few-shards": 62.2, "later-slices": 61.6},
    "indian": {"baseline": 72.1, "uniform": 59.7, "few-shards": 61.3, "later-slices": 59.4},
    "other": {"baseline": 71.7, "uniform": 60.3, "few-shards": 59.4, "later-slices": 57.5},
}
POSTER_COMPOSITION = {"high unlearning likelihood": [42.9, 16.9, 15.1, 18.1, 7.0],
                      "low unlearning likelihood": [42.4, 19.8, 14.3, 16.3, 7.2]}
ORDER = ("baseline", "uniform", "few-shards", "later-slices")


def pct(x: float) -> str:
    return "–" if x is None or x != x else f"{100 * x:.1f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--study", type=Path, nargs="+", required=True, help="study JSON files")
    p.add_argument("--summaries_dir", type=Path, required=True, help="where evaluate.py wrote the runs' summaries")
    p.add_argument("--n_boot", type=int, default=1000)
    p.add_argument("--checkpoints_dir", type=Path, default=None,
                   help="run folders, for the slice composition when a study JSON lacks it (a --dry_run suffices)")
    a = p.parse_args(argv)
    configs = {}
    for f in a.study:
        d = json.loads(f.read_text())
        for c in d["configs"]:
            configs[c["tag"]] = c
            if "top1" not in c:      # older study files: read the fold-mean top-1 from the summaries
                c["top1"] = load_summary(a.summaries_dir, c["summary"])[2].to_dict()
            if "composition" not in c and a.checkpoints_dir and (a.checkpoints_dir / c["run"] / "config.json").exists():
                exp = open_run(RunLayout((a.checkpoints_dir / c["run"]).resolve()), Options(), with_images=False)
                c["composition"] = composition_shares(exp.partitions).to_dict(orient="index")
    tags = [t for t in ORDER if t in configs]
    print("| group | " + " | ".join(f"{t} (poster)" for t in tags) + " |")
    print("|---|" + "---|" * len(tags))
    for g in ("random", *RACES):
        cells = []
        for t in tags:
            c = configs[t]
            ci = c["fairness_ci"].get(f"top1 {g}")
            cell = pct(c["top1"][g]) if "top1" in c else pct(c["fairness"].get(f"top1 {g}"))
            if ci:
                cell += f" [{pct(ci[0])}, {pct(ci[1])}]"
            cells.append(f"{cell} ({POSTER[g][t]})")
        print(f"| {g} | " + " | ".join(cells) + " |")
    for stat in ("gap (best - worst)", "worst race top1"):
        row = [f"{pct(configs[t]['fairness'][stat])} [{pct(configs[t]['fairness_ci'][stat][0])}, "
               f"{pct(configs[t]['fairness_ci'][stat][1])}]" for t in tags]
        print(f"| {stat} | " + " | ".join(row) + " |")
    print()
    if "baseline" in configs and len(tags) > 1:
        names = [configs[t]["summary"] for t in tags]
        _, changes, _ = compare(names, a.summaries_dir, a.n_boot)
        print("| strategy vs baseline | change of the gap (points) [95% CI] | worst race change | verdict |")
        print("|---|---|---|---|")
        for t in tags[1:]:
            ch = changes[changes["run"] == configs[t]["summary"]].set_index("statistic")
            gap, worst = ch.loc["gap (best - worst)"], ch.loc["worst race top1"]
            print(f"| {t} | {100 * gap['change']:+.1f} [{100 * gap['ci_low']:+.1f}, {100 * gap['ci_high']:+.1f}] | "
                  f"{100 * worst['change']:+.1f} [{100 * worst['ci_low']:+.1f}, {100 * worst['ci_high']:+.1f}] | "
                  f"{gap['verdict']}{' (paired)' if gap['paired'] else ''} |")
        print()
    print("| strategy | expected retraining per request (% of all shards) | expected speed-up vs all shards / vs 1x1 | "
          "served requests | measured % of all shards | measured wall s per request |")
    print("|---|---|---|---|---|---|")
    for t in tags:
        c = configs[t]
        e = c["expected_unlearning"]
        share = sum(x["expected_share_of_full"] for x in e) / len(e)
        full = sum(x["speedup_vs_full"] for x in e) / len(e)
        base = sum(x["speedup_vs_baseline"] for x in e) / len(e)
        reqs = c.get("unlearning_requests", [])
        meas = sum(r["share_of_full"] for r in reqs) / len(reqs) if reqs else float("nan")
        wall = sum(r["wall_seconds"] for r in reqs) / len(reqs) if reqs else float("nan")
        print(f"| {t} | {100 * share:.1f} | {full:.2f}x / {base:.2f}x | {len(reqs)} | {pct(meas)} | "
              f"{'–' if wall != wall else f'{wall:.1f}'} |")
    print()
    batched = [t for t in tags if configs[t].get("expected_unlearning_batches")]
    if batched:
        sizes = sorted(configs[batched[0]]["expected_unlearning_batches"], key=int)
        print("| strategy | " + " | ".join(f"batches of {k}: shards retrained, batch cost (% of all shards)"
                                            for k in sizes) + " |")
        print("|---|" + "---|" * len(sizes))
        for t in batched:
            cells = []
            for k in sizes:
                e = configs[t]["expected_unlearning_batches"][k]
                cells.append(f"{sum(x['shards_retrained'] for x in e) / len(e):.2f}, "
                             f"{pct(sum(x['batch_share_of_full'] for x in e) / len(e))}")
            print(f"| {t} | " + " | ".join(cells) + " |")
        print()
    comp = next((configs[t]["composition"] for t in ("later-slices", *tags) if "composition" in configs.get(t, {})),
                None)
    if comp:
        print("Race shares (%) of the high- and low-likelihood training faces (the poster's in brackets):\n")
        print("| training faces | " + " | ".join(RACES) + " | share of faces |")
        print("|---|" + "---|" * (len(RACES) + 1))
        for label, row in comp.items():
            poster = POSTER_COMPOSITION[label]
            print(f"| {label} | " + " | ".join(f"{pct(row[r])} ({poster[i]})" for i, r in enumerate(RACES))
                  + f" | {pct(row['share'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
