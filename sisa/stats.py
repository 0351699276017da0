"""The statistics of one run against another on shared test faces (`evaluate.py --compare`, the
recipe benchmarks) and of the reports written before replicates (reports/published/): accuracy by
group with intervals over test faces, paired contrasts, verdicts that say "inconclusive" when they
cannot tell, and multiplicity control. A study of replicates has its own (intervals.py,
study/numbers.py): the training seeds these reports bootstrapped are what its replicates replace.

Runs tested on the same faces are compared paired; intervals come from resampling the test faces
within their strata (race x age class, per fold), with weights shared by every run.

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
A gap between the reference's best and worst race when both are the same race (every race with test
faces scored the same, as a degenerate model's may) is 0 by construction: it gets no verdict and does
not count in its family.

Numbers leave this module as records: a level is a row of `level_table` (statistic, group, value,
interval); a change is a `Contrast` (configuration, phase, reference, statistic, group, change, interval,
p-values, verdict), written to report.json with `to_dict` and read back with `Contrast.from_dict`, which
also reads the reports written before contrasts were records.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd
from scipy.stats import norm

from .data import AGE_CLASSES, RACES
from .partition import GROUPS, eval_groups
from .seeding import rng

ALPHA, POWER = 0.05, 0.8
N_CLASSES = len(AGE_CLASSES)
RACE_COLUMNS = [GROUPS.index(r) for r in RACES]     # the races' columns of an accuracy array (GROUPS order)


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
        """(B+1, 6) top-1 of each group (columns in GROUPS order) of a run's hits (F,)."""
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
        """(6, 7) estimate of top-1 per group (rows in GROUPS order) and age class (mean over folds; NaN
        where no face)."""
        per_fold = []
        for idx, w, cells, den in self.folds:
            with np.errstate(invalid="ignore", divide="ignore"):
                per_fold.append(((cells * hit[idx]).sum(1) / cells.sum(1)).reshape(len(GROUPS), N_CLASSES))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.stack(per_fold), axis=0)


# ---- statistics of group accuracies -------------------------------------------------------------
# The level statistics of one configuration, as (statistic, group): the group a statistic is of, or None
# for the statistics across races. Their names in tables and report.json come from level_label.
LEVELS = (*(("top1", g) for g in GROUPS), ("worst race top1", None), ("best race top1", None),
          ("gap (best - worst)", None), ("ratio (worst / best)", None), *(("decrease vs best", r) for r in RACES))


def level_label(statistic: str, group: str | None = None) -> str:
    """A level statistic's name: 'top1 white', 'decrease white vs best', 'gap (best - worst)'."""
    if statistic == "top1":
        return f"top1 {group}"
    if statistic == "decrease vs best":
        return f"decrease {group} vs best"
    return statistic


LEVEL_KEYS = {level_label(s, g): (s, g) for s, g in LEVELS}


def level_stats(acc: np.ndarray) -> pd.DataFrame:
    """(B, 6) top-1 per group (GROUPS order) -> (B, 15) statistics named by level_label: each group,
    worst / best race, gap, ratio, each race's decrease versus the best. Races without faces (NaN) do
    not count."""
    races = acc[:, RACE_COLUMNS]
    cols = {level_label("top1", g): acc[:, i] for i, g in enumerate(GROUPS)}
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)     # a replicate without any race face
        best, worst = np.nanmax(races, axis=1), np.nanmin(races, axis=1)
        ratio = worst / best
    cols.update({"worst race top1": worst, "best race top1": best, "gap (best - worst)": best - worst,
                 "ratio (worst / best)": ratio})
    cols.update({level_label("decrease vs best", r): best - races[:, i] for i, r in enumerate(RACES)})
    return pd.DataFrame(cols)


def reference_identities(acc: np.ndarray) -> tuple[str, str]:
    """(best race, worst race) of a reference configuration's point estimate (row 0)."""
    races = acc[0, RACE_COLUMNS]
    return RACES[int(np.nanargmax(races))], RACES[int(np.nanargmin(races))]


