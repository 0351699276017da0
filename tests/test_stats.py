"""The study's statistics on hand-worked toy predictions: contrasts, verdicts, seeds, multiplicity,
and the records they travel as."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from sisa import partition, stats


def toy_faces(n_white=4, n_black=4, folds=1) -> pd.DataFrame:
    """k-fold-style test faces: every face in group 'random', all of age class 3 (21-27)."""
    rows = []
    for fold in range(folds):
        rows += [(fold, f"w{fold}-{i}", 0, 3, "random") for i in range(n_white)]
        rows += [(fold, f"b{fold}-{i}", 1, 3, "random") for i in range(n_black)]
    return pd.DataFrame(rows, columns=["fold", "filename", "race", "age_class", "group"]).sort_values(
        ["fold", "filename"]).reset_index(drop=True)


def hits_for(faces, white, black):
    """Hit vector in the faces' order from per-race lists (in file-name order)."""
    out = np.zeros(len(faces), bool)
    out[faces.index[faces["race"] == 0]] = white
    out[faces.index[faces["race"] == 1]] = black
    return out


def test_a_placement_versus_uniform_contrast_by_hand():
    faces = toy_faces()
    reps = stats.Replicates(faces, "kfold", n_boot=200)
    uniform = reps.group_acc(hits_for(faces, [1, 1, 1, 0], [1, 1, 0, 0]))      # white .75, black .50
    placed = reps.group_acc(hits_for(faces, [1, 1, 1, 1], [1, 0, 0, 0]))       # white 1.0, black .25
    assert uniform[0, :3].tolist() == [0.625, 0.75, 0.5] and placed[0, :3].tolist() == [0.625, 1.0, 0.25]
    best, worst = stats.reference_identities(uniform)
    assert (best, worst) == ("white", "black")
    cs = {c.label: c for c in stats.contrasts("placed", "uniform", placed, uniform, best, worst)}
    assert cs["top1 white"].change == pytest.approx(0.25) and cs["top1 black"].change == pytest.approx(-0.25)
    assert cs["worst race (black) top1"].change == pytest.approx(-0.25)
    assert cs["gap (white - black)"].change == pytest.approx(0.5)            # (1 - .25) - (.75 - .5)
    assert cs["gap (others - black)"].change == pytest.approx(0.5)           # white is the only other race here
    assert cs["top1 random"].change == 0 and cs["top1 random"].p == 1.0      # 5 of 8 both times, on every resample
    c = cs["gap (white - black)"]
    assert c.ci_low <= c.change <= c.ci_high and c.se > 0
    # the label is made from the record's fields, which say the same without a string to parse
    assert (c.statistic, c.group, c.best, c.worst, c.run, c.phase, c.reference) == \
        ("gap (best - worst)", None, "white", "black", "placed", "before", "uniform")
    w = cs["worst race (black) top1"]
    assert (w.statistic, w.group, w.worst) == ("worst race", "black", "black") and w.primary and not c.primary


def test_identical_runs_change_by_exactly_nothing_on_every_resample():
    faces = toy_faces(30, 30, folds=2)
    reps = stats.Replicates(faces, "kfold", n_boot=300)
    h = np.random.default_rng(0).random(len(faces)) < 0.6
    a = reps.group_acc(h)
    (gap,) = [c for c in stats.contrasts("a", "b", a, a, "white", "black") if c.statistic == "gap (others - worst)"]
    assert gap.change == 0 and gap.ci_low == gap.ci_high == 0 and gap.se == 0 and gap.p == 1.0
    (gap,) = stats.decide([gap])
    assert gap.outcome == "inconclusive" and gap.verdict == "inconclusive (detectable ±0.0)"


def test_holm_and_the_detectable_change_by_hand():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.detectable(0.01, 1) == pytest.approx((1.959964 + 0.841621) * 0.01, rel=1e-5)
    assert stats.detectable(0.01, 4) > stats.detectable(0.01, 1)           # a stricter level needs more
    assert stats.verdict(0.05, 0.01, 0.03, gap=True) == "widened"
    assert stats.verdict(-0.05, 0.01, 0.03, gap=True) == "narrowed"
    assert stats.verdict(-0.05, 0.01, 0.03, gap=False) == "lower"
    assert stats.verdict(0.01, 0.40, 0.028, gap=True) == "inconclusive (detectable ±2.8)"
    assert stats.outcome(0.01, 0.40, gap=True) == "inconclusive" and stats.outcome(0.05, 0.01, gap=False) == "higher"


