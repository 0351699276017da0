"""Metrics and fairness statistics against hand-worked toy predictions, and evaluate.py --compare."""
import json

import numpy as np
import pandas as pd
import pytest

from helpers import call_script
from sisa import stats
from sisa.data import RACES
from sisa.fairness import (compare_runs, fairness_table, group_replicates, metricframe_by_fold, original_summaries,
                           tidy_metrics)
from sisa.layout import SummaryLayout


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


def test_level_stats_by_hand():
    s = stats.level_stats(np.array([[0.9, 1.0, 0.75, 0.5, 0.25, 0.2]])).iloc[0]     # random, then the races
    assert s["worst race top1"] == 0.2 and s["best race top1"] == 1.0 and s["top1 random"] == 0.9
    assert s["gap (best - worst)"] == pytest.approx(0.8) and s["ratio (worst / best)"] == pytest.approx(0.2)
    assert s["decrease black vs best"] == pytest.approx(0.25) and s["decrease white vs best"] == 0


def test_metricframe_and_bootstrap_agree_and_intervals_cover_the_estimate():
    pred = pd.concat([toy(0), toy(1, shift=1)])
    mf = metricframe_by_fold(pred)
    assert mf["top1 black"].tolist() == pytest.approx([0.75, 0.75]) and mf["gap"].tolist() == pytest.approx([1.0, 1.0])
    reps = group_replicates(pred, "balanced", 200)
    assert reps.shape == (201, 6) and reps[0] == pytest.approx([0.5, 1.0, 0.75, 0.5, 0.25, 0.0])   # random, races
    table = fairness_table(pred, "balanced", 200)
    assert "top1 random" not in table.index and len(table) == 14        # the statistics across races
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
    records = [stats.Contrast.from_dict(row) for row in changes.to_dict(orient="records")]
    assert {c.family for c in records} == {"versus the baseline", "versus the baseline, by group"}
    ch = changes.assign(statistic=[c.label for c in records]).set_index("statistic")
    # the baseline's best race is white (1.0) and its worst other (0.0): the gap between those two is unchanged
    assert ch.loc["top1 black", "change"] == pytest.approx(-0.75) and ch.loc["gap (white - other)", "change"] == 0
    assert ch.loc["worst race (other) top1", "change"] == 0 and bool(ch["paired"].all())
    assert ch.loc["gap (white - other)", "verdict"].startswith("inconclusive (detectable ±")
    assert ch.loc["top1 black", "verdict"] == "lower"


def _summaries(root, name, pred, forgotten=0):
    """The files evaluate.py --compare reads of an evaluated run, from a toy predictions table."""
    out = SummaryLayout(root, name)
    root.mkdir(parents=True, exist_ok=True)
    pred.to_csv(out.predictions, index=False)
    tidy_metrics(pred).to_csv(out.results_csv, index=False)
    out.info.write_text(json.dumps({"test_kind": "balanced", "unlearning_requests_served": forgotten}))


def test_compare_prints_points_and_says_which_contrast_has_no_verdict(tmp_path):
    """evaluate.py --compare: one unit on screen (points), and a model whose races all score the same
    gets no verdict for the gap between its 'best' and 'worst' race (both the same race)."""
    base = pd.concat([toy(0), toy(1, shift=1)])
    flat = base.assign(pred1=base["age_class"])                      # every face right: every race 100%
    worse = base.copy()
    black = worse["filename"].str.startswith("black")
    worse.loc[black, "pred1"] = (worse.loc[black, "age_class"] + 1) % 7
    sums = tmp_path / "s"
    _summaries(sums, "base", base)
    _summaries(sums, "worse", worse, forgotten=3)
    _summaries(sums, "flat", flat)
    proc = call_script("evaluate.py", "--compare", "base", "worse", "--summaries_dir", sums, "--n_boot", 100)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    lines = out.splitlines()
    assert next(l for l in lines if l.startswith("top1 black")).split() == ["top1", "black", "75.0", "0.0"]
    assert "faces forgotten: base 0, worse 3" in out
    row = next(l for l in lines if l.lstrip().startswith("worse") and "top1 black" in l)
    assert row.split() == ["worse", "top1", "black", "-75.0", "[-100.0,", "-50.0]", "lower", "paired"]
    gap = next(l for l in lines if "gap (white - other)" in l)          # the detectable change: points too
    assert gap.split()[5:] == ["+0.0", "[+0.0,", "+0.0]", "inconclusive", "(detectable", "±0.0)", "paired"]
    assert "0.75" not in out and "0.25" not in out                      # no fraction on screen
    changes = pd.read_csv(sums / "compare-base-vs-worse-changes.csv")          # files keep fractions
    assert changes.loc[changes["group"] == "black", "change"].iloc[0] == pytest.approx(-0.75)

    proc = call_script("evaluate.py", "--compare", "flat", "worse", "--summaries_dir", sums, "--n_boot", 100)
    assert proc.returncode == 0, proc.stderr
    gap = next(line for line in proc.stdout.splitlines() if "gap (white - white)" in line)
    assert "no verdict: flat's best and worst race are the same (white), so this gap is 0 by construction" in gap
    assert "inconclusive" not in gap


def test_compare_suggests_a_command_that_makes_the_missing_summaries(tmp_path):
    """A summary named after unlearning is the run's name plus -unlearned<N>: the command to make it
    evaluates the run, and writes where --compare looks (its --summaries_dir, --checkpoints_dir)."""
    sums, ck = tmp_path / "s", tmp_path / "ck"
    _summaries(sums, "base", pd.concat([toy(0), toy(1, shift=1)]))
    (ck / "my-run").mkdir(parents=True)
    (ck / "my-run" / "config.json").write_text("{}")
    proc = call_script("evaluate.py", "--compare", "base", "my-run-unlearned5", "--summaries_dir", sums,
                       "--checkpoints_dir", ck)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert f".venv/bin/python evaluate.py --run_dir my-run --checkpoints_dir {ck} --summaries_dir {sums} (it names them " \
           "my-run-unlearned5 once the run has forgotten 5 faces)" in line
    assert "--run_dir my-run-unlearned5" not in line and "either" not in line
    proc = call_script("evaluate.py", "--compare", "base", "nope", "--summaries_dir", sums, "--checkpoints_dir", ck)
    line = proc.stderr.strip()
    assert f"evaluate.py --run_dir nope --checkpoints_dir {ck} --summaries_dir {sums}; no run nope in {ck} either: " \
           "give the run they come from, and --name nope" in line
