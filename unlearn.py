"""Serve unlearning requests on a trained SISA run, prove they are forgotten, and measure the cost.

    .venv/bin/python unlearn.py --run_dir sorted-balanced-slice-5x3 --sample 5         # 5 requests per fold, drawn by likelihood
    .venv/bin/python unlearn.py --run_dir sorted-balanced-slice-5x3 --requests faces.txt --fold 0
    .venv/bin/python unlearn.py --run_dir sorted-balanced-slice-5x3 --verify           # no checkpoint saw a forgotten face?
    .venv/bin/python unlearn.py --run_dir sorted-balanced-slice-5x3 --sample 20 --batched   # each shard retrains once for its share
    .venv/bin/python unlearn.py --run_dir sorted-balanced-slice-5x3 --scenario group:black --forget 0.05   # 5% of training faces
    .venv/bin/python unlearn.py --run_dir sorted-balanced-slice-5x3 --cost             # expected cost of one request, no training
    .venv/bin/python unlearn.py --run_dir sorted-balanced-slice-5x3 --cost --batch_sizes 1 5 20   # ... of requests served in batches
    .venv/bin/python unlearn.py --run_dir sorted-balanced-slice-5x3 --cost --scenario random --forget 0.01   # ... of a volume
    .venv/bin/python unlearn.py --run_dir random-kfold-slice-1x1 --scenario group:black --forget 0.05 --method scrub   # approximate
    .venv/bin/python unlearn.py --report random-balanced-slice-5x3 sorted-balanced-shard-5x3 sorted-balanced-slice-5x3

Each request retrains only the affected shard from the affected slice on; the run's
unlearning/log.jsonl records it, and the partition files mark the face as forgotten. Afterwards,
evaluate.py writes summaries named <run>-unlearned<N>, to --compare with the run before. From Python:
sisa.serving (serve_requests, verify_run, price_requests, write_report).
"""
from sisa.cli import (Parser, add_option_args, add_summaries_arg, count, existing_file, options_from_args, positive_float,
                      positive_int,
                      run_main, share)


