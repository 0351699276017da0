"""The a-priori likelihood that a face will be unlearned (the original study's "sampler").

Each face gets a GDPR-knowledge probability k: the harmonic mean of the factors in use (race from
US SAT scores by race, gender and age from Special Eurobarometer 487a). As on the poster, only a
person who knows the law acts on it: P(changed privacy settings | knows) = 0.66 and
P(changed | does not know) = 0, so P(changed | k) = 0.66 k (a "high unlearning likelihood" face,
about 24% of UTKFace); likewise P(request | knows) = 0.001, so P(request | k) = 0.001 k (about 8.5
requests over the whole set). Knowing is one latent draw per face shared by both, which is what
makes the flag informative: a face that changed its settings surely knows the law and requests
unlearning with probability 0.001, about six times as often as a face that did not. Placement
strategies, request sampling and expected costs use that conditional probability.
All draws come from the generator passed in, never a global RNG.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from .data import MAX_AGE
from .errors import SisaError

RACE_KNOWLEDGE = (0.40, 0.30, 0.43, 0.43, 0.32)    # white, black, asian, indian, other
GENDER_KNOWLEDGE = (0.38, 0.34)                    # male, female
AGE_KNOTS = ((0, .30), (10, .32), (20, .36), (25, .40), (33, .45), (40, .46), (48, .43),
             (53, .36), (62, .29), (80, .23), (90, .21), (100, .20), (120, .18))
NO_FACTOR_KNOWLEDGE = 0.36     # k when no factor is selected
PRIVACY_RATE = 0.66            # P(changed privacy settings | knows the law): P(changed | k) = 0.66 k -> "high likelihood"
REQUEST_RATE = 0.001           # P(files an unlearning request | knows the law): P(request | k) = 0.001 k
FACTORS = ("age", "gender", "race")


def parse_factors(spec: str) -> tuple[str, ...]:
    """'gender,race' -> ('gender', 'race'); '' or 'none' -> (); unknown names are an error."""
    names = tuple(sorted({s.strip() for s in spec.split(",") if s.strip()} - {"none"}))
    unknown = [n for n in names if n not in FACTORS]
    if unknown:
        raise SisaError(f"--likelihood_factors: unknown factor(s) {', '.join(unknown)}; "
                        f"use a comma-separated subset of {', '.join(FACTORS)} (or 'none')")
    return names


@lru_cache(maxsize=1)
def age_spline():
    """k of an age: a cubic spline through AGE_KNOTS (scipy's, imported here: only the age factor needs it)."""
    from scipy.interpolate import CubicSpline
    ages, k = zip(*AGE_KNOTS)
    return CubicSpline(ages, k)


def knowledge(table: pd.DataFrame, factors: tuple[str, ...]) -> np.ndarray:
    """k per face: the harmonic mean of the selected factors' probabilities."""
    if not factors:
        return np.full(len(table), NO_FACTOR_KNOWLEDGE)
    parts = []
    if "age" in factors:
        parts.append(age_spline()(np.clip(table["age"].to_numpy(), 0, MAX_AGE)))
    if "gender" in factors:
        parts.append(np.asarray(GENDER_KNOWLEDGE)[table["gender"].to_numpy()])
    if "race" in factors:
        parts.append(np.asarray(RACE_KNOWLEDGE)[table["race"].to_numpy()])
    return 1.0 / np.mean(1.0 / np.stack(parts), axis=0)     # the harmonic mean, bit for bit scipy.stats.hmean's


def request_probability(k: np.ndarray, high: np.ndarray) -> np.ndarray:
    """P(request | k, whether the face changed its privacy settings).

    High: the person knows the law, so 0.001. Low: P(knows | not changed) = k (1 - 0.66) / (1 - 0.66 k),
    times 0.001. Averaged over the flag this is 0.001 k again.
    """
    k = np.asarray(k, dtype=float)
    knows_if_low = k * (1 - PRIVACY_RATE) / (1 - PRIVACY_RATE * k)
    return REQUEST_RATE * np.where(np.asarray(high, dtype=bool), 1.0, knows_if_low)


def draw_likelihood(table: pd.DataFrame, factors: tuple[str, ...], rng: np.random.Generator) -> pd.DataFrame:
    """Columns knowledge, high_likelihood, requests_unlearning for every face of `table`.

    Drawn once per run (not per fold): whether a person changed their privacy settings is a property
    of the person, so every fold (and every face of a k-fold test) sees the same population.
    """
    k = knowledge(table, factors)
    u = rng.random((3, len(table)))
    knows = u[0] < k                     # latent: knows the law (not saved; the flags carry it)
    return pd.DataFrame({
        "knowledge": k,
        "high_likelihood": knows & (u[1] < PRIVACY_RATE),
        "requests_unlearning": knows & (u[2] < REQUEST_RATE),
    }, index=table.index)
