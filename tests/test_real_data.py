"""The whole real UTKFace set (skipped when it is not here): every strategy's dry run."""
import json

import pandas as pd
import pytest

from conftest import full_dataset
from helpers import run_script
from sisa.partition import read_partition

pytestmark = [pytest.mark.skipif(full_dataset() is None, reason="the full UTKFace set is not here"), pytest.mark.slow]


def test_full_dataset_dry_run_every_strategy(tmp_path_factory):
    ck, cache = tmp_path_factory.mktemp("ck"), tmp_path_factory.mktemp("cache")
    data = full_dataset()
    for strategy, put_in in (("random-balanced", "slice"), ("sorted-balanced", "shard"),
                             ("sorted-balanced", "slice"), ("random-random", "slice"), ("sorted-kfold", "slice")):
        p = run_script("train.py", "--dry_run", "--strategy", strategy, "--put_in", put_in, "--image_size", 32,
                       "--data_dir", data, "--cache_dir", cache, "--checkpoints_dir", ck)
        run = ck / f"{strategy}-{put_in}-5x3"
        manifest = json.loads((run / "run.json").read_text())
        assert manifest["data"]["faces_usable"] == 23_702 and manifest["data"]["faces_in_run"] == 23_702
        assert 0.22 < manifest["data"]["high_likelihood_share"] < 0.26      # the poster: 24.6%
        assert "23,702 faces" in p.stdout
        skipped = pd.read_csv(run / "skipped.csv")
        assert len(skipped) == 5 and skipped["reason"].str.startswith("excluded").sum() == 2
        part = read_partition(run / "fold-0" / "partition.csv")
        test = part[part["role"] == "test"]
        if strategy.endswith("balanced"):
            assert len(test) == 378 and (test["group"] == "random").sum() == 63
        if (strategy, put_in) == ("sorted-balanced", "slice"):
            train = part[part["role"] == "train"]
            assert train.loc[train["high_likelihood"], "slice"].eq(2).all()
