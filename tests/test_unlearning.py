"""Unlearning on tiny real runs: the right stages retrained, exactness, crash consistency, proof, cost."""
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import error_line, run_script
from sisa import checkpoints
from sisa.config import RunConfig
from sisa.device import bf16_native
from sisa.experiment import Options, open_run, prepare
from sisa.layout import PROJECT_ROOT, RunLayout
from sisa.partition import read_partition, write_partition_csv
from sisa.store import read_jsonl
from sisa.training import train_run
from sisa.unlearning import expected_batch_cost, expected_cost, set_cost, stage_costs

TINY = dict(num_shards=2, num_slices=3, folds=1, epochs=1, image_size=24, model="cnn", test_per_cell=2,
            test_random=10, strategy="sorted-balanced", put_in="slice")
NAME = "sorted-balanced-slice-2x3"


@pytest.fixture(scope="module")
def trained(faces_dir, cache_dir, tmp_path_factory):
    ck = tmp_path_factory.mktemp("trained")
    exp = prepare(RunConfig(**TINY), Options(data_dir=faces_dir, cache_dir=cache_dir, checkpoints_dir=ck, progress=False))
    train_run(exp, Options(progress=False, device="cpu", precision="fp32"))    # fp32 on any CPU (auto: bf16 where native)
    return ck


@pytest.fixture(scope="module")
def trained_strong(faces_dir, cache_dir, tmp_path_factory):
    ck = tmp_path_factory.mktemp("trained-strong")
    exp = prepare(RunConfig(**TINY, recipe="strong"),
                  Options(data_dir=faces_dir, cache_dir=cache_dir, checkpoints_dir=ck, progress=False))
    train_run(exp, Options(progress=False, device="cpu", precision="fp32"))
    return ck


@pytest.fixture(scope="module")
def trained_bf16(faces_dir, cache_dir, tmp_path_factory):
    """The strong recipe in bf16 autocast (emulated on CPUs without bf16 instructions: slower, same numbers)."""
    ck = tmp_path_factory.mktemp("trained-bf16")
    exp = prepare(RunConfig(**TINY, recipe="strong"),
                  Options(data_dir=faces_dir, cache_dir=cache_dir, checkpoints_dir=ck, progress=False))
    with pytest.warns(UserWarning, match="emulated") if not bf16_native(torch.device("cpu")) else nullcontext():
        train_run(exp, Options(progress=False, device="cpu", precision="bf16"))
    assert json.loads((ck / NAME / "run.json").read_text())["precision"] == "bf16"
    return ck


@pytest.fixture
def run(trained, tmp_path):
    """A private copy of the trained run (tests change it)."""
    shutil.copytree(trained / NAME, tmp_path / NAME)
    return tmp_path / NAME


def unlearn(run, *args, check=True, env=None):
    if env:   # a fault-injection run: its exit status is the test's business
        return subprocess.run([sys.executable, "unlearn.py", "--run_dir", str(run), *map(str, args), "--no_progress"],
                              capture_output=True, text=True, env={**os.environ, **env}, cwd=PROJECT_ROOT)
    return run_script("unlearn.py", "--run_dir", run, *args, check=check)


def digests(run):
    found = {p.relative_to(run).as_posix(): checkpoints.file_digest(p) for p in sorted(run.glob("fold-*/shard-*/slice-*.pt"))}
    assert len(found) == 6                                   # 2 shards x 3 slices: never an empty comparison
    return found


def train_face(run, shard, slice_):
    part = read_partition(run / "fold-0" / "partition.csv")
    rows = part[(part["role"] == "train") & (part["shard"] == shard) & (part["slice"] == slice_)]
    return rows["filename"].iloc[0]


