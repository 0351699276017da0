"""Test sets, shards and slices: disjoint covers, sizes, compositions and placement, per strategy."""
import itertools

import numpy as np
import pandas as pd
import pytest

from sisa.config import STRATEGIES, RunConfig
from sisa.data import RACES
from sisa.errors import SisaError
from sisa.likelihood import draw_likelihood
from sisa.partition import (build_partition, content_hash, eval_groups, limit_faces, part_sizes, read_partition,
                            stage_rows, write_partition_csv)
from sisa.seeding import rng


def population(n=3000, seed=0):
    """A table shaped like UTKFace's (labels only; partitions never look at pixels)."""
    g = np.random.default_rng(seed)
    age = g.integers(0, 100, n)
    t = pd.DataFrame({"filename": [f"{a}_x_{i:06d}.jpg" for i, a in enumerate(age)], "age": age,
                      "gender": g.integers(0, 2, n), "race": g.integers(0, 5, n)})
    t["age_class"] = np.searchsorted([2, 9, 20, 27, 45, 65, 120], t["age"])
    return pd.concat([t, draw_likelihood(t, ("gender", "race"), g)], axis=1)


TABLE = population()
CASES = [(s, p) for s in STRATEGIES for p in ("shard", "slice")]


def cfg(**kw):
    return RunConfig(**{"num_shards": 4, "num_slices": 3, "folds": 3, "test_per_cell": 3, "test_random": 20, **kw})


@pytest.mark.parametrize("strategy,put_in", CASES)
def test_every_face_is_tested_or_in_exactly_one_part(strategy, put_in):
    c = cfg(strategy=strategy, put_in=put_in)
    for fold in range(c.folds):
        p = build_partition(TABLE, c, fold)
        assert len(p) == len(TABLE) and p["filename"].is_unique and set(p["filename"]) == set(TABLE["filename"])
        train, test = p[p["role"] == "train"], p[p["role"] == "test"]
        assert len(train) + len(test) == len(TABLE)
        assert train["shard"].notna().all() and test["shard"].isna().all() and test["slice"].isna().all()
        sizes = train.groupby(["shard", "slice"]).size()
        assert len(sizes) == c.num_shards * c.num_slices and sizes.max() - sizes.min() <= 1
        assert sorted(sizes) == sorted(part_sizes(len(train), c.num_shards, c.num_slices).ravel())
        if c.test_kind == "balanced":
            cells = test[test["group"] != "random"].groupby(["race", "age_class"]).size()
            assert len(cells) == 35 and (cells == c.test_per_cell).all()
            assert (test["group"] == "random").sum() == c.test_random
            assert (test["group"][test["group"] != "random"] == [RACES[r] for r in test["race"][test["group"] != "random"]]).all()
        elif c.test_kind == "random":
            assert len(test) == 35 * c.test_per_cell + c.test_random and (test["group"] == "random").all()


def test_kfold_tests_every_face_exactly_once_stratified():
    c = cfg(strategy="random-kfold")
    tested = pd.concat([build_partition(TABLE, c, k).query("role == 'test'") for k in range(c.folds)])
    assert tested["filename"].is_unique and len(tested) == len(TABLE)
    per_fold = [build_partition(TABLE, c, k).query("role == 'test'").groupby("race").size() for k in range(3)]
    assert max(abs(a - b).max() for a, b in itertools.combinations(per_fold, 2)) <= 2 * 7   # stratified


def _high_by_part(p):
    train = p[p["role"] == "train"]
    return train.groupby(["shard", "slice"])["high_likelihood"].agg(["sum", "size"])