def test_a_clear_change_and_an_inconclusive_one_in_one_family():
    faces = toy_faces(400, 400)
    reps = stats.Replicates(faces, "kfold", n_boot=500)
    g = np.random.default_rng(1)
    base = reps.group_acc(hits_for(faces, g.random(400) < 0.7, g.random(400) < 0.6))
    big = reps.group_acc(hits_for(faces, g.random(400) < 0.9, g.random(400) < 0.3))    # gap 0.1 -> about 0.6
    small = reps.group_acc(hits_for(faces, g.random(400) < 0.7, g.random(400) < 0.6))  # the same skill, new draws
    fam = []
    for name, acc in (("big", big), ("small", small)):
        fam += [c for c in stats.contrasts(name, "base", acc, base, "white", "black")
                if c.statistic == "gap (others - worst)"]
    big_c, small_c = stats.decide(fam)
    assert big_c.verdict == "widened" and big_c.p_adjusted < 0.05
    assert small_c.verdict.startswith("inconclusive (detectable ±") and small_c.p_adjusted >= 0.05
    # the detectable change is the one a test of this family would find with 80% power
    assert small_c.detectable == pytest.approx(stats.detectable(small_c.se, 2))
    assert 0.03 < small_c.detectable < 0.2


def test_the_gap_level_uses_a_basic_interval():
    faces = toy_faces(50, 50)
    reps = stats.Replicates(faces, "kfold", n_boot=400)
    acc = reps.group_acc(hits_for(faces, np.arange(50) < 35, np.arange(50) < 30))
    table = stats.level_table(stats.level_stats(acc))
    assert (table.loc["decrease black vs best", "statistic"], table.loc["decrease black vs best", "group"]) == \
        ("decrease vs best", "black")                                     # every level row says what it is
    assert table.loc["top1 white", "group"] == "white" and pd.isna(table.loc["gap (best - worst)", "group"])
    lev = stats.level_stats(acc)["gap (best - worst)"]
    lo, hi = lev[1:].quantile(0.025), lev[1:].quantile(0.975)
    assert table.loc["gap (best - worst)", "interval"] == "basic" and table.loc["top1 white", "interval"] == "percentile"
    assert table.loc["gap (best - worst)", "ci_high"] == pytest.approx(min(1, max(0, 2 * lev[0] - lo)))
    assert table.loc["gap (best - worst)", "ci_low"] == pytest.approx(min(1, max(0, 2 * lev[0] - hi)))


def test_runs_must_share_their_test_faces():
    faces = toy_faces()
    pred = faces.assign(model="ensemble", pred1=3, pred2=0)
    assert stats.hits(pred, faces).all()
    with pytest.raises(ValueError, match="share their test faces"):
        stats.hits(pred.iloc[1:], faces)


def test_the_primary_gap_is_the_mean_of_the_other_races_minus_the_worst():
    acc = np.array([[0.60, 0.70, 0.50, 0.60, 0.65, 0.55]])      # random, white, black, asian, indian, other
    cs = {(s, g): v[0] for s, g, v in stats.contrast_stats(acc, "white", "black")}
    assert cs["gap (others - worst)", None] == pytest.approx((0.70 + 0.60 + 0.65 + 0.55) / 4 - 0.50)
    assert cs["worst race", "black"] == 0.5 and cs["gap (best - worst)", None] == pytest.approx(0.2)
    assert cs["top1", "random"] == 0.6 and cs["top1", "other"] == 0.55
    assert [s for s, _ in cs if s in stats.PRIMARY] == ["gap (others - worst)", "worst race"]


