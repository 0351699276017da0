"""Where every face goes: each fold's test set, and the shard and slice of every training face.

A strategy is `<placement>-<test set>`:
  test set  random    n = 35 * test_per_cell + test_random faces at random, all in group "random"
            balanced  test_per_cell faces per (race, age class) cell, in the group of their race, plus
                      test_random more at random as group "random" (the original's 9 x 35 + 63 = 378)
            kfold     stratified by race x age class; fold k tests the k-th of K folds, so every face
                      is tested exactly once over the run; group "random" is the whole test fold
  placement random    training faces in random order
            sorted    high-likelihood faces first, into the slots that are cheapest to unlearn:
                      put_in shard -> as few shards as possible (latest slices first within a shard)
                      put_in slice -> the last slice of every shard (spread evenly over shards),
                                      then the next-latest slices
            segregated  the faces of one race (--control_race) first, placed like `sorted`: with put_in
                      shard they fill as few shards as possible. A diagnostic, not a strategy: the
                      most a placement can do to one race's share of each shard
The training faces are cut into S x R disjoint parts whose sizes differ by at most one; no face is
dropped. Each fold draws from its own streams of the run's seed, and the test set's stream does not
depend on the placement, so runs that differ only in strategy placement share their test faces.

    .venv/bin/python train.py --dry_run --strategy sorted-balanced --put_in slice   # see the placement
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from .config import RunConfig
from .data import AGE_CLASSES, RACES
from .errors import SisaError
from .seeding import rng
from .store import sha256_bytes, sha256_names

COLUMNS = ["filename", "age", "gender", "race", "age_class", "knowledge", "high_likelihood",
           "requests_unlearning", "role", "group", "shard", "slice"]
# The evaluation groups (eval_groups), in the poster's order: the columns of every accuracy array and
# table. The only other order is a file format, the original's pickles: ORIGINAL_GROUPS.
GROUPS = ("random", *RACES)
ORIGINAL_GROUPS = (*RACES, "random")


def _cells(table: pd.DataFrame) -> np.ndarray:
    """Cell id race * 7 + age_class of every face."""
    return table["race"].to_numpy() * len(AGE_CLASSES) + table["age_class"].to_numpy()


def _cell_name(cell: int) -> str:
    return f"{RACES[cell // len(AGE_CLASSES)]} aged {AGE_CLASSES[cell % len(AGE_CLASSES)]}"


def limit_faces(table: pd.DataFrame, n: int, min_per_cell: int, gen: np.random.Generator) -> np.ndarray:
    """Sorted row positions of a subsample of `n` faces, stratified by race x age class.

    Every cell first gets `min_per_cell` faces (or all it has) so a balanced test set can still be
    filled; the rest of the budget is shared in proportion to the cells' remaining sizes.
    """
    if n >= len(table):
        return np.arange(len(table))
    cells = _cells(table)
    ids, sizes = np.unique(cells, return_counts=True)
    take = np.minimum(sizes, min_per_cell)
    budget = n - take.sum()
    if budget < 0:
        raise SisaError(f"--limit {n} is too small: filling every test cell needs {take.sum()} faces; "
                        "raise --limit or lower --test_per_cell")
    room = sizes - take
    share = budget * room / room.sum()
    extra = np.floor(share).astype(int)
    order = np.argsort(-(share - extra), kind="stable")   # largest remainders get the leftovers
    extra[order[: budget - extra.sum()]] += 1
    take += extra
    rows = [gen.choice(np.flatnonzero(cells == c), size=t, replace=False) for c, t in zip(ids, take)]
    return np.sort(np.concatenate(rows))


def choose_test(table: pd.DataFrame, cfg: RunConfig, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of fold `fold`'s test faces and the group each was drawn for."""
    n = len(table)
    if cfg.test_kind == "kfold":
        # One stratified split of all faces for the whole run; fold k tests part k.
        cells = _cells(table)
        seed = int(rng(cfg.seed, "kfold").integers(2**31))
        with warnings.catch_warnings():   # tiny cells (with --limit) may have fewer faces than folds
            warnings.simplefilter("ignore", UserWarning)
            splits = list(StratifiedKFold(cfg.folds, shuffle=True, random_state=seed).split(np.zeros(n), cells))
        test = np.sort(splits[fold][1])
        return test, np.full(len(test), "random", dtype=object)
    gen = rng(cfg.seed, "test", fold)
    if cfg.test_kind == "random":
        size = len(RACES) * len(AGE_CLASSES) * cfg.test_per_cell + cfg.test_random
        if size >= n:
            raise SisaError(f"a random test set of {size} faces leaves nothing to train on ({n} faces); "
                            "lower --test_per_cell/--test_random or raise --limit")
        test = np.sort(gen.choice(n, size=size, replace=False))
        return test, np.full(size, "random", dtype=object)
    # balanced: test_per_cell faces in every (race, age class) cell, then test_random at random
    cells = _cells(table)
    rows, groups = [], []
    for cell in range(len(RACES) * len(AGE_CLASSES)):
        members = np.flatnonzero(cells == cell)
        if len(members) < cfg.test_per_cell:
            raise SisaError(f"the balanced test set needs {cfg.test_per_cell} faces of {_cell_name(cell)} "
                            f"but the data has {len(members)}; lower --test_per_cell or raise --limit")
        rows.append(gen.choice(members, size=cfg.test_per_cell, replace=False))
        groups += [RACES[cell // len(AGE_CLASSES)]] * cfg.test_per_cell
    taken = np.concatenate(rows) if rows else np.array([], dtype=int)
    rest = np.setdiff1d(np.arange(n), taken)
    if cfg.test_random >= len(rest):
        raise SisaError(f"--test_random {cfg.test_random} leaves nothing to train on ({len(rest)} faces "
                        "outside the balanced cells); lower it or raise --limit")
    extra = gen.choice(rest, size=cfg.test_random, replace=False)
    test = np.concatenate([taken, extra])
    groups = np.array(groups + ["random"] * cfg.test_random, dtype=object)
    order = np.argsort(test)
    return test[order], groups[order]


def part_sizes(n: int, num_shards: int, num_slices: int) -> np.ndarray:
    """(S, R) sizes of the parts: n split as evenly as possible (sizes differ by at most one)."""
    parts = num_shards * num_slices
    sizes = np.full(parts, n // parts)
    sizes[: n % parts] += 1
    return sizes.reshape(num_shards, num_slices)


def place(first: np.ndarray, cfg: RunConfig, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shard and slice of each training face, given which faces go first (the high-likelihood flag
    for `sorted`, the segregated race for `segregated`; ignored by `random`)."""
    high = first
    n, S, R = len(high), cfg.num_shards, cfg.num_slices
    if n < S * R:
        raise SisaError(f"{S} shards x {R} slices = {S * R} parts but only {n} training faces; "
                        "use fewer shards/slices or more data")
    sizes = part_sizes(n, S, R)
    # One slot per face position: (shard, slice, position within the part).
    slot_shard = np.repeat(np.repeat(np.arange(S), R), sizes.ravel())
    slot_slice = np.repeat(np.tile(np.arange(R), S), sizes.ravel())
    slot_pos = np.concatenate([np.arange(c) for c in sizes.ravel()])
    faces = gen.permutation(n)
    if cfg.placement in ("sorted", "segregated"):
        faces = faces[np.argsort(~high[faces], kind="stable")]     # high-likelihood (or the race) first
        if cfg.put_in == "shard":     # fill shard 0 (its latest slices first), then shard 1, ...
            slots = np.lexsort((slot_pos, -slot_slice, slot_shard))
        else:                         # every shard's last slice first, round-robin over shards
            slots = np.lexsort((slot_shard, slot_pos, -slot_slice))
    else:
        slots = np.arange(n)
    shard, slice_ = np.empty(n, dtype=int), np.empty(n, dtype=int)
    shard[faces] = slot_shard[slots]
    slice_[faces] = slot_slice[slots]
    return shard, slice_


def build_partition(table: pd.DataFrame, cfg: RunConfig, fold: int) -> pd.DataFrame:
    """One row per face of `table` (which holds the likelihood columns) with its role and place."""
    test, groups = choose_test(table, cfg, fold)
    part = table.reset_index(drop=True).copy()
    part["role"] = "train"
    part.loc[test, "role"] = "test"
    part["group"] = pd.Series(pd.NA, index=part.index, dtype="string")
    part.loc[test, "group"] = groups
    train = np.flatnonzero(part["role"].to_numpy() == "train")
    first = part["race"].to_numpy() == RACES.index(cfg.control_race) if cfg.placement == "segregated" \
        else part["high_likelihood"].to_numpy()
    arm = ("arm", cfg.arm) if cfg.arm else ()          # arm 0: the keys of runs made before arms existed
    shard, slice_ = place(first[train], cfg, rng(cfg.seed, "placement", fold, *arm))
    for col, values in (("shard", shard), ("slice", slice_)):
        part[col] = pd.array([pd.NA] * len(part), dtype="Int64")
        part.loc[train, col] = values
    part["forgotten"] = False
    return part[COLUMNS + ["forgotten"]]


def _cell_text(v) -> str:
    return "" if pd.isna(v) else str(int(v)) if isinstance(v, (int, np.integer, float)) else str(v)


def _column_text(part: pd.DataFrame, col: str) -> list[str]:
    """Every value of a column as content_hash writes it; the same text whatever the dtypes."""
    s = part[col]
    if col == "knowledge":
        return [f"{float(v):.12g}" for v in s.to_numpy(dtype=object)]   # immune to a last-digit CSV round trip
    if col in ("high_likelihood", "requests_unlearning"):
        return np.where(s.to_numpy(dtype=bool), "1", "0").tolist()
    if pd.api.types.is_integer_dtype(s.dtype):                            # int64 or nullable Int64: whole numbers
        return s.astype("string").fillna("").tolist()
    if pd.api.types.is_string_dtype(s.dtype) or s.dtype == object:
        values = s.to_numpy(dtype=object)
        missing = pd.isna(s).to_numpy()
        if all(isinstance(v, str) for v in values[~missing]):             # plain text: as it is, NA empty
            return np.where(missing, "", values).tolist()
    return [_cell_text(v) for v in s.to_numpy(dtype=object)]             # anything else: value by value


def content_hash(part: pd.DataFrame) -> str:
    """Hash of a partition's placement (everything but the `forgotten` column, which unlearning edits).

    Built from an explicit text form of every value, not from pandas' CSV writer, so the hash does
    not depend on the pandas version or on the dtypes a reader chose (whole numbers as integers,
    missing values empty, the likelihood to 12 significant digits, flags as 0/1). Whole columns are
    formatted at once: hashing every partition of a study value by value cost seconds per run.
    """
    rows = zip(*(_column_text(part, c) for c in COLUMNS))
    return sha256_bytes("\n".join(",".join(r) for r in rows).encode())


def read_partition(path) -> pd.DataFrame:
    dtypes = {"filename": "string", "group": "string", "role": "string", "shard": "Int64", "slice": "Int64"}
    try:
        part = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values={"group": [""], "shard": [""], "slice": [""]})
    except Exception as e:
        raise SisaError(f"partition {path} is unreadable ({type(e).__name__}: {e}); rerun train.py --overwrite") from e
    missing = [c for c in COLUMNS + ["forgotten"] if c not in part.columns]
    if missing:
        raise SisaError(f"partition {path} lacks columns {missing}; it is damaged or from another version")
    for col in ("high_likelihood", "requests_unlearning", "forgotten"):
        part[col] = part[col].astype(str).str.lower().eq("true")
    return part


def write_partition_csv(part: pd.DataFrame) -> bytes:
    return part.to_csv(index=False).encode()


def eval_groups(part: pd.DataFrame) -> dict[str, np.ndarray]:
    """Boolean masks over the partition's rows for each evaluation group.

    A race group is the faces drawn for that race (balanced test) or, when the test set was drawn
    without regard to race (random, kfold), the test faces of that race. "random" is the faces drawn
    at random. A face may be in two groups (a white face of a k-fold test is in "white" and "random").
    """
    test = (part["role"] == "test").to_numpy()
    group = part["group"].fillna("").to_numpy()
    by_race_draw = np.isin(group, RACES).any()
    masks = {}
    for code, race in enumerate(RACES):
        masks[race] = test & ((group == race) if by_race_draw else (part["race"].to_numpy() == code))
    masks["random"] = test & (group == "random")
    return masks


def stage_rows(part: pd.DataFrame, shard: int, slice_: int) -> np.ndarray:
    """Row positions a model of `shard` trains on in slice stage `slice_`: slices 0..slice_, minus
    forgotten faces. Cumulative, as in SISA: a later stage never forgets what earlier stages saw."""
    keep = ((part["role"] == "train") & (part["shard"] == shard) & (part["slice"] <= slice_)
            & ~part["forgotten"]).to_numpy(dtype=bool, na_value=False)
    return np.flatnonzero(keep)


def stage_hash(part: pd.DataFrame, shard: int, slice_: int) -> str:
    """The identity of a stage: the hash of the file names of its faces (order-free). A checkpoint
    records it, so a stage trained on other faces (after unlearning, say) is recognised as stale."""
    return sha256_names(part["filename"].to_numpy()[stage_rows(part, shard, slice_)])


def composition(part: pd.DataFrame) -> pd.DataFrame:
    """Per shard and slice: faces, % of each race, % high-likelihood (plus one row for the test set)."""
    train = part[part["role"] == "train"]
    rows = []
    for (shard, slice_), g in list(train.groupby(["shard", "slice"])) + [(("test", ""), part[part["role"] == "test"])]:
        row = {"shard": shard, "slice": slice_, "faces": len(g)}
        for code, race in enumerate(RACES):
            row[f"% {race}"] = 100 * (g["race"] == code).mean()
        row["% high"] = 100 * g["high_likelihood"].mean()
        rows.append(row)
    return pd.DataFrame(rows)