def level_table(reps: pd.DataFrame, seed_values: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per level statistic (index: its label): statistic, group, value, 95% interval and (several
    seeds) the between-seed standard deviation.

    Accuracies: percentile intervals. Order statistics (worst, best, gap, ratio, decreases): basic intervals."""
    est, sample = reps.iloc[0], reps.iloc[1:]
    lo, hi = sample.quantile(0.025), sample.quantile(0.975)
    keys = [LEVEL_KEYS[c] for c in reps.columns]
    out = pd.DataFrame({"statistic": [s for s, _ in keys], "group": [g for _, g in keys], "value": est,
                        "ci_low": lo, "ci_high": hi}, index=reps.columns)
    order = [c for c, (s, _) in zip(reps.columns, keys) if s != "top1"]
    for c in order:      # basic bootstrap: reflect the percentiles around the estimate, within [0, 1]
        out.loc[c, "ci_low"] = float(np.clip(2 * est[c] - hi[c], 0.0, 1.0))
        out.loc[c, "ci_high"] = float(np.clip(2 * est[c] - lo[c], 0.0, 1.0))
    out["interval"] = ["basic" if c in order else "percentile" for c in out.index]
    out["seed_sd"] = seed_values.std(ddof=1) if seed_values is not None and len(seed_values) > 1 else np.nan
    return out


# ---- contrasts: changes of linear statistics, race identities fixed from the reference -------------
CONTRASTS = ("gap (others - worst)", "worst race", "top1", "gap (best - worst)")
PRIMARY = CONTRASTS[:2]                  # a comparison's primary family; the others are its "by group" family
GAPS = (CONTRASTS[0], CONTRASTS[3])      # a significant change of these widens or narrows


def contrast_stats(acc: np.ndarray, best: str, worst: str) -> list[tuple[str, str | None, np.ndarray]]:
    """(statistic, group, (B+1,) values) of the linear statistics for contrasts, race identities fixed
    from the reference: the primary ones, the reference's worst race and its gap to the mean of the other
    races (every race's faces count, so a small best race cannot swamp it with noise), then each group
    and the gap between the reference's best and worst races."""
    b, w = GROUPS.index(best), GROUPS.index(worst)
    others = [GROUPS.index(r) for r in RACES if r != worst]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # races without test faces do not count
        mean_others = np.nanmean(acc[:, others], axis=1)
    return [("gap (others - worst)", None, mean_others - acc[:, w]), ("worst race", worst, acc[:, w]),
            *(("top1", g, acc[:, i]) for i, g in enumerate(GROUPS)), ("gap (best - worst)", None, acc[:, b] - acc[:, w])]


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


def outcome(change: float, p_adjusted: float, gap: bool) -> str:
    """widened / narrowed (a gap) or higher / lower (an accuracy) when significant, else inconclusive."""
    if p_adjusted < ALPHA:
        if gap:
            return "widened" if change > 0 else "narrowed"
        return "higher" if change > 0 else "lower"
    return "inconclusive"


def verdict(change: float, p_adjusted: float, detect: float, gap: bool) -> str:
    """What a report says of a change: its outcome, and for an inconclusive one the change it would have
    detected (in points)."""
    said = outcome(change, p_adjusted, gap)
    return f"inconclusive (detectable ±{100 * detect:.1f})" if said == "inconclusive" else said


_FLOATS = ("change", "ci_low", "ci_high", "se", "p", "p_adjusted", "detectable")   # NaN in memory, None in JSON
_NAMES = ("group", "best", "worst")                                                # None where there is none


@dataclass(frozen=True, kw_only=True)
class Contrast:
    """One statistic of one comparison: configuration `run` (in `phase`) minus `reference` (before
    unlearning), race identities fixed from the reference. Fractions (x100: points)."""
    family: str = ""            # the Holm family it was decided in (see families)
    run: str                    # the configuration: a study's tag ("few-shards"), or a summary name (--compare)
    phase: str = "before"       # the run's: "before" or "after" unlearning
    reference: str              # the configuration it is compared with, before unlearning
    statistic: str              # one of CONTRASTS
    group: str | None = None    # whose top-1 it is: the group of "top1", the worst race of "worst race"
    best: str | None = None     # the reference's best and worst race (best: None in reports from before
    worst: str | None = None    #   the records, where only the gap between them named it)
    change: float
    ci_low: float               # 95% percentile interval of the change
    ci_high: float
    se: float                   # its bootstrap standard error
    p: float
    p_adjusted: float = math.nan    # Holm, within the family
    detectable: float = math.nan    # the change the family's test would detect with 80% power
    outcome: str = ""           # widened, narrowed, higher, lower, inconclusive, or none (no verdict)
    verdict: str = ""           # what the report says: the outcome, "inconclusive (detectable ±x)", "no verdict: why"

    @property
    def label(self) -> str:
        """Its name in a table: 'gap (others - black)', 'worst race (black) top1', 'top1 white', 'gap (white - black)'."""
        return {"gap (others - worst)": f"gap (others - {self.worst})", "worst race": f"worst race ({self.worst}) top1",
                "top1": f"top1 {self.group}", "gap (best - worst)": f"gap ({self.best} - {self.worst})"}[self.statistic]

    @property
    def primary(self) -> bool:
        return self.statistic in PRIMARY

    @property
    def testable(self) -> bool:
        """False for the gap between the reference's best and worst race when they are the same race."""
        return not (self.statistic == "gap (best - worst)" and self.best == self.worst)

    def to_dict(self) -> dict:
        """Plain JSON: NaN as None."""
        return {f.name: (None if f.name in _FLOATS and not math.isfinite(getattr(self, f.name)) else getattr(self, f.name))
                for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Contrast":
        """The record of a to_dict (report.json, a -changes.csv row), or of a contrast written before the
        records (see _from_old)."""
        if "outcome" not in d:
            return _from_old(d)
        missing = {k: math.nan for k in _FLOATS if d.get(k) is None}
        missing.update({k: None for k in _NAMES if not isinstance(d.get(k), str)})   # a CSV's empty cell: NaN
        return cls(**{f.name: missing.get(f.name, d.get(f.name)) for f in fields(cls) if f.name in d})


def _from_old(d: dict) -> Contrast:
    """A contrast of a report written before contrasts were records: the run of an after-unlearning
    contrast was named '<tag> after', the statistic carried its races ('gap (others - black)', 'worst race
    (black) top1', 'top1 white', 'gap (white - black)') and the verdict was the only outcome."""
    run, stat = d["run"], d["statistic"]
    phase = "after" if run.endswith(" after") else "before"
    inside = stat[stat.find("(") + 1:stat.find(")")]
    if stat.startswith("gap (others - "):
        statistic, group, best, worst = "gap (others - worst)", None, None, inside.removeprefix("others - ")
    elif stat.startswith("worst race ("):
        statistic, group, best, worst = "worst race", inside, None, inside
    elif stat.startswith("top1 "):
        statistic, group, best, worst = "top1", stat.removeprefix("top1 "), None, None
    else:
        (best, worst), statistic, group = inside.split(" - "), "gap (best - worst)", None
    return Contrast(family=d["family"], run=run.removesuffix(" after"), phase=phase, reference=d["reference"],
                    statistic=statistic, group=group, best=best, worst=worst,
                    **{k: d[k] for k in _FLOATS}, outcome=outcome(d["change"], d["p_adjusted"], statistic in GAPS),
                    verdict=d["verdict"])


def contrasts(run: str, reference: str, run_acc: np.ndarray, ref_acc: np.ndarray, best: str, worst: str,
              phase: str = "before") -> list[Contrast]:
    """Change of every contrast statistic (run - reference) of two (B+1, 6) accuracy arrays (from the same
    resamples: paired), with percentile interval, SE and p-value; undecided (see families)."""
    out = []
    for (stat, group, r), (_, _, f) in zip(contrast_stats(run_acc, best, worst), contrast_stats(ref_acc, best, worst)):
        delta = r - f
        sample = delta[1:][np.isfinite(delta[1:])]
        if not np.isfinite(delta[0]) or len(sample) < 2:
            continue                                   # a group the test faces do not have
        se = float(sample.std(ddof=1))
        out.append(Contrast(run=run, phase=phase, reference=reference, statistic=stat, group=group, best=best,
                            worst=worst, change=float(delta[0]), ci_low=float(np.quantile(sample, 0.025)),
                            ci_high=float(np.quantile(sample, 0.975)), se=se, p=p_value(float(delta[0]), se)))
    return out


def decide(family: list[Contrast], name: str | None = None) -> list[Contrast]:
    """The family's contrasts (new records, same order) Holm-adjusted, each with its outcome and verdict,
    and named `name` when given. A contrast that cannot be tested gets no verdict and does not count."""
    tested = [c for c in family if c.testable]
    adjusted = iter(holm([c.p for c in tested]))
    out = []
    for c in family:
        c = replace(c, family=name if name is not None else c.family)
        if not c.testable:
            out.append(replace(c, outcome="none", verdict=f"no verdict: {c.reference}'s best and worst race are the "
                                                          f"same ({c.worst}), so this gap is 0 by construction"))
            continue
        p, detect = next(adjusted), detectable(c.se, len(tested))
        out.append(replace(c, p_adjusted=p, detectable=detect, outcome=outcome(c.change, p, c.statistic in GAPS),
                           verdict=verdict(c.change, p, detect, c.statistic in GAPS)))
    return out


def families(name: str, cs: list[Contrast]) -> dict[str, list[Contrast]]:
    """A comparison's two Holm families, decided: `name` (the primary statistics, PRIMARY) and
    `name, by group` (each group, and the gap between the reference's best and worst races)."""
    return {name: decide([c for c in cs if c.primary], name),
            f"{name}, by group": decide([c for c in cs if not c.primary], f"{name}, by group")}