@pytest.mark.slow
def test_only_the_affected_shard_from_the_affected_slice_is_retrained(run, tmp_path):
    face = train_face(run, 1, 1)
    before = digests(run)
    (tmp_path / "req.txt").write_text(face + "\n")
    out = unlearn(run, "--requests", tmp_path / "req.txt").stdout
    assert f"forgot {face} (shard 1, slice 1): retrained 2 stage(s)" in out
    after = digests(run)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"fold-0/shard-1/slice-1.pt", "fold-0/shard-1/slice-2.pt"}
    part = read_partition(run / "fold-0" / "partition.csv")
    assert part.loc[part["filename"] == face, "forgotten"].item() and part["forgotten"].sum() == 1
    (rec,) = read_jsonl(run / "unlearning" / "log.jsonl")
    costs = stage_costs(part, RunConfig(**TINY))
    assert rec["face"] == face and rec["shard"] == 1 and rec["slice"] == 1 and rec["stages_retrained"] == [1, 2]
    assert rec["faces_x_epochs"] == costs[1, 1:].sum() and rec["full_faces_x_epochs"] == costs.sum()
    assert rec["wall_seconds"] > 0 and not (run / "unlearning" / "pending").exists()
    assert "verified" in unlearn(run, "--verify").stdout


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["original", "strong", "strong-bf16"])
def test_unlearning_is_exact(trained, trained_strong, trained_bf16, recipe, tmp_path):
    """The retrained shard equals that shard trained from scratch without the face, same seed; a bf16
    run is unlearned in bf16 (--precision auto keeps the run's recorded precision), and bit-exact too."""
    run = tmp_path / NAME
    shutil.copytree({"original": trained, "strong": trained_strong, "strong-bf16": trained_bf16}[recipe] / NAME, run)
    face = train_face(run, 0, 0)
    (tmp_path / "req.txt").write_text(face + "\n")
    unlearn(run, "--requests", tmp_path / "req.txt")
    precisions = {json.loads(p.read_text())["precision"] for p in run.glob("fold-0/shard-*/slice-*.json")}
    assert precisions == {"bf16" if recipe.endswith("bf16") else "fp32"}
    assert_equals_scratch(run, tmp_path)


def assert_equals_scratch(run, tmp_path):
    """Every final shard model of `run` equals training from scratch without its forgotten faces."""
    # from scratch: the same run folder without checkpoints, the faces marked forgotten from the start
    scratch = tmp_path / "scratch" / NAME
    scratch.mkdir(parents=True)
    for f in ("config.json", "run.json", "skipped.csv"):
        shutil.copy(run / f, scratch / f)
    (scratch / "fold-0").mkdir()
    shutil.copy(run / "fold-0" / "partition.csv", scratch / "fold-0" / "partition.csv")
    exp = open_run(RunLayout(scratch), Options(progress=False), with_images=True)
    train_run(exp, Options(progress=False, device="cpu"))
    for s in range(2):
        a = torch.load(run / "fold-0" / f"shard-{s}" / "slice-2.pt", weights_only=True)["model"]
        b = torch.load(scratch / "fold-0" / f"shard-{s}" / "slice-2.pt", weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), f"shard {s} differs"


@pytest.mark.slow
def test_a_batch_retrains_each_shard_once_and_is_exact(run, tmp_path):
    part = read_partition(run / "fold-0" / "partition.csv")
    train = part[part["role"] == "train"]
    def faces(shard, slice_, n):
        return train[(train["shard"] == shard) & (train["slice"] == slice_)]["filename"].iloc[:n].tolist()
    batch1 = faces(1, 1, 1) + faces(1, 2, 2)          # shard 1 from slice 1: one retraining, not three
    batch0 = faces(0, 2, 1)
    before = digests(run)
    (tmp_path / "req.txt").write_text("\n".join(batch1 + batch0) + "\n")
    out = unlearn(run, "--requests", tmp_path / "req.txt", "--batched").stdout
    assert "in a batch of 3" in out and "once per shard's batch" in out
    after = digests(run)
    assert {k for k in before if before[k] != after[k]} == {
        "fold-0/shard-1/slice-1.pt", "fold-0/shard-1/slice-2.pt", "fold-0/shard-0/slice-2.pt"}
    log = read_jsonl(run / "unlearning" / "log.jsonl")
    part = read_partition(run / "fold-0" / "partition.csv")
    costs = stage_costs(part, RunConfig(**TINY))
    assert sorted(r["face"] for r in log) == sorted(batch1 + batch0) and part["forgotten"].sum() == 4
    mine = [r for r in log if r["shard"] == 1]
    assert [r["batch_size"] for r in mine] == [3, 3, 3] and all(r["stages_retrained"] == [1, 2] for r in mine)
    assert sum(r["faces_x_epochs"] for r in mine) == pytest.approx(costs[1, 1:].sum())
    assert [r["faces_x_epochs"] for r in log if r["shard"] == 0] == [costs[0, 2]]
    assert "verified" in unlearn(run, "--verify").stdout
    assert_equals_scratch(run, tmp_path)


