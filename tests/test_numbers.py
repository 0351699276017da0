"""A study's numbers over replicates (study/numbers.py) on synthetic predictions: shared face
resamples, paired comparisons, the degenerate guard, the A/A rate, the dose response, tidy counts."""
import numpy as np
import pandas as pd
import pytest

from sisa.data import RACES
from sisa.study.numbers import (PRIMARY, StudyFaces, aa_false_positives, compare, degenerate_run, dose_response,
                                levels, stack, tidy_counts)


def predictions(gen, faces=700, skill=0.6, black_skill=None, folds=2):
    """A k-fold test of `faces` faces: each answered right with probability `skill` (black faces:
    black_skill), else one class off."""
    race = np.arange(faces) % 5
    y = (np.arange(faces) // 5) % 7
    p = np.where(race == 1, skill if black_skill is None else black_skill, skill)
    right = gen.random(faces) < p
    return pd.DataFrame({"model": "ensemble", "fold": np.arange(faces) % folds, "filename": [f"f{i}" for i in range(faces)],
                         "race": race, "age_class": y, "pred1": np.where(right, y, (y + 1) % 7)})


def test_measures_share_resamples_and_compare_paired():
    gen = np.random.default_rng(0)
    runs = {(tag, r): predictions(gen, black_skill=0.6 - 0.3 * (tag == "control"))
            for tag in ("uniform", "uniform-b", "control") for r in range(3)}
    faces = StudyFaces(list(runs.values()), n_boot=200)
    values = {(tag, "before"): stack([faces.measures(runs[(tag, r)], "black") for r in range(3)])
              for tag in ("uniform", "uniform-b", "control")}
    assert values[("uniform", "before")][PRIMARY].shape == (3, 201)
    # a run compared with itself: no change on any resample, so the interval is a point
    same = compare("x", [("uniform", "before", "uniform", "before")], values, {}, (PRIMARY,), "black")[0]
    assert same.change == 0 and same.ci_low == same.ci_high == 0 and same.outcome == "inconclusive"
    cs = compare("control vs uniform", [("control", "before", "uniform", "before"),
                                        ("uniform-b", "before", "uniform", "before")], values, {}, (PRIMARY,), "black")
    control, aa = cs
    assert control.change == pytest.approx(0.3, abs=0.07) and control.outcome == "higher"   # black served worse
    assert control.ci_low_adjusted < control.ci_low and control.replicates == 3                 # Bonferroni over 2
    assert aa.outcome == "inconclusive" and aa.ci_low_adjusted <= 0 <= aa.ci_high_adjusted
    lv = {(r["statistic"], r["group"]): r for r in levels(values[("uniform", "before")])}
    assert lv[("accuracy", "white")]["value"] == pytest.approx(0.6, abs=0.05)
    assert lv[("accuracy_overall", None)]["ci_low"] < lv[("accuracy_overall", None)]["value"]


def test_a_degenerate_run_gets_no_verdict_and_does_not_count():
    gen = np.random.default_rng(1)
    good = predictions(gen)
    chance = good.assign(pred1=3)
    assert degenerate_run(good) is None and "one age class" in degenerate_run(chance)
    faces = StudyFaces([good], n_boot=50)
    values = {("uniform", "before"): stack([faces.measures(good, "black")]),
              ("few-shards", "before"): stack([faces.measures(chance, "black")]),
              ("later-slices", "before"): stack([faces.measures(good, "black")])}
    cs = compare("placement vs uniform", [("few-shards", "before", "uniform", "before"),
                                          ("later-slices", "before", "uniform", "before")],
                 values, {("few-shards", "before"): degenerate_run(chance)}, (PRIMARY,), "black")
    assert cs[0].outcome == "none" and cs[0].verdict.startswith("no verdict: few-shards is degenerate")
    lone = compare("x", [("later-slices", "before", "uniform", "before")], values, {}, (PRIMARY,), "black")[0]
    assert cs[1].detectable == pytest.approx(lone.detectable)           # a family of one testable contrast


def test_the_aa_rate_and_the_dose_response():
    gen = np.random.default_rng(2)
    doses = {"control-25": 0.25, "control": 1.0}
    runs = {}
    for r in range(4):
        runs[("uniform", r)] = predictions(gen)
        runs[("uniform-b", r)] = predictions(gen)
        runs[("control-25", r)] = predictions(gen, black_skill=0.58)
        runs[("control", r)] = predictions(gen, black_skill=0.3)
    faces = StudyFaces(list(runs.values()), n_boot=100)
    values = {(t, "before"): stack([faces.measures(runs[(t, r)], "black") for r in range(4)])
              for t in ("uniform", "uniform-b", "control-25", "control")}
    aa = aa_false_positives(values, {}, 4)
    assert aa["replicates"] == 4 and 0 <= aa["rate"] <= 1
    cs = compare("control vs uniform", [(t, "before", "uniform", "before") for t in doses], values, {}, (PRIMARY,), "black")
    dr = dose_response(cs, doses)
    assert [r["dose"] for r in dr["doses"]] == [0.25, 1.0] and dr["smallest_detected"] == 1.0


def test_tidy_counts_add_up():
    gen = np.random.default_rng(3)
    pred = predictions(gen)
    t = tidy_counts("s", "kfold", "uniform", "before", 0, pred)
    assert t["n"].sum() == len(pred) and t["correct"].sum() == (pred["pred1"] == pred["age_class"]).sum()
    assert set(t["race"]) == set(RACES) and t["accuracy_points"].between(0, 100).all()
