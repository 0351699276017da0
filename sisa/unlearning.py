"""Unlearning the SISA way: forget a face by retraining only its shard, from its slice on.

A request for face x of fold f (in shard s, slice l) is served in three steps:
  1. retrain stages l..R-1 of shard s from the checkpoint after stage l-1, on the same faces minus
     x and everything forgotten before, with the run's own recipe; the new checkpoints go to
     unlearning/pending/ (the run's own checkpoints are untouched, so the run stays usable);
  2. write unlearning/pending/fold-<f>/shard-<s>/commit.json: the commit point;
  3. mark x forgotten in fold-f/partition.csv, append the request to unlearning/log.jsonl, move the
     new checkpoints into place, delete pending/.
A crash before 2 leaves the run as it was (a rerun reuses the finished pending stages); a crash
after 2 is rolled forward by the next command that takes the run's lock (commit.finish_pending).
Several requests of one shard can be served as a batch: the shard retrains once, from the earliest
of their slices, and one commit covers them all. A stage whose faces are all forgotten trains
nothing: it keeps the weights it starts from.

Costs are counted in faces x epochs: retraining stages l..R-1 of one shard, against retraining the
monolithic 1x1 baseline and against retraining all shards from scratch. `expected_cost` weighs every
training face by its request probability, with no training, under one of two request models:
  shared       (default) one latent "knows the law" draw drives both the high-likelihood flag and
               the request, so a flagged face requests about six times as often as another
               (likelihood.request_probability). Placement by the flag pays off under this model.
  independent  requests proportional to k, independent of the flag: what the flag alone cannot predict.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import time

import numpy as np
import pandas as pd

from . import checkpoints
from .commit import fault, finish_one, tidy_pending
from .config import RunConfig
from .distributed import World
from .errors import SisaError
from .experiment import Experiment, Options
from .layout import RunLayout
from .likelihood import REQUEST_RATE, request_probability
from .partition import stage_rows
from .seeding import rng
from .store import read_json, read_jsonl, write_json

REQUEST_MODELS = ("shared", "independent")


# ---- costs -------------------------------------------------------------------------------------
def stage_costs(part: pd.DataFrame, cfg: RunConfig) -> np.ndarray:
    """(S, R) faces x epochs of every slice stage under the partition's current forgotten set."""
    return np.array([[len(stage_rows(part, s, l)) * cfg.stage_epochs(l) for l in range(cfg.num_slices)]
                     for s in range(cfg.num_shards)])


def baseline_cost(part: pd.DataFrame, cfg: RunConfig) -> int:
    """Retraining the monolithic 1x1 baseline: every training face for --epochs epochs."""
    return int(((part["role"] == "train") & ~part["forgotten"]).sum()) * cfg.epochs


def requesters(part: pd.DataFrame, request_model: str = "shared") -> tuple[pd.DataFrame, np.ndarray]:
    """The training faces not yet forgotten, and the probability that the next request is each one's."""
    if request_model not in REQUEST_MODELS:
        raise SisaError(f"--request_model {request_model!r} is invalid: choose shared or independent")
    train = part[(part["role"] == "train") & ~part["forgotten"]]
    k = train["knowledge"].to_numpy()
    p = request_probability(k, train["high_likelihood"].to_numpy()) if request_model == "shared" else REQUEST_RATE * k
    return train, p / p.sum()


def retrain_from(costs: np.ndarray) -> np.ndarray:
    """(S, R): faces x epochs of retraining shard s from slice l on, from stage_costs."""
    return np.cumsum(costs[:, ::-1], axis=1)[:, ::-1]


def expected_cost(part: pd.DataFrame, cfg: RunConfig, request_model: str = "shared") -> dict:
    """Expected faces x epochs to serve one request drawn from the likelihood model."""
    costs = stage_costs(part, cfg)
    train, w = requesters(part, request_model)
    tail = retrain_from(costs)
    per_face = tail[train["shard"].to_numpy(int), train["slice"].to_numpy(int)]
    full, base = int(costs.sum()), baseline_cost(part, cfg)
    exp_cost = float(w @ per_face)
    return {"request_model": request_model, "expected_faces_x_epochs": exp_cost, "full_faces_x_epochs": full,
            "baseline_faces_x_epochs": base,
            "expected_share_of_full": exp_cost / full, "expected_share_of_baseline": exp_cost / base,
            "speedup_vs_full": full / exp_cost, "speedup_vs_baseline": base / exp_cost}


