"""Request scenarios at a volume: who may ask, nested volumes, fixed keys, impossible volumes; and on
tiny real runs, served the SISA way and by retraining the monolith from scratch without the faces."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from helpers import error_line, run_script
from sisa import scenarios
from sisa.config import RunConfig
from sisa.data import AGE_CLASSES, RACES
from sisa.errors import SisaError
from sisa.experiment import Options, open_run, prepare
from sisa.layout import RunLayout
from sisa.partition import read_partition
from sisa.store import read_jsonl
from sisa.training import train_run
from sisa.unlearning import request_order


def fold_partition(n=2000, seed=1) -> pd.DataFrame:
    """A fold's partition as the run writes it: 2/3 training faces, races and ages mixed, k and flags."""
    g = np.random.default_rng(seed)
    k = g.uniform(0.05, 0.6, n)
    return pd.DataFrame({"filename": [f"face{i:05d}.jpg" for i in range(n)],
                         "role": np.where(np.arange(n) % 3 == 2, "test", "train"),
                         "race": g.choice(5, n, p=[0.45, 0.2, 0.15, 0.13, 0.07]),
                         "age_class": g.integers(0, 7, n), "knowledge": k, "high_likelihood": g.random(n) < k,
                         "forgotten": np.zeros(n, bool)})


def test_scenarios_parse_and_bad_names_are_one_line_errors():
    assert scenarios.parse("group:black") == scenarios.Scenario("group", "black")
    assert scenarios.parse("group:black:0-2").tag == "group-black-0-2"
    assert scenarios.parse("group:white:66+").tag == "group-white-66plus"
    assert scenarios.parse("random").name == "random"
    for bad, says in [("everyone", "likelihood, random, group:RACE"), ("group", "group:RACE"),
                      ("group:green", "'green' is not a race"), ("group:black:old", "'old' is not an age class"),
                      ("random:black", "likelihood, random, group:RACE")]:
        with pytest.raises(SisaError, match=says):
            scenarios.parse(bad)


@pytest.mark.parametrize("text", ["group:black", "group:asian:21-27"])
def test_a_group_draws_only_its_faces_and_every_scenario_the_same_count(text):
    part = fold_partition()
    sc = scenarios.parse(text)
    faces = set(scenarios.forget_set(part, sc, 0.01, seed=3, fold=0))
    rows = part[part["filename"].isin(faces)]
    assert len(faces) == round(0.01 * (part["role"] == "train").sum()) == scenarios.count(part, 0.01)
    assert (rows["role"] == "train").all() and (rows["race"] == RACES.index(sc.race)).all()
    if sc.age_class:
        assert (rows["age_class"] == AGE_CLASSES.index(sc.age_class)).all()
    for other in ("random", "likelihood"):     # the same volume is the same count in every scenario
        assert len(scenarios.forget_set(part, scenarios.parse(other), 0.01, 3, 0)) == len(faces)


def test_volumes_are_nested_and_the_draws_fixed_by_seed_scenario_and_fold():
    part = fold_partition()
    for text in ("likelihood", "random", "group:black"):
        sc = scenarios.parse(text)
        small, large = (scenarios.forget_set(part, sc, v, 7, 1) for v in (0.02, 0.05))
        assert large[:len(small)] == small and len(large) > len(small)
        assert scenarios.forget_set(part, sc, 0.05, 7, 1) == large                    # drawn again: the same
        assert scenarios.forget_set(part, sc, 0.05, 8, 1) != large                    # another seed, another draw
        assert scenarios.forget_set(part, sc, 0.05, 7, 2) != large                    # another fold, another draw
    # the likelihood scenario is the seed's request model: the faces unlearn.py --sample serves first
    assert scenarios.forget_set(part, scenarios.parse("likelihood"), 0.05, 7, 1) == request_order(part, 7, 1)[:scenarios.count(part, 0.05)]
    # the random scenario is not the likelihood's order, and favours no flag
    rand = scenarios.forget_set(part, scenarios.parse("random"), 0.2, 7, 1)
    like = scenarios.forget_set(part, scenarios.parse("likelihood"), 0.2, 7, 1)
    flagged = part.set_index("filename")["high_likelihood"]
    assert flagged[like].mean() > flagged[rand].mean() + 0.1


def test_a_killed_step_forgets_the_same_faces_and_a_larger_volume_serves_on_top():
    part = fold_partition()
    sc = scenarios.parse("group:black")
    step1 = scenarios.next_step(part, sc, 0.02, 0, 0)
    half = part.copy()                               # a step killed half-way: some of its faces committed
    half.loc[half["filename"].isin(step1[:10]), "forgotten"] = True
    assert scenarios.next_step(half, sc, 0.02, 0, 0) == step1[10:]
    done = part.copy()
    done.loc[done["filename"].isin(step1), "forgotten"] = True
    assert scenarios.next_step(done, sc, 0.02, 0, 0) == []                          # reached before: nothing
    more = scenarios.next_step(done, sc, 0.05, 0, 0)
    assert not set(more) & set(step1) and len(more) + len(step1) == scenarios.count(part, 0.05)
    # faces forgotten by another request set are refused, not mixed in
    with pytest.raises(SisaError, match="outside random at 0.05"):
        scenarios.next_step(done, scenarios.parse("random"), 0.05, 0, 0)


