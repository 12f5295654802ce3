"""Which data notebook 04 reads, and the article-level split into training, dev and evaluation.

* ``data="auto"``: the SQuAD sample shipped in the package (``utils/data/squad-v1.1-dev-part-a.json``,
  CC BY-SA 4.0, see ``utils/data/README.md``): the same questions on every machine. ``synthetic`` is the
  seeded synthetic set; a path is a SQuAD JSON file; ``hub:NAME`` or a bare ``datasets`` name such as
  ``rajpurkar/squad`` loads that hub dataset (its validation split) when a hub is reachable.
* :func:`article_split`: whole articles go to evaluation (seeded order) until at least
  ``min_eval_questions`` questions are held out; the next ``n_dev_articles`` form the dev split (the
  only data any tuning or dev check sees); the rest is training. Every question of an evaluation
  context is scored. No evaluation article, context or question is in training or dev
  (:func:`check_disjoint` proves it and counts answer strings that merely recur elsewhere).
* :func:`held_out_split`: for a saved compressor evaluated on another file: everything in the file
  that the compressor did not see in training or dev (by article title and by context text).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .squad import QAExample, load_hub_squad, load_squad_json, make_synthetic_squad, parse_squad, require_questions

SHIPPED_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "squad-v1.1-dev-part-a.json"
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


@dataclass
class Split:
    """Training, dev (training-side articles held out for checks) and evaluation examples."""

    train: list[QAExample]
    dev: list[QAExample]
    eval: list[QAExample]
    stats: dict = field(default_factory=dict)

    def titles(self, part: str) -> list[str]:
        return list(dict.fromkeys(e.title for e in getattr(self, part)))


def resolve_data(data: str) -> str:
    """The data source ``data`` names: ``auto`` -> the shipped sample's path; ``synthetic``; ``hub:NAME`` for a
    hub dataset (also a bare name such as ``rajpurkar/squad`` or ``squad`` that is no file here); else a path
    (an existing file, or anything ending in ``.json``, which is then reported missing by the caller)."""
    s = str(data).strip()
    if s == "auto":
        return str(SHIPPED_SAMPLE)
    if s == "synthetic" or s.startswith("hub:") or Path(s).expanduser().is_file() or s.lower().endswith(".json"):
        return s
    return f"hub:{s}" if HUB_NAME.fullmatch(s) else s


def context_hash(context: str) -> str:
    return hashlib.sha1(context.encode("utf-8")).hexdigest()[:16]


def load_examples(data: str) -> tuple[list[QAExample], dict]:
    """Examples of a SQuAD JSON path or ``hub:NAME`` (``synthetic`` is built by :func:`synthetic_split`);
    a source without any usable question is an error that says why (:func:`.squad.require_questions`)."""
    examples, stats = load_hub_squad(data[4:]) if data.startswith("hub:") else load_squad_json(data)
    require_questions(examples, stats, data)
    return examples, stats


def article_split(
    examples: Sequence[QAExample], min_eval_questions: int, n_dev_articles: int = 1, seed: int = 0
) -> Split:
    """Article-level split (module docstring); raises when the file has too few articles."""
    by_title: dict[str, list[QAExample]] = {}
    for e in examples:
        by_title.setdefault(e.title, []).append(e)
    titles = list(by_title)
    random.Random(seed).shuffle(titles)
    ev, n = [], 0
    while titles and n < min_eval_questions:
        t = titles.pop(0)
        ev.append(t)
        n += len(by_title[t])
    if n < min_eval_questions or len(titles) < n_dev_articles + 1:
        raise ValueError(
            f"{len(by_title)} articles with {len(examples)} questions: too few for {min_eval_questions} evaluation "
            f"questions plus {n_dev_articles} dev and at least one training article; lower min_eval_questions"
        )
    dev, train = titles[:n_dev_articles], titles[n_dev_articles:]
    pick = lambda ts: [e for t in ts for e in by_title[t]]  # noqa: E731
    return Split(pick(train), pick(dev), pick(ev), {"eval_articles": ev, "dev_articles": dev, "train_articles": train})


def synthetic_split(n_eval_paragraphs: int, n_train_paragraphs: int, n_dev_paragraphs: int = 8) -> Split:
    """Synthetic training, dev and evaluation articles from different generator seeds."""
    parts = {}
    for name, n, seed in (
        ("train", n_train_paragraphs, 1000),
        ("dev", n_dev_paragraphs, 3000),
        ("eval", n_eval_paragraphs, 2000),
    ):
        parts[name] = parse_squad(make_synthetic_squad(n, seed=seed, title=f"synthetic-{name}"), f"synthetic-{name}")[0]
    s = Split(parts["train"], parts["dev"], parts["eval"])
    s.stats = {f"{p}_articles": s.titles(p) for p in ("eval", "dev", "train")}
    return s


def held_out_split(examples: Sequence[QAExample], seen_titles: Sequence[str], seen_contexts: Sequence[str]) -> Split:
    """Every example of an article and context a saved compressor never saw (evaluation only)."""
    titles, ctx = set(seen_titles), set(seen_contexts)
    ev = [e for e in examples if e.title not in titles and context_hash(e.context) not in ctx]
    if not ev:
        raise ValueError(
            "every article of this file was in the checkpoint's training or dev data: evaluate it on a file "
            "with other articles (or train a new compressor with checkpoint='')"
        )
    s = Split([], [], ev)
    s.stats = {"eval_articles": s.titles("eval"), "dev_articles": [], "train_articles": []}
    return s


def cap_contexts(examples: Sequence[QAExample], max_contexts: int, seed: int = 0) -> list[QAExample]:
    """All questions of at most ``max_contexts`` contexts (0 = all), in file order: the first of a seeded order
    of the contexts, so a larger cap keeps every context of a smaller one (a run can grow on resume)."""
    ctxs = list(dict.fromkeys(e.context for e in examples))
    if max_contexts <= 0 or len(ctxs) <= max_contexts:
        return list(examples)
    random.Random(seed).shuffle(ctxs)
    keep = set(ctxs[:max_contexts])
    return [e for e in examples if e.context in keep]


def check_disjoint(split: Split) -> dict:
    """Raise if an evaluation article, context or question id is in training or dev; return counts.

    ``answer_strings_elsewhere`` counts evaluation questions whose gold answer text also occurs as a
    training-side answer (common words and numbers recur across articles; reported, not an error).
    """
    side = split.train + split.dev
    for what, key in (
        ("article", lambda e: e.title),
        ("context", lambda e: e.context),
        ("question id", lambda e: e.id),
    ):
        shared = {key(e) for e in split.eval} & {key(e) for e in side}
        if shared:
            raise AssertionError(f"{len(shared)} evaluation {what}(s) also on the training side: {sorted(shared)[:3]}")
    seen = {a.strip().lower() for e in side for a in e.answers}
    n_ans = sum(any(a.strip().lower() in seen for a in e.answers) for e in split.eval)
    return {
        "eval_questions": len(split.eval),
        "eval_contexts": len({e.context for e in split.eval}),
        "train_questions": len(split.train),
        "train_contexts": len({e.context for e in split.train}),
        "dev_questions": len(split.dev),
        "answer_strings_elsewhere": n_ans,
    }
