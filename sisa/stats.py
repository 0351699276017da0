"""The study's statistics: accuracy by group with intervals that include training noise, paired
contrasts between configurations, verdicts that say "inconclusive" when they cannot tell, and
multiplicity control.

Every run of a study (a configuration trained with one training seed, before or after unlearning)
is tested on the same faces, so comparisons are paired. Intervals come from one bootstrap:

  test faces   resampled within their strata (race x age class, per fold), with weights shared by
               every run: the same resample of faces for all configurations (paired);
  seeds        a configuration's training seeds resampled with replacement, independently per
               configuration (a placement's seed k and uniform's seed k share nothing); a run after
               unlearning shares its seed draw with the same run before (paired).

Accuracy is the study's top-1: the mean of the age classes' accuracies within a group, per fold,
then the mean over folds (and over seeds). Statistics of accuracies by race:

  level statistics   each race, worst race, best race, gap (best - worst), ratio (worst / best).
                     Best and worst are order statistics, biased upwards (gap) under resampling;
                     their intervals are "basic" bootstrap intervals (2 x estimate - percentiles),
                     which correct that bias to first order (clipped to [0, 1]); corrected for its
                     bias, such an interval may lie below the estimate itself.
  contrasts          changes of linear statistics only, so percentile intervals are fair: each
                     race, the random group, the accuracy of the reference's worst race, and the
                     gap between the reference's best and worst races (identities fixed from the
                     reference's point estimate).

Verdicts: a change is "widened"/"narrowed" (gap) or "higher"/"lower" (accuracy) when its two-sided
p-value (the change over its bootstrap standard error, normal approximation), Holm-adjusted within its
family, is below 0.05; otherwise "inconclusive (detectable +-x)", x being the change the test would
detect with 80% power at the family's Bonferroni level: (z_{1-a/2m} + z_{0.8}) x the standard error.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from .data import AGE_CLASSES, RACES
from .partition import eval_groups
from .seeding import rng

GROUPS = ("random", *RACES)          # columns of every accuracy array here
ALPHA, POWER = 0.05, 0.8
N_CLASSES = len(AGE_CLASSES)


def test_faces(pred: pd.DataFrame) -> pd.DataFrame:
    """The ensemble's test faces of a predictions table, in the study's canonical order."""
    ens = pred[pred["model"] == "ensemble"]
    return ens[["fold", "filename", "race", "age_class", "group"]].sort_values(["fold", "filename"]).reset_index(drop=True)


def hits(pred: pd.DataFrame, faces: pd.DataFrame, model: str = "ensemble") -> np.ndarray:
    """(F,) bool: was `model`'s top-1 right on each face (in `faces`' order)? The run must have
    exactly these test faces (same folds, same files)."""
    sub = pred[pred["model"] == model].sort_values(["fold", "filename"]).reset_index(drop=True)
    if len(sub) != len(faces) or not (sub["filename"].to_numpy() == faces["filename"].to_numpy()).all() \
            or not (sub["fold"].to_numpy() == faces["fold"].to_numpy()).all():
        raise ValueError("runs compared must share their test faces (same folds, same files)")
    return (sub["pred1"].to_numpy() == sub["age_class"].to_numpy())


def _strata(f: pd.DataFrame, test_kind: str) -> np.ndarray:
    if test_kind == "balanced":
        return (f["group"].astype(str) + "/" + f["age_class"].astype(str)).to_numpy()
    if test_kind == "kfold":
        return (f["race"].astype(str) + "/" + f["age_class"].astype(str)).to_numpy()
    return np.zeros(len(f), dtype=int).astype(str)


class Replicates:
    """Bootstrap replicates of top-1 per group for any run tested on `faces`.

    Row 0 of every array is the estimate (all faces once); rows 1..B are resamples. The face weights
    are drawn once, per fold, from (seed, fold, faces), so every run gets the same resamples."""

    def __init__(self, faces: pd.DataFrame, test_kind: str, n_boot: int, seed: int = 0):
        self.faces, self.n_boot = faces, n_boot
        self.folds = []
        for fold, f in faces.groupby("fold", sort=True):
            idx = f.index.to_numpy()
            strata = _strata(f, test_kind)
            gen = rng(seed, "bootstrap", int(fold), len(f))
            w = np.ones((n_boot + 1, len(f)), dtype=np.float32)
            for s in np.unique(strata):                      # resample within each stratum
                members = np.flatnonzero(strata == s)
                w[1:, members] = gen.multinomial(len(members), np.full(len(members), 1 / len(members)), size=n_boot)
            masks = eval_groups(f.assign(role="test"))
            y = f["age_class"].to_numpy()
            cells = np.stack([masks[g] & (y == c) for g in GROUPS for c in range(N_CLASSES)]).astype(np.float32)
            self.folds.append((idx, w, cells, w @ cells.T))   # den: (B+1, 6*7) faces per group x class

    def group_acc(self, hit: np.ndarray) -> np.ndarray:
        """(B+1, 6) top-1 of each group (GROUPS order) of a run's hits (F,)."""
        per_fold = []
        for idx, w, cells, den in self.folds:
            num = w @ (cells * hit[idx].astype(np.float32)).T
            with np.errstate(invalid="ignore", divide="ignore"):
                acc = (num / den).reshape(-1, len(GROUPS), N_CLASSES)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)     # a group without a class in a fold
                per_fold.append(np.nanmean(acc, axis=2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.stack(per_fold), axis=0)

    def class_acc(self, hit: np.ndarray) -> np.ndarray:
        """(6, 7) estimate of top-1 per group and age class (mean over folds; NaN where no face)."""
        per_fold = []
        for idx, w, cells, den in self.folds:
            with np.errstate(invalid="ignore", divide="ignore"):
                per_fold.append(((cells * hit[idx]).sum(1) / cells.sum(1)).reshape(len(GROUPS), N_CLASSES))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.stack(per_fold), axis=0)


