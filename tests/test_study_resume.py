"""A study's identity and resume: which settings make a run, phases skipped only when their outputs
exist, one fixed request order, seconds of interrupted work, --dry_run and --report_only."""
import time

import numpy as np
import pandas as pd
import pytest

from helpers import call_script, error_line, run_script
from sisa.errors import SisaError
from sisa.layout import StudyLayout
from sisa.study import Progress, Settings, resolve_settings
from sisa.unlearning import request_order, sample_requests
from test_study import TINY, where


# ---- settings: what makes a run ---------------------------------------------------------------
def test_only_run_settings_change_a_run():
    s = resolve_settings("cpu", {}, "x")
    for more in ({"n_boot": 5000}, {"replicates": 3}, {"configs": ["baseline", "uniform"]}, {"control": False},
                 {"aa": False}, {"control_doses": (0.5, 1.0)}, {"reference_race": "white"},
                 {"tests": "both"}, {"sample": 4}, {"scenarios": ("random",), "forget": (0.01,)},
                 {"scenarios": ("random",), "forget": (0.01,), "methods": ("scrub",)}):
        new = resolve_settings("cpu", more, "x")
        assert new.run_changes(s) == [] and new.other_changes(s), more        # finished runs are reused
    assert resolve_settings("cpu", {"epochs": 2}, "x").run_changes(s) == [f"epochs: {s.epochs} -> 2"]
    fewer = resolve_settings("cpu", {"sample": 3}, "x")
    assert resolve_settings("cpu", {"sample": 1}, "x").run_changes(fewer) == ["sample: 3 -> 1"]   # already served


def test_an_older_study_json_reads_without_a_traceback():
    s = resolve_settings("cpu", {}, "x")
    old = {k: v for k, v in s.to_dict().items() if k not in ("likelihood_factors", "n_boot")}
    old["a_dropped_setting"] = 3
    assert Settings.from_dict(old, fallback=s) == s                      # missing: taken from now; unknown: ignored
    with pytest.raises(SisaError, match="study.json lacks .*--overwrite"):
        Settings.from_dict({"name": "x", "preset": "cpu"})


def test_the_poster_preset_needs_its_weights_or_says_so(monkeypatch):
    from sisa.study import settings
    monkeypatch.setattr(settings, "imagenet_weights_cached", lambda: False)
    with pytest.raises(SisaError, match="ImageNet ResNet-18 weights.*--weights none"):
        resolve_settings("poster", {}, None)
    assert resolve_settings("poster", {"weights": "none"}, None).weights == "none"


# ---- requests: one fixed order ----------------------------------------------------------------
def fold(n=400, seed=1):
    gen = np.random.default_rng(seed)
    return pd.DataFrame({"filename": [f"f{i}.jpg" for i in range(n)],
                         "role": np.where(np.arange(n) % 5 == 0, "test", "train"),
                         "knowledge": gen.random(n), "high_likelihood": gen.random(n) < 0.25,
                         "forgotten": np.zeros(n, bool)})


def test_requests_come_in_one_fixed_order_whatever_was_served():
    part = fold()
    order = request_order(part, 0, 2)
    assert sorted(order) == sorted(part.loc[part["role"] == "train", "filename"])      # every training face, once
    assert sample_requests(part, 5, 0, 2) == order[:5]
    part.loc[part["filename"].isin(order[:3]), "forgotten"] = True                     # a study killed after 3 of 5
    assert request_order(part, 0, 2) == order                                          # the key is not the count
    assert sample_requests(part, 2, 0, 2) == order[3:5]                                # so the rest are the same faces
    assert request_order(part, 0, 3) != order and request_order(part, 1, 2) != order  # fold and seed do change it


def test_the_order_follows_the_request_probability():
    from sisa.likelihood import request_probability
    part = fold(4000)
    train = part[part["role"] == "train"].set_index("filename")
    p = request_probability(train["knowledge"].to_numpy(), train["high_likelihood"].to_numpy())
    first = request_order(part, 0, 0)[:300]
    # the first requests are the likely ones: their mean probability is well above the pool's
    assert pd.Series(p, train.index)[first].mean() > 1.5 * p.mean()


