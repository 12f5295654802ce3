"""SQuAD JSON loading (good, v2, malformed) and the synthetic generator."""

import contextlib
import hashlib
import json
import sys
import types

import pytest

from utils.latent import split
from utils.latent.squad import (
    SquadFormatError,
    load_squad_json,
    make_synthetic_squad,
    one_question_per_context,
    parse_squad,
    synthetic_examples,
)


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


def test_real_squad_sample_is_shipped_and_is_what_auto_reads(squad_sample):
    """issue 22: data=auto is one file everywhere, inside the repository, with its licence and source."""
    assert split.resolve_data("auto") == str(squad_sample) == str(split.SHIPPED_SAMPLE)
    ex, st = load_squad_json(squad_sample)
    assert st["kept"] == len(ex) == 2881 and st["paragraphs"] == 475 and st["skipped_unanswerable"] == 0
    e = ex[0]
    assert e.context[e.answer_starts[0] :].startswith(e.answers[0])
    note = (squad_sample.parent / "README.md").read_text()
    sha = hashlib.sha256(squad_sample.read_bytes()).hexdigest()
    assert "CC BY-SA 4.0" in note and "Rajpurkar" in note and "SQuAD-explorer" in note and sha in note


def test_a_utf8_bom_is_accepted(tmp_path):
    """issue 21: a SQuAD file saved with a byte-order mark loads like the same file without one."""
    obj = _squad([{"id": "1", "question": "Where?", "answers": [{"text": "France", "answer_start": 12}]}])
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(obj).encode("utf-8"))
    ex, st = load_squad_json(p)
    assert [e.id for e in ex] == ["1"] and st["kept"] == 1
    p.write_bytes(b"\xef\xbb\xbf" + b'{"data": [], "note": "caf\xe9"}')  # a bad byte is still named, at its offset
    with pytest.raises(SquadFormatError, match=r"byte offset 28 \(0xe9\)"):
        load_squad_json(p)


@pytest.mark.parametrize(
    "obj,why",
    [
        ({"version": "1.1", "data": []}, r"0 question\(s\) in 0 paragraph"),
        (
            _squad([{"id": "x", "question": "Where?", "answers": [{"text": "France", "answer_start": 3}]}]),
            r"1 rejected because an answer is not at its answer_start",
        ),
        (_squad([{"id": "y", "question": "Why?", "answers": [], "is_impossible": True}]), r"1 of them unanswerable"),
    ],
)
def test_a_file_without_usable_questions_says_so(tmp_path, obj, why):
    """issue 21: an empty or all-rejected file says it has no usable question (it used to say that every
    article was in the checkpoint's training data)."""
    p = tmp_path / "s.json"
    p.write_text(json.dumps(obj))
    with pytest.warns(UserWarning, match="rejected") if "rejected" in why else contextlib.nullcontext():
        with pytest.raises(SquadFormatError, match=r"s.json has no usable question: .*" + why):
            split.load_examples(str(p))


def test_data_names_resolve_to_one_source():
    assert split.resolve_data("synthetic") == "synthetic"
    assert split.resolve_data("rajpurkar/squad") == "hub:rajpurkar/squad" and split.resolve_data("squad") == "hub:squad"
    assert split.resolve_data("hub:squad") == "hub:squad"
    assert split.resolve_data("runs/missing.json") == "runs/missing.json"  # a path, reported missing by the caller
    assert split.resolve_data("no/such/folder/file") == "no/such/folder/file"


def test_a_hub_dataset_name_loads_through_datasets_or_says_the_hub_is_unreachable(monkeypatch):
    """issue 22: a `datasets` name is accepted; rows are checked like a file; no hub is one clear error."""
    rows = [
        {
            "id": "a",
            "title": "T",
            "context": "Paris is in France.",
            "question": "Where?",
            "answers": {"text": ["France"], "answer_start": [12]},
        },
        {
            "id": "b",
            "title": "T",
            "context": "Paris is in France.",
            "question": "What?",
            "answers": {"text": ["Paris"], "answer_start": [0]},
        },
        {
            "id": "c",
            "title": "U",
            "context": "Oslo.",
            "question": "Which?",
            "answers": {"text": ["Oslo"], "answer_start": [2]},
        },
    ]
    fake = types.SimpleNamespace(load_dataset=lambda name, split: rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.warns(UserWarning, match="rejected 1 question.*ids c"):
        ex, st = split.load_examples(split.resolve_data("rajpurkar/squad"))
    assert [e.id for e in ex] == ["a", "b"] and ex[0].paragraph_answers == ["France", "Paris"] and st["paragraphs"] == 2

    def offline(name, split):
        raise OSError("Couldn't reach 'rajpurkar/squad' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(
        ConnectionError, match=r"could not load the hub dataset 'rajpurkar/squad'.*unreachable.*data=auto"
    ):
        split.load_examples("hub:rajpurkar/squad")
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(ImportError, match=r"needs the `datasets` package.*data=auto"):
        split.load_examples("hub:rajpurkar/squad")