@pytest.mark.slow
def test_a_crash_inside_a_batch_commit_is_rolled_forward(run):
    proc = unlearn(run, "--sample", 4, "--batched", env={"SISA_FAULT": "after_partition"})
    assert proc.returncode == 137
    (commit,) = (run / "unlearning" / "pending").glob("fold-0/shard-*/commit.json")
    due = json.loads(commit.read_text())["faces"]
    out = unlearn(run, "--verify").stdout
    assert "finished an interrupted unlearning request" in out and "verified" in out
    log = read_jsonl(run / "unlearning" / "log.jsonl")
    part = read_partition(run / "fold-0" / "partition.csv")
    assert sorted(r["face"] for r in log) == sorted(due) == sorted(part.loc[part["forgotten"], "filename"])


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["after_commit", "after_partition", "mid_move"])
def test_a_crash_after_the_commit_is_rolled_forward(run, fault):
    proc = unlearn(run, "--sample", 1, env={"SISA_FAULT": fault})
    assert proc.returncode == 137
    assert list((run / "unlearning" / "pending").glob("fold-0/shard-*/commit.json"))
    out = unlearn(run, "--verify").stdout                 # any command that opens the run finishes the job
    assert "finished an interrupted unlearning request" in out and "verified" in out
    log = read_jsonl(run / "unlearning" / "log.jsonl")
    part = read_partition(run / "fold-0" / "partition.csv")
    assert len(log) == 1 and part["forgotten"].sum() == 1
    assert part.loc[part["forgotten"], "filename"].item() == log[0]["face"]