def get_args_parser() -> Parser:
    p = Parser(description=__doc__.split("\n")[0], epilog="See docs/unlearning.md.")
    p.add_argument("--run_dir", help="the run: a name under --checkpoints_dir or the path of its folder (required, except with --report)")
    what = p.add_argument_group("what to do", "one of these is required (--forget may go with --cost)") \
        .add_mutually_exclusive_group()
    what.add_argument("--requests", type=existing_file, metavar="FILE", help="face file names to forget, one a line")
    what.add_argument("--sample", type=positive_int, metavar="N",
                      help="forget N training faces per fold, drawn with probability proportional to their request likelihood")
    p.add_argument("--forget", type=share, metavar="VOLUME",
                   help="forget this fraction of each fold's training faces, drawn by --scenario; a larger volume "
                        "later is served on top (nested draws); each shard retrains once per call. With --cost: "
                        "its exact cost, no training (default: nothing is forgotten)")
    what.add_argument("--verify", action="store_true", help="check every checkpoint in use against the forgotten faces")
    what.add_argument("--cost", action="store_true", help="expected retraining cost of one request, from the partition alone")
    what.add_argument("--report", nargs="+", metavar="RUN", help="table and figure of cost and fairness across runs")
    p.add_argument("--scenario", metavar="SCENARIO",
                   help="--forget: who asks. likelihood (the request model), random (every training face alike), "
                        "group:RACE or group:RACE:AGE (only those faces), e.g. group:black (default likelihood)")
    p.add_argument("--method", choices=("finetune", "neggrad", "random-label", "scrub"),
                   help="with --forget on a 1x1 run: forget approximately with this method instead of retraining, the "
                        "run left unchanged; a summary <run>-<scenario>-<method>-forget<pct> (default: exact retraining)")
    p.add_argument("--method_lr", type=positive_float, default=None, metavar="LR",
                   help="--method's peak learning rate (default: chosen on a validation split of fold 0's training faces)")
    p.add_argument("--batched", action="store_true",
                   help="serve each shard's requests together: one retraining from the earliest affected slice "
                        "(default off: one retraining per request, as SISA)")
    p.add_argument("--batch_sizes", type=positive_int, nargs="+", metavar="K",
                   help="--cost: expected cost per request when K requests are served together (Monte Carlo) "
                        "(default: single requests only)")
    p.add_argument("--draws", type=positive_int, default=1000, help="--cost --batch_sizes: batches drawn (default 1000)")
    p.add_argument("--request_model", choices=("shared", "independent"), default="shared",
                   help="--cost, --report: who requests unlearning. shared: one latent 'knows the law' draw drives both "
                        "the high-likelihood flag and the request (the flagged request ~6x as often); independent: "
                        "requests proportional to k, independent of the flag (default shared)")
    p.add_argument("--fold", type=count, default=None, help="only this fold (default: every fold)")
    p.add_argument("--seed", type=count, default=None,
                   help="seed of the draws of --sample and --forget (default: the run's own seed)")
    p.add_argument("--out", default="unlearning-report", help="--report: file stem in --summaries_dir (default unlearning-report)")
    p.add_argument("--overwrite", action="store_true", help="--report: replace an existing report (default off: an error)")
    add_summaries_arg(p)
    add_option_args(p, new_run=False, engine=True,
                    images_for="read only to serve requests (--requests, --sample): the affected shards retrain on "
                               "the run's faces")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from sisa import distributed, serving
    from sisa.errors import SisaError

    opts = options_from_args(args)
    world = distributed.setup(opts.device)       # torchrun: ranks share the requests' shards
    if (args.method or args.method_lr is not None) and (not args.forget or args.cost):
        raise SisaError("--method goes with --forget VOLUME, to forget a volume approximately (for example --scenario "
                        "group:black --forget 0.05 --method scrub)")
    if args.method_lr is not None and not args.method:
        raise SisaError("--method_lr goes with --method")
    if not (args.requests or args.sample or args.forget or args.verify or args.cost or args.report):
        raise SisaError("say what to do: --requests FILE, --sample N or --forget VOLUME (serve), --verify, --cost "
                        "or --report")
    if args.forget and (args.requests or args.sample or args.verify or args.report):
        raise SisaError("--forget goes alone (to serve a volume) or with --cost (to price it), not with "
                        "--requests, --sample, --verify or --report")
    if args.forget and args.batch_sizes:
        raise SisaError("--batch_sizes prices batches of the likelihood model; a volume's cost needs none")
    serve = bool(args.requests or args.sample or (args.forget and not args.cost))
    if args.scenario and not args.forget:
        raise SisaError("--scenario goes with --forget VOLUME (for example --scenario group:black --forget 0.05)")
    if args.batch_sizes and not args.cost:
        raise SisaError("--batch_sizes goes with --cost (to serve requests in batches, use --batched)")
    if args.batched and not serve:
        raise SisaError("--batched goes with --requests or --sample (for the cost of batches, use --cost --batch_sizes)")
    if args.request_model != "shared" and not (args.cost or args.report):
        raise SisaError("--request_model goes with --cost or --report (served requests are drawn by the shared model)")
    if world.rank != 0 and not serve:            # --verify, --cost, --report: rank 0 alone
        return distributed.teardown(world) or 0
    if args.report:
        serving.write_report(args.report, opts, args.summaries_dir, args.out, args.overwrite, args.request_model)
        return 0
    if not args.run_dir:
        raise SisaError("--run_dir is required (the run to unlearn from)")
    if args.verify:
        return 0 if serving.verify_run(args.run_dir, opts, args.fold) else 1
    if args.cost and args.forget:
        serving.price_volume(args.run_dir, opts, args.scenario or "likelihood", args.forget, args.fold, args.seed)
        return 0
    if args.cost:
        serving.price_requests(args.run_dir, opts, args.fold, args.request_model, args.batch_sizes or (), args.draws,
                               args.seed)
        return 0
    if args.method:
        if args.fold is not None:
            raise SisaError("--method forgets from every fold; leave --fold out")
        serving.approximate_volume(args.run_dir, opts, args.scenario or "likelihood", args.forget, args.method,
                                   args.summaries_dir, args.method_lr, args.seed)
        return 0
    serving.serve_requests(args.run_dir, opts, args.requests, args.sample, args.fold, args.seed, args.batched, world,
                           scenario=args.scenario, volume=args.forget)
    distributed.teardown(world)
    return 0


if __name__ == "__main__":
    run_main(main, "unlearn.py")
