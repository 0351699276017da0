"""UTKFace faces: labels from file names, and the images decoded once into a cache.

A face file is named `age_gender_race_datetime.<ext>` (e.g. `26_1_2_20170116174525125.jpg.chip.jpg`),
in any format Pillow reads. `load_faces` returns one row per usable face, sorted by file name, with
its decoded image as uint8 (H, W, 3) at the requested size; files it cannot use are listed with the
reason, never dropped silently.

Decoding 23,700 JPEGs takes a minute on two cores; the decoded array is cached under
`data/cache/`, keyed by the exact file list (names, sizes, modification times) and the image size,
with a hash of its bytes, so a later run loads it in seconds and a stale or damaged cache is
rebuilt instead of trusted.

    .venv/bin/python train.py --dry_run --data_dir data/UTKFace     # builds the cache on first use
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .errors import SisaError
from .store import (atomic_write, checksum_available, digest_kind, load_npy_checked, sha256_bytes, tree_digest,
                    write_json)

AGE_BOUNDS = (2, 9, 20, 27, 45, 65, 120)   # upper bound (inclusive) of each of the 7 age classes
AGE_CLASSES = ("0-2", "3-9", "10-20", "21-27", "28-45", "46-65", "66+")
RACES = ("white", "black", "asian", "indian", "other")   # UTKFace race codes 0..4
MAX_AGE = AGE_BOUNDS[-1]
# Two close-up eye crops in UTKFace that decode fine but are not faces (the original excluded them).
KNOWN_NON_FACES = frozenset({"1_0_0_20170109193052283", "1_0_0_20170109194120301"})
CACHE_VERSION = 3   # 3: the index always names its checksum kind and holds the pixels' CRC-32 ("content")
GET_DATA = "run ./setup.sh, or pass --data_dir pointing at the UTKFace folder"
COLUMNS = ["filename", "age", "gender", "race", "age_class"]


def age_class(age: int) -> int:
    """Index 0..6 of the age bin holding `age` (bins 0-2, 3-9, 10-20, 21-27, 28-45, 46-65, 66+)."""
    return int(np.searchsorted(AGE_BOUNDS, age, side="left"))


def parse_name(name: str) -> tuple[int, int, int] | str:
    """(age, gender, race) from a file name, or the reason it cannot be used."""
    stem = name.split(".", 1)[0]
    fields = stem.split("_")
    if len(fields) != 4:
        return f"bad name: {len(fields)} fields, expected age_gender_race_datetime"
    try:
        age, gender, race = (int(x) for x in fields[:3])
    except ValueError:
        return "bad name: age, gender and race must be integers"
    if not 0 <= age <= MAX_AGE:
        return f"label out of range: age {age} not in 0..{MAX_AGE}"
    if gender not in (0, 1):
        return f"label out of range: gender {gender} not in 0..1"
    if not 0 <= race < len(RACES):
        return f"label out of range: race {race} not in 0..{len(RACES) - 1}"
    if stem in KNOWN_NON_FACES:
        return "excluded: known non-face image (eye crop) in UTKFace"
    return age, gender, race


@dataclass
class Faces:
    table: pd.DataFrame        # one row per usable face: filename, age, gender, race, age_class
    images: np.ndarray         # (N, H, W, 3) uint8, row i is table row i
    skipped: pd.DataFrame      # filename, reason: every file that is not a usable face
    fingerprint: str           # hash of the usable file list and image size (identifies the data)


def scan_folder(folder: Path, stats: dict | None = None) -> tuple[list[tuple[str, tuple[int, int, int]]],
                                                                   list[tuple[str, str]]]:
    """Split a folder's entries into labelled candidates and skipped entries (with reasons).
    `stats`, if given, receives name -> 'size<TAB>mtime_ns' of every candidate (for the cache key)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SisaError(f"data folder {folder} does not exist or is not a folder; {GET_DATA}")
    candidates, skipped = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir():
            skipped.append((entry.name, "not a file: nested folders are not searched"))
            continue
        if not entry.is_file():   # broken symlink, socket, ...
            skipped.append((entry.name, "not a regular file (broken link?)"))
            continue
        labels = parse_name(entry.name)
        if isinstance(labels, str):
            skipped.append((entry.name, labels))
        else:
            candidates.append((entry.name, labels))
            if stats is not None:
                st = entry.stat()
                stats[entry.name] = f"{st.st_size}\t{st.st_mtime_ns}"
    return candidates, skipped


