"""From the shard models' logits to the ensemble's prediction.

    sum_logits    the class with the largest sum of logits (the original study)
    vote          the class most shard models predict (the SISA paper)
    mean_softmax  the class with the largest mean probability

Each method returns a score per class; the prediction ranks classes by score. Ties are broken
deterministically: for `vote`, by the mean softmax probability (so a 2-2-1 vote goes to the class the
tied models were surer of), and for every method, last, by the lower class index (the younger age
class). Top-2 uses the same ranking.
"""
from __future__ import annotations

import numpy as np

AGGREGATIONS = ("sum_logits", "vote", "mean_softmax")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def scores(logits: np.ndarray, method: str) -> np.ndarray:
    """(S, n, C) logits of S shard models -> (n, C) ensemble scores (higher is better)."""
    logits = np.asarray(logits, dtype=np.float64)
    if method == "sum_logits":
        return logits.sum(axis=0)
    probs = softmax(logits).mean(axis=0)                  # (n, C)
    if method == "mean_softmax":
        return probs
    if method == "vote":
        labels = logits.argmax(axis=-1)                   # (S, n): ties inside a model -> lower class
        votes = np.stack([(labels == c).sum(axis=0) for c in range(logits.shape[-1])], axis=-1)
        return votes + probs * (1 - 1e-9)                 # probs < 1: they only ever break equal votes
    raise ValueError(f"unknown aggregation {method!r}; choose one of {', '.join(AGGREGATIONS)}")


def rank(score: np.ndarray, k: int = 2) -> np.ndarray:
    """(n, C) scores -> (n, k) best classes; equal scores go to the lower class index."""
    return np.argsort(-score, axis=-1, kind="stable")[:, :k]
