"""study.py --scenarios --forget on a tiny real study: every configuration's trained run is copied per
scenario and forgets each volume on top of the last (the monolith retrained from scratch without the
faces), each step verified and evaluated; the report's numbers; the runs themselves untouched; a rerun
does nothing; an impossible volume is refused before training."""
import json

import pandas as pd
import pytest

from helpers import call_script, error_line, run_script
from sisa import scenarios
from sisa.data import RACES
from sisa.experiment import Options, open_run
from sisa.layout import RunLayout
from sisa.store import read_jsonl
from test_study import where

SMALL = ["--preset", "cpu", "--configs", "baseline", "uniform", "--no_aa", "--no_control", "--sample", 0, "--epochs", 1,
         "--image_size", 24, "--folds", 2, "--num_shards", 2, "--num_slices", 2, "--n_boot", 50,
         "--scenarios", "random", "group:black", "--forget", 0.02, 0.05, "--name", "forget"]


@pytest.fixture(scope="module")
def study(faces_dir, cache_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("forget")
    out = run_script("study.py", *SMALL, *where(faces_dir, cache_dir, tmp), "--no_progress").stdout
    return tmp, out


def opened(tmp, name):
    return open_run(RunLayout(tmp / "ck" / name), Options(), with_images=False)


@pytest.mark.slow
def test_each_scenario_forgets_its_faces_on_a_copy_volume_on_top_of_volume(study):
    tmp, out = study
    for tag in ("baseline", "uniform"):
        run = opened(tmp, f"forget-kfold-{tag}")
        assert not any(p["forgotten"].any() for p in run.partitions)          # the trained run is untouched
        for sc in ("random", "group:black"):
            clone = opened(tmp, f"forget-kfold-{tag}-{scenarios.parse(sc).tag}")
            assert clone.cfg.seed == run.cfg.seed and clone.manifest["cloned_from"] == run.cfg.name
            log = read_jsonl(clone.layout.unlearning_log)
            for f, p in enumerate(clone.partitions):
                small = scenarios.forget_set(p, scenarios.parse(sc), 0.02, run.cfg.seed, f)
                large = scenarios.forget_set(p, scenarios.parse(sc), 0.05, run.cfg.seed, f)
                assert set(p.loc[p["forgotten"], "filename"]) == set(large)          # every volume served
                served = [r["face"] for r in log if r["fold"] == f]
                assert set(served[:len(small)]) == set(small)                        # the smaller volume first
                if sc == "group:black":
                    assert (p.loc[p["forgotten"], "race"] == RACES.index("black")).all()
            if tag == "baseline":      # the monolith: retrained from scratch without the faces, once per step
                assert all(r["stages_retrained"] == [0] for r in log)
            for v in ("2", "5"):
                assert (tmp / "sum" / f"{clone.cfg.name}-forget{v}-predictions.csv").exists()
    assert "verified" in run_script("unlearn.py", "--run_dir", tmp / "ck" / "forget-kfold-baseline-group-black",
                                    "--verify").stdout
    assert "forget-kfold-uniform-group-black: forgot group:black at 0.05" in out


@pytest.mark.slow
def test_the_report_compares_who_asks_and_prices_each_step(study):
    tmp, _ = study
    data = json.loads((tmp / "rep" / "forget" / "report.json").read_text())
    t = data["tests"]["kfold"]
    f = t["forgetting"]
    assert f["scenarios"] == ["random", "group:black"] and f["volumes"] == [0.02, 0.05]
    assert {"uniform group:black 0.05", "baseline random 0.02"} <= set(t["levels"])
    fams = t["comparisons"]
    pairs = {(c["run"], c["phase"], c["reference"], c["reference_phase"]) for c in fams["forgetting: group vs random"]}
    assert ("uniform", "group:black 0.05", "uniform", "random 0.05") in pairs
    assert {c["reference"] for c in fams["forgetting: SISA vs retrained monolith"]} == {"baseline"}
    assert len(fams["forgetting: after vs before"]) == 2 * 2 * 2          # configs x scenarios x volumes: the gap alone
    assert {c["statistic"] for c in fams["forgetting: after vs before, secondary"]} == {"accuracy_overall"}
    own = [c for c in fams["forgetting: group vs random, secondary"] if c["statistic"] == "accuracy_standardised"]
    assert {c["group"] for c in own} == {"black"} and len(own) == 2 * 2    # why a group's requests widen the gap or not
    # the mean over both configurations; the largest volume, named in advance, is a family of its own
    pooled = fams["forgetting: group vs random, all configurations"]
    assert [(c["run"], c["phase"]) for c in pooled] == [("all configurations", "group:black 0.05")]
    smaller = fams["forgetting: group vs random, all configurations, smaller volumes"]
    assert [(c["run"], c["phase"]) for c in smaller] == [("all configurations", "group:black 0.02")]
    parts = opened(tmp, "forget-kfold-baseline").partitions
    black = [((p["role"] == "train") & (p["race"] == RACES.index("black"))).sum() for p in parts]
    assert f["groups"]["group:black"]["share_by_volume"]["0.05"] == pytest.approx(
        sum(scenarios.count(p, 0.05) / n for p, n in zip(parts, black)) / len(parts))
    cost = {(c["config"], c["scenario"], c["volume"]): c for c in f["costs"]}
    assert cost[("baseline", "random", 0.05)]["speedup_vs_retrained_monolith"] == 1.0
    assert all(c["faces_served"] > 0 and c["faces_x_epochs"] > 0 and c["shard_models_retrained"] >= 1
               for c in f["costs"])
    assert data["settings"]["folds_run"] == 1 and t["faces"]["folds"] == 2     # the preset's first fold of two
    tested = pd.read_csv(tmp / "sum" / "forget-kfold-baseline-predictions.csv")
    assert set(tested["fold"]) == {0}                                           # only fold 0 trained and tested
    md = (tmp / "rep" / "forget" / "report.md").read_text()
    assert "## Many requests: who asks and how many" in md and "| uniform | group:black | 5% |" in md
    assert "- **Who asks, in plain words**: Forgetting 5% of the training faces, all of them black (group:black: about" in md
    assert "forgetting by volume" in data["figures"]["kfold"]
    assert (tmp / "rep" / "forget" / data["figures"]["kfold"]["forgetting by volume"]).stat().st_size > 0
    assert "forget-kfold-uniform-group-black-forget5" in data["predictions"]      # per-face predictions kept


@pytest.mark.slow
def test_a_rerun_does_nothing_and_a_new_scenario_adds_only_its_work(study, faces_dir, cache_dir):
    tmp, _ = study
    args = [*SMALL, *where(faces_dir, cache_dir, tmp), "--no_progress"]
    out = run_script("study.py", *args).stdout
    assert "forgot" not in out and "] trained" not in out and "report: " in out
    i = args.index("--scenarios")
    more = args[:i + 1] + ["random", "group:black", "likelihood"] + args[i + 3:]
    out = run_script("study.py", *more).stdout
    assert "] trained" not in out and "forgot likelihood at 0.02" in out and "forgot random" not in out


@pytest.mark.slow
def test_an_impossible_volume_is_refused_before_training(faces_dir, cache_dir, tmp_path):
    args = [*SMALL[:-8], "--scenarios", "group:other", "--forget", 0.6, "--name", "nope"]
    line = error_line(call_script("study.py", *args, *where(faces_dir, cache_dir, tmp_path)))
    assert "group:other has only" in line and "the largest volume it can supply is" in line
    assert not list((tmp_path / "ck").glob("*/fold-*/shard-*/*.pt"))          # nothing trained


@pytest.mark.slow
def test_approximate_methods_against_retraining_with_the_attack_by_race(faces_dir, cache_dir, tmp_path):
    args = [*SMALL[:-8], "--configs", "baseline", "uniform", "--scenarios", "group:black", "--forget", 0.05,
            "--methods", "finetune", "scrub", "--name", "approx"]
    out = run_script("study.py", *args, *where(faces_dir, cache_dir, tmp_path), "--no_progress").stdout
    assert "approx-kfold-baseline-group-black-scrub-forget5: scrub forgot group:black at 0.05" in out
    data = json.loads((tmp_path / "rep" / "approx" / "report.json").read_text())
    t = data["tests"]["kfold"]
    m = t["forgetting"]["membership"]["group:black 0.05"]
    assert list(m["models"]) == ["original", "retrained", "finetune", "scrub"]
    for name, p in m["models"].items():
        a = p["attack"]["logistic"]
        assert 0 <= a["auc_forget"] <= 1 and a["auc_forget_ci"][0] <= a["auc_forget"] <= a["auc_forget_ci"][1]
        assert list(a["by_race"]) == ["black"]                     # a group scenario forgets only its race
        assert p["accuracy"]["forget"]["white"] is None and 0 <= p["accuracy"]["test"]["all"] <= 1
    assert m["models"]["retrained"]["average_gap_to_retrained"] == 0
    assert m["models"]["finetune"]["image_steps"] < m["models"]["retrained"]["image_steps"]    # cheaper than exact
    assert m["too_weak"] is None or "too weak to judge forgetting" in m["too_weak"]
    pairs = {(c["phase"], c["reference_phase"]) for c in t["comparisons"]["approximate vs retrained"]}
    assert pairs == {("finetune group:black 0.05", "group:black 0.05"), ("scrub group:black 0.05", "group:black 0.05")}
    md = (tmp_path / "rep" / "approx" / "report.md").read_text()
    assert "## Approximate unlearning against exact retraining" in md and "| scrub |" in md
    assert (tmp_path / "rep" / "approx" / data["figures"]["kfold"]["forgetting by race"]).stat().st_size > 0
    # the approximate methods never change the trained baseline
    assert "verified" in run_script("unlearn.py", "--run_dir", tmp_path / "ck" / "approx-kfold-baseline", "--verify").stdout
