"""Serve unlearning requests on a trained SISA run, prove they are forgotten, and measure the cost.

    python3 unlearn.py --run_dir sorted-balanced-slice-5x3 --sample 5         # 5 requests per fold, drawn by likelihood
    python3 unlearn.py --run_dir sorted-balanced-slice-5x3 --requests faces.txt --fold 0
    python3 unlearn.py --run_dir sorted-balanced-slice-5x3 --verify           # no checkpoint saw a forgotten face?
    python3 unlearn.py --run_dir sorted-balanced-slice-5x3 --sample 20 --batched   # each shard retrains once for its share
    python3 unlearn.py --run_dir sorted-balanced-slice-5x3 --cost             # expected cost of one request, no training
    python3 unlearn.py --run_dir sorted-balanced-slice-5x3 --cost --batch_sizes 1 5 20   # ... of requests served in batches
    python3 unlearn.py --report random-balanced-slice-5x3 sorted-balanced-shard-5x3 sorted-balanced-slice-5x3

Each request retrains only the affected shard from the affected slice on; the run's
unlearning/log.jsonl records it, and the partition files mark the face as forgotten. Afterwards,
evaluate.py writes summaries named <run>-unlearned<N>, to --compare with the run before.
"""
from sisa.cli import Parser, add_option_args, add_summaries_arg, count, existing_file, options_from_args, positive_int, run_main


