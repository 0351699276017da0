"""Faults under test: kills at random moments, locks, damaged and hostile files, full disks, bad input."""
import json
import os
import re
import pickle
import random
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import call_script, error_line, run_script
from sisa import checkpoints
from sisa.errors import SisaError
from sisa.layout import PROJECT_ROOT
from sisa.store import run_lock

FLAGS = ["--num_shards", 2, "--num_slices", 2, "--folds", 1, "--image_size", 32, "--model", "cnn", "--epochs", 2,
         "--test_per_cell", 2, "--test_random", 10, "--strategy", "sorted-balanced"]
NAME = "sorted-balanced-slice-2x2"


def flags(faces_dir, cache_dir, ck):
    return [*FLAGS, "--data_dir", faces_dir, "--cache_dir", cache_dir, "--checkpoints_dir", ck]


def final(run):
    return [torch.load(run / "fold-0" / f"shard-{s}" / "slice-1.pt", weights_only=True)["model"] for s in range(2)]


TEMP = re.compile(r"^\.(slice-\d+\.(pt|json)|partition\.csv|composition\.csv|run\.json|config\.json|skipped\.csv)"
                  r"\.tmp-\d+$")


def no_torn_checkpoint(run):
    """Every checkpoint a reader could take (a .pt with its record) verifies; a killed writer's temp
    files are the hidden `.<name>.tmp-<pid>` of a file of the run, which no reader's pattern matches.
    Returns how many checkpoints and temp files there were."""
    pts = list(run.glob("fold-*/shard-*/slice-*.pt"))
    for pt in pts:
        assert not pt.name.startswith("."), pt                    # the readers' glob never yields a temp file
        st = checkpoints.status(pt)
        assert st.state in ("ok", "incomplete"), (pt, st)
    temps = [f for f in run.rglob(".*") if ".tmp-" in f.name]
    for f in temps:
        assert TEMP.match(f.name), f                               # named as atomic_write names them
    return len(pts), len(temps)


@pytest.mark.slow
def test_random_sigkills_then_rerun_give_the_uninterrupted_weights(faces_dir, cache_dir, tmp_path):
    run_script("train.py", *flags(faces_dir, cache_dir, tmp_path / "whole"))
    ck = tmp_path / "killed"
    rnd = random.Random(7)
    metrics = ck / NAME / "fold-0" / "metrics.jsonl"
    landed = []
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "train.py"), *map(str, flags(faces_dir, cache_dir, ck)),
                                 "--no_progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # wait for training to start (a new epoch record), then kill at a random moment inside it
        start = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        deadline = time.time() + 60
        while proc.poll() is None and time.time() < deadline and \
                (not metrics.exists() or len(metrics.read_text().splitlines()) <= start):
            time.sleep(0.01)
        time.sleep(rnd.uniform(0.0, 0.1))
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        landed.append(alive and proc.returncode == -signal.SIGKILL)
        no_torn_checkpoint(ck / NAME)
    assert sum(landed) >= 3, landed                # the kills really interrupted training runs
    run_script("train.py", *flags(faces_dir, cache_dir, ck))
    for a, b in zip(final(tmp_path / "whole" / NAME), final(ck / NAME)):
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_second_process_on_the_same_run_is_refused(faces_dir, cache_dir, tmp_path):
    run = tmp_path / "ck" / NAME
    with run_lock(run / "LOCK", "a test holding the run"):
        line = error_line(run_script("train.py", *flags(faces_dir, cache_dir, tmp_path / "ck"), "--dry_run", check=False))
        assert "is in use by pid" in line and "a test holding the run" in line
        with pytest.raises(SisaError, match="in use"):
            with run_lock(run / "LOCK", "another"):
                pass
    run_script("train.py", *flags(faces_dir, cache_dir, tmp_path / "ck"), "--dry_run")   # released: fine again


@pytest.mark.slow
def test_truncated_checkpoint_is_detected_and_retrained(faces_dir, cache_dir, tmp_path):
    run_script("train.py", *flags(faces_dir, cache_dir, tmp_path))
    pt = tmp_path / NAME / "fold-0" / "shard-0" / "slice-0.pt"
    pt.write_bytes(pt.read_bytes()[:1000])
    assert checkpoints.status(pt).state == "damaged"
    out = run_script("train.py", *flags(faces_dir, cache_dir, tmp_path))
    assert "damaged" in out.stderr and checkpoints.status(pt).state == "ok"


class Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.slow
def test_loading_never_executes_code_from_files(faces_dir, cache_dir, tmp_path, monkeypatch):
    run_script("train.py", *flags(faces_dir, cache_dir, tmp_path))
    pt = tmp_path / NAME / "fold-0" / "shard-1" / "slice-1.pt"
    torch.save({"model": Boom()}, pt)           # a hostile file, with a record that vouches for its bytes
    rec = json.loads(checkpoints.sidecar(pt).read_text())
    rec.update(digest=checkpoints.file_digest(pt), bytes=pt.stat().st_size)
    checkpoints.sidecar(pt).write_text(json.dumps(rec))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SisaError, match="cannot be loaded"):
        checkpoints.load_checkpoint(pt)
    assert not (tmp_path / "PWNED").exists()
    sums = tmp_path / "sums"
    line = error_line(run_script("evaluate.py", "--run_dir", tmp_path / NAME, "--summaries_dir", sums, check=False))
    assert "cannot be loaded" in line and not (tmp_path / "PWNED").exists() and not sums.exists()
    # the summaries hold only plain Python, numpy and pandas objects
    pt.unlink()
    run_script("train.py", *flags(faces_dir, cache_dir, tmp_path))     # retrain the hostile checkpoint away
    run_script("evaluate.py", "--run_dir", tmp_path / NAME, "--summaries_dir", sums, "--n_boot", 50)

    class Strict(pickle.Unpickler):
        def find_class(self, module, name):
            if module.split(".")[0] in ("builtins", "numpy", "pandas", "collections", "copyreg", "datetime"):
                return super().find_class(module, name)
            raise AssertionError(f"summary pickles must not reference {module}.{name}")
    pickles = list(sums.glob("*.pickle"))
    assert len(pickles) == 4          # the fold's, the mean, the square and the tidy results
    for f in pickles:
        with open(f, "rb") as fh:
            Strict(fh).load()


def _limit_file_size(limit):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # exceeding the limit: EFBIG, not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_checkpoint(faces_dir, cache_dir, tmp_path):
    run_script("train.py", *flags(faces_dir, cache_dir, tmp_path))
    shard = tmp_path / NAME / "fold-0" / "shard-0"
    before = (shard / "slice-0.pt").read_bytes()
    for f in ("slice-1.pt", "slice-1.json"):
        (shard / f).unlink()
    (shard / "slice-0.json").unlink()           # slice 0 must be rewritten too: the write that will fail
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "train.py"), *map(str, flags(faces_dir, cache_dir, tmp_path)),
                           "--no_progress"], capture_output=True, text=True, preexec_fn=_limit_file_size(200_000))
    line = error_line(proc)
    assert "no room" in line and "previous version of the file is intact" in line
    assert (shard / "slice-0.pt").read_bytes() == before          # the old bytes, not a torn new file
    assert not list(shard.glob(".*.tmp-*"))
    run_script("train.py", *flags(faces_dir, cache_dir, tmp_path))   # with room again, the run completes
    assert checkpoints.status(shard / "slice-1.pt").state == "ok"


def test_symlinks_and_unreadable_files_in_the_data_folder(own_faces_dir, tmp_path):
    from sisa.data import load_faces
    good = sorted(own_faces_dir.iterdir())[0]
    (own_faces_dir / "30_1_2_20990101000000009.jpg.chip.jpg").symlink_to(good)       # a link to a face: used
    (own_faces_dir / "30_1_2_20990101000000008.jpg.chip.jpg").symlink_to(tmp_path / "gone.jpg")   # broken
    (own_faces_dir / "30_1_7_20990101000000007.jpg.chip.jpg").write_bytes(good.read_bytes())      # race 7
    faces = load_faces(own_faces_dir, 24, tmp_path / "cache", progress=False)
    reasons = dict(zip(faces.skipped["filename"], faces.skipped["reason"]))
    assert "30_1_2_20990101000000009.jpg.chip.jpg" in set(faces.table["filename"])
    assert reasons["30_1_2_20990101000000008.jpg.chip.jpg"].startswith("not a regular file")
    assert reasons["30_1_7_20990101000000007.jpg.chip.jpg"].startswith("label out of range")
    if os.geteuid() != 0:          # root reads anything: the permission case only exists for other users
        locked = own_faces_dir / "31_1_2_20990101000000006.jpg.chip.jpg"
        locked.write_bytes(good.read_bytes())
        locked.chmod(0)
        with pytest.warns(UserWarning, match="unreadable"):
            faces = load_faces(own_faces_dir, 24, tmp_path / "cache2", progress=False)
        assert dict(zip(faces.skipped["filename"], faces.skipped["reason"]))[locked.name].startswith("unreadable")


