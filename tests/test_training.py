"""SISA training on real faces: cumulative stages, complete checkpoints, exact resume, clear failures."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from helpers import error_line, run_script
from sisa import checkpoints
from sisa.config import RunConfig
from sisa.experiment import Options, prepare
from sisa.layout import PROJECT_ROOT
from sisa.partition import stage_rows
from sisa.store import sha256_names
from sisa.training import train_run

TINY = dict(num_shards=2, num_slices=2, folds=1, epochs=1, image_size=24, model="cnn", test_per_cell=2,
            test_random=10, strategy="sorted-balanced", put_in="slice")
TINY_FLAGS = ["--num_shards", 2, "--num_slices", 2, "--folds", 1, "--image_size", 24, "--model", "cnn",
              "--test_per_cell", 2, "--test_random", 10, "--strategy", "sorted-balanced"]


def tiny_run(faces_dir, cache_dir, ck, **kw):
    exp = prepare(RunConfig(**{**TINY, **kw}), Options(data_dir=faces_dir, cache_dir=cache_dir, checkpoints_dir=ck,
                                                       progress=False, device="cpu"))
    train_run(exp, Options(progress=False, device="cpu"))
    return exp


def final_weights(run_dir, fold=0, shards=2, slices=2):
    return [torch.load(run_dir / f"fold-{fold}" / f"shard-{s}" / f"slice-{slices - 1}.pt", weights_only=True)["model"]
            for s in range(shards)]


@pytest.mark.slow
def test_stages_are_cumulative_disjoint_and_fully_checkpointed(faces_dir, cache_dir, tmp_path):
    exp = tiny_run(faces_dir, cache_dir, tmp_path)
    part = exp.partitions[0]
    names = part["filename"].to_numpy()
    seen = {}
    for s in range(2):
        for l in range(2):
            path = exp.layout.checkpoint(0, s, l)
            ck = checkpoints.load_checkpoint(path, exp.cfg)          # weights_only=True inside
            rows = stage_rows(part, s, l)
            record = json.loads(checkpoints.sidecar(path).read_text())
            assert ck["stage_hash"] == record["stage_hash"] == sha256_names(names[rows])
            assert record["stage_faces"] == len(rows) and record["epochs"] == 1
            assert set(ck) >= {"model", "optimizer", "scheduler", "rng", "config", "stage_hash", "weights_used"}
            batches = -(-len(rows) // 128)
            assert ck["optimizer"]["state"] and ck["scheduler"] == {"kind": "steps", "step": batches, "total": batches}
            assert {"order", "augment", "torch"} <= set(ck["rng"]) and ck["config"] == exp.cfg.to_dict()
            seen[s, l] = set(names[rows])
    assert seen[0, 0] < seen[0, 1] and seen[1, 0] < seen[1, 1]          # slice l trains on slices 0..l
    assert not seen[0, 1] & seen[1, 1]                                  # shards never share a face
    assert not (seen[0, 1] | seen[1, 1]) & set(names[part["role"] == "test"])   # nor see a test face
    metrics = [json.loads(l) for l in exp.layout.metrics(0).read_text().splitlines()]
    assert [(m["shard"], m["slice"]) for m in metrics] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(np.isfinite(m["loss"]) and m["images_per_s"] > 0 for m in metrics)
    # training is deterministic for a seed: a second run from scratch gives the same weights
    again = tiny_run(faces_dir, cache_dir, tmp_path / "again")
    for a, b in zip(final_weights(exp.layout.root), final_weights(again.layout.root)):
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("recipe,precision", [("original", "fp32"), ("strong", "fp32"), ("strong", "bf16")])
def test_killed_run_resumes_to_the_same_weights(faces_dir, cache_dir, tmp_path, recipe, precision):
    flags = [*TINY_FLAGS, "--epochs", 3, "--image_size", 32, "--data_dir", faces_dir, "--cache_dir", cache_dir,
             "--recipe", recipe, "--precision", precision]
    run_script("train.py", *flags, "--checkpoints_dir", tmp_path / "whole")
    run = tmp_path / "killed" / "sorted-balanced-slice-2x2"
    proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "train.py"), *map(str, flags), "--no_progress",
                             "--checkpoints_dir", str(tmp_path / "killed")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = run / "fold-0" / "shard-0" / "slice-0.json"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "train.py ended before the kill"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (run / "fold-0" / "shard-1" / "slice-1.json").exists()   # killed mid-run
    out = run_script("train.py", *flags, "--checkpoints_dir", tmp_path / "killed").stdout
    assert "resuming: " in out and "of 4 slice checkpoints complete" in out
    assert f"({'bf16 autocast' if precision == 'bf16' else 'fp32'}, " in out          # the run log says which
    assert json.loads((run / "run.json").read_text())["precision"] == precision
    assert json.loads((run / "fold-0" / "shard-1" / "slice-1.json").read_text())["precision"] == precision
    for a, b in zip(final_weights(tmp_path / "whole" / "sorted-balanced-slice-2x2"), final_weights(run)):
        assert all(torch.equal(a[k], b[k]) for k in a)           # bit-identical on CPU, at a fixed thread count
    # a third run has nothing left to do
    assert "nothing to train" in run_script("train.py", *flags, "--checkpoints_dir", tmp_path / "killed").stdout


@pytest.mark.slow
def test_damaged_checkpoint_is_detected_and_retrained(faces_dir, cache_dir, tmp_path):
    exp = tiny_run(faces_dir, cache_dir, tmp_path)
    path = exp.layout.checkpoint(0, 1, 1)
    good = final_weights(exp.layout.root)[1]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    assert checkpoints.status(path).state == "damaged"
    with pytest.raises(Exception, match="damaged"):
        checkpoints.load_checkpoint(path)
    with pytest.warns(UserWarning, match="damaged"):
        train_run(exp, Options(progress=False, device="cpu"))
    assert checkpoints.status(path).state == "ok"
    assert all(torch.equal(good[k], final_weights(exp.layout.root)[1][k]) for k in good)


@pytest.mark.slow
def test_weights_path_is_loaded_and_recorded(faces_dir, cache_dir, tmp_path):
    from sisa.model import build_model
    start, _ = build_model("cnn", "none", seed=99)
    torch.save(start.state_dict(), tmp_path / "start.pt")
    exp = tiny_run(faces_dir, cache_dir, tmp_path / "ck", weights=str(tmp_path / "start.pt"), epochs=1)
    manifest = json.loads(exp.layout.manifest.read_text())
    assert manifest["weights_used"].startswith("file:")
    ck = torch.load(exp.layout.checkpoint(0, 0, 0), weights_only=True)
    assert ck["weights_used"] == manifest["weights_used"]
    # the file really was the starting point: a run from other initial weights ends elsewhere
    other = tiny_run(faces_dir, cache_dir, tmp_path / "ck2", epochs=1)
    assert not torch.equal(ck["model"]["features.0.weight"],
                           torch.load(other.layout.checkpoint(0, 0, 0), weights_only=True)["model"]["features.0.weight"])


@pytest.mark.slow
def test_resnet18_auto_falls_back_offline_with_a_warning(faces_dir, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))   # no cached ImageNet weights here
    proc = run_script("train.py", *TINY_FLAGS, "--model", "resnet18", "--image_size", 32, "--epochs", 1,
                      "--num_slices", 1, "--data_dir", faces_dir, "--cache_dir", cache_dir,
                      "--checkpoints_dir", tmp_path / "ck")
    if "falling back" not in proc.stderr:
        pytest.skip("ImageNet weights were reachable: nothing to fall back from")
    manifest = json.loads((tmp_path / "ck" / "sorted-balanced-slice-2x1" / "run.json").read_text())
    assert manifest["weights_used"] == "none"


@pytest.mark.slow
def test_training_failures_are_one_clear_line(faces_dir, cache_dir, tmp_path):
    base = [*TINY_FLAGS, "--data_dir", faces_dir, "--cache_dir", cache_dir, "--checkpoints_dir", tmp_path / "ck"]
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in error_line(run_script("train.py", *base, "--device", "cuda", check=False))
    line = error_line(run_script("train.py", *base, "--lr", "1e30", "--epochs", 2, "--run_name", "boom", check=False))
    assert "diverged" in line and "lower --lr" in line
    assert error_line(run_script("train.py", *base, "--weights", tmp_path / "nope.pt", check=False)).count("nope.pt")


def test_slice_epoch_schedules():
    full = RunConfig(epochs=15, num_slices=3)
    sisa = RunConfig(epochs=15, num_slices=3, slice_epochs="sisa")
    assert [full.stage_epochs(l) for l in range(3)] == [15, 15, 15]
    assert [sisa.stage_epochs(l) for l in range(3)] == [8, 8, 8]                  # 2*15/(3+1) = 7.5
    # the SISA schedule costs about what E epochs over the whole shard cost: sum_l (l+1)/R * e_l ~ E
    assert abs(sum((l + 1) / 3 * sisa.stage_epochs(l) for l in range(3)) - 15) <= 1
    assert RunConfig(epochs=1, num_slices=5, slice_epochs="sisa").stage_epochs(0) == 1   # never zero


@pytest.mark.slow
def test_wandb_offline_logging(faces_dir, cache_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_script("train.py", *TINY_FLAGS, "--epochs", 1, "--num_slices", 1, "--wandb", "--data_dir", faces_dir,
               "--cache_dir", cache_dir, "--checkpoints_dir", tmp_path)
    runs = list((tmp_path / "sorted-balanced-slice-2x1" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))       # the offline run and its history file


def test_the_strong_recipe_records_its_schedule_in_every_checkpoint(faces_dir, cache_dir, tmp_path):
    exp = tiny_run(faces_dir, cache_dir, tmp_path, recipe="strong", model="cnn-max", epochs=2)
    assert exp.cfg.lr == 2e-3
    for s in range(2):
        for l in range(2):
            ck = checkpoints.load_checkpoint(exp.layout.checkpoint(0, s, l), exp.cfg)
            per_epoch = -(-len(stage_rows(exp.partitions[0], s, l)) // 128)
            assert ck["scheduler"] == {"kind": "one_cycle", "step": 2 * per_epoch, "total": 2 * per_epoch}
            assert ck["optimizer"]["param_groups"][0]["weight_decay"] == 5e-4      # AdamW's decay, kept
    rates = [json.loads(line)["lr"] for line in exp.layout.metrics(0).read_text().splitlines()]
    assert rates[0] == pytest.approx(2e-3 / 25) and rates[1] > rates[0]       # every stage warms up again


def test_the_graphs_engine_falls_back_to_eager_on_a_cpu(faces_dir, cache_dir, tmp_path):
    eager = tiny_run(faces_dir, cache_dir, tmp_path / "eager", recipe="strong")
    exp = prepare(RunConfig(**{**TINY, "recipe": "strong"}),
                  Options(data_dir=faces_dir, cache_dir=cache_dir, checkpoints_dir=tmp_path / "graphs", progress=False))
    with pytest.warns(UserWarning, match="needs a CUDA GPU; training eagerly"):
        train_run(exp, Options(progress=False, device="cpu", engine="graphs"))
    for a, b in zip(final_weights(eager.layout.root), final_weights(exp.layout.root)):
        assert all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads(checkpoints.sidecar(exp.layout.checkpoint(0, 0, 1)).read_text())
    assert record["engine"] == "eager"
