"""train.py --dry_run: the run folder it writes, and its errors, on real faces."""
import json

import pandas as pd
import pytest

from helpers import call_script, error_line, run_script
from sisa.partition import content_hash, read_partition

SMALL = ["--image_size", 24, "--test_per_cell", 2, "--test_random", 10, "--folds", 2]


@pytest.fixture
def dirs(faces_dir, cache_dir, tmp_path):
    return ["--data_dir", faces_dir, "--cache_dir", cache_dir, "--checkpoints_dir", tmp_path / "ck"]


def test_dry_run_writes_a_self_explaining_run_folder(dirs, tmp_path):
    p = run_script("train.py", "--dry_run", "--strategy", "sorted-balanced", "--put_in", "shard",
                   "--num_shards", 3, "--num_slices", 2, *SMALL, *dirs)
    run = tmp_path / "ck" / "sorted-balanced-shard-3x2"
    assert "skipped 2 file(s)" in p.stdout and "% high" in p.stdout and "dry run: wrote" in p.stdout
    cfg = json.loads((run / "config.json").read_text())
    manifest = json.loads((run / "run.json").read_text())
    assert cfg["strategy"] == "sorted-balanced" and cfg["num_shards"] == 3 and cfg["image_size"] == 24
    assert manifest["versions"]["torch"] and manifest["data"]["faces_in_run"] > 300
    for k in range(2):
        part = read_partition(run / f"fold-{k}" / "partition.csv")
        assert content_hash(part) == manifest["partitions"][f"fold-{k}"]
        assert list(part.columns)[:12] == ["filename", "age", "gender", "race", "age_class", "knowledge",
                                           "high_likelihood", "requests_unlearning", "role", "group", "shard", "slice"]
        assert (run / f"fold-{k}" / "composition.csv").exists()
    skipped = pd.read_csv(run / "skipped.csv")
    assert len(skipped) == 2
    assert not list(run.glob("fold-*/shard-*"))      # no training happened
    # same command again: re-opens the run, same partitions
    run_script("train.py", "--dry_run", "--strategy", "sorted-balanced", "--put_in", "shard",
               "--num_shards", 3, "--num_slices", 2, *SMALL, *dirs)
    assert json.loads((run / "run.json").read_text())["partitions"] == manifest["partitions"]


def test_changed_config_is_refused_unless_overwrite(dirs, tmp_path):
    run_script("train.py", "--dry_run", *SMALL, "--run_name", "r1", *dirs)
    before = (tmp_path / "ck" / "r1" / "fold-0" / "partition.csv").read_bytes()
    err = error_line(run_script("train.py", "--dry_run", *SMALL, "--seed", 5, "--run_name", "r1", *dirs, check=False))
    assert "another configuration" in err and "seed: 0 -> 5" in err and "--overwrite" in err
    assert (tmp_path / "ck" / "r1" / "fold-0" / "partition.csv").read_bytes() == before
    run_script("train.py", "--dry_run", *SMALL, "--seed", 5, "--run_name", "r1", "--overwrite", *dirs)
    assert json.loads((tmp_path / "ck" / "r1" / "config.json").read_text())["seed"] == 5


@pytest.mark.parametrize("flags,message", [
    (["--strategy", "banana"], "invalid choice"),
    (["--num_shards", 0], "must be >= 1"),
    (["--num_slices", "two"], "not a whole number"),
    (["--num_shards", 200, "--num_slices", 5], "only"),
    (["--test_per_cell", 40], "needs 40 faces of"),
    (["--likelihood_factors", "income"], "unknown factor"),
    (["--run_name", "../escape"], "--run_name"),
    (["--limit", 50], "too small"),
])
def test_bad_flags_fail_with_one_clear_line(dirs, flags, message):
    proc = call_script("train.py", "--dry_run", *SMALL, *dirs, *flags)
    assert message in error_line(proc)


def test_missing_data_folder_says_how_to_get_data(tmp_path, cache_dir):
    proc = call_script("train.py", "--dry_run", "--data_dir", tmp_path / "none", "--cache_dir", cache_dir,
                       "--checkpoints_dir", tmp_path / "ck")
    line = error_line(proc)
    assert "does not exist" in line and "setup.sh" in line