def seed_draws(n_seeds: int, n_boot: int, key: str, seed: int = 0) -> np.ndarray:
    """(B+1, n_seeds) indices of the seeds each replicate averages: row 0 all seeds once, the other
    rows drawn with replacement (from a stream named by `key`, e.g. the configuration)."""
    draws = np.empty((n_boot + 1, n_seeds), dtype=int)
    draws[0] = np.arange(n_seeds)
    draws[1:] = rng(seed, "seed-bootstrap", key).integers(n_seeds, size=(n_boot, n_seeds))
    return draws


def combine_seeds(per_seed: list[np.ndarray], draws: np.ndarray) -> np.ndarray:
    """Replicates (B+1, k) of a configuration from its seeds' replicates [(B+1, k)] and seed draws."""
    stack = np.stack(per_seed)                                  # (S, B+1, k)
    rows = np.arange(stack.shape[1])[:, None]                   # (B+1, 1)
    return stack[draws, rows].mean(axis=1)                      # (B+1, k)


# ---- statistics of group accuracies -------------------------------------------------------------
def level_stats(acc: np.ndarray) -> pd.DataFrame:
    """(B+1, 6) group top-1 -> (B+1, k): each group, worst / best race, gap, ratio, each race's decrease
    versus the best."""
    races = acc[:, 1:]
    cols = {f"top1 {g}": acc[:, i] for i, g in enumerate(GROUPS)}
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)     # a replicate without any race face
        best, worst = np.nanmax(races, axis=1), np.nanmin(races, axis=1)
        ratio = worst / best
    cols.update({"worst race top1": worst, "best race top1": best, "gap (best - worst)": best - worst,
                 "ratio (worst / best)": ratio})
    cols.update({f"decrease {r} vs best": best - races[:, i] for i, r in enumerate(RACES)})
    return pd.DataFrame(cols)


def reference_identities(acc: np.ndarray) -> tuple[str, str]:
    """(best race, worst race) of a reference configuration's point estimate (row 0)."""
    races = acc[0, 1:]
    return RACES[int(np.nanargmax(races))], RACES[int(np.nanargmin(races))]


PRIMARY = ("gap (others", "worst race")    # the statistics of a comparison's primary family (prefixes)


def contrast_stats(acc: np.ndarray, best: str, worst: str) -> pd.DataFrame:
    """(B+1, k) linear statistics for contrasts, race identities fixed from the reference: the primary
    ones, the reference's worst race and its gap to the mean of the other races (every race's faces
    count, so a small best race cannot swamp it with noise), then each group and the gap between the
    reference's best and worst races."""
    b, w = 1 + RACES.index(best), 1 + RACES.index(worst)
    others = [1 + i for i, r in enumerate(RACES) if r != worst]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # races without test faces do not count
        mean_others = np.nanmean(acc[:, others], axis=1)
    cols = {f"gap (others - {worst})": mean_others - acc[:, w],
            f"worst race ({worst}) top1": acc[:, w]}
    cols.update({f"top1 {g}": acc[:, i] for i, g in enumerate(GROUPS)})
    cols[f"gap ({best} - {worst})"] = acc[:, b] - acc[:, w]
    return pd.DataFrame(cols)


