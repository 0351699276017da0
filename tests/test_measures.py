"""The study's measures on hand-worked toy data: age-standardised accuracy, its gap, the plain and
within-one accuracies, the worst group, bootstrap rows, and the degenerate-model guard."""
import numpy as np
import pytest

from sisa.data import RACES
from sisa.measures import cell_counts, degenerate, measures, missing_cells


def toy():
    """white, asian, indian, other: age class 0, 4 faces (2 right, 2 answered class 1); class 1, 4 faces
    all right. black: class 0, 1 face (answered class 3: three classes off); class 1, 3 faces all right."""
    race, y, pred = [], [], []
    for r in RACES:
        if r == "black":
            race += [1] * 4; y += [0, 1, 1, 1]; pred += [3, 1, 1, 1]
        else:
            i = RACES.index(r)
            race += [i] * 8; y += [0] * 4 + [1] * 4; pred += [0, 0, 1, 1] + [1] * 4
    return np.array(race), np.array(y), np.array(pred)


def test_the_age_standardised_gap_by_hand():
    race, y, pred = toy()
    m = measures(race, y, pred, reference="black")
    # pooled age shares: class 0 has 4 x 4 + 1 = 17 of 36 faces, class 1 has 19
    white = 17 / 36 * 0.5 + 19 / 36 * 1.0                      # 27.5 / 36
    black = 17 / 36 * 0.0 + 19 / 36 * 1.0                      # 19 / 36
    assert m["accuracy_standardised"][0, RACES.index("white")] == pytest.approx(white)
    assert m["accuracy_standardised"][0, RACES.index("black")] == pytest.approx(black)
    assert m["gap_accuracy_standardised"][0] == pytest.approx(white - black)   # 8.5 / 36: black served worse
    # plain accuracy hides it: 6 of 8 and 3 of 4 are both 75%
    assert m["accuracy"][0, RACES.index("white")] == pytest.approx(0.75) == m["accuracy"][0, RACES.index("black")]
    assert m["gap_accuracy"][0] == pytest.approx(0.0)
    # within one class: every white miss is one class off, black's miss three
    assert m["gap_accuracy_within_one"][0] == pytest.approx(1.0 - 0.75)
    assert m["group_min_accuracy"][0] == pytest.approx(0.75)
    # the reference is fixed in advance: with white as reference the gap has the other sign and size
    m2 = measures(race, y, pred, reference="white")
    assert m2["gap_accuracy_standardised"][0] == pytest.approx((3 * white + black) / 4 - white)


def test_bootstrap_rows_are_the_estimate_under_face_weights():
    race, y, pred = toy()
    w = np.ones((3, len(y)))
    w[1] = 0
    w[1, race != 1] = 1
    w[1, np.flatnonzero(race == 1)[[0, 0, 1, 2]]] = 1            # black's class-0 face counted twice, one class-1 face dropped
    w[1, np.flatnonzero(race == 1)[0]] = 2
    w[1, np.flatnonzero(race == 1)[3]] = 0
    m = measures(race, y, pred, reference="black", weights=w, shares=np.array([17, 19, 0, 0, 0, 0, 0]) / 36)
    assert m["accuracy"][2, 1] == pytest.approx(m["accuracy"][0, 1])        # all-ones row: the estimate
    assert m["accuracy"][1, 1] == pytest.approx(2 / 4)                        # 0 + 0 + 1 + 1 of 4
    k, n = cell_counts(race, y, pred == y, w)
    assert n[1, 1, 0] == 2 and n[1, 1, 1] == 2 and k[1, 1, 0] == 0


def test_a_race_without_an_age_class_is_renormalised_and_named():
    race, y, pred = toy()
    keep = ~((race == 1) & (y == 0))                               # black has no class-0 face now
    m = measures(race[keep], y[keep], pred[keep], reference="black")
    assert m["accuracy_standardised"][0, 1] == pytest.approx(1.0)       # only its class 1, renormalised
    k, n = cell_counts(race[keep], y[keep], pred[keep] == y[keep])
    assert ("black", "0-2") in missing_cells(n)


def test_degenerate_models_are_named():
    y = np.array([4] * 60 + [0] * 20 + [2] * 20)
    assert "one age class" in degenerate(np.full(100, 3), y)
    almost = np.where(np.arange(100) < 96, 4, 0)
    assert "one age class" in degenerate(almost, y)
    chance = np.where(np.arange(100) % 2 == 0, y, (y + 1) % 7)       # 50% right, below answering class 4 (60%)
    assert "at chance" in degenerate(chance, y)
    good = np.where(np.arange(100) % 10 == 0, (y + 1) % 7, y)        # 90% right
    assert degenerate(good, y) is None
