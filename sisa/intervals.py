"""Intervals and verdicts for changes measured over replicates, paired on their test faces.

A study's replicate r draws its own fold assignment, likelihood flags, partitions and initial weights,
and every configuration of replicate r shares them (paired). A change (configuration minus reference)
is measured in each replicate, d_r, and under B resamples of the test faces, d_rb, the same face
weights for every replicate and configuration (a face counts the same number of times everywhere).
Two sources of noise:

  training and placement   the spread of d_r between replicates, s^2 / R. Where replicates test
                           different faces (one fold of a fresh fold assignment each, or the balanced
                           test) it also holds their own faces' error
  which faces were tested  the part of the faces' error that replicates share and that does not
                           average out with more of them: in the k-fold test every replicate tests the
                           same faces. With v the variance over b of the mean over r of d_rb (face
                           weights shared across replicates) and c the mean over r of each replicate's
                           own resampling variance var_b(d_rb), divided by R (the faces' error s^2
                           already holds), the shared part is max(0, v - c) * R / (R - 1)

se^2 = s^2 / R + max(0, v - c) * R / (R - 1). In expectation this is the variance of the mean change
over training and over faces drawn from the population, both when every replicate tests the same faces
and when each tests a random part of them (a per-face systematic difference counts once, a model's
per-face noise once; docs/statistics.md works it through); adding s^2 / R and v whole would count
each replicate's own faces' error twice. The interval is a t interval with
Welch-Satterthwaite degrees of freedom (R - 1 when the replicates' spread dominates, normal when the
faces' does); one replicate has only the faces' part, v, as a study with --replicates 1 (the quick
start) says. Verdicts and intervals use one level: Bonferroni over the family (alpha / m), so an
interval excludes 0 exactly when its verdict is not "inconclusive", and the detectable change is the
one such a test finds with 80% power.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student

ALPHA, POWER = 0.05, 0.8


@dataclass(frozen=True)
class Change:
    """A change over replicates: estimate, its standard error and degrees of freedom, its parts."""
    estimate: float
    se: float
    df: float
    replicates: int
    se_replicates: float      # training and placement: s / sqrt(R) (0 with one replicate)
    se_faces: float           # which faces were tested

    def interval(self, family: int = 1) -> tuple[float, float]:
        """The (1 - ALPHA / family) interval: Bonferroni over the family, as the verdict."""
        q = self.quantile(1 - ALPHA / (2 * max(1, family)))
        return self.estimate - q * self.se, self.estimate + q * self.se

    def p(self) -> float:
        if self.se == 0:
            return 1.0 if self.estimate == 0 else 0.0
        return float(2 * student.sf(abs(self.estimate) / self.se, self.df))

    def detectable(self, family: int = 1) -> float:
        """The change a two-sided test at ALPHA / family detects with POWER."""
        return float((self.quantile(1 - ALPHA / (2 * max(1, family))) + self.quantile(POWER)) * self.se)

    def quantile(self, q: float) -> float:
        return float(student.ppf(q, self.df)) if np.isfinite(self.df) else float(student.ppf(q, 1e9))


def change(d: np.ndarray) -> Change:
    """(R, B+1) changes -> Change: column 0 each replicate's estimate, columns 1..B its face resamples
    (face weights shared across replicates). NaN draws (a resample without a race) are dropped."""
    d = np.asarray(d, dtype=float)
    R = d.shape[0]
    est, draws = d[:, 0], d[:, 1:]
    mean_b = draws.mean(axis=0)
    v = _var(mean_b)
    if R == 1:
        v_reps, v_faces = 0.0, v
    else:
        v_reps = float(est.var(ddof=1)) / R
        own = float(np.mean([_var(row) for row in draws])) / R      # each replicate's own faces' error, in s^2
        v_faces = max(0.0, v - own) * R / (R - 1)
    return Change(float(est.mean()), float(np.sqrt(v_reps + v_faces)), welch_df(v_reps, v_faces, R), R,
                  float(np.sqrt(v_reps)), float(np.sqrt(v_faces)))


def welch_df(v_reps: float, v_faces: float, replicates: int) -> float:
    """Welch-Satterthwaite degrees of freedom of v_reps + v_faces: the replicates' part has R - 1, the
    faces' part is known from many resamples (infinite)."""
    return float("inf") if v_reps == 0 else (v_reps + v_faces) ** 2 / (v_reps ** 2 / (replicates - 1))


