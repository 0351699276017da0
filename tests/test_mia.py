"""The membership-inference attack on toy problems with known members: high AUC on members, about 0.5
on non-members, intervals that cover the truth, by race, and the too-weak verdict."""
import numpy as np
import pytest

from sisa import mia
from sisa.data import RACES


def test_features_are_the_true_class_loss_and_the_confidence():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    f = mia.features(logits, np.array([0, 2]))
    p0 = np.exp(2) / (np.exp(2) + 2)
    assert f[0] == pytest.approx([-np.log(p0), p0]) and f[1] == pytest.approx([np.log(3), 1 / 3])


def test_auc_by_hand():
    assert mia.auc(np.array([3, 4]), np.array([1, 2])) == 1.0
    assert mia.auc(np.array([1]), np.array([2])) == 0.0
    assert mia.auc(np.array([1, 2]), np.array([1, 2])) == 0.5          # ties count half
    assert mia.auc(np.array([2, 3]), np.array([1, 3])) == 0.625          # pairs: 2>1, 2<3, 3>1, 3=3: 2.5 / 4


def toy(n, member_shift, seed):
    """Features of a toy model: members have lower loss (by member_shift) and higher confidence."""
    g = np.random.default_rng(seed)
    loss = g.gamma(2.0, 0.5, n) - member_shift
    return np.stack([np.clip(loss, 0.01, None), 1 / (1 + loss.clip(0.01))], axis=1)


def test_the_attack_tells_known_members_and_not_non_members():
    retain, test = toy(2000, 1.0, 1), toy(2000, 0.0, 2)
    members_forgotten, never_seen = toy(400, 1.0, 3), toy(400, 0.0, 4)
    race = np.arange(400) % 5
    test_race = np.arange(2000) % 5
    seen = mia.forgetting(retain, members_forgotten, test, race, test_race, n_boot=100, seed=0)
    gone = mia.forgetting(retain, never_seen, test, race, test_race, n_boot=100, seed=0)
    for kind in mia.ATTACKS:
        assert seen[kind]["auc_retain"] > 0.8 and seen[kind]["attack_accuracy"] > 0.7   # the attack is strong
        assert seen[kind]["auc_forget"] > 0.8 and seen[kind]["auc_forget_ci"][0] > 0.75 # members: told apart
        lo, hi = gone[kind]["auc_forget_ci"]
        assert lo < 0.5 < hi and abs(gone[kind]["auc_forget"] - 0.5) < 0.06              # non-members: chance
        assert set(seen[kind]["by_race"]) == set(RACES)
        assert all(r["faces"] == 80 and r["auc_forget"] > 0.7 for r in seen[kind]["by_race"].values())
    assert mia.verdict(seen) is None
    assert "too weak to judge forgetting" in mia.verdict(gone)


def test_an_attack_never_scores_the_faces_it_was_fitted_on():
    fit_half, score_half = mia.split_test(101, seed=3)
    assert not set(fit_half) & set(score_half) and len(fit_half) + len(score_half) == 101
    assert (mia.split_test(101, seed=3)[0] == fit_half).all() and (mia.split_test(101, seed=4)[0] != fit_half).any()


def test_interval_coverage_on_null_problems():
    """Over 60 toy problems where forget and test faces come from one distribution, the forget AUC's
    interval covers 0.5 about 95% of the time (at least 85% here, for a fast test)."""
    covered = 0
    for k in range(60):
        a, b = toy(150, 0.0, 100 + k), toy(300, 0.0, 1000 + k)
        lo, hi = mia.auc_interval(-a[:, 0], -b[:, 0], 200, k)
        covered += lo <= 0.5 <= hi
    assert covered >= 51
