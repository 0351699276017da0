"""Accuracy by race and age class, the original study's summaries, and fairness with intervals.

Input everywhere is a predictions table: one row per (fold, model, test face) with the columns
fold, model ('ensemble' or 'shard-<s>'), filename, race, age_class, group, pred1, pred2.

A group's top-1 is the mean of its age classes' accuracies (as the original: every age class
counts the same, however many faces it has); top-2 likewise; macro-F1 over the age classes the
group has. `all_races` pools the five race groups.

Fairness across races (per run, from the ensemble): worst race, best - worst gap, worst / best
ratio and each race's decrease versus the best, from fairlearn's MetricFrame per fold, and with
95% bootstrap intervals (sisa.stats): test faces are resampled within the cells they were drawn
from (race x age class for balanced and k-fold test sets), independently per fold, and the
statistic is taken of the fold-mean accuracies. The resampling depends only on the fold and the
test faces, so two runs with the same test faces get the same resamples: their differences are
paired. Order statistics (worst, best, gap, ratio) get basic bootstrap intervals.

`evaluate.py --compare` (compare): evaluated runs side by side and each versus the first, with the
study's contrasts and verdicts (sisa.stats), shown in points.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from sklearn.metrics import balanced_accuracy_score, f1_score

from . import plots, stats
from .data import AGE_CLASSES, RACES
from .errors import SisaError
from .layout import DEFAULT_CHECKPOINTS, DEFAULT_SUMMARIES, SummaryLayout, compare_stem
from .partition import GROUPS, ORIGINAL_GROUPS, eval_groups
from .store import write_text

# The original's pickles list the races, then random (the rows of its square), then all_races (the index
# of its per-fold dicts and mean Series): a file format, so its own order, not GROUPS'.
SUMMARY_GROUPS = (*ORIGINAL_GROUPS, "all_races")
N_CLASSES = len(AGE_CLASSES)


def group_masks(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    masks = eval_groups(frame.assign(role="test"))
    masks["all_races"] = np.logical_or.reduce([masks[r] for r in RACES])
    return masks


def _class_acc(y: np.ndarray, hit: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(7,) accuracy per age class among `mask` (NaN where the group has no face of that class)."""
    n = np.bincount(y[mask], minlength=N_CLASSES).astype(float)
    k = np.bincount(y[mask], weights=hit[mask], minlength=N_CLASSES)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, k / n, np.nan)


def tidy_metrics(pred: pd.DataFrame) -> pd.DataFrame:
    """fold, model, group, age_class, metric, value for every metric this project reports."""
    rows = []
    for (fold, model), f in pred.groupby(["fold", "model"], sort=True):
        y, p1 = f["age_class"].to_numpy(), f["pred1"].to_numpy()
        hit1, hit2 = p1 == y, top2_hits(f)
        for group, m in group_masks(f).items():
            if not m.any():
                continue
            a1, a2 = _class_acc(y, hit1, m), _class_acc(y, hit2, m)
            present = np.unique(y[m])
            f1 = f1_score(y[m], p1[m], labels=present, average="macro", zero_division=0)
            base = {"fold": fold, "model": model, "group": group}
            rows += [{**base, "age_class": "all", "metric": "top1", "value": np.nanmean(a1)},
                     {**base, "age_class": "all", "metric": "top2", "value": np.nanmean(a2)},
                     {**base, "age_class": "all", "metric": "macro_f1", "value": f1},
                     {**base, "age_class": "all", "metric": "faces", "value": float(m.sum())}]
            counts = np.bincount(y[m], minlength=N_CLASSES)
            for c, name in enumerate(AGE_CLASSES):
                rows += [{**base, "age_class": name, "metric": "top1", "value": a1[c]},
                         {**base, "age_class": name, "metric": "top2", "value": a2[c]},
                         {**base, "age_class": name, "metric": "faces", "value": float(counts[c])}]
    return plain(pd.DataFrame(rows))