def is_primary(statistic: str) -> bool:
    return statistic.startswith(PRIMARY)


def level_table(reps: pd.DataFrame, seed_values: pd.DataFrame | None = None) -> pd.DataFrame:
    """value, 95% interval and (several seeds) the between-seed standard deviation of each statistic.

    Accuracies: percentile intervals. Order statistics (worst, best, gap, ratio): basic intervals."""
    est, sample = reps.iloc[0], reps.iloc[1:]
    lo, hi = sample.quantile(0.025), sample.quantile(0.975)
    out = pd.DataFrame({"value": est, "ci_low": lo, "ci_high": hi})
    order = [c for c in reps.columns if not c.startswith("top1 ")]
    for c in order:      # basic bootstrap: reflect the percentiles around the estimate, within [0, 1]
        out.loc[c, "ci_low"] = float(np.clip(2 * est[c] - hi[c], 0.0, 1.0))
        out.loc[c, "ci_high"] = float(np.clip(2 * est[c] - lo[c], 0.0, 1.0))
    out["interval"] = ["basic" if c in order else "percentile" for c in out.index]
    out["seed_sd"] = seed_values.std(ddof=1) if seed_values is not None and len(seed_values) > 1 else np.nan
    return out


def p_value(change: float, se: float) -> float:
    """Two-sided p-value of 'no change' from the estimate and its bootstrap standard error (normal
    approximation: unlike counting resamples, it resolves the small p-values a Holm family of dozens of
    tests needs, and it matches how the detectable change is computed)."""
    if se == 0:
        return 1.0 if change == 0 else 0.0
    return float(2 * norm.sf(abs(change) / se))


def holm(p: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    m = len(p)
    order = np.argsort(p)
    adj, running = np.empty(m), 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        adj[i] = min(1.0, running)
    return adj.tolist()


def detectable(se: float, family: int) -> float:
    """The change a two-sided test at level ALPHA / family detects with POWER, given its standard error."""
    return float((norm.ppf(1 - ALPHA / (2 * max(1, family))) + norm.ppf(POWER)) * se)


def verdict(change: float, p_adjusted: float, detect: float, gap: bool) -> str:
    if p_adjusted < ALPHA:
        if gap:
            return "widened" if change > 0 else "narrowed"
        return "higher" if change > 0 else "lower"
    return f"inconclusive (detectable ±{100 * detect:.1f})"


@dataclass
class Contrast:
    """One statistic of one comparison: run versus reference."""
    run: str
    reference: str
    statistic: str
    change: float
    ci_low: float
    ci_high: float
    se: float
    p: float
    family: str
    p_adjusted: float = float("nan")
    detectable: float = float("nan")
    verdict: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def contrasts(run: str, reference: str, run_reps: pd.DataFrame, ref_reps: pd.DataFrame, family: str) -> list[Contrast]:
    """Change of every statistic (run - reference), with percentile interval, SE and p-value."""
    out = []
    for stat in run_reps.columns:
        delta = (run_reps[stat] - ref_reps[stat]).to_numpy()
        sample = delta[1:][np.isfinite(delta[1:])]
        if not np.isfinite(delta[0]) or len(sample) < 2:
            continue                                   # a group the test faces do not have
        se = float(sample.std(ddof=1))
        out.append(Contrast(run, reference, stat, float(delta[0]), float(np.quantile(sample, 0.025)),
                            float(np.quantile(sample, 0.975)), se, p_value(float(delta[0]), se), family))
    return out


def decide(family: list[Contrast]) -> list[Contrast]:
    """Holm-adjust a family of contrasts and give each its verdict (in place; returns the family)."""
    adjusted = holm([c.p for c in family])
    for c, p in zip(family, adjusted):
        c.p_adjusted = p
        c.detectable = detectable(c.se, len(family))
        c.verdict = verdict(c.change, p, c.detectable, c.statistic.startswith("gap"))
    return family