def _decode(args: tuple[str, int]) -> np.ndarray | str:
    """One file -> (size, size, 3) uint8, or the error message. Runs in a worker process."""
    from PIL import Image

    path, size = args
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))   # JPEG: let the decoder downscale by 2/4/8 for free
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except Exception as e:   # truncated, zero bytes, not an image, unreadable: all reported the same way
        return f"unreadable image: {type(e).__name__}: {e}"


def _cache_key(names: list[str], stats: dict[str, str], size: int) -> str:
    lines = "\n".join(f"{n}\t{stats[n]}" for n in names)
    return sha256_bytes(f"v{CACHE_VERSION}\n{size}\n{lines}".encode())[:20]


def _read_cache(cache: Path, names: list[str]) -> tuple[np.ndarray, dict] | None:
    """The cached images if the cache is whole and matches `names`; None (with a warning) if not."""
    index_path, images_path = cache / "index.json", cache / "images.npy"
    if not index_path.exists() or not images_path.exists():
        return None
    try:
        index = json.loads(index_path.read_text())
        expected = index["digest"]
        kind = digest_kind(expected)
        if not checksum_available(kind):
            warnings.warn(f"image cache {cache} was checksummed with {kind}, which this "
                          "machine lacks (pip install xxhash); rebuilding it")
            return None
        images, digest = load_npy_checked(images_path, kind)
        ok = (index.get("version") == CACHE_VERSION
              and sorted(index["names"] + [n for n, _ in index["unreadable"]]) == sorted(names)
              and list(images.shape) == index["shape"]
              and digest == expected)
    except Exception as e:
        warnings.warn(f"image cache {cache} is unreadable ({type(e).__name__}: {e}); rebuilding it")
        return None
    if not ok:
        warnings.warn(f"image cache {cache} does not match its index (damaged or stale); rebuilding it")
        return None
    return images, index


def _decode_all(folder: Path, names: list[str], size: int, progress: bool,
                workers: int | None) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """(images of the readable files, their names, (name, reason) of the unreadable ones)."""
    images = np.empty((len(names), size, size, 3), dtype=np.uint8)
    good, unreadable = [], []
    jobs = [(str(folder / n), size) for n in names]
    workers = workers or min(8, os.cpu_count() or 1)
    bar = tqdm(total=len(names), desc=f"decoding faces at {size}px", unit="img", disable=not progress)
    with ProcessPoolExecutor(workers) as pool:
        for name, out in zip(names, pool.map(_decode, jobs, chunksize=64)):
            if isinstance(out, str):
                warnings.warn(f"skipping {folder / name}: {out}")
                unreadable.append((name, out))
            else:
                images[len(good)] = out
                good.append(name)
            bar.update()
    bar.close()
    return images[: len(good)], good, unreadable


def _build_cache(folder: Path, names: list[str], size: int, cache: Path, progress: bool,
                 workers: int | None) -> tuple[np.ndarray, dict]:
    images, good, unreadable = _decode_all(folder, names, size, progress, workers)
    digest = tree_digest(memoryview(images))
    # "digest" checks the file on every load (fast kind); "content" names the pixels for run
    # fingerprints and is always CRC-32, so a run made on a machine without xxhash matches here
    content = digest if digest_kind(digest) == "crc32" else tree_digest(memoryview(images), "crc32")
    index = {"version": CACHE_VERSION, "folder": str(folder), "size": size, "names": good,
             "unreadable": unreadable, "shape": list(images.shape),
             "digest": digest, "content": content.split(":", 1)[1]}
    # images first, index last: an index only ever describes a complete images.npy
    atomic_write(cache / "images.npy", lambda f: np.save(f, images, allow_pickle=False))
    write_json(cache / "index.json", index)
    _drop_stale_caches(cache, folder, size)
    return images, index


def _subset(folder: Path, names: list[str], subset: list[str], size: int, cache: Path, progress: bool,
            workers: int | None) -> tuple[np.ndarray, dict]:
    """Images of `subset` only (a --limit run): taken from the whole set's cache when it is there,
    else decoded alone, never the whole set (at 200 px that is minutes and gigabytes for a small run).
    The index describes the subset, so a run's fingerprint is the same either way."""
    cached = _read_cache(cache, names) if (cache / "index.json").exists() else None
    if cached is not None:
        full, index = cached
        at = {n: i for i, n in enumerate(index["names"])}
        why = dict(index["unreadable"])
        good = [n for n in subset if n in at]
        images = full[[at[n] for n in good]]
        unreadable = [(n, why[n]) for n in subset if n in why]
    else:
        images, good, unreadable = _decode_all(folder, subset, size, progress, workers)
    content = tree_digest(memoryview(np.ascontiguousarray(images)), "crc32")
    return images, {"names": good, "unreadable": unreadable, "content": content.split(":", 1)[1]}


