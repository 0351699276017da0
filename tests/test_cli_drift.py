"""The commands say what the code does: help texts, flag combinations, and errors that name the same
thing whichever command meets it, before anything is written."""
import argparse
import dataclasses
import re
import shutil

import pytest
import torch

from helpers import _script, call_script, error_line
from sisa import serving
from sisa.config import RunConfig, STRATEGIES
from sisa.errors import SisaError
from sisa.experiment import Options, open_run, prepare
from sisa.recipe import RECIPES

SCRIPTS = ("train.py", "evaluate.py", "unlearn.py")
SMALL = ["--image_size", 16, "--model", "cnn", "--epochs", 1, "--test_per_cell", 1, "--test_random", 5]


def help_of(script: str, flag: str) -> str:
    (action,) = [a for a in _script(script).get_args_parser()._actions if flag in a.option_strings]
    return " ".join(action.help.split())


def claims_shift(text: str) -> bool:
    return re.search(r"(?<!no )shift", text) is not None


def test_the_recipe_help_says_whether_the_strong_recipe_shifts(monkeypatch):
    text = help_of("train.py", "--recipe")
    assert claims_shift(text) == (RECIPES["strong"].shift > 0), text
    # the text follows the recipe: were the shift turned on, the help would say so
    monkeypatch.setitem(RECIPES, "strong", dataclasses.replace(RECIPES["strong"], shift=1 / 16))
    assert "shift of up to 0.0625" in help_of("train.py", "--recipe")


def test_each_command_says_what_it_reads_the_images_for():
    unlearn, evaluate = help_of("unlearn.py", "--data_dir"), help_of("evaluate.py", "--data_dir")
    assert "serve requests" in unlearn and "retrain" in unlearn and "evaluated" not in unlearn
    assert "logits" in evaluate and "default: the run's own" in unlearn and "default: the run's own" in evaluate


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_says_what_it_means_and_its_default(script):
    p = _script(script).get_args_parser()
    chosen = {a for g in p._mutually_exclusive_groups                                           # one is required
              if g.required or "required" in (getattr(g._container, "description", "") or "") for a in g._group_actions}
    for a in p._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        assert a.help and len(a.help) > 15, a.option_strings
        assert a in chosen or "default" in a.help or "required" in a.help, (a.option_strings, a.help)


def test_random_placement_refuses_put_in_shard_for_new_runs_only(faces_dir, cache_dir, tmp_path):
    for strategy in STRATEGIES:
        cfg = RunConfig(strategy=strategy, put_in="shard")
        if strategy.startswith("random-"):
            with pytest.raises(SisaError, match=r"--put_in 'shard' is invalid: random placement .* leave --put_in at slice"):
                cfg.validate()
        else:
            cfg.validate()
        RunConfig(strategy=strategy, put_in="slice").validate()
    dirs = ["--data_dir", faces_dir, "--cache_dir", cache_dir, "--checkpoints_dir", tmp_path / "ck"]
    line = error_line(call_script("train.py", "--dry_run", "--strategy", "random-balanced", "--put_in", "shard",
                                  *SMALL, *dirs))
    assert "--put_in" in line and "sorted-balanced" in line and not (tmp_path / "ck").exists()
    # a run made before the rule (its config.json records random + shard) still opens, and resumes
    old = RunConfig.from_dict(RunConfig(strategy="random-balanced", put_in="shard", num_shards=2, num_slices=2,
                                        folds=1, image_size=16, model="cnn", epochs=1, test_per_cell=1,
                                        test_random=5).to_dict())
    exp = prepare(old, Options(data_dir=faces_dir, cache_dir=cache_dir, checkpoints_dir=tmp_path / "old",
                               progress=False))
    assert open_run(exp.layout, Options(), with_images=False).cfg == old
    resumed = call_script("train.py", "--dry_run", "--strategy", "random-balanced", "--put_in", "shard",
                          "--num_shards", 2, "--num_slices", 2, "--folds", 1, *SMALL, *dirs[:4],
                          "--checkpoints_dir", tmp_path / "old")
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_train_on_cuda_without_a_gpu_fails_before_writing_anything(faces_dir, cache_dir, tmp_path):
    proc = call_script("train.py", "--num_shards", 2, "--num_slices", 2, "--folds", 1, *SMALL, "--device", "cuda",
                       "--data_dir", faces_dir, "--cache_dir", cache_dir, "--checkpoints_dir", tmp_path / "ck")
    assert "no CUDA GPU" in error_line(proc) and proc.returncode == 1
    assert not (tmp_path / "ck").exists()          # no run folder, no partitions, not even the LOCK


