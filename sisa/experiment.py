"""A run folder, created or re-opened: config, faces, likelihood draws and every fold's partition.

`prepare(cfg, opts)` is what `train.py` (also with `--dry_run`) calls: it loads the faces, draws the
likelihood, builds the partitions and writes them, or re-opens an existing run after checking that
it was made by the same configuration from the same data. `open_run(layout, opts)` is what
`evaluate.py` and `unlearn.py` call to read a run back, with its images. Neither finishes an
interrupted unlearning commit: a command holding the run's lock does that first (commit.py), so
reading a run never writes to it.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .config import RunConfig
from .data import AGE_CLASSES, RACES, Faces, face_table, load_faces, skipped_summary
from .errors import SisaError
from .layout import DEFAULT_CACHE, DEFAULT_CHECKPOINTS, DEFAULT_DATA, PROJECT_ROOT, RunLayout
from .likelihood import draw_likelihood, parse_factors
from .partition import build_partition, composition, content_hash, limit_faces, read_partition, write_partition_csv
from .seeding import rng
from .store import read_json, write_bytes, write_json, write_text


@dataclass(frozen=True)
class Options:
    """Run-time options: where things are and how to run, not what is computed."""
    data_dir: Path | None = None    # None: data/UTKFace for a new run, the run's recorded folder after
    cache_dir: Path | None = None   # None: data/cache for a new run, the run's recorded cache after
    checkpoints_dir: Path = DEFAULT_CHECKPOINTS
    strict_data: bool = False
    overwrite: bool = False
    progress: bool = True
    device: str = "auto"
    engine: str = "eager"           # eager | graphs (CUDA graphs; see engine.py)
    precision: str = "auto"         # auto | fp32 | bf16 (autocast); see device.resolve_precision
    wandb: bool = False


@dataclass
class Experiment:
    cfg: RunConfig
    layout: RunLayout
    table: pd.DataFrame              # the faces of this run (after --limit) with likelihood columns
    images: np.ndarray               # (N, H, W, 3) uint8, row i = table row i = partition row i
    partitions: list[pd.DataFrame]   # one per fold, rows aligned with `table`
    skipped: pd.DataFrame
    manifest: dict = field(default_factory=dict)


def training_labels(table: pd.DataFrame, cfg: RunConfig) -> np.ndarray:
    """(N,) the age classes training sees: the true ones, except under --label_noise (the study's
    positive control), where that fraction of --control_race's faces get a random class drawn from the
    run's seed. Evaluation always reads the true classes from the partition."""
    y = table["age_class"].to_numpy(np.int64).copy()
    if cfg.label_noise > 0:
        gen = rng(cfg.seed, "label-noise")
        u, random_class = gen.random(len(y)), gen.integers(0, len(AGE_CLASSES), len(y))
        noisy = (table["race"].to_numpy() == RACES.index(cfg.control_race)) & (u < cfg.label_noise)
        y[noisy] = random_class[noisy]
    return y


def versions() -> dict[str, str]:
    from importlib.metadata import version  # no torch import: a dry run stays quick

    try:
        commit = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except Exception:
        commit = ""
    return {"sisa": __version__, "git_commit": commit or "unknown", "python": platform.python_version(),
            "torch": version("torch"), "torchvision": version("torchvision"), "numpy": np.__version__,
            "pandas": pd.__version__, "platform": platform.platform()}


def _faces_of_run(cfg: RunConfig, opts: Options) -> tuple[Faces, pd.DataFrame, np.ndarray]:
    only = None
    if cfg.limit is not None:   # --limit: the faces chosen from file names, then only they are decoded
        candidates, _ = face_table(opts.data_dir, cfg.image_size, opts.cache_dir, readable=False)
        rows = limit_faces(candidates, cfg.limit, cfg.test_per_cell if cfg.test_kind == "balanced" else 0,
                           rng(cfg.seed, "limit"))
        only = candidates["filename"].to_numpy()[rows].tolist()
    faces = load_faces(opts.data_dir, cfg.image_size, opts.cache_dir, strict=opts.strict_data,
                       progress=opts.progress, only=only)
    table, _ = _run_table(cfg, faces.table, limit=None)
    return faces, table, faces.images


def _run_table(cfg: RunConfig, table: pd.DataFrame, limit: int | None) -> tuple[pd.DataFrame, np.ndarray]:
    """The run's faces (`limit` of them, chosen as --limit does) with their likelihood columns, and
    their rows in `table`."""
    rows = np.arange(len(table))
    if limit is not None:
        min_cell = cfg.test_per_cell if cfg.test_kind == "balanced" else 0
        rows = limit_faces(table, limit, min_cell, rng(cfg.seed, "limit"))
        table = table.iloc[rows].reset_index(drop=True)
    likelihood = draw_likelihood(table, parse_factors(cfg.likelihood_factors), rng(cfg.seed, "likelihood"))
    return pd.concat([table, likelihood], axis=1), rows


