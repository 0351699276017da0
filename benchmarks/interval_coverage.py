"""The interval method on simulated A/A contrasts, measured against the formula it replaced, in one run.

    .venv/bin/python benchmarks/interval_coverage.py                 # about 8 min on 2 cores (beside a study)
    .venv/bin/python benchmarks/interval_coverage.py --sims 50       # a quick look

For each design (every replicate tests the same faces, or each a random third of them), each size of a
face's own systematic difference between the arms, and each number of replicates: the estimates' actual
spread over simulations, the mean standard error of sisa.intervals.change and of the former formula
(sisa.simulation.counted_twice), their ratios to the spread, and how often each one's 95% interval covers
the truth (no change), with a 95% Wilson interval for that share. Everything flows from --seed.
Results: benchmarks/results/interval-coverage-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sisa.intervals import change  # noqa: E402
from sisa.simulation import aa_changes, counted_twice  # noqa: E402


def wilson(k: int, n: int, z: float = 1.959964) -> list[float]:
    p = k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sims", type=int, default=1000, help="simulated studies per cell (default 1000)")
    ap.add_argument("--replicates", type=int, nargs="+", default=[4, 10])
    ap.add_argument("--systematic", type=float, nargs="+", default=[0.0, 0.3])
    ap.add_argument("--faces", type=int, default=300, help="test faces per replicate (default 300)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"interval-coverage-{dt.date.today()}.json")
    args = ap.parse_args(argv)
    gen = np.random.default_rng(args.seed)
    cells = [(design, s, r) for design in ("same", "third") for s in args.systematic for r in args.replicates]
    rows = []
    for design, systematic, replicates in tqdm(cells, desc="cells", unit="cell"):
        ds = [aa_changes(gen, replicates=replicates, faces=args.faces, design=design, systematic=systematic)
              for _ in range(args.sims)]
        spread = float(np.std([d[:, 0].mean() for d in ds]))
        row = {"design": design, "systematic_sd": systematic, "replicates": replicates, "sims": args.sims,
               "estimate_spread": round(spread, 5)}
        for name, method in (("change", change), ("counted_twice", counted_twice)):
            cs = [method(d) for d in ds]
            covered = int(sum(c.interval()[0] <= 0 <= c.interval()[1] for c in cs))
            se = float(np.mean([c.se for c in cs]))
            row[name] = {"mean_se": round(se, 5), "se_over_spread": round(se / spread, 3),
                         "coverage_95": round(covered / args.sims, 4), "coverage_interval": wilson(covered, args.sims)}
        rows.append(row)
        print(f"{design:5} systematic {systematic:.1f}, {replicates:2} replicates: se / spread {row['change']['se_over_spread']:.2f} "
              f"(former {row['counted_twice']['se_over_spread']:.2f}), coverage {row['change']['coverage_95']:.3f} "
              f"(former {row['counted_twice']['coverage_95']:.3f})", flush=True)
    out = {"what": "standard errors and 95% coverage of sisa.intervals.change against the former formula (each "
                   "replicate's own faces' error counted twice) on simulated A/A contrasts of the age-standardised gap",
           "date": str(dt.date.today()), "seed": args.seed, "faces_per_replicate": args.faces, "n_boot": 100,
           "cells": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