def test_a_volume_a_group_cannot_supply_names_the_largest_possible():
    part = fold_partition()
    train = part[part["role"] == "train"]
    share = (train["race"] == RACES.index("other")).mean()
    with pytest.raises(SisaError) as e:
        scenarios.forget_set(part, scenarios.parse("group:other"), 0.2, 0, 0)
    msg = str(e.value)
    assert "--forget 0.2 asks for" in msg and f"largest volume it can supply is {np.floor(1000 * share) / 1000}" in msg
    assert "\n" not in msg
    n = len(scenarios.forget_set(part, scenarios.parse("group:other"), scenarios.largest_volume(part, scenarios.parse(
        "group:other")), 0, 0))
    assert n <= (train["race"] == RACES.index("other")).sum()
    with pytest.raises(SisaError, match="less than one face"):
        scenarios.forget_set(part, scenarios.parse("random"), 0.0001, 0, 0)


# ---- on tiny real runs ---------------------------------------------------------------------------
TINY = dict(folds=1, epochs=1, image_size=24, model="cnn", test_per_cell=2, test_random=10, put_in="slice")


@pytest.fixture(scope="module")
def runs(faces_dir, cache_dir, tmp_path_factory):
    """A 1x1 monolith and a 2x3 SISA run of the same faces, trained once."""
    ck = tmp_path_factory.mktemp("scenario-runs")
    names = {}
    for shards, slices, strategy in ((1, 1, "random-balanced"), (2, 3, "random-balanced")):
        cfg = RunConfig(**TINY, num_shards=shards, num_slices=slices, strategy=strategy)
        exp = prepare(cfg, Options(data_dir=faces_dir, cache_dir=cache_dir, checkpoints_dir=ck, progress=False))
        train_run(exp, Options(progress=False, device="cpu"))
        names[f"{shards}x{slices}"] = exp.cfg.name
    return ck, names


@pytest.mark.slow
def test_the_monolith_is_retrained_from_scratch_without_the_faces(runs, tmp_path):
    ck, names = runs
    run = tmp_path / names["1x1"]
    shutil.copytree(ck / names["1x1"], run)
    before = (run / "fold-0" / "shard-0" / "slice-0.pt").read_bytes()
    out = run_script("unlearn.py", "--run_dir", run, "--scenario", "group:black", "--forget", "0.05", "--no_progress").stdout
    gone = read_partition(run / "fold-0" / "partition.csv").query("forgotten")
    assert len(gone) and (gone["race"] == RACES.index("black")).all() and "group:black at 0.05" in out
    log = read_jsonl(run / "unlearning" / "log.jsonl")
    assert {r["face"] for r in log} == set(gone["filename"])
    assert all(r["stages_retrained"] == [0] and r["batch_size"] == len(gone) for r in log)   # one retraining, from scratch
    assert (run / "fold-0" / "shard-0" / "slice-0.pt").read_bytes() != before
    # the checkpoint in use was trained on exactly the faces left: none of the forgotten ones
    assert "verified: no checkpoint in use was trained on a forgotten face" in \
        run_script("unlearn.py", "--run_dir", run, "--verify").stdout
    part = open_run(RunLayout(run), Options(), with_images=False).partitions[0]
    record = json.loads((run / "fold-0" / "shard-0" / "slice-0.json").read_text())
    assert record["stage_faces"] == int((~part["forgotten"] & (part["role"] == "train")).sum())


@pytest.mark.slow
def test_sisa_serves_a_volume_in_steps_each_shard_once_per_step(runs, tmp_path):
    ck, names = runs
    run = tmp_path / names["2x3"]
    shutil.copytree(ck / names["2x3"], run)
    priced = run_script("unlearn.py", "--run_dir", run, "--cost", "--scenario", "random", "--forget", "0.02").stdout
    assert "fold 0: random at 0.02:" in priced and "of retraining all shards" in priced
    assert not read_partition(run / "fold-0" / "partition.csv")["forgotten"].any()        # priced, nothing served
    run_script("unlearn.py", "--run_dir", run, "--scenario", "random", "--forget", "0.02", "--no_progress")
    first = set(read_partition(run / "fold-0" / "partition.csv").query("forgotten")["filename"])
    log1 = read_jsonl(run / "unlearning" / "log.jsonl")
    shown = int(priced.split("faces x epochs =")[0].rsplit("retrained, ", 1)[1].replace(",", ""))
    assert sum(r["faces_x_epochs"] for r in log1) == pytest.approx(shown)              # the price is what it cost
    assert len({r["shard"] for r in log1}) == len({(r["shard"], r["time"]) for r in log1})   # one retraining a shard
    again = run_script("unlearn.py", "--run_dir", run, "--scenario", "random", "--forget", "0.02", "--no_progress")
    assert "was served before" in again.stdout and len(read_jsonl(run / "unlearning" / "log.jsonl")) == len(log1)
    run_script("unlearn.py", "--run_dir", run, "--scenario", "random", "--forget", "0.05", "--no_progress")
    second = set(read_partition(run / "fold-0" / "partition.csv").query("forgotten")["filename"])
    assert first < second                                                         # nested: served on top
    line = error_line(run_script("unlearn.py", "--run_dir", run, "--scenario", "group:black", "--forget", "0.05",
                                 "--no_progress", check=False))
    assert "outside group:black" in line
    assert "verified" in run_script("unlearn.py", "--run_dir", run, "--verify").stdout
    line = error_line(run_script("unlearn.py", "--run_dir", run, "--scenario", "group:other", "--forget", "0.9",
                                 "--no_progress", check=False))
    assert "the largest volume it can supply is" in line


def test_a_step_is_what_a_volume_adds_on_top_of_a_smaller_one():
    part = fold_partition()
    sc = scenarios.parse("group:black")
    small, large = (scenarios.forget_set(part, sc, v, 5, 0) for v in (0.02, 0.05))
    assert scenarios.step(part, sc, 0.02, 0.05, 5, 0) == [x for x in large if x not in small]
    assert scenarios.step(part, sc, None, 0.05, 5, 0) == large