@pytest.mark.slow
def test_a_kill_during_retraining_leaves_the_run_usable_and_a_rerun_reuses_the_work(run):
    """SIGKILL while the first request's checkpoints sit retrained in pending/ but are not committed
    (the process waits there to be killed: the kill lands at that moment, every time)."""
    before = digests(run)
    partition_before = (run / "fold-0" / "partition.csv").read_bytes()
    proc = subprocess.Popen([sys.executable, "unlearn.py", "--run_dir", str(run), "--sample", "2", "--no_progress"],
                            cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "SISA_FAULT": "pause:before_commit"})
    pending = run / "unlearning" / "pending"
    deadline = time.time() + 120
    while not list(pending.glob("fold-0/shard-*/slice-2.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)                                      # the record is the last write before the pause
    assert proc.poll() is None, "unlearn.py ended before the kill"
    proc.kill()
    proc.wait()
    (shard_dir,) = pending.glob("fold-0/shard-*")
    assert list(shard_dir.glob("slice-*.pt")) and not (shard_dir / "commit.json").exists()
    epochs_before = len(read_jsonl(run / "unlearning" / "metrics.jsonl"))       # the first request's retraining
    assert epochs_before >= 1
    assert not read_jsonl(run / "unlearning" / "log.jsonl")                        # nothing committed ...
    assert digests(run) == before and (run / "fold-0" / "partition.csv").read_bytes() == partition_before
    assert "verified" in unlearn(run, "--verify").stdout                          # ... and the run is usable
    unlearn(run, "--sample", 2)        # the same draw: the first request finds its retrained stages
    log = read_jsonl(run / "unlearning" / "log.jsonl")
    # only the second request trained now (one epoch per stage): the first one's stages were reused
    assert len(read_jsonl(run / "unlearning" / "metrics.jsonl")) == epochs_before + len(log[1]["stages_retrained"])
    assert epochs_before == len(log[0]["stages_retrained"])
    part = read_partition(run / "fold-0" / "partition.csv")
    assert len(log) == 2 == part["forgotten"].sum() and len({r["request_id"] for r in log}) == 2
    assert "verified" in unlearn(run, "--verify").stdout


@pytest.mark.slow
def test_verify_fails_on_a_planted_violation(run):
    part = read_partition(run / "fold-0" / "partition.csv")
    face = train_face(run, 1, 0)
    part.loc[part["filename"] == face, "forgotten"] = True     # claimed forgotten, never retrained
    (run / "fold-0" / "partition.csv").write_bytes(write_partition_csv(part))
    proc = unlearn(run, "--verify", check=False)
    assert proc.returncode == 1 and "fold 0 shard 1: VIOLATION" in proc.stdout and "fold 0 shard 0: OK" in proc.stdout


def hand_worked():
    """2 shards x 2 slices, 3 epochs. Shard 0: slice 0 = a (high likelihood), slice 1 = b; shard 1:
    slice 0 = c, slice 1 = d (high); e is a test face."""
    part = pd.DataFrame({"filename": list("abcde"), "role": ["train"] * 4 + ["test"],
                         "shard": pd.array([0, 0, 1, 1, None], dtype="Int64"),
                         "slice": pd.array([0, 1, 0, 1, None], dtype="Int64"),
                         "knowledge": [0.4] * 5, "high_likelihood": [True, False, False, True, False],
                         "forgotten": [False] * 5})
    return RunConfig(num_shards=2, num_slices=2, epochs=3, folds=1), part


def test_expected_cost_on_a_hand_worked_partition():
    cfg, part = hand_worked()
    assert stage_costs(part, cfg).tolist() == [[3, 6], [3, 6]]        # stage l has l+1 faces, 3 epochs
    lo = 0.001 * 0.4 * 0.34 / (1 - 0.66 * 0.4)                           # P(request | low, k=.4)
    w = np.array([0.001, lo, lo, 0.001]) / (2 * 0.001 + 2 * lo)
    # a in slice 0 -> retrain both stages (9); b, d in slice 1 -> 6; c in slice 0 -> 9
    e = expected_cost(part, cfg)
    assert e["expected_faces_x_epochs"] == pytest.approx(w @ [9, 6, 9, 6])
    assert e["full_faces_x_epochs"] == 18 and e["baseline_faces_x_epochs"] == 12
    assert e["speedup_vs_full"] == pytest.approx(18 / (w @ [9, 6, 9, 6]))


def test_the_exact_cost_of_forgetting_a_set_at_once():
    cfg, part = hand_worked()
    # a and d: shard 0 retrains from slice 0 (nothing, then b: 0 + 3), shard 1 from slice 1 (c: 3)
    c = set_cost(part, cfg, ["a", "d"])
    assert (c["faces_x_epochs"], c["full_faces_x_epochs"], c["baseline_faces_x_epochs"]) == (6, 9, 6)
    assert (c["faces"], c["shards_retrained"], c["slices_retrained"]) == (2, 2, 3)
    assert c["speedup_vs_full"] == 1.5 and c["speedup_vs_baseline"] == 1.0
    c = set_cost(part, cfg, ["b"])                          # shard 0's last stage only, on a
    assert (c["faces_x_epochs"], c["full_faces_x_epochs"], c["baseline_faces_x_epochs"], c["slices_retrained"]) == \
        (3, 15, 9, 1)
    assert not part["forgotten"].any()                      # priced, not served


def test_expected_cost_of_batches():
    cfg, part = hand_worked()
    # every training face at once: both shards from slice 0, 18 faces x epochs, 4.5 per request
    e = expected_batch_cost(part, cfg, 4, draws=20)
    assert e["per_request_faces_x_epochs"] == 4.5 and e["shards_retrained"] == 2 and e["batch_share_of_full"] == 1
    # one at a time, the Monte Carlo mean converges to the exact expectation
    one = expected_batch_cost(part, cfg, 1, draws=20000)
    assert one["per_request_faces_x_epochs"] == pytest.approx(expected_cost(part, cfg)["expected_faces_x_epochs"],
                                                               rel=0.02)
    # two requests: the high-likelihood faces a and d sit in different shards, so pairs mostly hit both
    two = expected_batch_cost(part, cfg, 2, draws=4000, seed=1)
    assert 1.5 < two["shards_retrained"] <= 2 and two["per_request_faces_x_epochs"] < one["per_request_faces_x_epochs"]
    assert expected_batch_cost(part, cfg, 2, draws=4000, seed=1) == two      # the seed decides the draws
    with pytest.raises(Exception, match="more than the 4 training faces"):
        expected_batch_cost(part, cfg, 5)


@pytest.mark.slow
def test_cost_command_and_evaluate_after_unlearning(run, tmp_path):
    out = unlearn(run, "--cost").stdout
    assert "expected retraining per request" in out and "x faster" in out and "request model: shared" in out
    out = unlearn(run, "--cost", "--request_model", "independent").stdout
    assert "request model: independent" in out
    assert "goes with --cost or --report" in error_line(unlearn(run, "--sample", 1, "--request_model", "independent",
                                                                check=False))
    out = unlearn(run, "--cost", "--batch_sizes", 1, 3, "--draws", 200).stdout
    assert "batches of 1: 1.00 shard(s) retrained" in out and "batches of 3:" in out
    assert "goes with --cost" in error_line(unlearn(run, "--sample", 1, "--batch_sizes", 2, check=False))
    assert "goes with --requests or --sample" in error_line(unlearn(run, "--verify", "--batched", check=False))
    assert not read_jsonl(run / "unlearning" / "log.jsonl")                 # refused: nothing served
    unlearn(run, "--sample", 2)
    sums = tmp_path / "s"
    run_script("evaluate.py", "--run_dir", run, "--summaries_dir", sums, "--n_boot", 100)
    info = json.loads((sums / f"{NAME}-unlearned2-info.json").read_text())
    assert info["unlearning_requests_served"] == 2 and info["faces_forgotten"] == {"fold-0": 2}


@pytest.mark.slow
def test_bad_requests_change_nothing(run, tmp_path):
    before = (run / "fold-0" / "partition.csv").read_bytes()
    (tmp_path / "empty.txt").write_text("\n")
    assert "lists no faces" in error_line(unlearn(run, "--requests", tmp_path / "empty.txt", check=False))
    (tmp_path / "unknown.txt").write_text("99_0_0_20990101.jpg.chip.jpg\n")
    assert "not in run" in error_line(unlearn(run, "--requests", tmp_path / "unknown.txt", check=False))
    part = read_partition(run / "fold-0" / "partition.csv")
    test_face = part.loc[part["role"] == "test", "filename"].iloc[0]
    (tmp_path / "test.txt").write_text(test_face + "\n")
    proc = unlearn(run, "--requests", tmp_path / "test.txt", check=False)
    assert "test face in this fold" in proc.stdout and "nothing to unlearn" in error_line(proc)
    assert "--fold 3 does not exist" in error_line(unlearn(run, "--sample", 1, "--fold", 3, check=False))
    for suffix in (".pt", ".json"):
        (run / "fold-0" / "shard-0" / f"slice-2{suffix}").unlink()
    assert "not fully trained" in error_line(unlearn(run, "--sample", 1, check=False))
    assert (run / "fold-0" / "partition.csv").read_bytes() == before and not (run / "unlearning" / "log.jsonl").exists()


@pytest.mark.slow
def test_a_missing_intermediate_record_is_a_clear_error(run, tmp_path):
    """Unlearning restarts from any slice, so every record counts, not just the last slice's."""
    (run / "fold-0" / "shard-0" / "slice-0.json").unlink()
    (tmp_path / "req.txt").write_text(train_face(run, 1, 1) + "\n")     # a request in the other shard
    before = digests(run)
    line = error_line(unlearn(run, "--requests", tmp_path / "req.txt", check=False))
    assert "not fully trained" in line and "shard 0 slice 0 incomplete" in line
    assert digests(run) == before and not (run / "unlearning" / "log.jsonl").exists()


@pytest.mark.slow
def test_a_stage_whose_faces_are_all_forgotten_keeps_its_starting_weights(run, tmp_path):
    from sisa.model import build_model
    from sisa.seeding import torch_seed
    part = read_partition(run / "fold-0" / "partition.csv")
    gone = part[(part["role"] == "train") & (part["shard"] == 1) & (part["slice"] == 0)]["filename"].tolist()
    (tmp_path / "req.txt").write_text("\n".join(gone) + "\n")
    out = unlearn(run, "--requests", tmp_path / "req.txt", "--batched").stdout
    assert f"in a batch of {len(gone)}" in out
    stage0 = torch.load(run / "fold-0" / "shard-1" / "slice-0.pt", weights_only=True)["model"]
    init, _ = build_model("cnn", "none", torch_seed(*RunConfig(**TINY).init_keys(0, 1)))
    assert all(torch.equal(stage0[k], v) for k, v in init.state_dict().items())   # nothing left to learn from
    assert json.loads((run / "fold-0" / "shard-1" / "slice-0.json").read_text())["epochs"] == 0
    assert "verified" in unlearn(run, "--verify").stdout
    assert_equals_scratch(run, tmp_path)


@pytest.mark.slow
def test_reports_are_read_only_even_with_a_commit_waiting(run, tmp_path):
    """--report takes no lock, so it must not finish another process's commit (two finishers race)."""
    assert unlearn(run, "--sample", 1, env={"SISA_FAULT": "after_commit"}).returncode == 137
    (commit,) = (run / "unlearning" / "pending").glob("fold-0/shard-*/commit.json")
    partition = (run / "fold-0" / "partition.csv").read_bytes()
    out = run_script("unlearn.py", "--report", run, "--summaries_dir", tmp_path / "s").stdout
    assert "not yet finished" in out
    assert commit.exists() and (run / "fold-0" / "partition.csv").read_bytes() == partition
    assert not (run / "unlearning" / "log.jsonl").exists()
    assert "finished an interrupted unlearning request" in unlearn(run, "--verify").stdout   # under the lock


def test_cost_under_both_request_models():
    cfg, part = hand_worked()
    part["high_likelihood"] = [False, True, False, True, False]      # the flagged faces b, d sit in the last slices
    shared, independent = expected_cost(part, cfg), expected_cost(part, cfg, "independent")
    # independent of the flag, every face of k = 0.4 is equally likely: the plain mean of the tails
    assert independent["expected_faces_x_epochs"] == pytest.approx((9 + 6 + 9 + 6) / 4)
    # shared: flagged faces request with 0.001, the others with P(knows | not flagged) * 0.001
    lo = 0.001 * 0.4 * 0.34 / (1 - 0.66 * 0.4)
    assert shared["expected_faces_x_epochs"] == pytest.approx((2 * lo * 9 + 2 * 0.001 * 6) / (2 * lo + 2 * 0.001))
    assert shared["request_model"] == "shared" and independent["request_model"] == "independent"
    with pytest.raises(Exception, match="--request_model 'both'"):
        expected_cost(part, cfg, "both")
