"""What unlearn.py does, callable from Python: serve requests, prove them, price them, report them.

    from sisa import serving
    from sisa.experiment import Options

    opts = Options(device="cpu")
    serving.serve_requests("sorted-balanced-slice-5x3", opts, sample=5)           # 5 requests per fold
    serving.serve_requests("sorted-balanced-slice-5x3", opts, requests="faces.txt", fold=0, batched=True)
    serving.serve_requests("sorted-balanced-slice-5x3", opts, scenario="group:black", volume=0.05)  # 5% of training faces
    assert serving.verify_run("sorted-balanced-slice-5x3", opts)                  # no checkpoint saw a forgotten face
    serving.price_requests("sorted-balanced-slice-5x3", opts, batch_sizes=[5, 20])   # expected cost, no training
    serving.price_volume("sorted-balanced-slice-5x3", opts, "group:black", 0.05)      # exact cost of a volume
    serving.write_report(["random-balanced-slice-5x3", "sorted-balanced-slice-5x3"], opts, "summaries")

A run is a name under `opts.checkpoints_dir`, a path, or a RunLayout. Each function prints the lines
unlearn.py prints (`say` sends them elsewhere) and returns what they say. Serving, verifying and
pricing take the run's lock and first finish a request a crash left committed; the report only reads.
The mechanics (retraining a shard, the crash-safe commit, costs) are in unlearning.py and commit.py.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pandas as pd

from . import unlearning
from .checkpoints import usable_folds
from .commit import finish_and_report, pending_note
from .distributed import World
from .errors import SisaError
from .experiment import Experiment, Options, open_run
from .layout import RunLayout, SummaryLayout, run_layout, unlearning_report
from .store import run_lock, write_text

Say = Callable[[str], None]       # where the lines go: print, a logger, a list's append


def _layout(run: str | Path | RunLayout, opts: Options) -> RunLayout:
    return run if isinstance(run, RunLayout) else run_layout(str(run), opts.checkpoints_dir)


@contextlib.contextmanager
def _opened(layout: RunLayout, opts: Options, fold: int | None, world: World = World(), serving: bool = False,
            say: Say = print) -> Iterator[tuple[Experiment, list[int]]]:
    """The run under its lock (rank 0 holds it for a torchrun job), interrupted commits finished, and
    the folds asked for."""
    with run_lock(layout.lock, "unlearn.py") if world.rank == 0 else contextlib.nullcontext():
        if world.rank == 0:
            finish_and_report(layout, say)     # an unlearning request a crash left committed
        if serving:
            world.barrier()                    # the other ranks read the run once it is finished
        exp = open_run(layout, opts, with_images=False)
        if fold is not None and fold >= exp.cfg.n_folds:
            raise SisaError(f"--fold {fold} does not exist: run {exp.cfg.name} has folds 0..{exp.cfg.n_folds - 1}")
        yield exp, list(range(exp.cfg.n_folds)) if fold is None else [fold]


# ---- serving -----------------------------------------------------------------------------------
def serve_requests(run: str | Path | RunLayout, opts: Options, requests: str | Path | None = None,
                   sample: int | None = None, fold: int | None = None, seed: int | None = None, batched: bool = False,
                   world: World = World(), say: Say = print, scenario: str | None = None,
                   volume: float | None = None) -> list[dict]:
    """Forget the faces listed in the file `requests`, or `sample` faces per fold drawn by request
    likelihood, or a `volume` (a fraction of each fold's training faces) of a `scenario`
    (scenarios.py: likelihood, random, group:RACE[:AGE]; default likelihood), in every fold or in
    `fold`. Draws are keyed by `seed` (default: the run's own seed). One request at a time, or
    (`batched`, always for a volume) each shard once for all of its requests. Returns the log records
    (unlearning/log.jsonl) of the requests served. With torchrun (`world`), rank 0 plans and every
    rank serves its share of the shards.

        serving.serve_requests("sorted-balanced-slice-5x3", Options(), sample=20, batched=True)
        serving.serve_requests("sorted-balanced-slice-5x3", Options(), scenario="group:black", volume=0.01)
        serving.serve_requests("sorted-balanced-slice-5x3", Options(), scenario="group:black", volume=0.05)  # on top
    """
    if sum(x is not None for x in (requests, sample, volume)) != 1:
        raise SisaError("give the faces to forget one way: a request file, a number of faces to sample, or a volume")
    if scenario is not None and volume is None:
        raise SisaError("--scenario goes with --forget VOLUME (for example --scenario group:black --forget 0.05)")
    batched = batched or volume is not None
    layout = _layout(run, opts)
    with _opened(layout, opts, fold, world, serving=True, say=say) as (exp, folds):
        # rank 0 decides (it sees the run as it is now); the others serve their share of its plan
        plan = world.broadcast(plan_requests(exp, folds, requests, sample, seed, say, scenario, volume)
                               if world.rank == 0 else None)
        if not any(plan.values()):
            return []
        records, left = [], 0
        for k, n, r in unlearning.serve_plan(exp.layout, opts, plan, world, batched=batched):
            records.append(r)
            if r["batch_size"] == 1:
                say(f"fold {k}: forgot {n} (shard {r['shard']}, slice {r['slice']}): retrained "
                    f"{len(r['stages_retrained'])} stage(s), {r['faces_x_epochs']:,.0f} faces x epochs = "
                    f"{100 * r['share_of_full']:.1f}% of retraining all shards ({r['speedup_vs_full']:.2f}x faster; "
                    f"{r['speedup_vs_baseline']:.2f}x faster than the 1x1 baseline), {r['wall_seconds']:.1f} s")
            elif left == 0:                 # a batch: one line, for its first record (they share the costs)
                b = r["batch_size"]
                say(f"fold {k}: forgot {b} faces of shard {r['shard']} in a batch of {b} (one retraining from slice "
                    f"{r['stages_retrained'][0]}): {b * r['faces_x_epochs']:,.0f} faces x epochs = "
                    f"{100 * b * r['share_of_full']:.1f}% of retraining all shards ({r['speedup_vs_full']:.2f}x faster; "
                    f"{r['speedup_vs_baseline']:.2f}x faster than the 1x1 baseline), {b * r['wall_seconds']:.1f} s")
            left = (r["batch_size"] if left == 0 else left) - 1
        records = [r for rs in world.gather(records) for r in rs]
        world.barrier()
        if world.rank != 0:
            return records
        if world.active:             # serve_plan tidies itself when it is the only process
            unlearning.tidy_pending(exp.layout)
        say(served_summary(records, batched))
        say(f"log: {exp.layout.unlearning_log}; check with: .venv/bin/python unlearn.py --run_dir {exp.cfg.name} --verify")
    return records


def plan_requests(exp: Experiment, folds: list[int], requests: str | Path | None = None, sample: int | None = None,
                  seed: int | None = None, say: Say = print, scenario: str | None = None,
                  volume: float | None = None) -> dict[int, list[str]]:
    """{fold: [faces to forget]}, after checking that the run is fully trained and the requests are
    training faces of it (test faces, forgotten and absent ones are said and skipped). A volume of a
    scenario plans the faces still missing to reach it (nothing when it was reached before)."""
    from . import scenarios
    seed = exp.cfg.seed if seed is None else seed
    usable_folds(exp.layout, exp.cfg, exp.partitions, "unlearn", folds, every_slice=True,
                 fix="finish it with train.py before unlearning")
    plan = {}
    if requests is not None:
        names = unlearning.read_requests(requests)
        known = set().union(*(set(p["filename"]) for p in exp.partitions))
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SisaError(f"{len(unknown)} requested face(s) are not in run {exp.cfg.name}, e.g. {unknown[0]}; "
                            "check the names (file names as in the data folder)")
        for k in folds:
            todo = []
            for n in names:
                state, shard, slice_ = unlearning.locate(exp.partitions[k], n)
                if state == "train":
                    todo.append(n)
                else:
                    why = {"test": "is a test face in this fold: never trained on, nothing to forget",
                           "forgotten": "is already forgotten", "absent": "is not in this fold"}[state]
                    say(f"fold {k}: {n} {why}")
            plan[k] = todo
    elif volume is not None:
        sc = scenarios.parse(scenario or "likelihood")
        plan = {k: scenarios.next_step(exp.partitions[k], sc, volume, seed, k) for k in folds}
        for k in folds:
            say(f"fold {k}: {sc.name} at {volume:g}: {scenarios.count(exp.partitions[k], volume):,} face(s) in all, "
                f"{len(plan[k]):,} still to forget")
        if not any(plan.values()):
            say(f"nothing to unlearn: {sc.name} at {volume:g} was served before")
            return plan
    else:
        plan = {k: unlearning.sample_requests(exp.partitions[k], sample, seed, k) for k in folds}
    if not any(plan.values()):
        raise SisaError("nothing to unlearn: every requested face is a test face, already forgotten or absent")
    return plan


def served_summary(records: list[dict], batched: bool = False) -> str:
    """One line: what the served requests cost, against retraining all shards, the 1x1 baseline and
    the recorded training time."""
    cost = sum(r["faces_x_epochs"] for r in records)
    full = sum(r["full_faces_x_epochs"] for r in records)
    base = sum(r["baseline_faces_x_epochs"] for r in records)
    wall = sum(r["wall_seconds"] for r in records)
    trained = sum(r["full_training_seconds_recorded"] for r in records)
    each = "once per shard's batch" if batched else "each time"
    return (f"served {len(records)} request(s): {cost:,.0f} faces x epochs retrained, versus {full:,.0f} for retraining "
            f"all shards {each} ({full / max(cost, 1):.2f}x) and {base:,.0f} for the 1x1 baseline "
            f"({base / max(cost, 1):.2f}x); {wall:.1f} s of wall time versus {trained:.1f} s the full trainings took "
            f"({trained / max(wall, 1e-9):.2f}x)")


# ---- proof and cost ----------------------------------------------------------------------------
def verify_run(run: str | Path | RunLayout, opts: Options, fold: int | None = None, say: Say = print) -> bool:
    """Whether every checkpoint in use (of every fold, or of `fold`) was trained on exactly the faces
    the partition allows, forgotten ones excluded; says so per shard.

        ok = serving.verify_run("sorted-balanced-slice-5x3", Options())
    """
    with _opened(_layout(run, opts), opts, fold, say=say) as (exp, folds):
        rows = [r for r in unlearning.verify(exp) if r["fold"] in folds]
    for r in rows:
        say(f"fold {r['fold']} shard {r['shard']}: {'OK' if r['ok'] else 'VIOLATION'} "
            f"({r['forgotten']} forgotten face(s)): {r['detail']}")
    bad = [r for r in rows if not r["ok"]]
    say("verified: no checkpoint in use was trained on a forgotten face" if not bad else
        f"{len(bad)} shard(s) fail verification: retrain them with train.py (same command as the run)")
    return not bad


def approximate_volume(run: str | Path | RunLayout, opts: Options, scenario: str, volume: float, method: str,
                       summaries_dir: Path, lr: float | None = None, seed: int | None = None,
                       say: Say = print) -> dict:
    """Approximate unlearning of a 1x1 run (approximate.py): `method` forgets the scenario's volume from
    the trained model of every fold, within a tenth of retraining's image-steps; the run itself is not
    changed. The test faces' predictions and every face's features go to the summary
    <run>-<scenario>-<method>-forget<pct> in `summaries_dir`. `lr` None: chosen on a validation split of
    fold 0's training faces (tuning.py), the choice saved beside the summary. Returns the method's facts.

        serving.approximate_volume("random-kfold-slice-1x1", Options(), "group:black", 0.05, "scrub", Path("summaries"))
    """
    from . import approximate, scenarios, tuning
    from .store import write_json
    from .training import Trainer
    if method not in approximate.METHODS:
        raise SisaError(f"--method {method!r} is invalid: choose from {', '.join(approximate.METHODS)}")
    layout = _layout(run, opts)
    with _opened(layout, opts, None, say=say) as (exp, _):
        cfg = exp.cfg
        if cfg.num_shards * cfg.num_slices != 1:
            raise SisaError(f"--method applies approximate unlearning to a 1x1 run (the monolith); {cfg.name} has "
                            f"{cfg.num_shards} shard(s) x {cfg.num_slices} slice(s): serve it exactly with --forget alone")
        if any(p["forgotten"].any() for p in exp.partitions):
            raise SisaError(f"run {cfg.name} has served requests; approximate methods start from the trained model "
                            "(train it again under another name)")
        usable_folds(layout, cfg, exp.partitions, "unlearn")
        seed = cfg.seed if seed is None else seed
        summary = SummaryLayout(Path(summaries_dir), f"{cfg.name}-{scenarios.parse(scenario).tag}-{method}-"
                                                     f"forget{100 * volume:g}")
        if summary.predictions.exists():
            raise SisaError(f"summary {summary.name} exists already in {summaries_dir}; delete its files or pass "
                            "another --summaries_dir")
        for k, part in enumerate(exp.partitions):       # an impossible volume: one line, before any training
            scenarios.forget_set(part, scenarios.parse(scenario), volume, seed, k)
        full = open_run(layout, opts, with_images=True)
        trainer = Trainer(full, opts)
        if lr is None:
            say(f"choosing {method}'s learning rate on a validation split of fold 0's training faces (tuning.py)")
            tuned = tuning.tune(full, trainer, [scenario], volume, [method], seed, summary.tuning_metrics, say=say)
            m = tuning.chosen(tuned, scenario, method, cfg.batch_size)
        else:
            tuned, m = None, approximate.configured(method, cfg.batch_size, lr)
        facts = approximate.unlearn_run(full, trainer, scenario, volume, m, summary, seed)
        if tuned is not None:
            write_json(summary.tuning, tuned)
    say(f"{method} forgot {scenario} at {volume:g} from {cfg.name} ({'DIVERGED, ' if facts['diverged'] else ''}"
        f"lr {m.lr:.2g}, {facts['image_steps']:,} image-steps, {facts['seconds']:.0f} s); the run is unchanged; "
        f"summary {summary.name} in {summaries_dir}")
    return facts


def price_volume(run: str | Path | RunLayout, opts: Options, scenario: str, volume: float, fold: int | None = None,
                 seed: int | None = None, say: Say = print) -> list[dict]:
    """The exact cost of forgetting a volume of a scenario (scenarios.py) in one step, for every fold
    or `fold`, from the partition alone (the faces forgotten so far stay forgotten); no training.
    Returns unlearning.set_cost's dict per fold.

        serving.price_volume("sorted-balanced-slice-5x3", Options(), "group:black", 0.05)
    """
    from . import scenarios
    sc, out = scenarios.parse(scenario), []
    with _opened(_layout(run, opts), opts, fold, say=say) as (exp, folds):
        for k in folds:
            part = exp.partitions[k]
            faces = scenarios.next_step(part, sc, volume, exp.cfg.seed if seed is None else seed, k)
            c = unlearning.set_cost(part, exp.cfg, faces)
            out.append({"fold": k, "scenario": sc.name, "volume": volume, **c})
            say(f"fold {k}: {sc.name} at {volume:g}: {c['faces']:,} face(s) in {c['shards_retrained']} of "
                f"{exp.cfg.num_shards} shard(s), {c['slices_retrained']} slice stage(s) retrained, "
                f"{c['faces_x_epochs']:,} faces x epochs = {100 * c['share_of_full']:.1f}% of retraining all shards "
                f"({c['speedup_vs_full']:.2f}x faster; {c['speedup_vs_baseline']:.2f}x faster than retraining the 1x1 "
                f"baseline without the faces)")
    return out


def price_requests(run: str | Path | RunLayout, opts: Options, fold: int | None = None, request_model: str = "shared",
                   batch_sizes: Sequence[int] = (), draws: int = 1000, seed: int | None = None,
                   say: Say = print) -> list[dict]:
    """The expected retraining cost of one request drawn from `request_model` (exact, from the
    partition), and per request of batches of each of `batch_sizes` (Monte Carlo over `draws` batches,
    seeded by `seed`, default the run's own), for every fold or `fold`; no training. Returns the unlearning.expected_cost
    and expected_batch_cost dicts, each with its fold.

        serving.price_requests("sorted-balanced-shard-5x3", Options(), request_model="independent")
    """
    out = []
    with _opened(_layout(run, opts), opts, fold, say=say) as (exp, folds):
        meaning = ("the flag and the request share one latent draw" if request_model == "shared"
                   else "requests proportional to k, independent of the flag")
        say(f"request model: {request_model} ({meaning})")
        for k in folds:
            e = unlearning.expected_cost(exp.partitions[k], exp.cfg, request_model)
            out.append({"fold": k, **e})
            say(f"fold {k}: expected retraining per request {e['expected_faces_x_epochs']:,.0f} faces x epochs: "
                f"{e['speedup_vs_baseline']:.2f}x faster than retraining the 1x1 baseline; "
                f"{100 * e['expected_share_of_full']:.1f}% of retraining all shards ({e['speedup_vs_full']:.2f}x faster, "
                f"with --slice_epochs {exp.cfg.slice_epochs})")
            for b in batch_sizes or []:
                e = unlearning.expected_batch_cost(exp.partitions[k], exp.cfg, b, draws,
                                                   exp.cfg.seed if seed is None else seed, k, request_model)
                out.append({"fold": k, **e})
                lo, hi = e["per_request_interval"]
                say(f"fold {k}: batches of {b}: {e['shards_retrained']:.2f} shard(s) retrained per batch, "
                    f"{e['per_request_faces_x_epochs']:,.0f} faces x epochs per request [95% of batches: "
                    f"{lo:,.0f}-{hi:,.0f}]; a batch costs {100 * e['batch_share_of_full']:.1f}% of retraining "
                    f"all shards (speed-up {e['speedup_vs_full']:.2f}x; versus retraining the 1x1 baseline "
                    f"once per batch: {e['speedup_vs_baseline']:.2f}x)")
    return out


# ---- across runs -------------------------------------------------------------------------------
def write_report(runs: list[str | Path | RunLayout], opts: Options, summaries_dir: str | Path,
                 out: str = "unlearning-report", overwrite: bool = False, request_model: str = "shared",
                 say: Say = print) -> pd.DataFrame:
    """Per run, the expected and measured cost of a request and the fairness gap of its evaluate.py
    summary (missing: NaN), as `<summaries_dir>/<out>.csv` and a figure `.png`; returns the table.
    Read-only: it takes no lock and finishes nothing (a run being served may be read mid-request).

        serving.write_report(["random-balanced-slice-5x3", "sorted-balanced-shard-5x3"], Options(), "summaries")
    """
    from . import plots

    csv, png = unlearning_report(summaries_dir, out)
    if (csv.exists() or png.exists()) and not overwrite:
        raise SisaError(f"{csv} exists; pass --overwrite to replace it or --out for another name")
    layouts = [_layout(r, opts) for r in runs]
    for note in filter(None, map(pending_note, layouts)):
        say(f"note: {note}")
    exps = [open_run(layout, opts, with_images=False) for layout in layouts]
    gaps = {}
    for e in exps:
        f = SummaryLayout(Path(summaries_dir), e.cfg.name).fairness_csv
        if f.exists():
            gaps[e.cfg.name] = float(pd.read_csv(f, index_col=0).loc["gap (best - worst)", "value"])
    table = unlearning.cost_report(exps, gaps, request_model)
    write_text(csv, table.to_csv(index=False))
    plots.cost_chart(table, png)
    shown = table.copy()                      # on screen: points (the CSV: fractions)
    for c in [c for c in shown.columns if c.endswith("share") or c == "gap"]:
        shown[c] = (100 * shown[c]).round(1)
    say(shown.rename(columns=lambda c: f"{c} (%)" if c.endswith("share") else ("gap (points)" if c == "gap" else c))
        .round(2).to_string(index=False))
    say(f"wrote {csv} and {png}")
    return table