def test_one_order_of_groups_everywhere():
    """GROUPS is defined once (partition) and is the column order of every accuracy array and table; the
    original's pickles keep their own file format order, named as such."""
    from sisa import fairness, report
    assert stats.GROUPS is partition.GROUPS is report.GROUPS is fairness.GROUPS
    assert partition.GROUPS == ("random", "white", "black", "asian", "indian", "other")
    assert fairness.ORIGINAL_GROUPS == ("white", "black", "asian", "indian", "other", "random")
    acc = np.array([[0.9, 0.7, 0.5, 0.6, 0.65, 0.55]])          # random's 0.9 is no race's
    assert stats.reference_identities(acc) == ("white", "black")
    lev = stats.level_stats(acc).iloc[0]
    assert lev["best race top1"] == 0.7 and lev["top1 random"] == 0.9 and lev["decrease other vs best"] == pytest.approx(0.15)


def test_the_gap_between_one_race_and_itself_gets_no_verdict():
    """Degenerate models (every race scores the same, as when one class is predicted for every face): the
    reference's best and worst race are one race, so that gap is 0 by construction. It gets no verdict
    and does not count in its family's Holm correction."""
    faces = toy_faces(20, 20)
    reps = stats.Replicates(faces, "kfold", n_boot=200)
    flat = reps.group_acc(np.ones(len(faces), bool))                # white 1.0, black 1.0: a tie
    other = reps.group_acc(hits_for(faces, np.arange(20) < 15, np.arange(20) < 10))
    best, worst = stats.reference_identities(flat)
    assert best == worst == "white"
    fams = stats.families("vs flat", stats.contrasts("other", "flat", other, flat, best, worst))
    by = {c.label: c for c in fams["vs flat, by group"]}
    degenerate = by["gap (white - white)"]
    assert degenerate.change == 0 and not degenerate.testable and degenerate.outcome == "none"
    assert degenerate.verdict == "no verdict: flat's best and worst race are the same (white), so this gap is 0 by construction"
    assert math.isnan(degenerate.p_adjusted) and degenerate.to_dict()["p_adjusted"] is None
    tested = [c for c in fams["vs flat, by group"] if c.testable]
    assert len(tested) == 3                                           # random, white, black: the gap is not counted
    assert by["top1 black"].detectable == pytest.approx(stats.detectable(by["top1 black"].se, 3))
    assert by["top1 black"].outcome == "lower" and by["top1 black"].family == "vs flat, by group"


def test_records_are_plain_json_and_read_back_in_both_formats():
    faces = toy_faces(30, 30)
    reps = stats.Replicates(faces, "kfold", n_boot=100)
    a = reps.group_acc(hits_for(faces, np.arange(30) < 25, np.arange(30) < 12))
    b = reps.group_acc(hits_for(faces, np.arange(30) < 20, np.arange(30) < 15))
    fams = stats.families("after vs before unlearning", stats.contrasts("uniform", "uniform", b, a, "white", "black",
                                                                        phase="after"))
    for cs in fams.values():
        for c in cs:
            d = json.loads(json.dumps(c.to_dict(), allow_nan=False))         # plain JSON: no NaN
            assert stats.Contrast.from_dict(d) == c
    # a contrast as reports wrote it before the records: run "<tag> after", the races inside the statistic
    old = {"run": "uniform after", "reference": "uniform", "statistic": "gap (white - black)", "change": -0.01,
           "ci_low": -0.03, "ci_high": 0.01, "se": 0.01, "p": 0.3, "family": "after vs before unlearning",
           "p_adjusted": 0.6, "detectable": 0.028, "verdict": "inconclusive (detectable ±2.8)"}
    c = stats.Contrast.from_dict(old)
    assert (c.run, c.phase, c.statistic, c.best, c.worst, c.outcome, c.verdict, c.label) == \
        ("uniform", "after", "gap (best - worst)", "white", "black", "inconclusive", old["verdict"], "gap (white - black)")
    for statistic, fields in (("gap (others - black)", ("gap (others - worst)", None, "black")),
                              ("worst race (black) top1", ("worst race", "black", "black")),
                              ("top1 random", ("top1", "random", None))):
        c = stats.Contrast.from_dict({**old, "run": "few-shards", "statistic": statistic, "p_adjusted": 0.01})
        assert (c.statistic, c.group, c.worst) == fields and c.label == statistic and c.phase == "before"
        assert c.outcome == ("narrowed" if c.statistic in stats.GAPS else "lower")