def _drop_stale_caches(current: Path, folder: Path, size: int) -> None:
    """Delete older caches of the same folder and size (each is gigabytes), keeping `current`."""
    for other in current.parent.glob(f"utkface-{size}px-*"):
        try:
            same = other != current and json.loads((other / "index.json").read_text())["folder"] == str(folder)
        except Exception:
            continue   # not ours to judge
        if same:
            shutil.rmtree(other, ignore_errors=True)


def load_faces(folder: Path, image_size: int, cache_dir: Path, strict: bool = False,
               progress: bool = True, workers: int | None = None, only: list[str] | None = None) -> Faces:
    """All usable faces of `folder`, decoded at `image_size` (through the cache); `only`: just those
    files (in the folder's order), decoded alone unless the whole set's cache is there."""
    folder = Path(folder).resolve()
    stats: dict[str, str] = {}
    candidates, skipped = scan_folder(folder, stats)
    if strict:
        fatal = [(n, r) for n, r in skipped if not r.startswith("excluded")]
        if fatal:
            raise SisaError(f"--strict_data: {len(fatal)} bad file(s) in {folder}, first {fatal[0][0]} "
                            f"({fatal[0][1]}); fix or remove them, or drop --strict_data to skip them")
    if not candidates:
        raise SisaError(f"no usable face images in {folder} (files must be named "
                        f"age_gender_race_datetime.jpg); {GET_DATA}")
    names = [n for n, _ in candidates]
    cache = Path(cache_dir) / f"utkface-{image_size}px-{_cache_key(names, stats, image_size)}"
    if only is not None:
        wanted = set(only)
        images, index = _subset(folder, names, [n for n in names if n in wanted], image_size, cache, progress, workers)
        cached = None
    else:
        cached = _read_cache(cache, names)
        images, index = cached if cached is not None else _build_cache(
            folder, names, image_size, cache, progress, workers)
    for name, reason in index["unreadable"]:
        if cached is not None:   # warned while building; repeat so every run names them
            warnings.warn(f"skipping {folder / name}: {reason}")
        skipped.append((name, reason))
    if strict and index["unreadable"]:
        name, reason = index["unreadable"][0]
        raise SisaError(f"--strict_data: {name} is {reason}; replace the file or drop --strict_data")
    if not index["names"]:
        raise SisaError(f"no readable face images in {folder}; {GET_DATA}")
    table = _table(index["names"], dict(candidates))
    skipped_df = pd.DataFrame(sorted(skipped), columns=["filename", "reason"])
    content = index["content"]
    fingerprint = sha256_bytes(f"{image_size}\n{content}\n".encode()
                               + "\n".join(index["names"]).encode())[:20]
    return Faces(table, images, skipped_df, fingerprint)


def _table(names: list[str], labels: dict) -> pd.DataFrame:
    table = pd.DataFrame([(n, *labels[n]) for n in names], columns=COLUMNS[:4])
    table["age_class"] = np.searchsorted(AGE_BOUNDS, table["age"].to_numpy(), side="left")
    return table


def face_table(folder: Path, image_size: int, cache_dir: Path, readable: bool = True) -> tuple[pd.DataFrame, bool]:
    """The faces' labels without decoding an image: (table, exact). `readable`: only the readable
    files, known exactly when the image cache of this folder and size is there (a dry run's count);
    otherwise, and with readable=False (--limit chooses its faces from this), every file with a
    valid name, an unreadable one included."""
    folder = Path(folder).resolve()
    stats: dict[str, str] = {}
    candidates, _ = scan_folder(folder, stats)
    if not candidates:
        raise SisaError(f"no usable face images in {folder} (files must be named "
                        f"age_gender_race_datetime.jpg); {GET_DATA}")
    names = [n for n, _ in candidates]
    index_path = Path(cache_dir) / f"utkface-{image_size}px-{_cache_key(names, stats, image_size)}" / "index.json"
    if not readable:
        return _table(names, dict(candidates)), True
    try:
        index = json.loads(index_path.read_text())
        good, exact = index["names"], sorted(index["names"] + [n for n, _ in index["unreadable"]]) == sorted(names)
    except (OSError, ValueError, KeyError):
        good, exact = names, False
    return _table(good if exact else names, dict(candidates)), exact


def skipped_summary(skipped: pd.DataFrame) -> str:
    """One line: how many files were skipped, by reason."""
    if skipped.empty:
        return "no files skipped"
    kinds = skipped["reason"].str.split(":", n=1).str[0].value_counts().sort_index()
    return f"skipped {len(skipped)} file(s): " + ", ".join(f"{k} {v}" for k, v in kinds.items())