def plan(cfg: RunConfig, opts: Options) -> tuple[Experiment, bool]:
    """What prepare would make of a new run, in memory only (no images, nothing written): for a dry
    run. (experiment, exact): exact when the image cache told which files are readable."""
    cfg.validate()
    folder, cache = opts.data_dir or DEFAULT_DATA, opts.cache_dir or DEFAULT_CACHE
    table, exact = face_table(folder, cfg.image_size, cache, readable=cfg.limit is None)
    table, _ = _run_table(cfg, table, cfg.limit)
    layout = RunLayout((Path(opts.checkpoints_dir) / cfg.name).resolve())
    partitions = [build_partition(table, cfg, k) for k in range(cfg.n_folds)]
    return Experiment(cfg, layout, table, np.empty((0,), np.uint8), partitions, pd.DataFrame()), exact


def _clear(layout: RunLayout) -> None:
    """Empty a run folder for --overwrite, keeping the LOCK file this process holds."""
    for p in layout.root.iterdir():
        if p != layout.lock:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def prepare(cfg: RunConfig, opts: Options) -> Experiment:
    """Create the run folder for `cfg`, or re-open it if it exists with the same configuration."""
    cfg.validate()
    opts = dataclasses.replace(opts, data_dir=opts.data_dir or DEFAULT_DATA, cache_dir=opts.cache_dir or DEFAULT_CACHE)
    layout = RunLayout((Path(opts.checkpoints_dir) / cfg.name).resolve())
    if layout.exists():
        old = RunConfig.from_dict(read_json(layout.config))
        if old != cfg:
            if not opts.overwrite:
                raise SisaError(f"run folder {layout.root} holds another configuration "
                                f"({'; '.join(old.differences(cfg))}); pass --overwrite to delete it and "
                                "start again, or --run_name to start a separate run")
            _clear(layout)
    elif layout.root.exists() and any(p != layout.lock for p in layout.root.iterdir()):
        if not opts.overwrite:
            raise SisaError(f"{layout.root} exists but is not a run folder (no config.json); "
                            "move it away or pass --overwrite")
        _clear(layout)
    faces, table, images = _faces_of_run(cfg, opts)
    partitions = [build_partition(table, cfg, k) for k in range(cfg.n_folds)]
    hashes = {f"fold-{k}": content_hash(p) for k, p in enumerate(partitions)}
    manifest = {
        "name": cfg.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {"folder": str(Path(opts.data_dir).resolve()), "cache": str(Path(opts.cache_dir).resolve()),
                 "fingerprint": faces.fingerprint,
                 "files_skipped": len(faces.skipped),
                 "faces_usable": len(faces.table) if cfg.limit is None else
                 len(face_table(opts.data_dir, cfg.image_size, opts.cache_dir)[0]),
                 "faces_in_run": len(table), "high_likelihood_share": float(table["high_likelihood"].mean()),
                 "requests_unlearning": int(table["requests_unlearning"].sum())},
        "partitions": hashes,
        "weights_used": None,      # resolved once, by the first training process
        "versions": versions(),
    }
    if layout.exists():   # same config: the data and partitions must be the ones the run was made with
        old_manifest = read_json(layout.manifest)
        if old_manifest["data"]["fingerprint"] != faces.fingerprint:
            raise SisaError(f"the faces in {opts.data_dir} differ from those run {cfg.name} was made with; "
                            "point --data_dir at the original data, or pass --overwrite to start again")
        if old_manifest["partitions"] != hashes:
            raise SisaError(f"run {cfg.name}'s partitions differ from what this version computes; "
                            "use the version that made it, or pass --overwrite to start again")
        for k in range(cfg.n_folds):   # keep the files: they record forgotten faces
            partitions[k] = read_partition(layout.partition(k))
            if content_hash(partitions[k]) != hashes[f"fold-{k}"]:
                raise SisaError(f"{layout.partition(k)} was altered (hash mismatch); restore it or pass --overwrite")
        manifest = old_manifest
    else:
        layout.root.mkdir(parents=True, exist_ok=True)
        write_text(layout.skipped, faces.skipped.to_csv(index=False))
        for k, part in enumerate(partitions):
            write_bytes(layout.partition(k), write_partition_csv(part))
            write_text(layout.composition(k), composition(part).round(2).to_csv(index=False))
        write_json(layout.manifest, manifest)
        write_text(layout.config, cfg.to_json() + "\n")   # last: a folder with config.json is complete
    return Experiment(cfg, layout, table, images, partitions, faces.skipped, manifest)


