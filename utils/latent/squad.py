"""Extractive QA data: SQuAD v1.1 / v2.0 JSON files, a hub dataset, and a seeded synthetic set.

Everything ends up as a list of :class:`QAExample`. The synthetic generator writes the official
SQuAD JSON layout (``{"version", "data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}``),
so the same loader reads it; its passages are a few short factual sentences in random order and
every sentence gets a question, so an answer is equally likely to sit anywhere in the passage.
"""

from __future__ import annotations

import codecs
import json
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


class SquadFormatError(ValueError):
    """A file or object that is not valid SQuAD JSON; the message names where and what."""


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[str]  # gold answer texts (duplicates kept, as in SQuAD)
    answer_starts: list[int] = field(default_factory=list)  # character offsets in ``context``
    title: str = ""
    paragraph_answers: list[str] = field(default_factory=list)  # answers of every question on this context


def _err(where: str, what: str) -> SquadFormatError:
    return SquadFormatError(
        f"malformed SQuAD data at {where}: {what}. Expected the official SQuAD "
        "v1.1/v2.0 layout {'data': [{'title', 'paragraphs': [{'context', 'qas': "
        "[{'id', 'question', 'answers': [{'text', 'answer_start'}]}]}]}]}."
    )


def parse_squad(obj: Any, source: str = "<object>") -> tuple[list[QAExample], dict]:
    """Examples from a parsed SQuAD JSON object.

    SQuAD v2.0 questions marked ``is_impossible`` (or with no answers) are skipped and counted.
    Every answer must be found in the context at its ``answer_start`` (an integer character
    offset); a question with an answer that is not is rejected (dropped) and its id is listed in
    ``stats["rejected_offsets"]`` with a warning, so no wrong answer position reaches the figures.
    Returns ``(examples, stats)`` with ``stats = {"questions", "kept", "skipped_unanswerable",
    "rejected_offsets", "paragraphs", "version"}``. Raises :class:`SquadFormatError` naming the
    first structural problem (e.g. a non-integer ``answer_start``, with the record's id).
    """
    if not isinstance(obj, dict) or "data" not in obj:
        raise _err(source, "the top level must be an object with a 'data' list")
    data = obj["data"]
    if not isinstance(data, list):
        raise _err(f"{source}:data", "'data' must be a list of articles")
    out: list[QAExample] = []
    rejected: list[str] = []
    n_q = n_skip = n_par = 0
    for ai, art in enumerate(data):
        where_a = f"{source}:data[{ai}]"
        if not isinstance(art, dict) or not isinstance(art.get("paragraphs"), list):
            raise _err(where_a, "each article must be an object with a 'paragraphs' list")
        title = str(art.get("title", ""))
        for pi, par in enumerate(art["paragraphs"]):
            where_p = f"{where_a}.paragraphs[{pi}]"
            if not isinstance(par, dict) or not isinstance(par.get("context"), str):
                raise _err(where_p, "each paragraph needs a string 'context'")
            if not isinstance(par.get("qas"), list):
                raise _err(where_p, "each paragraph needs a 'qas' list")
            n_par += 1
            ctx = par["context"]
            par_examples = []
            for qi, qa in enumerate(par["qas"]):
                where_q = f"{where_p}.qas[{qi}]"
                if not isinstance(qa, dict) or not isinstance(qa.get("question"), str):
                    raise _err(where_q, "each qa needs a string 'question'")
                answers = qa.get("answers", [])
                if not isinstance(answers, list):
                    raise _err(where_q, "'answers' must be a list")
                n_q += 1
                if qa.get("is_impossible", False) or len(answers) == 0:
                    n_skip += 1
                    continue
                qid = str(qa.get("id", f"{ai}-{pi}-{qi}"))
                texts, starts = [], []
                for ki, a in enumerate(answers):
                    if not isinstance(a, dict) or not isinstance(a.get("text"), str):
                        raise _err(f"{where_q}.answers[{ki}]", "each answer needs a string 'text'")
                    st = a.get("answer_start")
                    if isinstance(st, bool) or not isinstance(st, int):
                        raise _err(
                            f"{where_q}.answers[{ki}] (id {qid!r})",
                            f"'answer_start' must be an integer character offset, got {st!r}",
                        )
                    texts.append(a["text"])
                    starts.append(st)
                if any(not (0 <= st and ctx[st : st + len(t)] == t) for t, st in zip(texts, starts)):
                    rejected.append(qid)
                    continue
                par_examples.append(QAExample(qid, qa["question"], ctx, texts, starts, title))
            union = sorted({t for e in par_examples for t in e.answers})
            for e in par_examples:
                e.paragraph_answers = union
            out.extend(par_examples)
    if rejected:
        warnings.warn(
            f"{source}: rejected {len(rejected)} question(s) whose answer is not at its answer_start "
            f"(ids {', '.join(rejected[:10])}{' ...' if len(rejected) > 10 else ''}); fix their offsets to use them",
            stacklevel=2,
        )
    stats = {
        "questions": n_q,
        "kept": len(out),
        "skipped_unanswerable": n_skip,
        "rejected_offsets": rejected,
        "paragraphs": n_par,
        "version": str(obj.get("version", "")),
    }
    return out, stats