# ---- progress: seconds of every attempt ----------------------------------------------------------
def test_an_interrupted_phase_keeps_its_seconds(tmp_path):
    progress = Progress(StudyLayout(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        with progress.phase("r", "train"):
            time.sleep(0.05)
            raise KeyboardInterrupt
    assert not progress.finished("r", "train") and progress.seconds() >= 0.05
    with progress.phase("r", "train") as facts:
        facts["images_per_s"] = 1.0
    again = Progress.load(StudyLayout(tmp_path))                     # as a later invocation reads it
    rec = again.done["r"]["train"]
    assert again.finished("r", "train") and rec["attempts"] == 2 and rec["seconds"] >= 0.05


def test_a_missing_json_file_is_one_line(tmp_path):
    from sisa.store import read_json
    with pytest.raises(SisaError, match="is missing"):
        read_json(tmp_path / "nothing.json")


def test_control_and_no_control_together_are_refused(tmp_path):
    assert "not allowed with argument" in error_line(call_script("study.py", "--control", "--no_control"))


# ---- real runs ---------------------------------------------------------------------------------
def test_a_dry_run_writes_nothing_and_says_what_is_left(faces_dir, cache_dir, tmp_path):
    out = run_script("study.py", *TINY, "--name", "dry", *where(faces_dir, cache_dir, tmp_path), "--dry_run").stdout
    assert not any(p.exists() for p in (tmp_path / "ck", tmp_path / "sum", tmp_path / "rep"))
    assert "dry run (nothing written)" in out and "dry-kfold-later-slices" in out and "every phase" in out
    assert "images to train, evaluate and retrain" in out and "about" in out


def test_a_request_volume_no_fold_can_supply_fails_before_training(faces_dir, cache_dir, tmp_path):
    line = error_line(call_script("study.py", *TINY, "--name", "big", "--sample", 5000,
                                  *where(faces_dir, cache_dir, tmp_path)))
    assert "--sample 5000 is more than the" in line and "lower --sample" in line
    assert not list((tmp_path / "ck").glob("*/fold-*/shard-*/*.pt"))       # nothing trained


@pytest.mark.parametrize("cuda,weights,expected", [(False, False, "cpu"), (False, True, "cpu"),
                                                   (True, False, "gpu"), (True, True, "poster")])
def test_auto_chooses_the_preset_from_the_device_and_the_weights_at_hand(monkeypatch, cuda, weights, expected):
    from sisa import device
    from sisa.study import settings
    monkeypatch.setattr(device, "wants_cuda", lambda name: cuda)
    monkeypatch.setattr(settings, "imagenet_weights_cached", lambda: weights)
    preset, why = settings.choose_preset("auto", "auto")
    assert preset == expected and why
    assert settings.choose_preset("gpu", "auto") == ("gpu", "asked for")


def test_a_study_that_cannot_make_its_runs_leaves_no_run_folder(tmp_path):
    empty = tmp_path / "no-faces"
    empty.mkdir()
    line = error_line(call_script("study.py", "--preset", "cpu", "--data_dir", empty, "--checkpoints_dir", tmp_path / "ck",
                                  "--summaries_dir", tmp_path / "sum", "--reports_dir", tmp_path / "rep"))
    assert "no usable face images" in line
    assert not (tmp_path / "ck").exists()                # not even a run folder holding only its LOCK


def test_a_weights_file_that_is_not_there_is_refused_before_anything_is_written(tmp_path):
    from sisa.config import RunConfig
    with pytest.raises(SisaError, match="--weights '/no/such.pt' is invalid: no such file"):
        RunConfig(model="cnn", weights="/no/such.pt").validate()
    recorded = RunConfig.from_dict(RunConfig(model="cnn", weights="/no/such.pt").to_dict())
    assert recorded.validate().weights == "/no/such.pt"      # a run made with it resumes without the file


def test_replicates_draw_their_own_folds_and_arms_their_own_placement(faces_dir, cache_dir):
    """Replicate 1 tests other folds of the same faces than replicate 0; within a replicate every
    configuration shares the folds, and uniform-b differs from uniform only in where faces are placed."""
    from sisa.experiment import Options, plan
    s = resolve_settings("cpu", {"replicates": 2, "image_size": 24, "folds": 2, "num_shards": 2, "num_slices": 2}, "r")
    opts = Options(data_dir=faces_dir, cache_dir=cache_dir)
    part = {(tag, r): plan(s.run_config("kfold", tag, r), opts)[0].partitions[0]
            for tag in ("uniform", "uniform-b") for r in (0, 1)}
    test = {k: set(p.loc[p["role"] == "test", "filename"]) for k, p in part.items()}
    assert test[("uniform", 0)] == test[("uniform-b", 0)] and test[("uniform", 0)] != test[("uniform", 1)]
    a, b = part[("uniform", 0)], part[("uniform-b", 0)]
    train = a["role"] == "train"
    assert (a.loc[train, "shard"] != b.loc[train, "shard"]).any()                     # another placement draw
    assert a["high_likelihood"].equals(b["high_likelihood"])                          # the same flags