def open_run(layout: RunLayout, opts: Options, with_images: bool = True) -> Experiment:
    """Read a run back: its config, partitions (with forgotten faces) and, optionally, its images.
    Writes nothing."""
    cfg = RunConfig.from_dict(read_json(layout.config))
    manifest = read_json(layout.manifest)
    partitions = []
    for k in range(cfg.n_folds):
        if not layout.partition(k).exists():
            raise SisaError(f"{layout.partition(k)} is missing; the run folder is incomplete")
        part = read_partition(layout.partition(k))
        if content_hash(part) != manifest["partitions"][f"fold-{k}"]:
            raise SisaError(f"{layout.partition(k)} does not match run.json (altered, or written by another "
                            "version of this project); restore it or retrain")
        partitions.append(part)
    table = partitions[0][["filename", "age", "gender", "race", "age_class", "knowledge",
                           "high_likelihood", "requests_unlearning"]]
    images = np.empty((0,), np.uint8)
    skipped = pd.read_csv(layout.skipped) if layout.skipped.exists() else pd.DataFrame()
    if with_images:
        # by default, the folder and cache the run was made from
        data_dir = Path(opts.data_dir or manifest["data"]["folder"])
        cache_dir = Path(opts.cache_dir or manifest["data"].get("cache", DEFAULT_CACHE))
        faces, run_table, images = _faces_of_run(cfg, dataclasses.replace(opts, data_dir=data_dir, cache_dir=cache_dir))
        if (faces.fingerprint != manifest["data"]["fingerprint"]
                or run_table["filename"].tolist() != table["filename"].tolist()):
            raise SisaError(f"the faces in {data_dir} differ from those run {cfg.name} was made with; "
                            "point --data_dir at the original data")
    return Experiment(cfg, layout, table, images, partitions, skipped, manifest)


def clone_run(src: RunLayout, dest: RunLayout) -> None:
    """A copy of a trained run under another name, to be served requests of its own (a scenario)
    while `src` stays as it is. Checkpoints are hard links (every later write replaces a file by a
    rename, never in place, so `src` cannot change through them; a copy where links are refused);
    everything else is copied, the unlearning folder and the lock left out; the config and run.json
    carry the new name. Nothing else differs: seeds, partitions and hashes are the run's. A clone
    made from a run that served requests would inherit them, so that is refused."""
    cfg = RunConfig.from_dict(read_json(src.config))
    if any(read_partition(src.partition(k))["forgotten"].any() for k in range(cfg.n_folds)):
        raise SisaError(f"run {src.name} has served requests; a clone must start from the trained run (train it again "
                        "under another name)")
    tmp = dest.root.with_name(dest.root.name + ".cloning")
    if tmp.exists():
        shutil.rmtree(tmp)                          # an interrupted clone: start again

    def link_or_copy(a: str, b: str) -> None:
        if a.endswith(".pt"):
            try:
                return os.link(a, b)
            except OSError:
                pass
        shutil.copy2(a, b)
    shutil.copytree(src.root, tmp, copy_function=link_or_copy,
                    ignore=lambda d, names: [n for n in names if n in ("LOCK", "unlearning") or ".tmp" in n])
    write_json(tmp / src.config.name, dataclasses.replace(cfg, run_name=dest.root.name).to_dict())
    write_json(tmp / src.manifest.name, {**read_json(src.manifest), "name": dest.root.name, "cloned_from": src.name})
    os.replace(tmp, dest.root)


def _folds_text(cfg: RunConfig) -> str:
    """'3 fold(s)', or '1 of 3 folds' for a run of the first folds of a k-fold test (--folds_run)."""
    return f"{cfg.n_folds} of {cfg.folds} folds" if cfg.n_folds < cfg.folds else f"{cfg.folds} fold(s)"


def describe(exp: Experiment) -> str:
    """The dry-run report: data, test set, and the composition of fold 0's shards and slices."""
    cfg, t = exp.cfg, exp.table
    lines = [f"run {cfg.name}: {len(t):,} faces in the run ({exp.manifest['data']['faces_usable']:,} usable "
             f"in the data folder); {skipped_summary(exp.skipped)} (list: {exp.layout.skipped})",
             f"high unlearning likelihood: {100 * t['high_likelihood'].mean():.1f}% of faces; "
             f"expected unlearning requests: {t['requests_unlearning'].sum()} drawn",
             f"strategy {cfg.strategy}, put_in {cfg.put_in}: {_folds_text(cfg)} x {cfg.num_shards} shard(s) "
             f"x {cfg.num_slices} slice(s)"]
    part = exp.partitions[0]
    n_test = int((part["role"] == "test").sum())
    lines.append(f"fold 0: {n_test} test faces, {len(part) - n_test:,} training faces; composition "
                 f"(% of faces in each part):")
    comp = composition(part)
    lines.append(comp.to_string(index=False, float_format=lambda x: f"{x:5.1f}"))
    if cfg.n_folds > 1:
        lines.append(f"other folds: {exp.layout.root}/fold-<k>/composition.csv")
    return "\n".join(lines)
