"""What the study measures of a run's predictions, by race: accuracy standardised by age (primary),
plain accuracy, accuracy within one age class, the worst group; and whether the model is degenerate.

Why standardise: races differ in their age mix (UTKFace's black faces are mostly adults, its "other"
faces mostly children), and age classes differ in how hard they are, so a race's plain accuracy mixes
its age mix with how well the model serves it. The age-standardised accuracy of a race weights its
accuracy in each age class by the *pooled* test age-class distribution (direct standardisation, as
epidemiology standardises rates by age): every race is scored on the same age mix. Unlike the mean
over age classes (the original study's top-1, kept in its pickles), it does not give a class of 9
faces the weight of a class of 3,000, so one small cell cannot carry the statistic.

Names follow fairlearn's (MetricFrame: by_group, group_min, difference), with the reference race
fixed in advance (the study's --reference_race), never chosen from the data it is tested on:

  accuracy_standardised   by race: sum over age classes of pooled share x accuracy in the class
  accuracy                by race: correct / faces
  accuracy_within_one     by race: predicted age class at most one away (ordinal classes)
  gap_<measure>           mean over the other four races minus the reference race (positive: the
                          reference race is served worse); gap_accuracy_standardised is the primary
  group_min_accuracy      the worst race's plain accuracy (its identity may change between runs)

Every function takes counts with a leading axis of bootstrap draws (row 0: the faces once), so one
call computes an estimate and its resamples.
"""
from __future__ import annotations

import warnings

import numpy as np

from .data import AGE_CLASSES, RACES

N_RACES, N_CLASSES = len(RACES), len(AGE_CLASSES)
PRIMARY = "gap_accuracy_standardised"
BY_RACE = ("accuracy_standardised", "accuracy", "accuracy_within_one")
ONE_CLASS_SHARE = 0.95      # a model answering one class for this share of the faces is degenerate
CHANCE_MARGIN = 0.01        # ... and so is one no more accurate than always answering the commonest class (+1 point)


def cell_counts(race: np.ndarray, age_class: np.ndarray, correct: np.ndarray,
                weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(B+1, 5, 7) correct answers and faces per race x age class. `weights` (B+1, F): how many times
    each face counts in each draw (row 0 all ones); None: the faces once."""
    cell = race.astype(int) * N_CLASSES + age_class.astype(int)                      # (F,)
    onehot = np.zeros((len(cell), N_RACES * N_CLASSES), np.float64)
    onehot[np.arange(len(cell)), cell] = 1.0
    w = np.ones((1, len(cell))) if weights is None else np.asarray(weights, np.float64)
    n = w @ onehot                                                                       # (B+1, 35)
    k = w @ (onehot * np.asarray(correct, np.float64)[:, None])
    shape = (len(w), N_RACES, N_CLASSES)
    return k.reshape(shape), n.reshape(shape)


def pooled_age_shares(n: np.ndarray) -> np.ndarray:
    """(7,) the standard population: the test faces' age-class distribution over all races (row 0)."""
    per_class = n[0].sum(axis=0)
    return per_class / per_class.sum()


def accuracy(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    """(B+1, 5) correct / faces by race."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return k.sum(axis=2) / n.sum(axis=2)


def accuracy_standardised(k: np.ndarray, n: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """(B+1, 5) each race's age-class accuracies weighted by the pooled shares. A class a race has no
    test face of is left out and the other classes' shares are renormalised (said in the report when
    it happens: `missing_cells`)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = k / n                                                                       # (B+1, 5, 7)
    w = np.where(n > 0, shares, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nansum(acc * w, axis=2) / w.sum(axis=2)


def missing_cells(n: np.ndarray) -> list[tuple[str, str]]:
    """(race, age class) cells without a test face (row 0)."""
    return [(RACES[r], AGE_CLASSES[c]) for r, c in zip(*np.nonzero(n[0] == 0))]


def gap(by_race: np.ndarray, reference: str) -> np.ndarray:
    """(B+1,) mean of the other races minus the reference race."""
    ref = RACES.index(reference)
    others = [i for i in range(N_RACES) if i != ref]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)          # a race without test faces does not count
        return np.nanmean(by_race[:, others], axis=1) - by_race[:, ref]


def measures(race: np.ndarray, age_class: np.ndarray, pred: np.ndarray, reference: str,
             weights: np.ndarray | None = None, shares: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every measure of one run's predictions (B+1 rows each): by race (B+1, 5) and the gaps and the
    worst group (B+1,). `shares`: the standard age distribution (default: these faces' own)."""
    y = age_class.astype(int)
    k, n = cell_counts(race, y, pred == y, weights)
    k1, _ = cell_counts(race, y, np.abs(pred.astype(int) - y) <= 1, weights)
    shares = pooled_age_shares(n) if shares is None else shares
    out = {"accuracy_standardised": accuracy_standardised(k, n, shares), "accuracy": accuracy(k, n),
           "accuracy_within_one": accuracy(k1, n)}
    for m in BY_RACE:
        out[f"gap_{m}"] = gap(out[m], reference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out["group_min_accuracy"] = np.nanmin(out["accuracy"], axis=1)
    return out


def degenerate(pred: np.ndarray, age_class: np.ndarray) -> str | None:
    """Why a model's predictions are too degenerate to compare (one class for nearly every face, or no
    better than always answering the commonest class), else None. Such a run gets no verdict."""
    pred, y = np.asarray(pred).astype(int), np.asarray(age_class).astype(int)
    if len(pred) == 0:
        return "no test faces"
    top = np.bincount(pred, minlength=N_CLASSES)
    if top.max() >= ONE_CLASS_SHARE * len(pred):
        return f"predicts one age class ({AGE_CLASSES[int(top.argmax())]}) for {100 * top.max() / len(pred):.0f}% of faces"
    acc, base = float((pred == y).mean()), float(np.bincount(y, minlength=N_CLASSES).max() / len(y))
    if acc <= base + CHANCE_MARGIN:
        return (f"at chance: top-1 {100 * acc:.1f}% against {100 * base:.1f}% for always answering the commonest "
                "age class")
    return None
