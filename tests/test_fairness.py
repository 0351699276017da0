"""Metrics and fairness statistics against hand-worked toy predictions."""
import numpy as np
import pandas as pd
import pytest

from sisa.data import RACES
from sisa.fairness import (compare_runs, fairness_stats, fairness_table, metricframe_by_fold, original_summaries,
                           race_replicates, tidy_metrics)


def toy(fold=0, shift=0):
    """Balanced toy test set: per race 2 faces of age class 0 and 2 of class 1, plus 2 random faces.
    White gets all 4 right; black 3 (one class-1 miss); asian 2 (both class-1 wrong); indian 1; other 0."""
    rows = []
    for r, race in enumerate(RACES):
        right = 4 - r
        for i, c in enumerate([0, 0, 1, 1]):
            ok = i < right
            rows.append(dict(fold=fold, model="ensemble", filename=f"{race}{i}_{fold}.jpg", race=r, age_class=c,
                             group=race, pred1=c if ok else (c + 1 + shift) % 7, pred2=c if not ok and i == 3 else (c + 2) % 7))
    rows += [dict(fold=fold, model="ensemble", filename=f"rand{i}_{fold}.jpg", race=0, age_class=2, group="random",
                  pred1=2 if i == 0 else 3, pred2=2) for i in range(2)]
    return pd.DataFrame(rows)


def test_group_top1_is_the_mean_of_age_class_accuracies():
    t = tidy_metrics(toy())
    v = t[(t["age_class"] == "all")].pivot(index="group", columns="metric", values="value")
    # white 4/4; black: class0 2/2, class1 1/2 -> 0.75; asian: 1.0 and 0.0 -> 0.5; indian: 0.5, 0 -> .25; other 0
    assert v.loc[list(RACES), "top1"].tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert v.loc["random", "top1"] == pytest.approx(0.5) and v.loc["random", "top2"] == pytest.approx(1.0)
    assert v.loc["all_races", "top1"] == pytest.approx(np.mean([7 / 10, 3 / 10]))   # pooled classes: see below
    assert v.loc["white", "faces"] == 4 and v.loc["all_races", "faces"] == 20
    # top-2: the last face of each race counts as found when missed at top-1
    assert v.loc["other", "top2"] == pytest.approx(np.mean([0 / 2, 1 / 2]))
    # macro-F1 of white: perfect
    assert v.loc["white", "macro_f1"] == pytest.approx(1.0)


def test_all_races_pools_the_five_race_groups():
    t = tidy_metrics(toy())
    cells = t[(t["group"] == "all_races") & (t["metric"] == "top1") & (t["age_class"] != "all")]
    # class 0 faces: white 2, black 2, asian 2, indian 1 of 2 (i=0 right), other 0 of 2 -> 7/10
    # class 1 faces: white 2, black 1, asian 0, indian 0, other 0 -> 3/10
    assert cells.set_index("age_class")["value"][["0-2", "3-9"]].tolist() == pytest.approx([0.7, 0.3])


def test_original_summaries_shapes_and_means_over_folds():
    pred = pd.concat([toy(0), toy(1, shift=1)])
    per_fold, (top1, top2), square = original_summaries(tidy_metrics(pred))
    assert len(per_fold) == 2 and set(per_fold[0]) == {*RACES, "random", "all_races"}
    assert isinstance(per_fold[0]["white"], tuple) and len(per_fold[0]["white"]) == 2
    assert list(top1.index) == [*RACES, "random", "all_races"] and isinstance(top1, pd.Series)
    assert top1["black"] == pytest.approx(0.75)
    assert square.shape == (6, 7) and square[0, 0] == 1.0 and np.isnan(square[0, 6])


def test_fairness_stats_by_hand():
    s = fairness_stats(np.array([[1.0, 0.75, 0.5, 0.25, 0.2]])).iloc[0]
    assert s["worst race top1"] == 0.2 and s["best race top1"] == 1.0
    assert s["gap (best - worst)"] == pytest.approx(0.8) and s["ratio (worst / best)"] == pytest.approx(0.2)
    assert s["decrease black vs best"] == pytest.approx(0.25) and s["decrease white vs best"] == 0


def test_metricframe_and_bootstrap_agree_and_intervals_cover_the_estimate():
    pred = pd.concat([toy(0), toy(1, shift=1)])
    mf = metricframe_by_fold(pred)
    assert mf["top1 black"].tolist() == pytest.approx([0.75, 0.75]) and mf["gap"].tolist() == pytest.approx([1.0, 1.0])
    reps = race_replicates(pred, "balanced", 200)
    assert reps.shape == (201, 5) and reps[0] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    table = fairness_table(pred, "balanced", 200)
    assert table.loc["gap (best - worst)", "value"] == pytest.approx(1.0)
    assert (table["ci_low"] <= table["value"] + 1e-12).all() and (table["value"] <= table["ci_high"] + 1e-12).all()
    assert table.loc["gap (best - worst)", "interval"] == "basic" and table.loc["top1 black", "interval"] == "percentile"
    # resampling within (race, age class) cells: a race whose cells are all right or all wrong cannot move
    assert table.loc["top1 white", "ci_low"] == table.loc["top1 white", "ci_high"] == 1.0
    assert table.loc["top1 black", "ci_low"] < 0.75 < table.loc["top1 black", "ci_high"]


def test_compare_versus_the_baseline_by_hand():
    base = pd.concat([toy(0), toy(1, shift=1)])
    worse = base.copy()
    black = worse["filename"].str.startswith("black")
    worse.loc[black, "pred1"] = (worse.loc[black, "age_class"] + 1) % 7          # black: every face wrong now
    side, changes = compare_runs({"base": base, "worse": worse}, {"base": "balanced", "worse": "balanced"}, "base", 200)
    assert side.loc["top1 black", "base"] == pytest.approx(0.75) and side.loc["top1 black", "worse"] == 0.0
    ch = changes.set_index("statistic")
    # the baseline's best race is white (1.0) and its worst other (0.0): the gap between those two is unchanged
    assert ch.loc["top1 black", "change"] == pytest.approx(-0.75) and ch.loc["gap (white - other)", "change"] == 0
    assert ch.loc["worst race (other) top1", "change"] == 0 and bool(ch["paired"].all())
    assert ch.loc["gap (white - other)", "verdict"].startswith("inconclusive (detectable ±")
    assert ch.loc["top1 black", "verdict"] == "lower"
