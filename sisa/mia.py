"""Membership inference: can an attacker tell the forgotten faces from faces the model never saw?

The attack follows the NeurIPS 2023 machine unlearning challenge's starting kit and the SalUn /
Unlearn-Sparse evaluations: per-face features from the model's output (the loss on the true age class
and the confidence, the largest softmax probability), an attack fitted to tell *retained* training
faces (members) from held-out *test* faces (non-members), then applied to the *forget* faces against
other test faces. Two attacks:

  threshold   the loss alone: a face is called a member when its loss is below a threshold (fitted for
              balanced accuracy on retained vs test faces); its AUC needs no threshold
  logistic    logistic regression on (loss, confidence), standardised

The test faces are split in two at random (fixed by the seed): one half fits the attack, the other is
the non-member side of every AUC, so no face scores the attack it helped fit. Reported per attack: the
AUC of retained vs test faces (how visible membership is at all: the attack's strength), and the AUC of
forget vs test faces overall and by race, with stratified bootstrap intervals. An exactly unlearned
model (retrained without the faces) should put the forget faces at the test faces' level (AUC about
0.5, or whatever a model trained without them gives); the original model, which trained on them, should
not. If even the original cannot be told apart (its forget-vs-test interval reaches 0.5), the attack is
too weak to judge forgetting, and `verdict` says so.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from .data import RACES
from .seeding import rng

ATTACKS = ("threshold", "logistic")


def features(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, 2): the cross-entropy loss on the true class and the confidence (largest softmax probability)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(len(z)), np.asarray(labels, int)]
    return np.stack([loss, np.exp(logp.max(axis=1))], axis=1)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties half (Mann-Whitney)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def auc_interval(pos: np.ndarray, neg: np.ndarray, n_boot: int, seed: int, key: str = "") -> tuple[float, float]:
    """95% percentile interval of the AUC, both sides resampled with replacement."""
    if len(pos) < 2 or len(neg) < 2:
        return float("nan"), float("nan")
    g = rng(seed, "mia-bootstrap", key, len(pos), len(neg))
    boot = [auc(pos[g.integers(len(pos), size=len(pos))], neg[g.integers(len(neg), size=len(neg))])
            for _ in range(n_boot)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(lo), float(hi)


@dataclass
class Attack:
    """A fitted attack: `score(X)` is higher for faces it believes were trained on."""
    kind: str
    threshold: float = float("nan")        # threshold: members have loss below it
    model: object = None                   # logistic: the fitted pipeline

    def score(self, X: np.ndarray) -> np.ndarray:
        if self.kind == "threshold":
            return -X[:, 0]
        return self.model.predict_proba(X)[:, 1]

    def accuracy(self, members: np.ndarray, nonmembers: np.ndarray) -> float:
        """Balanced accuracy of its member / non-member calls."""
        if self.kind == "threshold":
            hit_m, hit_n = members[:, 0] < self.threshold, nonmembers[:, 0] >= self.threshold
        else:
            hit_m, hit_n = self.model.predict(members) == 1, self.model.predict(nonmembers) == 0
        return float((hit_m.mean() + hit_n.mean()) / 2)


def fit(kind: str, members: np.ndarray, nonmembers: np.ndarray, seed: int = 0) -> Attack:
    """Fit an attack to tell members (retained training faces) from non-members (test faces)."""
    if kind == "threshold":
        losses = np.sort(np.concatenate([members[:, 0], nonmembers[:, 0]]))
        cuts = np.unique(np.quantile(losses, np.linspace(0, 1, 201)))
        acc = [((members[:, 0] < c).mean() + (nonmembers[:, 0] >= c).mean()) / 2 for c in cuts]
        return Attack(kind, threshold=float(cuts[int(np.argmax(acc))]))
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        X = np.concatenate([members, nonmembers])
        y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
        model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", random_state=seed))
        return Attack(kind, model=model.fit(X, y))
    raise ValueError(f"attack {kind!r}: choose from {', '.join(ATTACKS)}")


def split_test(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The test faces' two halves: (fit the attack, score against), fixed by the seed."""
    order = rng(seed, "mia-split", n).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def forgetting(retain: np.ndarray, forget: np.ndarray, test: np.ndarray, forget_race: np.ndarray,
               test_race: np.ndarray, n_boot: int = 200, seed: int = 0) -> dict:
    """Every attack's strength and the forget faces' visibility, overall and by race.

    `retain`, `forget`, `test`: features() of the retained training faces, the forget faces and the test
    faces under one model; `forget_race`, `test_race`: race codes (data.RACES order)."""
    fit_half, score_half = split_test(len(test), seed)
    out = {}
    for kind in ATTACKS:
        attack = fit(kind, retain, test[fit_half], seed)
        neg = attack.score(test[score_half])
        pos_r, pos_f = attack.score(retain), attack.score(forget)
        row = {"attack_accuracy": attack.accuracy(retain, test[score_half]),
               "auc_retain": auc(pos_r, neg), "auc_retain_ci": auc_interval(pos_r, neg, n_boot, seed, f"{kind}-retain"),
               "auc_forget": auc(pos_f, neg), "auc_forget_ci": auc_interval(pos_f, neg, n_boot, seed, f"{kind}-forget"),
               "forget_faces": int(len(forget)), "by_race": {}}
        neg_race = test_race[score_half]
        for i, race in enumerate(RACES):
            p, q = pos_f[forget_race == i], neg[neg_race == i]
            if len(p):
                row["by_race"][race] = {"faces": int(len(p)), "auc_forget": auc(p, q),
                                        "auc_forget_ci": auc_interval(p, q, n_boot, seed, f"{kind}-{race}")}
        out[kind] = row
    return out


def verdict(original: dict, kind: str = "logistic") -> str | None:
    """None when the attack tells the original model's forget faces from test faces (its interval above
    0.5); otherwise the sentence the report gives instead of judging forgetting."""
    lo = original[kind]["auc_forget_ci"][0]
    if np.isfinite(lo) and lo > 0.5:
        return None
    lo_r, hi_r = original[kind]["auc_retain_ci"]
    return (f"the {kind} attack cannot tell the original model's forget faces from test faces (AUC "
            f"{original[kind]['auc_forget']:.3f}, interval from {lo:.3f}): too weak to judge forgetting at this "
            f"training budget; on all retained training faces against test faces it reaches "
            f"{original[kind]['auc_retain']:.3f} [{lo_r:.3f}, {hi_r:.3f}], how visible membership is after this much "
            "training (benchmarks/membership.py measures it for longer training)")