def expected_batch_cost(part: pd.DataFrame, cfg: RunConfig, k: int, draws: int = 1000, seed: int = 0,
                        fold: int = 0, request_model: str = "shared") -> dict:
    """Cost of serving k requests (drawn from the likelihood model) together, over `draws` batches.

    Per request: the batch's cost divided by k. Monte Carlo, no training; like expected_cost, it
    prices stages as they stand (the requested faces' own removal, k faces in thousands, is ignored),
    so k=1 converges to expected_cost. Placement that gathers likely requesters in few shards pays
    off here: their requests share one retraining per shard."""
    costs = stage_costs(part, cfg)
    tail = retrain_from(costs)
    train, p = requesters(part, request_model)
    if k > len(train):
        raise SisaError(f"a batch of {k} requests is more than the {len(train)} training faces left in fold {fold}")
    shard, slice_ = train["shard"].to_numpy(int), train["slice"].to_numpy(int)
    gen = rng(seed, "batch-cost", fold, k)
    full, base = int(costs.sum()), baseline_cost(part, cfg)
    totals, shards_hit = np.empty(draws), np.empty(draws)
    for d in range(draws):
        pick = gen.choice(len(train), size=k, replace=False, p=p)
        first = {}
        for si, li in zip(shard[pick].tolist(), slice_[pick].tolist()):
            first[si] = min(li, first.get(si, li))
        totals[d] = sum(tail[si, li] for si, li in first.items())
        shards_hit[d] = len(first)
    per_request = totals / k
    lo, hi = np.percentile(per_request, [2.5, 97.5])
    return {"request_model": request_model, "batch": k, "draws": draws, "per_request_faces_x_epochs": float(per_request.mean()),
            "per_request_interval": [float(lo), float(hi)], "shards_retrained": float(shards_hit.mean()),
            "full_faces_x_epochs": full, "baseline_faces_x_epochs": base,
            # retraining all shards, or the monolithic model, would also serve a batch in one go
            "batch_share_of_full": float(totals.mean() / full),
            "speedup_vs_full": full / float(totals.mean()), "speedup_vs_baseline": base / float(totals.mean())}


def set_cost(part: pd.DataFrame, cfg: RunConfig, faces: list[str]) -> dict:
    """Exact cost of forgetting `faces` together (a volume's step): each shard holding one retrains
    once from its earliest slice holding one, on what is left after the step; no training. Against
    retraining all shards, and the monolithic 1x1 baseline, from scratch without the faces."""
    after = part.copy()
    after.loc[after["filename"].isin(faces), "forgotten"] = True
    costs = stage_costs(after, cfg)
    rows = part[part["filename"].isin(faces)]
    first = rows.groupby("shard")["slice"].min()
    cost = int(sum(costs[int(s), int(l):].sum() for s, l in first.items()))
    full, base = int(costs.sum()), baseline_cost(after, cfg)
    return {"faces": len(rows), "shards_retrained": len(first), "slices_retrained": int(sum(cfg.num_slices - first)),
            "faces_x_epochs": cost, "full_faces_x_epochs": full, "baseline_faces_x_epochs": base,
            "share_of_full": cost / full if full else float("nan"),
            "speedup_vs_full": full / max(cost, 1), "speedup_vs_baseline": base / max(cost, 1)}


# ---- requests ----------------------------------------------------------------------------------
def locate(part: pd.DataFrame, face: str) -> tuple[str, int | None, int | None]:
    """('train' | 'test' | 'forgotten' | 'absent', shard, slice) of a face in a fold's partition."""
    hit = part[part["filename"] == face]
    if hit.empty:
        return "absent", None, None
    row = hit.iloc[0]
    if row["role"] == "test":
        return "test", None, None
    return ("forgotten" if row["forgotten"] else "train"), int(row["shard"]), int(row["slice"])