def get_args_parser() -> Parser:
    p = Parser(description=__doc__.split("\n")[0], epilog="See README.md, 'Unlearning'.")
    p.add_argument("--run_dir", help="the run: a name under --checkpoints_dir or the path of its folder")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--requests", type=existing_file, metavar="FILE", help="face file names to forget, one a line")
    what.add_argument("--sample", type=positive_int, metavar="N",
                      help="forget N training faces per fold, drawn with probability proportional to their request likelihood")
    what.add_argument("--verify", action="store_true", help="check every checkpoint in use against the forgotten faces")
    what.add_argument("--cost", action="store_true", help="expected retraining cost of one request, from the partition alone")
    what.add_argument("--report", nargs="+", metavar="RUN", help="table and figure of cost and fairness across runs")
    p.add_argument("--batched", action="store_true",
                   help="serve each shard's requests together: one retraining from the earliest affected slice")
    p.add_argument("--batch_sizes", type=positive_int, nargs="+", metavar="K",
                   help="--cost: expected cost per request when K requests are served together (Monte Carlo)")
    p.add_argument("--draws", type=positive_int, default=1000, help="--cost --batch_sizes: batches drawn (default 1000)")
    p.add_argument("--request_model", choices=("shared", "independent"), default="shared",
                   help="--cost, --report: who requests unlearning. shared: one latent 'knows the law' draw drives both "
                        "the high-likelihood flag and the request (the flagged request ~6x as often); independent: "
                        "requests proportional to k, independent of the flag (default shared)")
    p.add_argument("--fold", type=count, default=None, help="only this fold (default: every fold)")
    p.add_argument("--seed", type=count, default=0, help="seed of --sample's draw (default 0)")
    p.add_argument("--out", default="unlearning-report", help="--report: file stem in --summaries_dir (default unlearning-report)")
    p.add_argument("--overwrite", action="store_true", help="--report: replace an existing report")
    add_summaries_arg(p)
    add_option_args(p, new_run=False, engine=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    import contextlib

    from sisa import distributed, unlearning
    from sisa.commit import finish_and_report
    from sisa.errors import SisaError
    from sisa.experiment import open_run
    from sisa.layout import run_layout
    from sisa.store import run_lock

    opts = options_from_args(args)
    world = distributed.setup(opts.device)       # torchrun: ranks share the requests' shards
    serving = bool(args.requests or args.sample)
    if args.batch_sizes and not args.cost:
        raise SisaError("--batch_sizes goes with --cost (to serve requests in batches, use --batched)")
    if args.batched and not serving:
        raise SisaError("--batched goes with --requests or --sample (for the cost of batches, use --cost --batch_sizes)")
    if args.request_model != "shared" and not (args.cost or args.report):
        raise SisaError("--request_model goes with --cost or --report (served requests are drawn by the shared model)")
    if world.rank != 0 and not serving:          # --verify, --cost, --report: rank 0 alone
        return distributed.teardown(world) or 0
    if args.report:
        return report(args, opts)
    if not args.run_dir:
        raise SisaError("--run_dir is required (the run to unlearn from)")
    layout = run_layout(args.run_dir, args.checkpoints_dir)
    with run_lock(layout.lock, "unlearn.py") if world.rank == 0 else contextlib.nullcontext():
        if world.rank == 0:
            finish_and_report(layout)          # an unlearning request a crash left committed
        if serving:
            world.barrier()                    # the other ranks read the run once it is finished
        exp = open_run(layout, opts, with_images=False)
        folds = range(exp.cfg.folds) if args.fold is None else [args.fold]
        if args.fold is not None and args.fold >= exp.cfg.folds:
            raise SisaError(f"--fold {args.fold} does not exist: run {exp.cfg.name} has folds 0..{exp.cfg.folds - 1}")
        if args.verify:
            rows = unlearning.verify(exp)
            for r in rows:
                if args.fold is None or r["fold"] == args.fold:
                    print(f"fold {r['fold']} shard {r['shard']}: {'OK' if r['ok'] else 'VIOLATION'} "
                          f"({r['forgotten']} forgotten face(s)): {r['detail']}")
            bad = [r for r in rows if not r["ok"] and (args.fold is None or r["fold"] == args.fold)]
            print("verified: no checkpoint in use was trained on a forgotten face" if not bad else
                  f"{len(bad)} shard(s) fail verification: retrain them with train.py (same command as the run)")
            return 1 if bad else 0
        if args.cost:
            model = args.request_model
            print(f"request model: {model} ({'the flag and the request share one latent draw' if model == 'shared' else 'requests proportional to k, independent of the flag'})")
            for k in folds:
                e = unlearning.expected_cost(exp.partitions[k], exp.cfg, model)
                print(f"fold {k}: expected retraining per request {e['expected_faces_x_epochs']:,.0f} faces x epochs: "
                      f"{e['speedup_vs_baseline']:.2f}x faster than retraining the 1x1 baseline; "
                      f"{100 * e['expected_share_of_full']:.1f}% of retraining all shards ({e['speedup_vs_full']:.2f}x faster, "
                      f"with --slice_epochs {exp.cfg.slice_epochs})")
                for b in args.batch_sizes or []:
                    e = unlearning.expected_batch_cost(exp.partitions[k], exp.cfg, b, args.draws, args.seed, k, model)
                    lo, hi = e["per_request_interval"]
                    print(f"fold {k}: batches of {b}: {e['shards_retrained']:.2f} shard(s) retrained per batch, "
                          f"{e['per_request_faces_x_epochs']:,.0f} faces x epochs per request [95% of batches: "
                          f"{lo:,.0f}-{hi:,.0f}]; a batch costs {100 * e['batch_share_of_full']:.1f}% of retraining "
                          f"all shards (speed-up {e['speedup_vs_full']:.2f}x; versus retraining the 1x1 baseline "
                          f"once per batch: {e['speedup_vs_baseline']:.2f}x)")
            return 0
        code = serve_all(args, exp, folds, opts, world)
    distributed.teardown(world)
    return code


def plan_requests(args, exp, folds) -> dict:
    """{fold: [faces to forget]}, after checking the run and the requests (rank 0 only)."""
    from sisa import unlearning
    from sisa.errors import SisaError
    from sisa.evaluation import fold_problems

    problems = {f: p for f, p in fold_problems(exp, every_slice=True).items() if p and f in folds}
    if problems:
        listed = "; ".join(f"fold {f}: {p[0]}" for f, p in problems.items())
        raise SisaError(f"run {exp.cfg.name} is not fully trained ({listed}); finish it with train.py before unlearning")
    plan = {}
    if args.requests:
        names = unlearning.read_requests(args.requests)
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
                    print(f"fold {k}: {n} {why}")
            plan[k] = todo
    else:
        plan = {k: unlearning.sample_requests(exp.partitions[k], args.sample, args.seed, k) for k in folds}
    if not any(plan.values()):
        raise SisaError("nothing to unlearn: every requested face is a test face, already forgotten or absent")
    return plan


def serve_all(args, exp, folds, opts, world) -> int:
    from sisa import unlearning

    # rank 0 decides (it sees the run as it is now); the others serve their share of its plan
    plan = world.broadcast(plan_requests(args, exp, folds) if world.rank == 0 else None)
    records = []
    for k, n, r in unlearning.serve_plan(exp.layout, opts, plan, world, batched=args.batched):
        records.append(r)
        together = f" in a batch of {r['batch_size']}" if r["batch_size"] > 1 else ""
        share = " (its share)" if together else ""
        print(f"fold {k}: forgot {n} (shard {r['shard']}, slice {r['slice']}){together}: retrained "
              f"{len(r['stages_retrained'])} stage(s), {r['faces_x_epochs']:,.0f} faces x epochs{share} = "
              f"{100 * r['share_of_full']:.1f}% of retraining all shards ({r['speedup_vs_full']:.2f}x faster; "
              f"{r['speedup_vs_baseline']:.2f}x faster than the 1x1 baseline), {r['wall_seconds']:.1f} s{share}")
    records = [r for rs in world.gather(records) for r in rs]
    world.barrier()
    if world.rank != 0:
        return 0
    if world.active:             # serve_plan tidies itself when it is the only process
        unlearning.tidy_pending(exp.layout)
    cost = sum(r["faces_x_epochs"] for r in records)
    full = sum(r["full_faces_x_epochs"] for r in records)
    base = sum(r["baseline_faces_x_epochs"] for r in records)
    wall = sum(r["wall_seconds"] for r in records)
    trained = sum(r["full_training_seconds_recorded"] for r in records)
    each = "once per shard's batch" if args.batched else "each time"
    print(f"served {len(records)} request(s): {cost:,.0f} faces x epochs retrained, versus {full:,.0f} for retraining all "
          f"shards {each} ({full / max(cost, 1):.2f}x) and {base:,.0f} for the 1x1 baseline ({base / max(cost, 1):.2f}x); "
          f"{wall:.1f} s of wall time versus {trained:.1f} s the full trainings took ({trained / max(wall, 1e-9):.2f}x)")
    print(f"log: {exp.layout.unlearning_log}; check with: python3 unlearn.py --run_dir {exp.cfg.name} --verify")
    return 0


def report(args, opts) -> int:
    """Read-only: it takes no lock and finishes nothing (a run being served may be read mid-request)."""
    import pandas as pd

    from sisa import plots, unlearning
    from sisa.commit import pending_note
    from sisa.errors import SisaError
    from sisa.experiment import open_run
    from sisa.layout import SummaryLayout, run_layout, unlearning_report
    from sisa.store import write_text

    csv, png = unlearning_report(args.summaries_dir, args.out)
    if (csv.exists() or png.exists()) and not args.overwrite:
        raise SisaError(f"{csv} exists; pass --overwrite to replace it or --out for another name")
    layouts = [run_layout(r, args.checkpoints_dir) for r in args.report]
    for note in filter(None, map(pending_note, layouts)):
        print(f"note: {note}")
    exps = [open_run(layout, opts, with_images=False) for layout in layouts]
    gaps = {}
    for e in exps:
        f = SummaryLayout(args.summaries_dir, e.cfg.name).fairness_csv
        if f.exists():
            gaps[e.cfg.name] = float(pd.read_csv(f, index_col=0).loc["gap (best - worst)", "value"])
    table = unlearning.cost_report(exps, gaps, args.request_model)
    write_text(csv, table.to_csv(index=False))
    plots.cost_chart(table, png)
    print(table.round(4).to_string(index=False))
    print(f"wrote {csv} and {png}")
    return 0


if __name__ == "__main__":
    run_main(main, "unlearn.py")
