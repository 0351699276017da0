"""The crash-safe commit of an unlearning request, and finishing one a crash interrupted.

A request is served in a shard's own pending folder (layout.pending_shard): the retrained
checkpoints are written there, then `commit.json` (the commit point) lists the forgotten faces and
their log records. Committing then (1) marks the faces forgotten in the fold's partition file, (2)
appends the records to the unlearning log, (3) moves the checkpoints into place, (4) removes the
folder. Each step is idempotent, so a crash anywhere after the commit point is finished by running
`finish_pending` again; before it, the run is as it was.

Only a process that holds the run's lock may call `finish_pending(layout)` (all commits), and it must
do so explicitly: opening a run never writes (so `unlearn.py --report` and other readers stay
read-only). A torchrun rank finishes only its own shard's commit (`only=`); commits to one fold's
partition file are serialised by `partition_lock`.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from pathlib import Path

from . import checkpoints
from .layout import RunLayout
from .partition import read_partition, write_partition_csv
from .store import append_line, read_json, read_jsonl, write_bytes


def fault(point: str) -> None:
    """Crash here if SISA_FAULT names this point, or wait here to be killed if it says pause:<point>:
    how the tests prove crash consistency at exact moments."""
    what = os.environ.get("SISA_FAULT", "")
    if what == point:
        os._exit(137)
    if what == f"pause:{point}":
        time.sleep(3600)


@contextlib.contextmanager
def partition_lock(layout: RunLayout, fold: int):
    """Exclusive access to a fold's partition file while it is read, changed and written back."""
    path = layout.partition_lock(fold)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)   # blocking: commits are short
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def finish_one(layout: RunLayout, shard_dir: Path) -> list[str]:
    """Finish the committed request in `shard_dir` (a no-op without commit.json); returns its faces."""
    commit_path = layout.pending_commit(shard_dir)
    if not commit_path.exists():
        return []
    commit = read_json(commit_path)
    fold, faces, records = commit["fold"], commit["faces"], commit["records"]
    with partition_lock(layout, fold):      # other ranks may commit other shards of this fold
        part = read_partition(layout.partition(fold))
        mine = part["filename"].isin(faces)
        if not part.loc[mine, "forgotten"].all():
            part.loc[mine, "forgotten"] = True
            write_bytes(layout.partition(fold), write_partition_csv(part))
    fault("after_partition")
    logged = {r.get("request_id") for r in read_jsonl(layout.unlearning_log)}
    for record in records:
        if record["request_id"] not in logged:
            append_line(layout.unlearning_log, json.dumps(record))
    shard, first = records[0]["shard"], commit["first_slice"]
    for l in range(first, read_json(layout.config)["num_slices"]):
        src, dst = layout.pending_checkpoint(fold, shard, l), layout.checkpoint(fold, shard, l)
        if src.exists():
            checkpoints.sidecar(dst).unlink(missing_ok=True)   # never let the old record vouch for new bytes
            os.replace(src, dst)
            fault("mid_move")
        if checkpoints.sidecar(src).exists():
            os.replace(checkpoints.sidecar(src), checkpoints.sidecar(dst))
    shutil.rmtree(shard_dir)
    return list(faces)


def finish_pending(layout: RunLayout) -> list[str]:
    """Roll every committed but unfinished request forward (the caller holds the run's lock), then
    remove the emptied pending folders; returns the faces that were due."""
    done = []
    for commit_path in layout.pending_commits():
        done.extend(finish_one(layout, commit_path.parent))
    tidy_pending(layout)
    return done


def finish_and_report(layout: RunLayout, say=print) -> list[str]:
    """finish_pending for a command that holds the run's lock and is about to use it, saying what it did."""
    if not layout.pending_dir.exists():
        return []
    faces = finish_pending(layout)
    for face in faces:
        say(f"finished an interrupted unlearning request: {face} is now forgotten")
    return faces


def tidy_pending(layout: RunLayout) -> None:
    """Remove pending folders left empty (only when no other process may be writing into them)."""
    for d in [*layout.pending_folds(), layout.pending_dir]:
        with contextlib.suppress(OSError):
            d.rmdir()


def pending_note(layout: RunLayout) -> str | None:
    """For read-only commands: a line saying a committed request is waiting to be finished, or None."""
    n = len(layout.pending_commits())
    if not n:
        return None
    return (f"run {layout.name} has {n} committed unlearning request(s) not yet finished (a crash); "
            "read as it stands; any unlearn.py, evaluate.py or train.py command on it finishes them")