def request_order(part: pd.DataFrame, seed: int, fold: int) -> list[str]:
    """Every training face of a fold (forgotten ones included) in the order requests arrive: drawn
    once, without replacement, with weight equal to each face's request probability, from a key that
    depends on the seed and fold only. The first n are the fold's n requests whatever was served
    before, so requests are nested (n < m: the first n of the m) and a study killed while serving
    forgets the same faces as one that was not."""
    train = part[part["role"] == "train"]
    p = request_probability(train["knowledge"].to_numpy(), train["high_likelihood"].to_numpy())
    # weighted sampling without replacement (Efraimidis and Spirakis): sort by Exp(1) / weight
    keys = rng(seed, "request-order", fold).exponential(size=len(train)) / p
    return train["filename"].to_numpy()[np.argsort(keys, kind="stable")].astype(str).tolist()


def sample_requests(part: pd.DataFrame, n: int, seed: int, fold: int) -> list[str]:
    """The next n requests of a fold: the first n faces of its request order not yet forgotten."""
    forgotten = set(part.loc[part["forgotten"], "filename"])
    left = [f for f in request_order(part, seed, fold) if f not in forgotten]
    if n > len(left):
        raise SisaError(f"--sample {n} is more than the {len(left)} training faces left in fold {fold}")
    return left[:n]


def read_requests(path) -> list[str]:
    try:
        names = [l.strip() for l in open(path).read().splitlines() if l.strip() and not l.startswith("#")]
    except OSError as e:
        raise SisaError(f"cannot read request file {path}: {e.strerror}") from e
    if not names:
        raise SisaError(f"request file {path} lists no faces; put one face file name per line")
    return [os.path.basename(n) for n in dict.fromkeys(names)]


def serve(exp: Experiment, trainer, fold: int, faces: list[str]) -> list[dict]:
    """Forget training faces of one shard of one fold with one retraining (see the module docstring).

    One face is a SISA request; several are a batch: the shard retrains once, from the earliest slice
    holding one of them. Returns one log record per face, each carrying its share of the batch's cost."""
    layout, cfg = exp.layout, exp.cfg
    part = exp.partitions[fold]
    where = {face: locate(part, face) for face in faces}
    shards = {shard for _, shard, _ in where.values()}
    if len(shards) != 1 or any(state != "train" for state, _, _ in where.values()):
        raise SisaError(f"a batch must be training faces of one shard, got {sorted(where.items())}")
    shard, first = shards.pop(), min(sl for _, _, sl in where.values())
    t0 = time.perf_counter()
    new_part = part.copy()
    new_part.loc[new_part["filename"].isin(faces), "forgotten"] = True
    exp.partitions[fold] = new_part        # stage hashes now exclude the faces
    try:
        request = {"fold": fold, "faces": sorted(faces)}
        here = layout.pending_shard(fold, shard)               # this shard's own pending folder
        req_path = layout.pending_request(here)
        if req_path.exists() and read_json(req_path) != request:
            shutil.rmtree(here)                                # another request's leftovers: not reusable
        write_json(req_path, request)
        # resume inside pending/ after a crash: skip the stages already retrained for this request
        pending = checkpoints.shard_statuses(layout, new_part, fold, shard, cfg.num_slices, pending=True)
        start = first
        while start < cfg.num_slices and pending[start].state == "ok":
            start += 1
        if start < cfg.num_slices:
            start_path = layout.pending_checkpoint(fold, shard, start - 1) if start > first else None
            trainer.run_shard(fold, shard, start, start_path=start_path, out_path=layout.pending_checkpoint,
                              metrics_path=layout.unlearning_metrics)
        fault("before_commit")
        after = stage_costs(new_part, cfg)
        n, cost, full, base = len(faces), int(after[shard, first:].sum()), int(after.sum()), baseline_cost(new_part, cfg)
        trained_s = recorded_training_seconds(layout, cfg, fold)
        wall = time.perf_counter() - t0
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        records = [{"request_id": f"fold{fold}:{face}",          # a face is forgotten once per fold
                    "time": now, "face": face, "fold": fold, "shard": shard, "slice": where[face][2],
                    "batch_size": n, "stages_retrained": list(range(first, cfg.num_slices)),
                    # a batch's costs are shared evenly by its requests: the log's sums stay true
                    "faces_x_epochs": cost / n, "full_faces_x_epochs": full / n, "baseline_faces_x_epochs": base / n,
                    "share_of_full": cost / n / full, "speedup_vs_full": full / max(cost, 1),
                    "speedup_vs_baseline": base / max(cost, 1),
                    "wall_seconds": wall / n, "full_training_seconds_recorded": trained_s / n}
                   for face in faces]
        write_json(layout.pending_commit(here), {"fold": fold, "faces": list(faces), "first_slice": first,
                                                  "records": records})
    except BaseException:
        exp.partitions[fold] = part        # nothing committed: the run is as it was
        raise
    fault("after_commit")
    finish_one(layout, here)
    return records