def load_squad_json(path: str | Path) -> tuple[list[QAExample], dict]:
    """Read a SQuAD v1.1 / v2.0 JSON file (UTF-8, with or without a byte-order mark); see :func:`parse_squad`
    for the return value."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"SQuAD file {path} does not exist: pass the path of a SQuAD v1.1/v2.0 "
            "JSON file (data=auto reads the sample shipped in utils/data/squad-v1.1-dev-part-a.json)"
        )
    raw = path.read_bytes()
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0  # editors on Windows write one
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = e.start + bom
        raise SquadFormatError(
            f"{path} is not UTF-8 text: byte offset {at} (0x{raw[at]:02x}) cannot be decoded ({e.reason}); "
            "SQuAD files are UTF-8 JSON: re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise SquadFormatError(f"{path} is not valid JSON ({e}); expected a SQuAD v1.1/v2.0 file") from e
    return parse_squad(obj, source=str(path))


def require_questions(examples: Sequence[QAExample], stats: dict, source: str) -> None:
    """Raise :class:`SquadFormatError` when ``source`` gave no usable question, saying why (empty, every
    question unanswerable, or every answer off its ``answer_start``)."""
    if examples:
        return
    rejected = stats.get("rejected_offsets", [])
    raise SquadFormatError(
        f"{source} has no usable question: {stats.get('questions', 0)} question(s) in "
        f"{stats.get('paragraphs', 0)} paragraph(s), {stats.get('skipped_unanswerable', 0)} of them unanswerable "
        f"(SQuAD v2.0), {len(rejected)} rejected because an answer is not at its answer_start. Give a SQuAD file "
        "with answerable questions and correct offsets (data=auto reads the shipped sample)"
    )


def squad_layout(examples) -> dict:
    """Examples as an official SQuAD v1.1 JSON object: articles by title, paragraphs by context, in order."""
    arts: dict[str, dict[str, list]] = {}
    for e in examples:
        qa = {
            "id": e.id,
            "question": e.question,
            "answers": [{"text": t, "answer_start": s} for t, s in zip(e.answers, e.answer_starts)],
        }
        arts.setdefault(e.title, {}).setdefault(e.context, []).append(qa)
    return {
        "version": "1.1",
        "data": [{"title": t, "paragraphs": [{"context": c, "qas": q} for c, q in p.items()]} for t, p in arts.items()],
    }


def hub_rows_to_squad(rows, source: str) -> dict:
    """Rows of a SQuAD-style hub dataset (``id``, ``title``, ``context``, ``question``, ``answers`` =
    ``{"text": [...], "answer_start": [...]}``) in the official JSON layout, so :func:`parse_squad` checks
    them like a file."""
    out = []
    for i, r in enumerate(rows):
        missing = [k for k in ("context", "question", "answers") if k not in r]
        if missing:
            raise _err(
                f"{source}[{i}]", f"a SQuAD-style row needs 'context', 'question' and 'answers'; missing {missing}"
            )
        ans = r["answers"] or {}
        texts = list(ans.get("text", []))
        starts = list(ans.get("answer_start", [None] * len(texts)))
        out.append(QAExample(str(r.get("id", i)), r["question"], r["context"], texts, starts, str(r.get("title", ""))))
    return squad_layout(out)


def load_hub_squad(name: str = "rajpurkar/squad", split: str = "validation") -> tuple[list[QAExample], dict]:
    """A SQuAD-style dataset from the Hugging Face hub through ``datasets`` (needs the package and network);
    checked like a file (:func:`parse_squad`). No package or no hub is one clear error naming the fix."""
    try:
        import datasets  # type: ignore
    except ImportError as e:
        raise ImportError(
            f"data={name!r} names a hub dataset, which needs the `datasets` package (pip install datasets) and "
            "network; offline, use data=auto (the shipped SQuAD sample) or a local SQuAD JSON path"
        ) from e
    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as e:  # no network, no such dataset, offline mode: every failure says the same fix
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConnectionError(
            f"could not load the hub dataset {name!r} (split {split!r}): {type(e).__name__}: {first}. The hub is "
            "unreachable from here or has no such dataset; use data=auto (the shipped SQuAD sample) or a local "
            "SQuAD JSON path"
        ) from e
    return parse_squad(hub_rows_to_squad(rows, f"hub:{name}"), source=f"hub:{name}")


# ----------------------------------------------------------------------------- synthetic set
_FIRST = [
    "Anna",
    "Boris",
    "Clara",
    "Dmitri",
    "Elena",
    "Farid",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Kira",
    "Lukas",
    "Maya",
    "Nils",
    "Olga",
    "Pavel",
    "Rosa",
    "Samir",
    "Tara",
    "Viktor",
    "Wanda",
    "Yusuf",
    "Zora",
    "Emil",
    "Lena",
    "Oskar",
    "Nora",
    "Felix",
    "Ida",
    "Marco",
]
_LAST = [
    "Berg",
    "Costa",
    "Dahl",
    "Eklund",
    "Fischer",
    "Garcia",
    "Holm",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "Lind",
    "Moreau",
    "Novak",
    "Okafor",
    "Petrov",
    "Quinn",
    "Rossi",
    "Sato",
    "Torres",
    "Urban",
    "Varga",
    "Weber",
    "Young",
    "Ziegler",
]
_CITY = [
    "Oslo",
    "Lisbon",
    "Cairo",
    "Lima",
    "Dublin",
    "Vienna",
    "Nairobi",
    "Hanoi",
    "Quito",
    "Riga",
    "Porto",
    "Seoul",
    "Denver",
    "Madrid",
    "Prague",
    "Tunis",
    "Perth",
    "Bergen",
    "Krakow",
    "Milan",
]
_JOB = [
    "baker",
    "pilot",
    "nurse",
    "teacher",
    "carpenter",
    "chemist",
    "farmer",
    "lawyer",
    "plumber",
    "dentist",
    "painter",
    "librarian",
    "butcher",
    "sailor",
    "architect",
    "tailor",
]
_COLOR = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "grey", "brown"]
_THING = ["car", "bicycle", "boat", "umbrella", "jacket", "house", "kite", "guitar"]
_FOOD = ["pizza", "rice", "soup", "pasta", "bread", "curry", "salad", "cheese", "noodles", "apples"]
_PET = ["cat", "dog", "parrot", "rabbit", "turtle", "horse", "goat", "hamster"]
_INSTR = ["violin", "piano", "flute", "drums", "cello", "trumpet", "harp", "banjo"]

# (sentence template, question template, answer slot); slots are filled per sentence.
_TEMPLATES = [
    ("{p} lives in {city}.", "Where does {p} live?", "city"),
    ("{p} works as a {job}.", "What is the job of {p}?", "job"),
    ("{p} owns a {color} {thing}.", "What color is the {thing} of {p}?", "color"),
    ("{p} was born in {year}.", "In which year was {p} born?", "year"),
    ("The favourite food of {p} is {food}.", "What is the favourite food of {p}?", "food"),
    ("{p} has a pet {pet} named {pname}.", "What is the name of the pet {pet} of {p}?", "pname"),
    ("{p} plays the {instr} every evening.", "Which instrument does {p} play?", "instr"),
    ("{p} bought {num} tickets for the concert.", "How many tickets did {p} buy?", "num"),
]


def make_synthetic_squad(
    n_paragraphs: int, seed: int = 0, min_sentences: int = 4, max_sentences: int = 6, title: str = "synthetic"
) -> dict:
    """A seeded synthetic extractive QA set in SQuAD v1.1 JSON layout.

    Each paragraph has ``min_sentences..max_sentences`` sentences, each about a different person,
    drawn from eight fact templates (with replacement), and one question per sentence whose answer
    is a span of that sentence. Returns the SQuAD dict (``version`` = ``"synthetic-1"``).
    """
    if n_paragraphs < 1 or min_sentences < 1 or max_sentences < min_sentences:
        raise ValueError("need n_paragraphs >= 1 and 1 <= min_sentences <= max_sentences")
    rng = random.Random(seed)
    pars = []
    for pi in range(n_paragraphs):
        k = rng.randint(min_sentences, max_sentences)
        people = set()
        while len(people) < k:
            people.add(f"{rng.choice(_FIRST)} {rng.choice(_LAST)}")
        people = sorted(people)
        rng.shuffle(people)
        sentences, qas_spec = [], []
        for p in people:
            tpl, qtpl, slot = rng.choice(_TEMPLATES)
            vals = {
                "p": p,
                "city": rng.choice(_CITY),
                "job": rng.choice(_JOB),
                "color": rng.choice(_COLOR),
                "thing": rng.choice(_THING),
                "year": str(rng.randint(1900, 2010)),
                "food": rng.choice(_FOOD),
                "pet": rng.choice(_PET),
                "pname": rng.choice(_FIRST),
                "instr": rng.choice(_INSTR),
                "num": str(rng.randint(2, 99)),
            }
            while slot == "pname" and vals["pname"] == p.split()[0]:
                vals["pname"] = rng.choice(_FIRST)
            sentences.append((tpl.format(**vals), tpl, vals))
            qas_spec.append((qtpl.format(**vals), vals[slot], slot))
        context, offsets = "", []
        for s, _, _ in sentences:
            if context:
                context += " "
            offsets.append(len(context))
            context += s
        qas = []
        for si, ((_, tpl, vals), (q, ans, slot)) in enumerate(zip(sentences, qas_spec)):
            # the answer's offset inside its own sentence: locate the slot placeholder in the template
            pre = tpl.split("{" + slot + "}")[0].format(**vals)
            start = offsets[si] + len(pre)
            assert context[start : start + len(ans)] == ans
            qas.append({"id": f"syn{seed}-{pi}-{si}", "question": q, "answers": [{"text": ans, "answer_start": start}]})
        pars.append({"context": context, "qas": qas})
    return {"version": "synthetic-1", "data": [{"title": title, "paragraphs": pars}]}


def synthetic_examples(n_paragraphs: int, seed: int = 0, **kw) -> list[QAExample]:
    """Examples of :func:`make_synthetic_squad` (every question of every paragraph)."""
    return parse_squad(make_synthetic_squad(n_paragraphs, seed=seed, **kw), source="synthetic")[0]


def one_question_per_context(examples: Sequence[QAExample], seed: int = 0) -> list[QAExample]:
    """Keep one random question per distinct context (independent evaluation items), in first-seen order."""
    rng = random.Random(seed)
    groups: dict[str, list[QAExample]] = {}
    for e in examples:
        groups.setdefault(e.context, []).append(e)
    return [rng.choice(g) for g in groups.values()]