TRAIN_BAD = [
    ("--recipe", "fancy"), ("--training_seed", "-1"), ("--engine", "warp"),
    ("--folds", "-1"), ("--folds", "0"), ("--epochs", "x"), ("--batch_size", "0"), ("--lr", "0"), ("--lr", "abc"),
    ("--image_size", "8"), ("--test_random", "-3"), ("--limit", "0"), ("--seed", "-1"), ("--model", "vgg"),
    ("--slice_epochs", "half"), ("--put_in", "folder"), ("--device", "tpu"), ("--weights", "/no/such/file.pt"),
    ("--run_name", "a/b"), ("--likelihood_factors", "age,shoe_size"), ("--strategy", "sorted"),
]


@pytest.mark.parametrize("flag,value", TRAIN_BAD)
def test_train_rejects_every_bad_flag_value_in_one_line(faces_dir, cache_dir, tmp_path, flag, value):
    """In-process: the parser and the config's validation, as train.py runs them (no torch import per case)."""
    line = error_line(call_script("train.py", *flags(faces_dir, cache_dir, tmp_path), flag, value))  # the last flag wins
    assert flag.lstrip("-") in line, line                             # the whole flag is named
    assert not list(tmp_path.glob("*/fold-*/shard-*"))


@pytest.mark.parametrize("args,message", [
    (["--run_dir", "../../somewhere"], "no run at"),
    (["--run_dir", "nope", "--aggregation", "median"], "invalid choice"),
    (["--run_dir", "nope", "--n_boot", "0"], "must be >= 1"),
    (["--compare", "only-one"], "baseline and at least one"),
    ([], "one of the arguments"),
])
def test_evaluate_rejects_bad_input_in_one_line(tmp_path, args, message):
    proc = call_script("evaluate.py", *args, "--checkpoints_dir", tmp_path, "--summaries_dir", tmp_path)
    assert message in error_line(proc)


@pytest.mark.parametrize("args,message", [
    (["--run_dir", "../../somewhere", "--verify"], "no run at"),
    (["--run_dir", "x", "--sample", "0"], "must be >= 1"),
    (["--run_dir", "x", "--sample", "-2"], "must be >= 1"),
    (["--run_dir", "x", "--requests", "/no/such/list.txt"], "not an existing file"),
    (["--run_dir", "x", "--verify", "--cost"], "not allowed with"),
    (["--verify"], "--run_dir is required"),
    (["--run_dir", "x", "--verify", "--fold", "-1"], "must be >= 0"),
    (["--run_dir", "x", "--cost", "--request_model", "psychic"], "invalid choice"),
])
def test_unlearn_rejects_bad_input_in_one_line(tmp_path, args, message):
    proc = call_script("unlearn.py", *args, "--checkpoints_dir", tmp_path)
    assert message in error_line(proc)


def test_one_real_subprocess_per_script_fails_cleanly(tmp_path):
    """The in-process checks above stand for the scripts; one real process each proves the exit path."""
    for script, args in (("train.py", ["--folds", "0"]), ("evaluate.py", ["--run_dir", "nope"]),
                         ("unlearn.py", ["--verify"])):
        proc = run_script(script, *args, "--checkpoints_dir", tmp_path, check=False)
        assert proc.returncode in (1, 2) and error_line(proc).startswith(f"{script}: error: ")


def test_temp_files_of_killed_writers_are_swept_when_the_run_is_locked(tmp_path):
    run = tmp_path / "ck" / NAME
    (run / "fold-0" / "shard-0").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                                  # a PID that no longer runs
    old = time.time() - 3600
    leftover = run / "fold-0" / "shard-0" / f".slice-0.pt.tmp-{dead.pid}"
    fresh = run / "fold-0" / "shard-0" / f".slice-1.pt.tmp-{dead.pid}"       # maybe another host, writing now
    live = run / "fold-0" / f".partition.csv.tmp-{os.getpid()}"               # this process: alive
    keep = run / "fold-0" / "shard-0" / "slice-0.pt"
    for f in (leftover, fresh, live, keep):
        f.write_bytes(b"x")
    for f in (leftover, live, keep):
        os.utime(f, (old, old))
    with run_lock(run / "LOCK", "a test"):
        assert not leftover.exists()
        assert fresh.exists() and live.exists() and keep.exists()