def recorded_training_seconds(layout: RunLayout, cfg: RunConfig, fold: int) -> float:
    """Seconds the fold's checkpoints took to train, from their records (verifying every checkpoint's
    bytes here would re-read the run; the requests were checked against complete runs)."""
    total = 0.0
    for s in range(cfg.num_shards):
        for l in range(cfg.num_slices):
            record = checkpoints.sidecar(layout.checkpoint(fold, s, l))
            if not record.exists():
                raise SisaError(f"checkpoint record {record} is missing; rerun train.py with the run's command "
                                "to retrain that slice, then unlearn")
            total += read_json(record).get("train_seconds", 0)
    return total


def serve_plan(layout: RunLayout, opts: Options, plan: dict[int, list[str]], world: World = World(),
               batched: bool = False, bar=None):
    """Serve {fold: [faces]}; yields (fold, face, log record) as each request is committed.

    Requests are grouped by (fold, shard) in the order given; each group is served one request after
    another, or (`batched`) all at once by one retraining of the shard. With torchrun each rank serves
    its share of the groups (round-robin), in that shard's own pending folder.
    """
    from .experiment import open_run
    from .training import Trainer

    exp = open_run(layout, opts, with_images=True)
    groups: dict[tuple[int, int], list[str]] = {}
    for fold, names in plan.items():
        for face in names:
            groups.setdefault((fold, locate(exp.partitions[fold], face)[1]), []).append(face)
    trainer = Trainer(exp, opts, bar)
    for (fold, _), names in world.mine(list(groups.items())):
        for batch in ([names] if batched else [[face] for face in names]):
            for record in serve(exp, trainer, fold, batch):
                yield fold, record["face"], record
    if not world.active:          # with torchrun, rank 0 tidies once every rank is done
        tidy_pending(layout)


# ---- proof -------------------------------------------------------------------------------------
def verify(exp: Experiment) -> list[dict]:
    """Per fold and shard: is every checkpoint in use trained on exactly the faces the partition allows?"""
    rows = []
    for fold, part in enumerate(exp.partitions):
        for shard in range(exp.cfg.num_shards):
            forgotten = int((part["forgotten"] & (part["shard"] == shard)).sum())
            states = checkpoints.shard_statuses(exp.layout, part, fold, shard, exp.cfg.num_slices)
            bad = [f"slice {l} {st.state}: {st.why}" for l, st in enumerate(states) if st.state != "ok"]
            rows.append({"fold": fold, "shard": shard, "forgotten": forgotten, "ok": not bad,
                         "detail": "; ".join(bad) or f"all {exp.cfg.num_slices} checkpoints trained on exactly the "
                                                     "faces the partition allows"})
    return rows


def cost_report(exps: list[Experiment], gaps: dict[str, float], request_model: str = "shared") -> pd.DataFrame:
    """Per run: expected cost of a request (likelihood model), measured cost of served ones, fairness gap."""
    rows = []
    for exp in exps:
        cfg = exp.cfg
        expected = [expected_cost(p, cfg, request_model) for p in exp.partitions]
        log = pd.DataFrame(read_jsonl(exp.layout.unlearning_log))
        rows.append({"run": cfg.name, "strategy": cfg.strategy, "put_in": cfg.put_in,
                     "shards_x_slices": f"{cfg.num_shards}x{cfg.num_slices}",
                     "expected_cost_share": np.mean([e["expected_share_of_full"] for e in expected]),
                     "expected_speedup_vs_full": np.mean([e["speedup_vs_full"] for e in expected]),
                     "expected_speedup_vs_baseline": np.mean([e["speedup_vs_baseline"] for e in expected]),
                     "requests_served": len(log),
                     "measured_cost_share": log["share_of_full"].mean() if len(log) else np.nan,
                     "measured_wall_seconds": log["wall_seconds"].mean() if len(log) else np.nan,
                     "gap": gaps.get(cfg.name, np.nan)})
    return pd.DataFrame(rows)
