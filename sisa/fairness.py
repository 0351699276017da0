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
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from sklearn.metrics import balanced_accuracy_score, f1_score

from . import stats
from .data import AGE_CLASSES, RACES
from .partition import GROUPS, eval_groups

SUMMARY_GROUPS = (*GROUPS, "all_races")   # the index of the original's mean pickle
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
    square = np.full((len(GROUPS), N_CLASSES), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # a cell with no face in any fold stays NaN
        for i, g in enumerate(GROUPS):
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


def fairness_stats(race_acc: np.ndarray) -> pd.DataFrame:
    """(B, 5) race accuracies -> (B, k) statistics: per race, worst, best, gap, ratio, decrease."""
    best, worst = race_acc.max(axis=1), race_acc.min(axis=1)
    cols = {f"top1 {r}": race_acc[:, i] for i, r in enumerate(RACES)}
    cols.update({"worst race top1": worst, "best race top1": best, "gap (best - worst)": best - worst,
                 "ratio (worst / best)": worst / best})
    cols.update({f"decrease {r} vs best": best - race_acc[:, i] for i, r in enumerate(RACES)})
    return pd.DataFrame(cols)


def race_replicates(pred: pd.DataFrame, test_kind: str, n_boot: int) -> np.ndarray:
    """(n_boot + 1, 5) top-1 per race averaged over folds; row 0 is the estimate, rows 1.. resamples
    (test faces resampled within their strata, the same resamples for every run on these faces)."""
    faces = stats.test_faces(pred)
    return stats.Replicates(faces, test_kind, n_boot).group_acc(stats.hits(pred, faces))[:, 1:]


def fairness_table(pred: pd.DataFrame, test_kind: str, n_boot: int = 1000) -> pd.DataFrame:
    """One row per statistic: value (of the fold-mean accuracies), 95% interval (percentile for a
    race's accuracy; basic for worst, best, gap, ratio and decreases, which are order statistics;
    see stats), spread over folds."""
    table = stats.level_table(fairness_stats(race_replicates(pred, test_kind, n_boot)))
    by_fold = metricframe_by_fold(pred)
    per_fold = fairness_stats(by_fold[[f"top1 {r}" for r in RACES]].to_numpy())
    out = pd.DataFrame({"value": table["value"], "ci_low": table["ci_low"], "ci_high": table["ci_high"],
                        "interval": table["interval"], "fold_mean": per_fold.mean(),
                        "fold_std": per_fold.std(ddof=1) if len(per_fold) > 1 else np.nan,
                        "fold_min": per_fold.min(), "fold_max": per_fold.max()})
    out.index.name = "statistic"
    return out


def compare_runs(preds: dict[str, pd.DataFrame], kinds: dict[str, str], baseline: str,
                 n_boot: int = 1000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Side-by-side statistics of every run, and each run's change versus the baseline: the baseline's
    worst race, its gap to the mean of the other races, each group and the gap between the baseline's
    best and worst races (stats.contrast_stats), with intervals,
    Holm-adjusted verdicts (widened / narrowed / higher / lower / inconclusive (detectable +-x)).
    Runs tested on the baseline's faces are paired; others are resampled independently."""
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
    ref = stats.contrast_stats(reps[baseline], best, worst)
    primary, groups = [], []
    for name, a in reps.items():
        if name == baseline:
            continue
        for c in stats.contrasts(name, baseline, stats.contrast_stats(a, best, worst), ref, "versus the baseline"):
            (primary if stats.is_primary(c.statistic) else groups).append(c)
    rows = [{**c.to_dict(), "paired": paired[c.run]} for c in stats.decide(primary) + stats.decide(groups)]
    changes = pd.DataFrame(rows).rename(columns={"reference": "versus"}) if rows else pd.DataFrame()
    return side, changes
