"""Aggregation of shard models against hand-computed toy cases, ties included."""
import numpy as np
import pytest

from sisa.aggregation import rank, scores, softmax

# 3 shard models, 2 faces, 3 classes
LOGITS = np.array([
    [[2.0, 1.0, 0.0], [0.0, 0.0, 5.0]],
    [[0.0, 3.0, 0.0], [1.0, 0.0, 0.0]],
    [[0.0, 2.5, 0.0], [0.0, 1.0, 0.0]],
])


def test_sum_logits():
    s = scores(LOGITS, "sum_logits")
    assert np.allclose(s, [[2.0, 6.5, 0.0], [1.0, 1.0, 5.0]])
    assert rank(s).tolist() == [[1, 0], [2, 0]]      # face 2: classes 0 and 1 tie at 1.0 -> lower index first


def test_vote_majority_and_tie_break_by_probability():
    s = scores(LOGITS, "vote")
    # face 1: votes 0,1,1 -> class 1. face 2: votes 2,0,1 -> a three-way tie broken by mean softmax
    p = softmax(LOGITS).mean(axis=0)[1]
    assert rank(s)[0, 0] == 1
    assert rank(s)[1, 0] == int(np.argmax(p)) == 2
    assert np.all(np.floor(s) == [[1, 2, 0], [1, 1, 1]])


def test_vote_tie_with_equal_probabilities_goes_to_the_lower_class():
    logits = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])     # one vote each, mirrored probabilities
    assert rank(scores(logits, "vote"), k=1)[0, 0] == 0


def test_mean_softmax():
    s = scores(LOGITS, "mean_softmax")
    assert np.allclose(s.sum(axis=1), 1.0)
    assert np.allclose(s[0], softmax(LOGITS[:, 0]).mean(axis=0))
    assert rank(s)[0, 0] == 1


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown aggregation"):
        scores(LOGITS, "median")
