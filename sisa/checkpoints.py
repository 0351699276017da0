"""Slice checkpoints: written atomically, verified by hash, loaded without executing code.

A checkpoint is two files: `slice-<l>.pt` (model, optimizer, scheduler and RNG states, the run's
config, the hash of the exact training faces of the stage) and `slice-<l>.json`, a small record
written *after* the .pt is in place with the .pt's digest and the stage's facts. A checkpoint is
complete only when both exist and the digest matches, so a crash between the two writes, a
truncated file or a flipped byte is detected and the slice is retrained, never loaded as if whole.
`torch.load(..., weights_only=True)` refuses anything but tensors and plain containers.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch

import pandas as pd

from .config import RunConfig
from .errors import SisaError, first_line
from .layout import RunLayout
from .partition import stage_hash
from .store import read_json, write_bytes, write_json

FORMAT = 1


_digests: dict[tuple, str] = {}   # (path, inode, size, mtime_ns) -> digest: hash each file version once


def file_digest(path: Path) -> str:
    """BLAKE2b of a file's bytes. Remembered per file version (a rewrite is a new inode, size or
    mtime), so checking a run's checkpoints, then loading them, reads each file only once."""
    st = os.stat(path)
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _digests:
        h = hashlib.blake2b(digest_size=32)
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                h.update(block)
        _digests[key] = h.hexdigest()
    return _digests[key]


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_checkpoint(path: Path, payload: dict, record: dict) -> None:
    """Write the .pt atomically, then its .json record (digest + facts) atomically."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buf)
    data = buf.getvalue()
    sidecar(path).unlink(missing_ok=True)   # the old record must not vouch for the new file
    write_bytes(path, data)
    write_json(sidecar(path), {**record, "format": FORMAT, "digest": hashlib.blake2b(data, digest_size=32).hexdigest(),
                               "bytes": len(data)})


@dataclass
class Status:
    state: str          # "ok" | "missing" | "incomplete" | "damaged" | "stale"
    record: dict | None
    why: str = ""


def status(path: Path, stage_hash: str | None = None, verify: bool = True) -> Status:
    """Whether the checkpoint at `path` is complete, intact and (if given) trained on `stage_hash`.

    `verify=False` trusts the record's digest without reading the file (its size is still checked):
    for estimates such as a progress bar's total, never before a checkpoint is used."""
    if not path.exists():
        return Status("missing", None, "not written yet")
    if not sidecar(path).exists():
        return Status("incomplete", None, "its record was never written (interrupted)")
    try:
        record = read_json(sidecar(path))
    except SisaError as e:
        return Status("damaged", None, str(e))
    if record.get("format") != FORMAT or "digest" not in record:
        return Status("damaged", record, "unknown record format")
    if path.stat().st_size != record["bytes"] or (verify and file_digest(path) != record["digest"]):
        return Status("damaged", record, "its bytes do not match the recorded digest (truncated or altered)")
    if stage_hash is not None and record.get("stage_hash") != stage_hash:
        return Status("stale", record, "it was trained on other faces than the partition assigns now")
    return Status("ok", record)


def load_checkpoint(path: Path, cfg: RunConfig | None = None, stage_hash: str | None = None,
                    map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint's contents after verifying it; SisaError naming the file otherwise."""
    st = status(path, stage_hash)
    if st.state != "ok":
        raise SisaError(f"checkpoint {path} is {st.state}: {st.why}; rerun train.py with the run's command to "
                        "retrain it")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first = first_line(e, 200)
        raise SisaError(f"checkpoint {path} cannot be loaded ({type(e).__name__}: {first}); retrain it with "
                        "train.py") from e
    # the run's name is a label: a clone of a run (experiment.clone_run) loads the run's checkpoints
    if cfg is not None and not (isinstance(ck.get("config"), dict) and
                                {**ck["config"], "run_name": ""} == {**cfg.to_dict(), "run_name": ""}):
        diff = RunConfig.from_dict(ck["config"]).differences(cfg) if isinstance(ck.get("config"), dict) else ["?"]
        raise SisaError(f"checkpoint {path} belongs to another configuration ({'; '.join(diff)}); "
                        "it does not belong in this run folder")
    return ck


def shard_statuses(layout: RunLayout, part: pd.DataFrame, fold: int, shard: int, num_slices: int,
                   pending: bool = False, verify: bool = True) -> list[Status]:
    """Status of every slice checkpoint of a shard (or of its pending copies) against the faces the
    partition assigns each stage now: the one check training, evaluation and unlearning share."""
    where = layout.pending_checkpoint if pending else layout.checkpoint
    return [status(where(fold, shard, l), stage_hash(part, shard, l), verify) for l in range(num_slices)]


def leading_ok(statuses: list[Status]) -> int:
    """How many leading stages are complete and current."""
    n = 0
    while n < len(statuses) and statuses[n].state == "ok":
        n += 1
    return n


def missing_stages(layout: RunLayout, cfg: RunConfig, partitions: list[pd.DataFrame],
                   every_slice: bool = False) -> dict[int, list[str]]:
    """For each fold, the checkpoints that keep it from being used (an empty list: complete).

    Per shard it names the first stage that is not complete and current, which is where `train.py`
    resumes: 'shard 1 slice 1 missing' for a run interrupted there, whichever command asks.
    Evaluation needs every shard's final model (`every_slice` False: a shard counts only when its
    last checkpoint is unusable); unlearning may restart from any stage (`every_slice`: any unusable
    checkpoint counts). A fold with no checkpoint at all is 'nothing trained yet'."""
    out = {}
    for fold in range(cfg.n_folds):
        firsts = []
        for shard in range(cfg.num_shards):
            states = shard_statuses(layout, partitions[fold], fold, shard, cfg.num_slices)
            first = leading_ok(states)
            if first < cfg.num_slices and (every_slice or states[-1].state != "ok"):
                firsts.append((shard, first, states[first].state))
        if len(firsts) == cfg.num_shards and all(l == 0 and st == "missing" for _, l, st in firsts):
            out[fold] = ["nothing trained yet"]
        else:
            out[fold] = [f"shard {s} slice {l} {st}" for s, l, st in firsts]
    return out


def usable_folds(layout: RunLayout, cfg: RunConfig, partitions: list[pd.DataFrame], use: str,
                 folds: list[int] | None = None, every_slice: bool = False, allow_partial: bool = False,
                 fix: str = "finish it with train.py") -> list[int]:
    """The folds of `folds` (default: all) whose checkpoints are all there for `use` ('evaluate',
    'unlearn'), or one SisaError listing what is missing (`missing_stages`): when any fold is
    incomplete (the message ends with `fix`), or, with `allow_partial`, when none is complete."""
    problems = missing_stages(layout, cfg, partitions, every_slice)
    wanted = range(cfg.n_folds) if folds is None else folds
    bad = {f: problems[f] for f in wanted if problems[f]}
    listed = "; ".join(f"fold {f}: {', '.join(p)}" for f, p in bad.items())
    complete = [f for f in wanted if not problems[f]]
    if bad and not allow_partial:
        raise SisaError(f"run {cfg.name} is not fully trained ({listed}); {fix}")
    if not complete:
        raise SisaError(f"run {cfg.name} has no complete fold to {use} ({listed}); finish it with train.py")
    return complete
