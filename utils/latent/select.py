"""Hard-token selections of a context at a budget of M tokens (the baselines of notebook 04).

Every function returns sorted context token positions (so kept tokens stay in context order).
Question-agnostic: :func:`lead_positions`, :func:`random_positions`, :func:`top_m_in_order` (a
trained classifier's scores), :func:`segment_argmax` (one token per pooling segment), and the
hard-selection ceiling :func:`oracle_window` (M tokens around the gold answer). Question-aware:
:func:`bm25_positions` (BM25-ranked sentences cut to M tokens) and :func:`overlap_window` (the M-token
window with the most question words).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import torch

STOPWORDS = frozenset(
    "a an the of is was in on at to for and or by with as from that this which who whom whose what where when why "
    "how does did do has have had be been are were it its into than then".split()
)
WORD = re.compile(r"[A-Za-z0-9]+")
SENTENCE = re.compile(r"[^.!?]+(?:[.!?]+|$)")


def budget(n_tokens: int, ratio: float) -> int:
    """M = ceil(n / r), at least 1."""
    return max(1, math.ceil(n_tokens / ratio))


def segment_bounds(n: int, M: int) -> list[tuple[int, int]]:
    """``M`` contiguous near-equal segments of ``n`` positions: ``[floor(j n / M), floor((j+1) n / M))``."""
    return [((j * n) // M, max(((j + 1) * n) // M, (j * n) // M + 1)) for j in range(M)]


def lead_positions(n: int, M: int) -> list[int]:
    return list(range(min(M, n)))


def random_positions(n: int, M: int, generator: torch.Generator) -> list[int]:
    """M distinct positions drawn uniformly, in context order."""
    return sorted(torch.randperm(n, generator=generator)[: min(M, n)].tolist())


def top_m_in_order(scores: Sequence[float] | torch.Tensor, M: int) -> list[int]:
    """The M highest-scoring positions (ties: earlier first), returned in context order."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    order = sorted(range(s.numel()), key=lambda i: (-float(s[i]), i))
    return sorted(order[: min(M, s.numel())])


def segment_argmax(scores: Sequence[float] | torch.Tensor, M: int) -> list[int]:
    """The highest-scoring position of each of the M pooling segments (see :func:`segment_bounds`)."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    return [a + int(torch.argmax(s[a:b])) for a, b in segment_bounds(s.numel(), min(M, s.numel()))]


def oracle_window(n: int, M: int, ans_start: int, ans_end: int) -> list[int]:
    """M consecutive positions centred on the answer tokens ``[ans_start, ans_end)``, inside the context.

    The window contains the whole answer when the answer is at most M tokens long (else its start).
    """
    M = min(M, n)
    centre = (ans_start + ans_end) / 2.0
    lo = int(math.floor(centre - M / 2.0))
    lo = min(max(lo, 0), n - M)
    if ans_end - ans_start <= M:
        lo = min(max(lo, ans_end - M), ans_start)
    else:
        lo = min(ans_start, n - M)
    return list(range(lo, lo + M))


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text) if w.lower() not in STOPWORDS]


def overlap_window(token_words: Sequence[set], question: str, M: int) -> list[int]:
    """The M-token window whose tokens cover the most question-word hits (earliest on ties).

    ``token_words[i]``: the (lower-case, stopword-free) words token ``i`` is part of.
    """
    n = len(token_words)
    M = min(M, n)
    q = set(words(question))
    hit = [1 if (w & q) else 0 for w in token_words]
    best, best_lo, cur = -1, 0, sum(hit[:M])
    for lo in range(0, n - M + 1):
        if lo > 0:
            cur += hit[lo + M - 1] - hit[lo - 1]
        if cur > best:
            best, best_lo = cur, lo
    return list(range(best_lo, best_lo + M))


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` (split after . ! ?)."""
    return [(m.start(), m.end()) for m in SENTENCE.finditer(text) if m.group().strip()]


def bm25_scores(docs: Sequence[Sequence[str]], query: Sequence[str], k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Okapi BM25 of each document (a word list) for ``query``, idf from these documents."""
    N = len(docs)
    avg = sum(len(d) for d in docs) / max(N, 1)
    df = Counter(w for d in docs for w in set(d))
    out = []
    for d in docs:
        tf = Counter(d)
        s = 0.0
        for w in set(query):
            if tf[w]:
                idf = math.log(1 + (N - df[w] + 0.5) / (df[w] + 0.5))
                s += idf * tf[w] * (k1 + 1) / (tf[w] + k1 * (1 - b + b * len(d) / max(avg, 1e-9)))
        out.append(s)
    return out


def bm25_positions(offsets: Sequence[tuple[int, int]], context: str, question: str, M: int) -> list[int]:
    """Sentences ranked by BM25 against the question, taken best first until M tokens, shown in context
    order and cut to M tokens (the lowest-ranked kept sentence is the one cut)."""
    spans = sentence_spans(context) or [(0, len(context))]
    sent_of = []
    for a, b in offsets:
        mid = (a + b) / 2.0
        sent_of.append(next((i for i, (s, e) in enumerate(spans) if s <= mid < e), len(spans) - 1))
    docs = [words(context[s:e]) for s, e in spans]
    sc = bm25_scores(docs, words(question))
    ranked = sorted(range(len(spans)), key=lambda i: (-sc[i], i))
    keep: list[int] = []
    for i in ranked:
        toks = [t for t, si in enumerate(sent_of) if si == i]
        room = M - len(keep)
        if room <= 0:
            break
        keep.extend(toks[:room])
    return sorted(keep)


def token_offsets(tokenizer, text: str, ids: torch.Tensor) -> list[tuple[int, int]]:
    """Character span of each token of ``ids`` (the tokenisation of ``text``) in ``text``."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if enc["input_ids"][: ids.shape[0]] == ids.tolist():
            return [tuple(x) for x in enc["offset_mapping"][: ids.shape[0]]]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        pass
    starts, prev = [], ""
    for i in range(ids.shape[0]):  # slow tokenizers: walk the decoded prefix
        starts.append(len(prev))
        prev = tokenizer.decode(ids[: i + 1].tolist())
    return list(zip(starts, starts[1:] + [len(prev)]))


def token_words(offsets: Sequence[tuple[int, int]], text: str) -> list[set]:
    """For each token, the stopword-free lower-case words of ``text`` it overlaps."""
    spans = [(m.start(), m.end(), m.group().lower()) for m in WORD.finditer(text)]
    out = []
    for a, b in offsets:
        out.append({w for s, e, w in spans if s < b and a < e and w not in STOPWORDS})
    return out


def char_span_to_tokens(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """Token range ``[i, j)`` covering characters ``[start, end)``."""
    inside = [i for i, (a, b) in enumerate(offsets) if a < end and start < b]
    if not inside:
        i = sum(1 for a, _ in offsets if a < start)
        return min(i, len(offsets) - 1), min(i, len(offsets) - 1) + 1
    return inside[0], inside[-1] + 1
