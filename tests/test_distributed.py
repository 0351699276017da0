"""torchrun with 2 CPU ranks (gloo) on a tiny real run: the same checkpoints as one process."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import run_script
from sisa.layout import PROJECT_ROOT
from sisa.store import read_jsonl

FLAGS = ["--num_shards", 3, "--num_slices", 2, "--folds", 2, "--image_size", 24, "--model", "cnn", "--epochs", 1,
         "--test_per_cell", 2, "--test_random", 10, "--strategy", "sorted-balanced"]
NAME = "sorted-balanced-slice-3x2"
pytestmark = pytest.mark.slow      # torchrun trainings in subprocesses

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}     # the same thread count in both: identical float sums


def torchrun(script, *args):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(PROJECT_ROOT / script), *map(str, args), "--no_progress"],
                          capture_output=True, text=True, cwd=PROJECT_ROOT, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def single(script, *args):
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / script), *map(str, args), "--no_progress"],
                          capture_output=True, text=True, cwd=PROJECT_ROOT, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def weights(run):
    return {p.relative_to(run).as_posix(): torch.load(p, weights_only=True)["model"]
            for p in sorted(run.glob("fold-*/shard-*/slice-*.pt"))}


def same(a, b):
    assert len(a) == 2 * 3 * 2 and a.keys() == b.keys()      # 2 folds x 3 shards x 2 slices: never vacuous
    for k in a:
        assert all(torch.equal(a[k][t], b[k][t]) for t in a[k]), k


@pytest.fixture(scope="module")
def runs(faces_dir, cache_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    data = ["--data_dir", faces_dir, "--cache_dir", cache_dir]
    out = torchrun("train.py", *FLAGS, *data, "--checkpoints_dir", base / "multi")
    assert "rank 0: training" in out.stdout and "rank 1: training" in out.stdout
    single("train.py", *FLAGS, *data, "--checkpoints_dir", base / "single")
    return base


def test_two_ranks_train_the_same_checkpoints_as_one_process(runs):
    same(weights(runs / "single" / NAME), weights(runs / "multi" / NAME))


def test_two_ranks_serve_unlearning_like_one_process(runs, tmp_path):
    for kind in ("single", "multi"):
        shutil.copytree(runs / kind / NAME, tmp_path / kind / NAME)
    torchrun("unlearn.py", "--run_dir", tmp_path / "multi" / NAME, "--sample", 3)
    single("unlearn.py", "--run_dir", tmp_path / "single" / NAME, "--sample", 3)
    same(weights(tmp_path / "single" / NAME), weights(tmp_path / "multi" / NAME))
    logs = [sorted(r["request_id"] for r in read_jsonl(tmp_path / k / NAME / "unlearning" / "log.jsonl"))
            for k in ("single", "multi")]
    assert logs[0] == logs[1] and len(logs[0]) == 6
    assert "verified" in run_script("unlearn.py", "--run_dir", tmp_path / "multi" / NAME, "--verify").stdout
