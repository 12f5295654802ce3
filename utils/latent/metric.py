"""SQuAD v1.1 answer metrics (official definitions) and paired bootstrap intervals.

The normalisation follows the official ``evaluate-v1.1.py``: lower-case, drop ASCII punctuation,
drop the articles ``a`` / ``an`` / ``the`` as whole words, collapse white space. Exact match (EM) is
1 when the normalised strings are equal; F1 is computed on the multiset (bag) of normalised
tokens; a prediction's score is the maximum over all gold answers; the corpus score is
100 x the mean over questions.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", flags=re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, remove punctuation, remove articles, collapse white space (official order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match_score(prediction: str, gold: str) -> float:
    """1.0 if the normalised strings are identical, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-level F1 on the multiset of normalised tokens (0.0 when nothing overlaps).

    Two empty normalised strings have no common token, so F1 is 0.0, as in the official script.
    """
    p = normalize_answer(prediction).split()
    g = normalize_answer(gold).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(p)
    recall = same / len(g)
    return 2 * precision * recall / (precision + recall)


def max_over_golds(metric, prediction: str, golds: Sequence[str]) -> float:
    """The best score of ``prediction`` against any gold answer (official rule)."""
    if not golds:
        raise ValueError("a question needs at least one gold answer")
    return max(metric(prediction, g) for g in golds)


def score_predictions(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict:
    """Per-question EM and F1 (each in [0, 1]) and the corpus scores (100 x mean).

    Returns ``{"em": float, "f1": float, "em_per": ndarray (N,), "f1_per": ndarray (N,)}``.
    """
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    em = np.array([max_over_golds(exact_match_score, p, g) for p, g in zip(predictions, golds)], float)
    f1 = np.array([max_over_golds(f1_score, p, g) for p, g in zip(predictions, golds)], float)
    n = max(len(em), 1)
    return {"em": 100.0 * em.sum() / n, "f1": 100.0 * f1.sum() / n, "em_per": em, "f1_per": f1}


def _context_resampled_means(values: np.ndarray, clusters, n_boot: int, seed: int, scale: float) -> np.ndarray:
    """``scale * mean(values)`` over ``n_boot`` resamples of whole clusters (each with all its values)."""
    _, inv = np.unique(np.asarray(clusters), return_inverse=True)
    s, n = np.bincount(inv, weights=values), np.bincount(inv).astype(float)
    idx = np.random.default_rng(seed).integers(0, s.size, size=(n_boot, s.size))
    return s[idx].sum(1) / n[idx].sum(1) * scale


def context_bootstrap_ci(
    values: Sequence[float],
    clusters: Sequence,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    scale: float = 100.0,
) -> tuple[float, float, float]:
    """Mean and percentile interval of ``scale * mean(values)``, resampling whole clusters (contexts).

    Questions on one context are not independent; resampling contexts with replacement (and all of
    their questions) gives the interval of a mean over questions whose contexts are the sampled unit.
    """
    v = np.asarray(values, float)
    if v.size == 0:
        return (float("nan"),) * 3
    means = _context_resampled_means(v, clusters, n_boot, seed, scale)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(v.mean() * scale), float(lo), float(hi)


def paired_context_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    clusters: Sequence,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    scale: float = 100.0,
) -> dict:
    """Paired difference ``scale * (mean(a) - mean(b))`` with a context-resampling interval;
    ``{"diff", "lo", "hi", "p_le_0"}``, ``p_le_0`` the share of resamples whose difference is <= 0 (a
    one-sided bootstrap p-value for "a is better than b")."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs equal shapes, got {a.shape} and {b.shape}")
    if a.size == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "p_le_0": float("nan")}
    d = a - b
    means = _context_resampled_means(d, clusters, n_boot, seed, scale)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {
        "diff": float(d.mean() * scale),
        "lo": float(lo),
        "hi": float(hi),
        "p_le_0": float((means <= 0).mean()),
    }
