"""Intervals over replicates on shared faces: hand-checked parts, and their coverage on many
simulated A/A contrasts (two arms of one configuration: the truth is no change)."""
import numpy as np
import pytest

from sisa.intervals import change, verdict
from sisa.measures import accuracy_standardised, cell_counts, gap, pooled_age_shares


def test_the_parts_of_the_standard_error_by_hand():
    d = np.array([[0.01, 0.01, 0.01], [0.03, 0.03, 0.03]])          # no face noise: only the replicates' spread
    c = change(d)
    assert c.estimate == pytest.approx(0.02) and c.se_faces == 0
    assert c.se == pytest.approx(np.std([0.01, 0.03], ddof=1) / np.sqrt(2)) and c.df == pytest.approx(1)
    one = change(np.array([[0.02, 0.0, 0.04, 0.02]]))                 # one replicate: only the faces' part
    assert one.replicates == 1 and one.se_replicates == 0 and one.se == pytest.approx(0.02) and one.df == np.inf
    lo, hi = one.interval()
    assert lo == pytest.approx(0.02 - 1.959964 * 0.02, abs=1e-6) and hi == pytest.approx(0.02 + 1.959964 * 0.02, abs=1e-6)
    # a family of 5: the interval widens to the Bonferroni level, and agrees with the verdict
    word, p_adj, detect = verdict(one, 5)
    lo5, hi5 = one.interval(5)
    assert (lo5 > 0 or hi5 < 0) == (not word.startswith("inconclusive")) and hi5 - lo5 > hi - lo


def simulate_aa(gen, replicates=4, faces=500, n_boot=100):
    """Two arms of the same configuration in each replicate: per-face difficulty by race and age,
    a replicate's training shifts each arm's races a little, every face answered anew by each model."""
    race = gen.integers(0, 5, faces)
    age = gen.integers(0, 7, faces)
    base = 0.35 + 0.06 * age / 6 + 0.05 * (race == 0) + gen.normal(0, 0.1, faces)
    w = np.vstack([np.ones(faces), gen.multinomial(faces, np.full(faces, 1 / faces), size=n_boot)])
    d = np.empty((replicates, n_boot + 1))
    for r in range(replicates):
        arms = []
        for _ in range(2):
            shift = gen.normal(0, 0.02, 5)[race]
            right = gen.random(faces) < np.clip(base + shift, 0, 1)
            pred = np.where(right, age, (age + 1) % 7)
            k, n = cell_counts(race, age, pred == age, w)
            arms.append(gap(accuracy_standardised(k, n, pooled_age_shares(n)), "black"))
        d[r] = arms[0] - arms[1]
    return change(d)


def test_aa_contrasts_cover_no_change_as_often_as_they_claim():
    gen = np.random.default_rng(7)
    results = [simulate_aa(gen) for _ in range(200)]
    covered = np.mean([c.interval()[0] <= 0 <= c.interval()[1] for c in results])
    false_positive = np.mean([not verdict(c, 1)[0].startswith("inconclusive") for c in results])
    # 95% intervals: about 95% cover the truth (at least 92% over 200 simulations); the faces' part
    # makes them a little conservative here, where the arms share their faces' truth exactly
    assert 0.92 <= covered <= 0.995 and false_positive <= 0.08
