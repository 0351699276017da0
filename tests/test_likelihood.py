"""The unlearning-likelihood model: spline, harmonic mean, and the rates it draws."""
import numpy as np
import pandas as pd
import pytest

from sisa.errors import SisaError
from sisa.likelihood import (AGE_KNOTS, GENDER_KNOWLEDGE, NO_FACTOR_KNOWLEDGE, PRIVACY_RATE, RACE_KNOWLEDGE,
                             REQUEST_RATE, age_spline, draw_likelihood, knowledge, parse_factors,
                             request_probability)


def test_age_spline_passes_through_its_knots():
    ages, k = zip(*AGE_KNOTS)
    assert np.allclose(age_spline()(ages), k)
    assert 0.15 < float(age_spline()(116)) < 0.25


def test_knowledge_is_the_harmonic_mean_of_the_factors():
    t = pd.DataFrame({"age": [25, 90], "gender": [1, 0], "race": [1, 2]})
    g, r, a = GENDER_KNOWLEDGE[1], RACE_KNOWLEDGE[1], 0.40   # a 25-year-old black woman
    assert knowledge(t, ("gender", "race"))[0] == pytest.approx(2 / (1 / g + 1 / r))
    assert knowledge(t, ("age", "gender", "race"))[0] == pytest.approx(3 / (1 / a + 1 / g + 1 / r))
    assert knowledge(t, ("race",))[1] == pytest.approx(RACE_KNOWLEDGE[2])
    assert np.all(knowledge(t, ()) == NO_FACTOR_KNOWLEDGE)


def test_factor_names():
    assert parse_factors("race, gender") == ("gender", "race")
    assert parse_factors("none") == () and parse_factors("") == ()
    with pytest.raises(SisaError, match="unknown factor.*income"):
        parse_factors("race,income")


def test_drawn_rates_match_the_model_within_sampling_error():
    n = 400_000
    g = np.random.default_rng(1)
    t = pd.DataFrame({"age": g.integers(0, 100, n), "gender": g.integers(0, 2, n), "race": g.integers(0, 5, n)})
    d = draw_likelihood(t, ("gender", "race"), np.random.default_rng(7))
    p_high, p_req = PRIVACY_RATE * d["knowledge"].mean(), REQUEST_RATE * d["knowledge"].mean()
    assert abs(d["high_likelihood"].mean() - p_high) < 4 * np.sqrt(p_high * (1 - p_high) / n)
    assert abs(d["requests_unlearning"].mean() - p_req) < 4 * np.sqrt(p_req / n)
    # the likelihood really depends on the factors: black faces (k=.30) are flagged less than asian (k=.43)
    assert d["high_likelihood"][t["race"] == 1].mean() < d["high_likelihood"][t["race"] == 2].mean()
    # reproducible for a generator seed, different for another
    again = draw_likelihood(t, ("gender", "race"), np.random.default_rng(7))
    other = draw_likelihood(t, ("gender", "race"), np.random.default_rng(8))
    assert again.equals(d) and not other["high_likelihood"].equals(d["high_likelihood"])


def test_request_probability_given_the_flag():
    k = np.linspace(0.2, 0.5, 7)
    high, low = request_probability(k, np.ones(7, bool)), request_probability(k, np.zeros(7, bool))
    assert np.allclose(high, REQUEST_RATE)
    # averaged over the flag it is the model's marginal 0.001 k
    assert np.allclose(PRIVACY_RATE * k * high + (1 - PRIVACY_RATE * k) * low, REQUEST_RATE * k)
    assert (high > 3 * low).all()


def test_flagged_faces_request_more_often():
    n = 2_000_000
    g = np.random.default_rng(3)
    t = pd.DataFrame({"age": g.integers(0, 100, n), "gender": g.integers(0, 2, n), "race": g.integers(0, 5, n)})
    d = draw_likelihood(t, ("gender", "race"), np.random.default_rng(11))
    hi, lo = d["high_likelihood"], ~d["high_likelihood"]
    r_hi, r_lo = d["requests_unlearning"][hi].mean(), d["requests_unlearning"][lo].mean()
    assert abs(r_hi - REQUEST_RATE) < 4 * np.sqrt(REQUEST_RATE / hi.sum())
    expected_lo = request_probability(d["knowledge"][lo], np.zeros(lo.sum(), bool)).mean()
    assert abs(r_lo - expected_lo) < 4 * np.sqrt(expected_lo / lo.sum())
    assert r_hi > 3 * r_lo