def plain(df: pd.DataFrame) -> pd.DataFrame:
    """Text columns as Python objects, so a pickle of it loads with any pandas, pyarrow or not."""
    return df.astype({c: object for c in df.columns if df[c].dtype.kind not in "biufc"})


def top2_hits(f: pd.DataFrame) -> np.ndarray:
    """Top-2 hits: the true class is one of the two best."""
    y = f["age_class"].to_numpy()
    return (f["pred1"].to_numpy() == y) | (f["pred2"].to_numpy() == y)


def original_summaries(tidy: pd.DataFrame) -> tuple[list[dict], tuple[pd.Series, pd.Series], np.ndarray]:
    """The original's pickles: per fold {group: (top1, top2)}, the mean (top1, top2) Series, the square."""
    ens = tidy[(tidy["model"] == "ensemble") & (tidy["age_class"] == "all")]
    per_fold = []
    for fold, f in ens.groupby("fold", sort=True):
        v = f.pivot(index="group", columns="metric", values="value")
        per_fold.append({g: (float(v.loc[g, "top1"]), float(v.loc[g, "top2"])) for g in SUMMARY_GROUPS if g in v.index})
    # An object-dtype index: pandas 3 would otherwise pick its string dtype, which some readers'
    # pandas can only unpickle with pyarrow installed.
    index = pd.Index(list(SUMMARY_GROUPS), dtype=object)
    top1 = pd.Series([float(np.mean([d[g][0] for d in per_fold if g in d])) for g in SUMMARY_GROUPS], index=index,
                     name="top1", dtype=float)
    top2 = pd.Series([float(np.mean([d[g][1] for d in per_fold if g in d])) for g in SUMMARY_GROUPS], index=index,
                     name="top2", dtype=float)
    cells = tidy[(tidy["model"] == "ensemble") & (tidy["metric"] == "top1") & (tidy["age_class"] != "all")]
    square = np.full((len(ORIGINAL_GROUPS), N_CLASSES), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # a cell with no face in any fold stays NaN
        for i, g in enumerate(ORIGINAL_GROUPS):
            for j, a in enumerate(AGE_CLASSES):
                vals = cells[(cells["group"] == g) & (cells["age_class"] == a)]["value"].to_numpy(float)
                square[i, j] = np.nanmean(vals) if len(vals) else np.nan
    return per_fold, (top1, top2), square


def metricframe_by_fold(pred: pd.DataFrame) -> pd.DataFrame:
    """Per fold, fairlearn MetricFrame over the race groups: by-group top-1 and its summaries."""
    rows = []
    for fold, f in pred[pred["model"] == "ensemble"].groupby("fold", sort=True):
        masks = group_masks(f)
        race = np.full(len(f), "", dtype=object)
        for r in RACES:
            race[masks[r]] = r
        sel = race != ""
        with warnings.catch_warnings():   # "y_pred contains classes not in y_true": expected, harmless
            warnings.simplefilter("ignore", UserWarning)
            mf = MetricFrame(metrics=balanced_accuracy_score, y_true=f["age_class"].to_numpy()[sel],
                             y_pred=f["pred1"].to_numpy()[sel], sensitive_features=pd.Series(race[sel], name="race"))
        row = {"fold": fold, "worst": mf.group_min(), "best": mf.group_max(), "gap": mf.difference(),
               "ratio": mf.ratio()}
        for r in RACES:
            row[f"top1 {r}"] = mf.by_group[r]
        rows.append(row)
    return pd.DataFrame(rows)


def group_replicates(pred: pd.DataFrame, test_kind: str, n_boot: int) -> np.ndarray:
    """(n_boot + 1, 6) top-1 per group (GROUPS order) averaged over folds; row 0 is the estimate, rows 1..
    resamples (test faces resampled within their strata, the same resamples for every run on these faces)."""
    faces = stats.test_faces(pred)
    return stats.Replicates(faces, test_kind, n_boot).group_acc(stats.hits(pred, faces))


def fairness_table(pred: pd.DataFrame, test_kind: str, n_boot: int = 1000) -> pd.DataFrame:
    """One row per statistic across races (stats.level_stats, without the random group): value (of the
    fold-mean accuracies), 95% interval (percentile for a race's accuracy; basic for worst, best, gap,
    ratio and decreases, which are order statistics; see stats), spread over folds."""
    table = stats.level_table(stats.level_stats(group_replicates(pred, test_kind, n_boot)))
    by_fold = metricframe_by_fold(pred)
    acc = np.full((len(by_fold), len(GROUPS)), np.nan)          # fairlearn's by race; random is not a race
    acc[:, stats.RACE_COLUMNS] = by_fold[[f"top1 {r}" for r in RACES]].to_numpy()
    per_fold = stats.level_stats(acc)
    out = pd.DataFrame({"value": table["value"], "ci_low": table["ci_low"], "ci_high": table["ci_high"],
                        "interval": table["interval"], "fold_mean": per_fold.mean(),
                        "fold_std": per_fold.std(ddof=1) if len(per_fold) > 1 else np.nan,
                        "fold_min": per_fold.min(), "fold_max": per_fold.max()})
    out = out.drop(index=stats.level_label("top1", "random"))
    out.index.name = "statistic"
    return out


# ---- evaluate.py --compare ------------------------------------------------------------------------
def compare_runs(preds: dict[str, pd.DataFrame], kinds: dict[str, str], baseline: str,
                 n_boot: int = 1000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Side-by-side level statistics of every run (stats.level_stats), and each run's changes versus the
    baseline: the study's contrasts (stats.contrasts, race identities fixed from the baseline) in its two
    Holm families, "versus the baseline" (gap to the other races, worst race) and "..., by group", as a
    tidy table of stats.Contrast records with a column `paired`. Runs tested on the baseline's faces are
    paired; others are resampled independently."""
    reps = {}
    base_faces = stats.test_faces(preds[baseline])
    shared = stats.Replicates(base_faces, kinds[baseline], n_boot)
    paired = {}
    for name, p in preds.items():
        faces = stats.test_faces(p)
        paired[name] = faces[["fold", "filename"]].equals(base_faces[["fold", "filename"]])
        r = shared if paired[name] else stats.Replicates(faces, kinds[name], n_boot, seed=len(reps) + 1)
        reps[name] = r.group_acc(stats.hits(p, faces))
    side = pd.DataFrame({name: stats.level_stats(a).iloc[0] for name, a in reps.items()})
    best, worst = stats.reference_identities(reps[baseline])
    cs = [c for name, a in reps.items() if name != baseline
          for c in stats.contrasts(name, baseline, a, reps[baseline], best, worst)]
    rows = [{**c.to_dict(), "paired": paired[c.run]}
            for family in stats.families("versus the baseline", cs).values() for c in family]
    return side, pd.DataFrame(rows)


def load_summary(summaries_dir: Path, name: str, checkpoints_dir: Path | None = None) -> tuple[pd.DataFrame, dict, pd.Series]:
    """Predictions, info and fold-mean top-1 per group of an evaluated summary (from its CSVs)."""
    out = SummaryLayout(Path(summaries_dir), name)
    if not out.predictions.exists() or not out.info.exists() or not out.results_csv.exists():
        raise SisaError(f"no evaluated summaries named {name} in {summaries_dir}; "
                        + evaluate_hint(name, summaries_dir, checkpoints_dir))
    tidy = pd.read_csv(out.results_csv)
    top1 = tidy[(tidy["model"] == "ensemble") & (tidy["age_class"] == "all") & (tidy["metric"] == "top1")]
    top1 = top1.groupby("group")["value"].mean()
    return pd.read_csv(out.predictions), json.loads(out.info.read_text()), top1


def evaluate_hint(name: str, summaries_dir: Path, checkpoints_dir: Path | None) -> str:
    """The evaluate.py command that writes summaries `name` where --compare looks. evaluate.py names a run's
    summaries after the run, plus -unlearned<N> once it has forgotten N faces: that suffix is not the run's."""
    found = re.fullmatch(r"(.+)-unlearned(\d+)", name)
    run = found.group(1) if found else name
    flags = "".join(f" --{flag} {d}" for flag, d, default in (("checkpoints_dir", checkpoints_dir, DEFAULT_CHECKPOINTS),
                                                               ("summaries_dir", summaries_dir, DEFAULT_SUMMARIES))
                    if d is not None and Path(d).resolve() != default.resolve())
    hint = f"make them with .venv/bin/python evaluate.py --run_dir {run}{flags}"
    if found:
        hint += f" (it names them {name} once the run has forgotten {found.group(2)} faces)"
    if checkpoints_dir is not None and not (Path(checkpoints_dir) / run / "config.json").exists():
        hint += f"; no run {run} in {checkpoints_dir} either: give the run they come from, and --name {name}"
    return hint


def compare(names: list[str], summaries_dir: Path, n_boot: int = 1000,
            checkpoints_dir: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """Runs side by side and each versus the first (the baseline); writes <stem>-side.csv, -changes.csv
    (fractions, as every file) and a bar chart."""
    if len(names) < 2 or len(set(names)) != len(names):
        raise SisaError("--compare needs a baseline and at least one other run, each named once")
    loaded = {n: load_summary(summaries_dir, n, checkpoints_dir) for n in names}
    side, changes = compare_runs({n: v[0] for n, v in loaded.items()},
                                 {n: v[1]["test_kind"] for n, v in loaded.items()}, names[0], n_boot)
    side = side.astype(np.float64)          # rows added below are float64 (pandas refuses to upcast in place)
    for n, (_, info, top1) in loaded.items():
        side.loc["top1 all_races", n] = top1.get("all_races", np.nan)
        side.loc["faces forgotten", n] = info.get("unlearning_requests_served", 0)
    stem = compare_stem(summaries_dir, names)
    write_text(stem.with_name(stem.name + "-side.csv"), side.to_csv())
    write_text(stem.with_name(stem.name + "-changes.csv"), changes.to_csv(index=False))
    top1 = {n: pd.Series({g: side.loc[stats.level_label("top1", g), n] for g in GROUPS}) for n in names}
    decrease = {n: pd.Series({r: side.loc[stats.level_label("decrease vs best", r), n] for r in RACES}) for n in names}
    fig = plots.bar_chart(top1, decrease, stem.with_name(stem.name + ".png"),
                          title="Top-1 accuracy per group; grey: each race's decrease versus the best race")
    return side, changes, fig


def compare_text(side: pd.DataFrame, changes: pd.DataFrame) -> str:
    """What evaluate.py --compare prints: one unit on screen, points (faces forgotten: a count). The CSVs
    keep fractions, as every file does."""
    lines = ["Top-1 by group and its statistics across races, in % (mean of the age classes, mean over folds):", "",
             (100 * side.drop(index="faces forgotten")).round(1).to_string(), "",
             "faces forgotten: " + ", ".join(f"{n} {int(v)}" for n, v in side.loc["faces forgotten"].items())]
    records = [(stats.Contrast.from_dict(row), row["paired"]) for row in changes.to_dict(orient="records")]
    for name in dict.fromkeys(c.family for c, _ in records):
        rows = [[c.run, c.label, f"{100 * c.change:+.1f} [{100 * c.ci_low:+.1f}, {100 * c.ci_high:+.1f}]", c.verdict,
                 "paired" if paired else "unpaired"] for c, paired in records if c.family == name]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["", f"Changes in points ({name}: run - {records[0][0].reference}, 95% interval, verdict Holm-adjusted "
                      "over these rows):"]
        lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
