"""SQuAD JSON loading (good, v2, malformed) and the synthetic generator."""

import json
from pathlib import Path

import pytest

from utils.latent.squad import (
    SquadFormatError,
    load_squad_json,
    make_synthetic_squad,
    one_question_per_context,
    parse_squad,
    synthetic_examples,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad-v1.1-dev-part-a.json"


def _squad(qas, context="Paris is in France."):
    return {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}


def test_load_good_and_v2_skips_unanswerable(tmp_path):
    obj = _squad(
        [
            {"id": "1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]},
            {
                "id": "2",
                "question": "Why?",
                "answers": [],
                "is_impossible": True,
                "plausible_answers": [{"text": "x", "answer_start": 0}],
            },
        ]
    )
    p = tmp_path / "s.json"
    p.write_text(json.dumps(obj))
    ex, st = load_squad_json(p)
    assert [e.id for e in ex] == ["1"] and ex[0].answers == ["France"]
    assert st == {
        "questions": 2,
        "kept": 1,
        "skipped_unanswerable": 1,
        "rejected_offsets": [],
        "paragraphs": 1,
        "version": "v2.0",
    }


@pytest.mark.parametrize(
    "obj,where",
    [
        ([1, 2], "top level"),
        ({"data": {}}, "'data' must be a list"),
        ({"data": [{"paragraphs": [{"qas": []}]}]}, "paragraphs[0]"),
        (
            {
                "data": [
                    {"paragraphs": [{"context": "c", "qas": [{"question": "q", "answers": [{"answer_start": 0}]}]}]}
                ]
            },
            "answers[0]",
        ),
    ],
)
def test_malformed_objects_name_the_problem(obj, where):
    with pytest.raises(SquadFormatError, match=__import__("re").escape(where)):
        parse_squad(obj)


def test_malformed_files(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(SquadFormatError, match="not valid JSON"):
        load_squad_json(p)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_squad_json(tmp_path / "missing.json")


def test_synthetic_is_seeded_valid_and_answers_spread():
    a, b = make_synthetic_squad(40, seed=3), make_synthetic_squad(40, seed=3)
    assert a == b and a != make_synthetic_squad(40, seed=4)
    ex, st = parse_squad(a)
    assert st["skipped_unanswerable"] == 0 and st["paragraphs"] == 40
    rel = []
    for e in ex:
        s = e.answer_starts[0]
        assert e.context[s : s + len(e.answers[0])] == e.answers[0]
        rel.append(s / len(e.context))
    # answers are spread over the passage, not only at the start
    assert min(rel) < 0.2 and max(rel) > 0.8
    assert sum(r > 0.5 for r in rel) > 0.3 * len(rel)
    one = one_question_per_context(ex, seed=0)
    assert len(one) == 40 and len({e.context for e in one}) == 40
    assert all(e.answers[0] in e.paragraph_answers for e in synthetic_examples(5, seed=0))


def test_real_squad_sample_loads():
    if not SHARED.is_file():
        pytest.skip("shared SQuAD sample not present")
    ex, st = load_squad_json(SHARED)
    assert st["kept"] == len(ex) >= 200 and st["skipped_unanswerable"] == 0
    e = ex[0]
    assert e.context[e.answer_starts[0] :].startswith(e.answers[0])
