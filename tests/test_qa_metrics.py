"""SQuAD v1.1 metric: hand-worked cases and bootstrap sanity checks."""

import numpy as np
import pytest

from utils.latent.metric import (
    context_bootstrap_ci,
    exact_match_score,
    f1_score,
    max_over_golds,
    normalize_answer,
    paired_context_bootstrap,
    score_predictions,
)


def test_normalize_articles_punctuation_whitespace():
    assert normalize_answer("The  Cat, a dog & AN owl!") == "cat dog owl"
    # articles only as whole words: "theatre", "anna", "an" inside words stay
    assert normalize_answer("Theatre of Anna") == "theatre of anna"
    assert normalize_answer("  U.S.A. ") == "usa"
    assert normalize_answer("the") == ""


def test_exact_match():
    assert exact_match_score("The Eiffel Tower.", "eiffel tower") == 1.0
    assert exact_match_score("Eiffel", "Eiffel Tower") == 0.0


def test_f1_hand_worked():
    # pred tokens {new, york, city}, gold {new, york}: P = 2/3, R = 1, F1 = 0.8
    assert f1_score("New York City", "new york") == pytest.approx(0.8)
    # repeated tokens count as a multiset: pred [a1 a1 a1], gold [a1 b]: common = 1, P = 1/3, R = 1/2
    assert f1_score("paris paris paris", "paris london") == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    # articles and punctuation ignored
    assert f1_score("the answer, is", "an answer is") == pytest.approx(1.0)
    assert f1_score("", "gold") == 0.0
    assert f1_score("a", "the") == 0.0  # both normalise to empty: no common token


def test_max_over_several_golds():
    golds = ["Denver Broncos", "the Broncos", "Broncos team"]
    assert max_over_golds(exact_match_score, "Broncos", golds) == 1.0
    assert max_over_golds(f1_score, "Denver", golds) == pytest.approx(2 * 1 * 0.5 / 1.5)
    s = score_predictions(["Broncos", "x"], [golds, ["y"]])
    assert s["em"] == pytest.approx(50.0)
    assert s["f1"] == pytest.approx(50.0)
    with pytest.raises(ValueError):
        score_predictions(["a"], [])


def test_bootstrap_intervals_match_the_normal_approximation():
    """Independent reference: for a mean of n = 400 Bernoulli values the 95 % interval is close to
    mean +- 1.96 sqrt(p (1 - p) / n); a paired difference gets the paired standard error, far narrower
    than treating the two samples as independent."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 400).astype(float)
    one = np.arange(a.size)  # one question per context: the plain question bootstrap
    m, lo, hi = context_bootstrap_ci(a, one, n_boot=4000, seed=1)
    p = a.mean()
    half = 100 * 1.96 * np.sqrt(p * (1 - p) / a.size)
    assert m == pytest.approx(100 * p)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.12)
    assert (lo + hi) / 2 == pytest.approx(m, abs=0.15 * half)
    b = a.copy()
    flip = rng.choice(a.size, 40, replace=False)
    b[flip] = 1 - b[flip]
    r = paired_context_bootstrap(a, b, one, n_boot=4000, seed=2)
    d = a - b
    assert r["diff"] == pytest.approx(100 * d.mean())
    paired_half = 100 * 1.96 * d.std() / np.sqrt(d.size)
    assert (r["hi"] - r["lo"]) / 2 == pytest.approx(paired_half, rel=0.12)
    assert (r["hi"] - r["lo"]) / 2 < 0.5 * half * np.sqrt(2)  # pairing matters
    same = paired_context_bootstrap(a, a, one, n_boot=200)
    assert same["diff"] == same["lo"] == same["hi"] == 0.0
