"""Evaluate trained SISA runs: aggregate the shard models and pickle fairness summaries by race.

    .venv/bin/python evaluate.py --run_dir sorted-balanced-slice-5x3
    .venv/bin/python evaluate.py --run_dir checkpoints/my-run --aggregation vote --name my-run-vote
    .venv/bin/python evaluate.py --compare random-balanced-slice-1x1 random-balanced-slice-5x3 sorted-balanced-slice-5x3

Writes summaries/<name>-<k>of<K>.pickle, -mean.pickle, -square.pickle (the original study's formats),
-results.csv/.pickle (every metric, tidy), -fairness.csv (gaps with 95% intervals), -predictions.csv,
-info.json and figures. --compare reads those of earlier evaluations (the first name is the baseline).
"""
from pathlib import Path

from sisa.aggregation import AGGREGATIONS
from sisa.config import TTA
from sisa.cli import Parser, add_option_args, add_summaries_arg, options_from_args, positive_int, run_main


def get_args_parser() -> Parser:
    p = Parser(description=__doc__.split("\n")[0], epilog="See docs/file-formats.md (outputs) and docs/statistics.md (intervals, verdicts).")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--run_dir", help="the run: a name under --checkpoints_dir or the path of its folder")
    what.add_argument("--compare", nargs="+", metavar="NAME",
                      help="summary names of evaluated runs; the first is the baseline the others are compared to")
    p.add_argument("--aggregation", choices=AGGREGATIONS, default="sum_logits",
                   help="sum_logits: largest sum of logits (the original); vote: majority of labels (SISA paper); "
                        "mean_softmax: largest mean probability (default sum_logits)")
    p.add_argument("--name", default=None,
                   help="summary name (default: the run's name, plus -unlearned<N> once N faces were forgotten)")
    p.add_argument("--allow_partial", action="store_true", help="evaluate only the folds whose shard models are all trained "
                        "(default off: an unfinished run is an error naming what is missing)")
    p.add_argument("--overwrite", action="store_true", help="replace existing summaries of the same name (default off: an error)")
    p.add_argument("--n_boot", type=positive_int, default=1000, help="bootstrap resamples for the 95%% intervals (default 1000)")
    p.add_argument("--tta", choices=TTA, default="auto",
                   help="test-time augmentation: none, flip (mean of the logits of each face and its mirror image), or "
                        "auto: the run's recipe decides (original: none, strong: flip) (default auto)")
    add_summaries_arg(p)
    add_option_args(p, new_run=False, images_for="read only to run shard models whose logits are not saved yet")
    return p


def main(argv: list[str] | None = None) -> int | None:
    args = get_args_parser().parse_args(argv)
    import pandas as pd

    from sisa.commit import finish_and_report
    from sisa.evaluation import evaluate_run
    from sisa.layout import run_layout
    from sisa.store import run_lock

    pd.set_option("display.width", 200)
    if args.compare:
        from sisa.fairness import compare, compare_text
        side, changes, fig = compare(args.compare, args.summaries_dir, args.n_boot, args.checkpoints_dir)
        print(compare_text(side, changes))                  # in points; the CSVs keep fractions
        print(f"wrote {fig} and the -side.csv / -changes.csv beside it")
        return
    layout, opts = run_layout(args.run_dir, args.checkpoints_dir), options_from_args(args)
    with run_lock(layout.lock, "evaluate.py"):
        finish_and_report(layout)              # an unlearning request a crash left committed
        out, fair = evaluate_run(layout, opts, Path(args.summaries_dir), args.aggregation,
                                 args.allow_partial, args.overwrite, args.name, args.n_boot, args.tta)
    shown = (100 * fair[["value", "ci_low", "ci_high", "fold_std"]]).round(1)    # on screen: points (the CSV: fractions)
    print(f"accuracy by group and the fairness statistics, in points (percent), 95% interval:\n{shown.to_string()}")
    print(f"wrote {out.name}-*: {out.mean.name}, {out.square.name}, {out.results_csv.name}, "
          f"{out.fairness_csv.name}, figures {out.bars.name}, {out.heatmap.name}, {out.composition_png.name} "
          f"in {out.root}")


if __name__ == "__main__":
    run_main(main, "evaluate.py")
