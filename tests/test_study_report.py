"""A study of replicates from synthetic predictions to report.md, without training: analysis.py's
format 2 (study/numbers.py), the rendering (study/report.py) and RESULTS.md's sentences."""
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from sisa import analysis, results
from sisa.data import RACES
from sisa.layout import StudyLayout
from sisa.study import resolve_settings
from sisa.study import report as study_report

# chance of a right answer per race (white, black, asian, indian, other)
SKILL = {"baseline": (0.8, 0.7, 0.75, 0.75, 0.7), "uniform": (0.7, 0.6, 0.65, 0.65, 0.6),
         "uniform-b": (0.7, 0.6, 0.65, 0.65, 0.6), "later-slices": (0.71, 0.6, 0.65, 0.64, 0.6),
         "control-50": (0.7, 0.45, 0.65, 0.65, 0.6), "control": (0.7, 0.2, 0.65, 0.65, 0.6)}


def predictions(replicate: int, skill, seed: int, faces: int = 600) -> pd.DataFrame:
    """A k-fold test of the same faces in every replicate, folds drawn per replicate."""
    g = np.random.default_rng(seed)
    race, y = np.arange(faces) % 5, (np.arange(faces) // 5) % 7
    right = g.random(faces) < np.asarray(skill)[race]
    fold = np.random.default_rng(replicate).integers(0, 2, faces)
    return pd.DataFrame({"model": "ensemble", "fold": fold, "filename": [f"f{i}.jpg" for i in range(faces)],
                         "race": race, "age_class": y, "pred1": np.where(right, y, (y + 1) % 7), "pred2": (y + 2) % 7})


def partitions(shift: float) -> list[pd.DataFrame]:
    g = np.random.default_rng(0)
    n = 400
    return [pd.DataFrame({"role": "train", "shard": g.integers(0, 3, n), "race": g.integers(0, 5, n),
                          "high_likelihood": g.random(n) < 0.25 + shift})]


def data(monkeypatch, skill=SKILL, replicates=3) -> dict:
    s = resolve_settings("cpu", {"replicates": replicates, "control_doses": (0.5, 1.0),
                                 "configs": ["baseline", "uniform", "later-slices"], "n_boot": 80,
                                 "scenarios": ["none"]}, "toy")
    sets = {}
    for k, tag in enumerate(s.all_configs):
        names = [s.run_name("kfold", tag, r) for r in range(replicates)]
        sisa = tag != "baseline"
        sets[tag] = SimpleNamespace(
            names=names, before=[predictions(r, skill[tag], 10 * k + r) for r in range(replicates)],
            after=[predictions(r, skill[tag], 100 + 10 * k + r) for r in range(replicates)] if sisa else None,
            after_names=[f"{n}-unlearned2" for n in names] if sisa else None, sisa=sisa, summaries_dir=None,
            cfg=SimpleNamespace(folds=2), exps=[SimpleNamespace(partitions=partitions(0.0))])
    cost = {"speedup_vs_baseline": 2.5, "expected_share_of_full": 0.3}
    monkeypatch.setattr(analysis, "aggregations", lambda rs, d: {"sum_logits": {g: 0.6 for g in ("random", *RACES)}})
    monkeypatch.setattr(analysis, "unlearning", lambda rs: {
        "slice_epochs": "sisa", "expected": {"shared": cost, "independent": cost}, "expected_sisa_schedule": {"shared": cost},
        "batches": {"shared": {}}, "served": {"requests": 0}})
    monkeypatch.setattr(analysis, "composition_shares", lambda parts: pd.DataFrame(
        {label: {**{r: 0.2 for r in RACES}, "share": 0.25} for label in analysis.POSTER_COMPOSITION}).T)
    t = analysis.analyse_replicates("kfold", sets, s)
    versions = {"python": "3", "torch": "2", "torchvision": "0", "numpy": "2", "pandas": "3", "git_commit": "abc"}
    return json.loads(json.dumps({
        "format": 2, "study": "toy", "settings": s.to_dict(), "tests": {"kfold": t}, "seconds_total": 60.0,
        "machine": {"device": "cpu", "cpus": 2, "torch_threads": 2, "platform": "x", "versions": versions},
        "timings": {}, "poster": {"top1": analysis.POSTER, "composition": analysis.POSTER_COMPOSITION},
        "figures": {"kfold": {}}}, allow_nan=False))                     # report.json is plain JSON


def test_the_report_of_replicates_says_what_it_found_and_what_it_can_detect(monkeypatch):
    d = data(monkeypatch)
    t = d["tests"]["kfold"]
    md = study_report.render(d)
    assert md.index("## The answer") < md.index("## Every comparison")             # plain words first
    plain = md.split("- **In plain words**: ", 1)[1].split("\n", 1)[0]
    later = next(c for c in t["comparisons"]["placement vs uniform"] if c["run"] == "later-slices")
    if later["outcome"] == "inconclusive":
        assert plain.startswith("Placing faces by their likelihood of being unlearned did not change the gap against "
                                "black measurably") and f"±{100 * later['detectable']:.1f}" in plain
    else:
        assert plain.startswith("Placing by likelihood (later slices)")
    assert "it detected the positive control from" in plain and "its A/A check" in plain
    control = next(c for c in t["comparisons"]["control vs uniform"] if c["run"] == "control")
    assert control["outcome"] == "higher" and control["replicates"] == 3           # black served much worse
    assert t["dose_response"]["smallest_detected"] in (0.5, 1.0)
    assert f"{100 * control['change']:+.1f} [{100 * control['ci_low_adjusted']:+.1f}" in md
    assert "## The A/A calibration" in md and f"in {t['aa']['false_positives']} of 3 replicate(s)" in md
    assert "## The positive control, dose by dose" in md and "| 50% |" in md
    assert "## What the placements change" in md and "nearly race-blind" in md
    assert "nan" not in md and "None" not in md and "## Degenerate runs" not in md
    assert md == study_report.render(json.loads(json.dumps(d)))                   # from the JSON alone


def test_a_degenerate_configuration_gets_no_verdict_anywhere(monkeypatch):
    skill = {**SKILL, "later-slices": (0.0, 0.0, 0.0, 0.0, 0.0)}                   # always one class off
    d = data(monkeypatch, skill)
    t = d["tests"]["kfold"]
    assert any(x["config"] == "later-slices" for x in t["degenerate"])
    for family, cs in t["comparisons"].items():
        for c in cs:
            if "later-slices" in (c["run"], c["reference"]):
                assert c["outcome"] == "none" and c["verdict"].startswith("no verdict"), (family, c)
    md = study_report.render(d)
    assert "## Degenerate runs (no verdict)" in md and "later slices no verdict" in md


def test_a_control_that_cannot_be_judged_is_not_called_undetected(monkeypatch):
    zero = (0.0, 0.0, 0.0, 0.0, 0.0)
    d = data(monkeypatch, {**SKILL, "control": zero, "control-50": zero})
    md = study_report.render(d)
    assert "nothing can be said: no control dose could be judged" in md and "detected none" not in md
    assert f"the smallest control dose it detected is {100 * data(monkeypatch)['tests']['kfold']['dose_response']['smallest_detected']:g}%" \
        in study_report.render(data(monkeypatch))


def test_results_md_reads_a_study_of_replicates(monkeypatch, tmp_path):
    d = data(monkeypatch, replicates=2)
    layout = StudyLayout(tmp_path / "toy")
    layout.root.mkdir()
    layout.report_json.write_text(json.dumps(d))
    summary = results.summary_section([layout.root])
    assert "`toy`, kfold test (600 test faces, 2 replicate(s), gaps against black)" in summary
    assert "Positive control by dose: 50%" in summary and "A/A (two uniform placements)" in summary
    d["figures"] = {"kfold": {"accuracy": "kfold-accuracy.png"}}
    layout.report_json.write_text(json.dumps(d))
    section = results.study_section(layout.root, tmp_path)
    assert section.startswith("## Study `toy`") and "\n### The answer" in section
    assert "`.venv/bin/python study.py --preset cpu --name toy --replicates 2" in section
    assert "](toy/kfold-accuracy.png)" in section and "(the committed report: `toy/report.md`)" in section


@pytest.mark.parametrize("replicates", [1, 2])
def test_one_replicate_has_only_the_faces_error(monkeypatch, replicates):
    t = data(monkeypatch, replicates=replicates)["tests"]["kfold"]
    c = t["comparisons"]["placement vs uniform"][0]
    assert (c["se_replicates"] == 0) == (replicates == 1) and (c["se_faces"] > 0 or replicates > 1)
    # how many replicates a 1-point effect needs: projected only from a spread between replicates
    line = [x for x in study_report.answer(t, {}, "##") if "Replicates for a 1-point placement effect" in x]
    assert bool(line) == (replicates > 1)
    if line:
        from sisa.intervals import replicates_for
        n = replicates_for(c["se_replicates"], c["se_faces"], replicates, 0.01, family=1)
        assert f"later slices {n or 'more than 1000'}" in line[0] and f"(detectable ±{100 * c['detectable']:.1f} now)" in line[0]


def test_plain_words_say_which_method_forgets_unevenly_across_races():
    """uneven_forgetting: a method whose forget-face AUC gap to retraining differs between two races
    beyond their intervals is uneven; one race outside retraining's interval while a wider one is not
    is not enough; a weak attack gets no verdict."""
    from sisa.study.report import uneven_forgetting

    def model(aucs, half=0.02, diverged=False):
        return {"diverged": diverged, "attack": {"logistic": {"by_race": {
            race: {"auc_forget": a, "auc_forget_ci": [a - h, a + h]} for race, (a, h) in aucs.items()}}}}
    base = {"white": (0.50, 0.02), "black": (0.51, 0.02), "asian": (0.50, 0.08)}
    mem = {"random 0.1": {"too_weak": None, "models": {
        "original": model({"white": (0.6, 0.02), "black": (0.6, 0.02), "asian": (0.6, 0.08)}), "retrained": model(base),
        "finetune": model({"white": (0.58, 0.02), "black": (0.51, 0.02), "asian": (0.5, 0.08)}),
        "scrub": model({"white": (0.53, 0.02), "black": (0.51, 0.02), "asian": (0.55, 0.08)}),
        "neggrad": model(base, diverged=True)}},
        "group:black 0.05": {"too_weak": "the attack is too weak to judge forgetting", "models": {}}}
    (where, what), (where2, what2) = uneven_forgetting({"forgetting": {"membership": mem}})
    assert where == "random at 10%" and where2 == "group:black at 5%" and what2.startswith("no forgetting verdict")
    finetune, scrub, neggrad = what.split("; ", 1)[0], what.split("scrub", 1)[1], what.rsplit("; ", 1)[1]
    assert finetune == "finetune leaves white +8.0 [+5.2, +10.8] apart from retraining (black, asian within it)"
    assert "**uneven across races**: white vs black +8.0" in what                    # 8 points, intervals of 2.8 each
    assert "white +3.0 [+0.2, +5.8] apart from retraining" in scrub                  # one race outside retraining's ...
    assert "even across races as far as the study can tell (no two races' gaps differ, 3 pairs)" in scrub  # ... not uneven
    assert neggrad == "neggrad diverged"
    from sisa.study.report import forgetting_words
    head, lines = forgetting_words({"forgetting": {"membership": mem}})
    assert lines == uneven_forgetting({"forgetting": {"membership": mem}})
    assert head.startswith("Forgetting unevenly across races: finetune (random at 10%)")
    assert ("finetune, scrub leave some race's forget faces more recognisable as members than exact retraining does "
            "(under-forgetting) in every scenario and volume judged (1)") in head


def test_plain_words_name_a_placement_that_moved_the_gap_and_one_that_did_not(monkeypatch):
    t = data(monkeypatch)["tests"]["kfold"]
    first = t["comparisons"]["placement vs uniform"][0]
    other = {**first, "run": "few-shards", "outcome": "inconclusive", "detectable": 0.012}
    t["comparisons"]["placement vs uniform"] = [{**first, "outcome": "higher", "change": 0.021, "ci_low_adjusted": 0.004,
                                                 "ci_high_adjusted": 0.038}, other]
    aa = t["comparisons"]["A/A: uniform-b vs uniform"]
    aa[0] = {**aa[0], "outcome": "lower"}
    words = study_report.placement_words(t)
    assert words.startswith("Placing by likelihood (later slices) widened the gap against black by 2.1 points [+0.4, +3.8]; "
                            "few shards did not change it measurably (detectable ±1.2)")
    assert "called them different, which a calibrated study does 5% of the time" in words


def comparison(family, run, phase, reference_phase, statistic="gap_accuracy_standardised", change=0.0,
               outcome="inconclusive", detectable=0.01, group=None):
    return {"family": family, "run": run, "phase": phase, "reference": run, "reference_phase": reference_phase,
            "statistic": statistic, "group": group, "change": change, "ci_low": change - detectable,
            "ci_high": change + detectable, "ci_low_adjusted": change - detectable, "ci_high_adjusted": change + detectable,
            "se": detectable / 2.8, "se_replicates": detectable / 3, "se_faces": detectable / 9, "df": 4.0,
            "replicates": 5, "p": 0.5, "p_adjusted": 1.0, "detectable": detectable, "outcome": outcome,
            "verdict": f"{outcome} (detectable ±{100 * detectable:.1f})"}


def test_plain_words_say_whether_a_group_asking_widened_the_gap_and_why_not():
    """Hand-made comparisons at the largest volume: one configuration widened the gap; of the others, the
    group's own accuracy fell in one, did not fall where a small change was visible in another (so its age
    cues carry over), and could not be told in the third."""
    gvr, own, avb = ("forgetting: group vs random", "forgetting: group vs random, secondary",
                     "forgetting: after vs before, secondary")
    ph, rnd = "group:black 0.1", "random 0.1"
    t = {"reference_race": "black", "comparisons": {
        gvr: [comparison(gvr, "baseline", ph, rnd, change=0.025, outcome="higher", detectable=0.012),
              comparison(gvr, "uniform", ph, rnd, change=0.004, detectable=0.015),
              comparison(gvr, "few-shards", ph, rnd, change=0.01, detectable=0.03),
              comparison(gvr, "later-slices", ph, rnd, change=0.012, detectable=0.02),
              comparison(gvr, "uniform", "group:black 0.05", "random 0.05", change=0.05, outcome="higher")],
        own: [comparison(own, "uniform", ph, rnd, "accuracy_standardised", -0.003, detectable=0.011, group="black"),
              comparison(own, "few-shards", ph, rnd, "accuracy_standardised", -0.01, detectable=0.04, group="black"),
              comparison(own, "later-slices", ph, rnd, "accuracy_standardised", -0.02, "lower", 0.015, "black")],
        avb: [comparison(avb, tag, rnd, "before", "accuracy_overall", -0.004, detectable=0.01)
              for tag in ("uniform", "few-shards", "later-slices")]},
        "forgetting": {"scenarios": ["random", "group:black"], "volumes": [0.05, 0.1], "configs": [],
                       "groups": {"group:black": {"training_faces": 1600.0, "share_by_volume": {"0.1": 0.52}}}}}
    [words] = study_report.who_asks_words(t)
    assert words.startswith("Forgetting 10% of the training faces, all of them black (group:black: about 52% of that "
                            "group's training faces), rather than as many at random, widened the gap against black in "
                            "baseline 1x1 by 2.5 points [+1.3, +3.7]; did not change the gap against black measurably "
                            "in uniform (+0.4, detectable ±1.5), few shards (+1.0, detectable ±3.0) and later slices")
    assert "baseline 1x1" not in words.split("Why:")[1]           # the configuration that widened needs no why
    assert ", while 10% random requests moved accuracy on all faces by -0.4 (uniform), -0.4 (few shards)" in words
    assert "black's accuracy fell in later slices, but the gap's interval there is too wide" in words
    assert ("in uniform black's accuracy did not fall measurably (detectable ±1.1): at this scale it hardly depends "
            "on how many black faces are trained on") in words
    assert words.endswith("; in few shards the study cannot tell whether black's accuracy fell (detectable ±4.0): it "
                          "needs more replicates.")      # only a change the study could have seen counts as "did not fall"
    # the mean over configurations (analysis.POOLED) leads: the sharper answer to who asks
    pooled = "forgetting: group vs random, all configurations"
    t["comparisons"][pooled] = [comparison(pooled, "all configurations", ph, rnd, change=0.015, outcome="higher",
                                           detectable=0.008)]
    [words] = study_report.who_asks_words(t)
    assert ("rather than as many at random, widened the gap against black in the mean over configurations by 1.5 "
            "points [+0.7, +2.3]; widened the gap against black in baseline 1x1 by 2.5 points") in words
    t["forgetting"]["scenarios"] = ["group:black"]                 # no random requests to compare with: nothing said
    assert study_report.who_asks_words(t) == []


def test_plain_words_price_unlearning_by_placement_under_likelihood_requests():
    """Hand-made costs: work summed over every step, each placement against uniform, uniform against the
    monolith; the fairness price read from the placement-vs-uniform family at the largest volume."""
    fam = "forgetting: placement vs uniform"
    costs = [{"config": tag, "scenario": sc, "volume": v, "faces_x_epochs": work * (1 + (sc == "random"))}
             for tag, work in (("baseline", 100.0), ("uniform", 80.0), ("few-shards", 20.0))
             for sc in ("likelihood", "random") for v in (0.01, 0.1)]
    t = {"reference_race": "black", "forgetting": {"scenarios": ["likelihood", "random"], "volumes": [0.01, 0.1],
                                                   "configs": ["baseline", "uniform", "few-shards"], "costs": costs},
         "comparisons": {fam: [comparison(fam, "few-shards", "likelihood 0.1", "likelihood 0.1", change=-0.003),
                               comparison(fam, "few-shards", "likelihood 0.01", "likelihood 0.01", change=0.5,
                                          outcome="higher")]}}
    assert study_report.price_words(t) == (
        "When requests follow the likelihood model (1%, 10% of the training faces, served in steps), few shards "
        "retrained 0.25x the faces x epochs uniform SISA did (uniform itself 0.80x the monolith's retraining); the gap "
        "against black after 10%, each placement against uniform under the same requests: few shards -0.3 [-1.3, +0.7] "
        "inconclusive (detectable ±1.0).")
    t["forgetting"]["scenarios"] = ["random"]                      # no likelihood requests: nothing to say
    assert study_report.price_words(t) is None