def _var(x: np.ndarray) -> float:
    """Variance (ddof 1) of the finite draws; 0 with fewer than two."""
    x = x[np.isfinite(x)]
    return float(x.var(ddof=1)) if len(x) > 1 else 0.0


def verdict(c: Change, family: int) -> tuple[str, float, float]:
    """(verdict, Bonferroni p, detectable) of a change in a family of `family` tests: "higher" or
    "lower" (for a gap, other races minus the reference: higher means the reference race lost ground),
    else "inconclusive" with the change the study could have detected."""
    p_adj = min(1.0, c.p() * max(1, family))
    detect = c.detectable(family)
    if p_adj < ALPHA:
        return ("higher" if c.estimate > 0 else "lower"), p_adj, detect
    return f"inconclusive (detectable ±{100 * detect:.1f})", p_adj, detect


def replicates_for(se_replicates: float, se_faces: float, replicates: int, target: float, family: int = 1,
                   most: int = 1000) -> int | None:
    """The fewest replicates at which a change measured with these parts would be detected at `target`
    (a fraction) by its family's test: the spread between replicates per replicate, se_replicates^2 * R,
    is divided by the new count, the shared faces' part stays. None when it cannot be told (one
    replicate: no spread yet) or is not reached by `most` (the shared faces' part alone is too large)."""
    if replicates < 2 or not (np.isfinite(se_replicates) and np.isfinite(se_faces)):
        return None
    per_replicate, shared = se_replicates ** 2 * replicates, se_faces ** 2
    for n in range(2, most + 1):
        v_reps = per_replicate / n
        at_n = Change(0.0, float(np.sqrt(v_reps + shared)), welch_df(v_reps, shared, n), n, 0.0, 0.0)
        if at_n.detectable(family) <= target:
            return n
    return None


_NUMBERS = ("change", "ci_low", "ci_high", "ci_low_adjusted", "ci_high_adjusted", "se", "se_replicates", "se_faces",
            "df", "p", "p_adjusted", "detectable")


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """One statistic of one comparison in a study of replicates: configuration `run` (in `phase`) minus
    `reference` (in `reference_phase`), paired within each replicate. Fractions (x100: points)."""
    family: str
    run: str
    phase: str = "before"
    reference: str
    reference_phase: str = "before"
    statistic: str                  # a measures.py name: gap_accuracy_standardised (primary), accuracy, ...
    group: str | None = None        # the race of a by-race statistic
    change: float
    ci_low: float                   # 95%, unadjusted
    ci_high: float
    ci_low_adjusted: float          # at the family's Bonferroni level: the interval the verdict reads
    ci_high_adjusted: float
    se: float
    se_replicates: float
    se_faces: float
    df: float
    replicates: int
    p: float
    p_adjusted: float
    detectable: float
    outcome: str                    # higher, lower, inconclusive, or none (no verdict)
    verdict: str

    def to_dict(self) -> dict:
        return {k: (None if k in _NUMBERS and not np.isfinite(v) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Comparison":
        return cls(**{k: (float("nan") if k in _NUMBERS and v is None else v) for k, v in d.items()})


def decide(family: str, items: list[tuple[dict, np.ndarray | str]]) -> list[Comparison]:
    """A family of comparisons, decided together. Each item: (fields: run, phase, reference, ...,
    statistic, group) and either the (R, B+1) changes or a reason it gets no verdict (a degenerate
    run). Only the testable ones count in the family's size."""
    testable = sum(not isinstance(d, str) for _, d in items)
    out = []
    for fields_, d in items:
        if isinstance(d, str):
            nan = float("nan")
            out.append(Comparison(family=family, **fields_, change=nan, ci_low=nan, ci_high=nan, ci_low_adjusted=nan,
                                  ci_high_adjusted=nan, se=nan, se_replicates=nan, se_faces=nan, df=nan,
                                  replicates=0, p=nan, p_adjusted=nan, detectable=nan, outcome="none",
                                  verdict=f"no verdict: {d}"))
            continue
        c = change(d)
        word, p_adj, detect = verdict(c, testable)
        (lo, hi), (alo, ahi) = c.interval(1), c.interval(testable)
        out.append(Comparison(family=family, **fields_, change=c.estimate, ci_low=lo, ci_high=hi, ci_low_adjusted=alo,
                              ci_high_adjusted=ahi, se=c.se, se_replicates=c.se_replicates, se_faces=c.se_faces,
                              df=c.df, replicates=c.replicates, p=c.p(), p_adjusted=p_adj, detectable=detect,
                              outcome=word.split()[0], verdict=word))
    return out