@pytest.mark.parametrize("case", ["empty data folder", "limit too small"])
def test_a_failed_train_leaves_no_run_folder_behind(faces_dir, cache_dir, tmp_path, case):
    ck = tmp_path / "ck"
    (ck / "another-run").mkdir(parents=True)           # the checkpoints folder itself is kept
    (tmp_path / "empty").mkdir()
    data = ["--data_dir", tmp_path / "empty"] if case == "empty data folder" else ["--data_dir", faces_dir, "--limit", 100]
    for dry in ([], ["--dry_run"]):
        proc = call_script("train.py", *dry, "--folds", 1, "--image_size", 16, "--model", "cnn", *data,
                           "--cache_dir", cache_dir, "--checkpoints_dir", ck, "--device", "cpu")
        assert ("no usable face" if case == "empty data folder" else "too small") in error_line(proc)
        assert sorted(p.name for p in ck.iterdir()) == ["another-run"]      # no folder holding only a LOCK
    # a folder that was there before is left as it was, LOCK and all
    (ck / "random-balanced-slice-5x3").mkdir()
    call_script("train.py", "--folds", 1, *data, "--cache_dir", cache_dir, "--checkpoints_dir", ck)
    assert [p.name for p in (ck / "random-balanced-slice-5x3").iterdir()] == ["LOCK"]


def missing_list(line: str) -> str:
    """What a 'not fully trained' error names: 'fold 0: shard 1 slice 1 missing; fold 1: ...'."""
    found = re.search(r"\((fold \d+: .*)\); ", line)
    assert found, line
    return found.group(1)


@pytest.mark.slow
def test_evaluate_and_unlearn_name_the_same_missing_checkpoints(faces_dir, cache_dir, tmp_path):
    """A run whose training stopped in fold 0 after shard 1's first slice, before fold 1."""
    ck = tmp_path / "ck"
    run = ck / "sorted-balanced-slice-2x3"
    proc = call_script("train.py", "--strategy", "sorted-balanced", "--num_shards", 2, "--num_slices", 3,
                       "--folds", 2, "--limit", 250, *SMALL, "--data_dir", faces_dir, "--cache_dir", cache_dir,
                       "--checkpoints_dir", ck, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    for path in [*run.glob("fold-0/shard-1/slice-[12].*"), *run.glob("fold-1/shard-*/slice-*")]:
        path.unlink()
    (run / "fold-0" / "logits.npz").unlink(missing_ok=True)
    evaluated = error_line(call_script("evaluate.py", "--run_dir", run, "--summaries_dir", tmp_path / "s"))
    unlearned = error_line(call_script("unlearn.py", "--run_dir", run, "--sample", 1))
    assert missing_list(evaluated) == missing_list(unlearned) == \
        "fold 0: shard 1 slice 1 missing; fold 1: nothing trained yet"
    assert "--allow_partial" in evaluated and "before unlearning" in unlearned
    # --allow_partial: the complete folds only, and still the same names when none is complete
    shutil.rmtree(run / "fold-0" / "shard-0")
    evaluated = error_line(call_script("evaluate.py", "--run_dir", run, "--allow_partial", "--summaries_dir", tmp_path / "s"))
    assert "no complete fold to evaluate" in evaluated
    assert missing_list(evaluated) == "fold 0: shard 0 slice 0 missing, shard 1 slice 1 missing; fold 1: nothing trained yet"


def test_serving_is_callable_from_python(faces_dir, cache_dir, tmp_path):
    """What unlearn.py does, without argparse, on a run that is partitioned but not trained."""
    opts = Options(data_dir=faces_dir, cache_dir=cache_dir, checkpoints_dir=tmp_path, progress=False, device="cpu")
    exp = prepare(RunConfig(strategy="sorted-balanced", num_shards=2, num_slices=2, folds=2, image_size=16,
                            model="cnn", test_per_cell=1, test_random=5), opts)
    lines = []
    costs = serving.price_requests(exp.cfg.name, opts, batch_sizes=[3], draws=50, say=lines.append)
    assert [c["fold"] for c in costs] == [0, 0, 1, 1] and costs[0]["expected_faces_x_epochs"] > 0
    assert lines[0].startswith("request model: shared") and "batches of 3" in lines[2]
    assert serving.price_requests(exp.layout, opts, fold=1, say=lines.append)[0]["fold"] == 1
    assert not serving.verify_run(exp.layout, opts, say=lines.append)           # nothing trained: nothing proven
    assert "fail verification" in lines[-1]
    with pytest.raises(SisaError, match=r"not fully trained \(fold 1: nothing trained yet\); finish it"):
        serving.serve_requests(exp.layout, opts, sample=1, fold=1, say=lines.append)
    with pytest.raises(SisaError, match="--fold 2 does not exist"):
        serving.verify_run(exp.layout, opts, fold=2)
    with pytest.raises(SisaError, match="one way"):
        serving.serve_requests(exp.layout, opts, requests="x.txt", sample=1)
    priced = serving.price_volume(exp.layout, opts, "group:black", 0.05, say=lines.append)   # no training needed
    assert [c["fold"] for c in priced] == [0, 1] and priced[0]["faces"] > 0 and "group:black at 0.05" in lines[-1]
    table = serving.write_report([exp.cfg.name], opts, tmp_path / "s", say=lines.append)
    assert table["run"].tolist() == [exp.cfg.name] and (tmp_path / "s" / "unlearning-report.csv").exists()
    assert not (exp.layout.root / "unlearning").exists() and not list(exp.layout.root.glob("fold-*/shard-*"))
