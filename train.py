"""Train a SISA experiment: every fold, every shard, every slice, with a checkpoint after each slice.

    .venv/bin/python train.py --num_shards 5 --num_slices 3 --strategy sorted-balanced --put_in slice
    .venv/bin/python train.py --dry_run --strategy sorted-balanced --put_in shard      # placement only
    .venv/bin/python train.py --num_shards 2 --num_slices 2 --strategy sorted-balanced --put_in slice --folds 1 \
        --epochs 1 --limit 1000 --test_per_cell 2 --test_random 14 --image_size 32 --model cnn   # CPU quick start

Running the same command again resumes after the last complete slice. The run folder is
checkpoints/<strategy>-<put_in>-<S>x<R>/ unless --run_name says otherwise.
"""
from sisa.cli import (Parser, add_config_args, add_option_args, config_from_args, options_from_args,
                      run_main)


def get_args_parser() -> Parser:
    p = Parser(description=__doc__.split("\n")[0], epilog="See docs/commands.md and docs/file-formats.md (the run folder).")
    add_config_args(p)
    add_option_args(p)
    p.add_argument("--dry_run", action="store_true",
                   help="build the faces and every fold's partition, write the run folder, print the composition, and stop "
                        "(default off: train)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an existing run folder of another configuration instead of stopping (default off)")
    p.add_argument("--wandb", action="store_true",
                   help="also log to Weights & Biases (mode from WANDB_MODE; offline needs no login; default off)")
    return p


def main(argv: list[str] | None = None) -> int | None:
    args = get_args_parser().parse_args(argv)
    import contextlib

    from sisa import distributed
    from sisa.commit import finish_and_report
    from sisa.device import resolve_device
    from sisa.experiment import describe, open_run, prepare
    from sisa.layout import RunLayout
    from sisa.store import new_run_lock

    opts, cfg = options_from_args(args), config_from_args(args)
    layout = RunLayout((opts.checkpoints_dir / cfg.name).resolve())
    cfg = cfg.as_recorded(layout.config).validate()     # a resumed run keeps the rules it was made under
    if not args.dry_run:
        resolve_device(opts.device)                     # no GPU for --device cuda: say so before writing anything
    world = distributed.setup(opts.device)      # one process, or one rank of a torchrun job
    # Rank 0 creates (or re-opens) the run folder and holds its lock for the whole job.
    with new_run_lock(layout.root, f"train.py{' (torchrun job)' if world.active else ''}") if world.rank == 0 \
            else contextlib.nullcontext():
        if world.rank == 0:
            if layout.exists():
                finish_and_report(layout)          # an unlearning request a crash left committed
            exp = prepare(cfg, opts)
            print(describe(exp))
        if args.dry_run:
            if world.rank == 0:
                print(f"dry run: wrote {exp.layout.root} (config.json, run.json, skipped.csv, fold-*/partition.csv)")
            return distributed.teardown(world)
        from sisa.training import resolve_weights, run_precision, train_run
        if world.rank == 0:
            resolve_weights(exp)                   # recorded once, before any rank builds a model
            run_precision(exp, opts.precision, resolve_device(opts.device))   # likewise the precision
        world.barrier()
        if world.rank != 0:
            exp = open_run(layout, opts)
        train_run(exp, opts, world)
        world.barrier()
    distributed.teardown(world)
    if world.rank == 0:
        print(f"trained {cfg.folds} fold(s) x {cfg.num_shards} shard(s) x {cfg.num_slices} slice(s): {exp.layout.root}")
        print(f"next: .venv/bin/python evaluate.py --run_dir {cfg.name}")


if __name__ == "__main__":
    run_main(main, "train.py")
