"""Simulated A/A contrasts, to check the interval method (tests/test_intervals.py and
benchmarks/interval_coverage.py): two arms of one configuration in each replicate, so the truth is no
change, scored with the study's own primary statistic on resampled faces like a study's."""
from __future__ import annotations

import numpy as np

from .intervals import Change, welch_df
from .measures import accuracy_standardised, cell_counts, gap, pooled_age_shares


def aa_changes(gen: np.random.Generator, replicates: int = 4, faces: int = 500, n_boot: int = 100,
               design: str = "same", systematic: float = 0.0) -> np.ndarray:
    """(replicates, n_boot + 1) changes of the age-standardised gap (arm A - arm B), as intervals.change
    takes them. Faces have a difficulty by race and age; a replicate's training shifts each arm's races a
    little; every face is answered anew by each model. design "same": every replicate tests the same
    faces (the k-fold test); "third": each tests a random third of three times as many (one fold of a
    fresh fold assignment). `systematic`: the sd of each face's own difference between the arms, the
    same in every replicate and 0 on average over faces."""
    if design not in ("same", "third"):
        raise ValueError(f"design {design!r} is not one of same, third")
    pool = faces if design == "same" else 3 * faces
    race = gen.integers(0, 5, pool)
    age = gen.integers(0, 7, pool)
    base = 0.35 + 0.06 * age / 6 + 0.05 * (race == 0) + gen.normal(0, 0.1, pool)
    own = gen.normal(0, systematic, pool)
    w = np.vstack([np.ones(pool), gen.multinomial(pool, np.full(pool, 1 / pool), size=n_boot)])
    d = np.empty((replicates, n_boot + 1))
    for r in range(replicates):
        at = np.arange(pool) if design == "same" else gen.choice(pool, faces, replace=False)
        arms = []
        for sign in (0.5, -0.5):
            shift = gen.normal(0, 0.02, 5)[race[at]]
            right = gen.random(faces) < np.clip(base[at] + sign * own[at] + shift, 0, 1)
            pred = np.where(right, age[at], (age[at] + 1) % 7)
            k, n = cell_counts(race[at], age[at], pred == age[at], w[:, at])
            arms.append(gap(accuracy_standardised(k, n, pooled_age_shares(n)), "black"))
        d[r] = arms[0] - arms[1]
    return d


def counted_twice(d: np.ndarray) -> Change:
    """The standard error this project used until 2026-12-04, s^2 / R plus the whole spread of the mean
    over face resamples, which counts each replicate's own faces' error twice: kept to be measured
    against (benchmarks/interval_coverage.py)."""
    d = np.asarray(d, dtype=float)
    R = d.shape[0]
    est = d[:, 0]
    mean_b = d[:, 1:].mean(axis=0)
    v_faces = float(mean_b.var(ddof=1))
    v_reps = float(est.var(ddof=1)) / R if R > 1 else 0.0
    return Change(float(est.mean()), float(np.sqrt(v_reps + v_faces)), welch_df(v_reps, v_faces, R), R,
                  float(np.sqrt(v_reps)), float(np.sqrt(v_faces)))