def test_sorted_shard_placement_fills_as_few_shards_as_possible():
    c = cfg(strategy="sorted-balanced", put_in="shard")
    p = build_partition(TABLE, c, 0)
    train = p[p["role"] == "train"]
    n_high = int(train["high_likelihood"].sum())
    shard_size = len(train) // c.num_shards
    per_shard = train.groupby("shard")["high_likelihood"].sum()
    assert (per_shard > 0).sum() == -(-n_high // shard_size)     # ceil: the fewest shards that can hold them
    full = per_shard.index[per_shard > 0][:-1]
    assert all(per_shard[s] == (train["shard"] == s).sum() for s in full)   # all but the last are all-high
    # within the boundary shard, the high faces sit in its latest slices
    last = per_shard.index[per_shard > 0][-1]
    hb = _high_by_part(p).loc[last]
    assert list(hb["sum"] > 0) == sorted(hb["sum"] > 0)


def test_sorted_slice_placement_puts_high_faces_in_the_last_slices_of_every_shard():
    c = cfg(strategy="sorted-balanced", put_in="slice")
    p = build_partition(TABLE, c, 0)
    hb = _high_by_part(p)
    last = hb.xs(c.num_slices - 1, level="slice")
    n_high = hb["sum"].sum()
    assert n_high <= last["size"].sum()          # with ~24% high and R=3 they all fit in the last slices
    assert last["sum"].sum() == n_high
    assert last["sum"].max() - last["sum"].min() <= 1    # spread evenly over the shards
    # overflow case: more high faces than the last slices hold -> next-latest slices take the rest
    c6 = cfg(strategy="sorted-balanced", put_in="slice", num_slices=6)
    hb6 = _high_by_part(build_partition(TABLE, c6, 0))
    by_slice = hb6.groupby(level="slice")[["sum", "size"]].sum()
    assert (by_slice.loc[5, "sum"] == by_slice.loc[5, "size"]) and by_slice.loc[4, "sum"] > 0
    assert by_slice.loc[0, "sum"] == 0


def test_random_placement_mixes_high_faces_everywhere():
    hb = _high_by_part(build_partition(TABLE, cfg(strategy="random-balanced"), 0))
    assert (hb["sum"] > 0).all()


def test_deterministic_for_a_seed_and_different_across_seeds_and_folds():
    c = cfg(strategy="sorted-balanced")
    a, b = build_partition(TABLE, c, 0), build_partition(TABLE, c, 0)
    assert a.equals(b) and content_hash(a) == content_hash(b)
    assert content_hash(build_partition(TABLE, c, 1)) != content_hash(a)
    assert content_hash(build_partition(TABLE, cfg(strategy="sorted-balanced", seed=1), 0)) != content_hash(a)


def test_test_set_does_not_depend_on_placement():
    tests = {s: build_partition(TABLE, cfg(strategy=s, put_in=p), 1).query("role == 'test'")["filename"].tolist()
             for s, p in (("random-balanced", "slice"), ("sorted-balanced", "shard"), ("sorted-balanced", "slice"))}
    assert len({tuple(v) for v in tests.values()}) == 1


def test_stage_rows_are_cumulative_and_skip_forgotten_faces():
    c = cfg()
    p = build_partition(TABLE, c, 0)
    s0, s1, s2 = (set(stage_rows(p, 1, l)) for l in range(3))
    assert s0 < s1 < s2 and len(s2) == ((p["shard"] == 1) & (p["role"] == "train")).sum()
    assert not s2 & set(stage_rows(p, 0, 2))
    p.loc[sorted(s1 - s0)[0], "forgotten"] = True
    assert len(stage_rows(p, 1, 0)) == len(s0) and len(stage_rows(p, 1, 1)) == len(s1) - 1


def test_partition_csv_round_trip_keeps_hash_and_types(tmp_path):
    p = build_partition(TABLE, cfg(), 0)
    (tmp_path / "p.csv").write_bytes(write_partition_csv(p))
    q = read_partition(tmp_path / "p.csv")
    assert content_hash(q) == content_hash(p)
    assert q["forgotten"].dtype == bool and q["shard"].dtype == "Int64"
    q.loc[0, "forgotten"] = True
    assert content_hash(q) == content_hash(p)     # unlearning edits do not change the placement hash


def test_eval_groups():
    p = build_partition(TABLE, cfg(), 0)
    g = eval_groups(p)
    assert [int(g[r].sum()) for r in RACES] == [7 * 3] * 5 and g["random"].sum() == 20
    k = build_partition(TABLE, cfg(strategy="random-kfold"), 0)
    gk = eval_groups(k)
    assert gk["random"].sum() == (k["role"] == "test").sum()
    assert sum(gk[r].sum() for r in RACES) == gk["random"].sum()


def test_limit_is_stratified_and_keeps_cells_fillable():
    rows = limit_faces(TABLE, 500, 5, rng(0, "limit"))
    sub = TABLE.iloc[rows]
    assert len(rows) == 500 and len(set(rows)) == 500
    cells = sub.groupby(["race", "age_class"]).size()
    assert len(cells) == 35 and cells.min() >= 5
    full = TABLE.groupby("race").size() / len(TABLE)
    assert (abs(sub.groupby("race").size() / 500 - full) < 0.05).all()
    with pytest.raises(SisaError, match="--limit 100 is too small"):
        limit_faces(TABLE, 100, 5, rng(0, "limit"))


def test_bad_settings_are_clear_errors():
    with pytest.raises(SisaError, match="only .* training faces"):
        build_partition(TABLE.iloc[:400], cfg(num_shards=100, num_slices=5, test_per_cell=0, test_random=1), 0)
    with pytest.raises(SisaError, match="needs 50 faces of"):
        build_partition(TABLE, cfg(test_per_cell=50), 0)
    with pytest.raises(SisaError, match="--strategy 'sorted-nope'"):
        cfg(strategy="sorted-nope").validate()
    with pytest.raises(SisaError, match="--num_shards 0"):
        cfg(num_shards=0).validate()


def test_folds_run_computes_the_first_folds_of_the_same_split():
    """--folds_run N: fold k of a run of the first N folds is fold k of the run of all K, face for face."""
    every, first = cfg(strategy="random-kfold"), cfg(strategy="random-kfold", folds_run=1)
    assert (every.n_folds, first.n_folds) == (3, 1)
    a, b = build_partition(TABLE, every, 0), build_partition(TABLE, first, 0)
    assert a.equals(b)
    assert (a["role"] == "test").sum() == pytest.approx(len(TABLE) / 3, abs=5)   # a third of the faces tested
    with pytest.raises(SisaError, match="--folds_run 4 is invalid: give a number of folds from 1 to --folds"):
        cfg(strategy="random-kfold", folds_run=4).validate()
    with pytest.raises(SisaError, match="--folds_run 1 is invalid: .*lower --folds instead"):
        cfg(strategy="random-balanced", folds_run=1).validate()
