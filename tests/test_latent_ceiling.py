"""The per-context ceiling (issue 22): M vectors optimised so that the frozen reader regenerates a context.

Checked against transformers' own forward with ``inputs_embeds`` (no cache, no padding): the loss, the
mean-pooled start, and that a context counted as regenerated exactly is reproduced token for token by
plain greedy decoding from its vectors. A tiny llama with a larger initialisation (0.3) is used: at the
default 0.02 a 3-layer random model's next token hardly depends on its input, so nothing can steer it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_tiny_checkpoint

from utils.latent import optimise
from utils.latent.modes import ResultStore, evaluate_all, prepare_eval
from utils.latent.prompts import encode
from utils.latent.reader import Reader
from utils.latent.select import budget, segment_bounds
from utils.latent.squad import synthetic_examples
from utils.weights import load_model


@pytest.fixture(scope="module")
def steerable(tmp_path_factory):
    folder = build_tiny_checkpoint("llama", tmp_path_factory.mktemp("steerable") / "llama", initializer_range=0.3)
    model, tok = load_model(str(folder))
    reader = Reader.wrap(model, tok, "Answer the question with a short span copied from the context.", "Answer:")
    ex = synthetic_examples(3, seed=5)
    ids = [encode(tok, c)[:n] for c, n in zip(dict.fromkeys(e.context for e in ex), (8, 12, 10))]
    return reader, ids, ex


def _full_logits(reader, vectors, ids):
    """Logits of the uncached reader over [prefix ids, vectors, ids] as one inputs_embeds row."""
    emb = reader.model.get_input_embeddings()
    x = torch.cat([emb(reader.scaffold.pre_ids), vectors.float(), emb(ids)]).unsqueeze(0)
    with torch.no_grad():
        return reader.model(inputs_embeds=x).logits[0].float()


def _greedy(reader, vectors, n):
    """Plain greedy decoding of ``n`` tokens after [prefix, vectors], one full forward per token."""
    out = torch.zeros(0, dtype=torch.long)
    for _ in range(n):
        out = torch.cat([out, _full_logits(reader, vectors, out)[-1].argmax().view(1)])
    return out


def test_mean_pooled_start_and_loss_match_the_uncached_reader(steerable):
    reader, ids, _ = steerable
    c = ids[1]
    x = optimise.mean_pooled(reader, c, 3.0)
    e = reader.model.get_input_embeddings().weight.detach()[c].numpy()
    M = budget(c.shape[0], 3.0)
    ref = np.stack([e[a:b].mean(0) for a, b in segment_bounds(c.shape[0], M)])
    np.testing.assert_allclose(x.numpy(), ref, rtol=1e-6, atol=1e-7)
    loss, acc, exact = optimise.regeneration(reader, [x, x[:2]], [c, ids[0]])
    for b, (v, t) in enumerate([(x, c), (x[:2], ids[0])]):
        lg = _full_logits(reader, v, t[:-1])[-t.shape[0] :]  # the last vector predicts t[0], t[i] predicts t[i+1]
        nll = torch.nn.functional.cross_entropy(lg, t)
        assert float(loss[b]) == pytest.approx(float(nll), rel=1e-4)
        assert float(acc[b]) == pytest.approx(float((lg.argmax(-1) == t).float().mean()))
        assert bool(exact[b]) == bool((lg.argmax(-1) == t).all())
    # the GPU path (bf16 autocast) on the CPU: the same loss to bf16 precision
    loss16, _, _ = optimise.regeneration(reader, [x, x[:2]], [c, ids[0]], amp="bf16")
    torch.testing.assert_close(loss16, loss, rtol=5e-2, atol=5e-2)


def test_optimised_vectors_regenerate_the_context_and_stop_when_exact(steerable):
    reader, ids, _ = steerable
    out = optimise.optimise_batch(reader, ids, 2.0, steps=150, lr=0.2)
    assert any(o.exact for o in out), [(o.steps, o.token_acc) for o in out]
    for o, c in zip(out, ids):
        assert o.vectors.shape == (budget(c.shape[0], 2.0), reader.d_model)
        assert o.token_acc > o.init_acc  # better than the mean-pooled start
        if o.exact:
            assert o.steps < 150 and o.token_acc == 1.0
            assert torch.equal(_greedy(reader, o.vectors, c.shape[0]), c)  # regenerated token for token
        else:
            assert o.steps == 150 and o.token_acc < 1.0
            assert not torch.equal(_greedy(reader, o.vectors, c.shape[0]), c)


def test_vectors_are_stored_per_context_and_ratio_and_read_back(steerable, tmp_path, monkeypatch):
    reader, ids, _ = steerable
    store = optimise.VectorStore(tmp_path / "optimised", reader, steps=3, lr=0.1)
    hashes = [f"ctx{i}" for i in range(len(ids))]
    got, left = optimise.optimise_contexts(reader, ids, hashes, [2.0, 4.0], store, batch=2)
    assert left == [] and sorted(got) == sorted((i, r) for i in range(3) for r in (2.0, 4.0))
    assert sorted(p.name for p in (tmp_path / "optimised").iterdir()) == sorted(
        f"ctx{i}_r{r:g}.pt" for i in range(3) for r in (2.0, 4.0)
    )
    calls = []
    real = optimise.optimise_batch
    monkeypatch.setattr(optimise, "optimise_batch", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    again, _ = optimise.optimise_contexts(reader, ids, hashes, [2.0, 4.0], store, batch=2)
    assert calls == [] and all(torch.equal(again[k].vectors, got[k].vectors) for k in got)  # read back, not redone
    (tmp_path / "optimised" / "ctx1_r2.pt").write_bytes(b"cut by a kill")  # a damaged file is computed again
    optimise.optimise_contexts(reader, ids, hashes, [2.0, 4.0], store, batch=2)
    assert len(calls) == 1 and [c.shape[0] for c in calls[0]] == [12]
    # a context done at one ratio only is finished first on resume (the seeded order), not after the others
    for name in ("ctx0_r4.pt", "ctx1_r2.pt", "ctx1_r4.pt"):
        (tmp_path / "optimised" / name).unlink()
    calls.clear()
    optimise.optimise_contexts(reader, ids, hashes, [2.0, 4.0], store, batch=1)
    assert [c[0].shape[0] for c in calls] == [ids[i].shape[0] for i in (0, 1, 1)]
    other = optimise.VectorStore(tmp_path / "optimised", reader, steps=3, lr=0.2)  # other settings: not reused
    assert other.get("ctx0", 2.0) is None
    # a deadline already passed starts no batch and says what is left
    _, left = optimise.optimise_contexts(reader, ids, hashes, [2.0], other, batch=2, deadline=0.0)
    assert sorted(left) == [(i, 2.0) for i in range(3)]
    # a deadline that passes while a batch runs stops it between steps: nothing half-done is stored
    import itertools

    clock = itertools.chain([0.0], itertools.repeat(10.0))  # the batch starts before the deadline (5.0), then past
    monkeypatch.setattr(optimise.time, "monotonic", lambda: next(clock))
    store3 = optimise.VectorStore(tmp_path / "cut", reader, steps=50, lr=1e-6)  # too small a step to finish
    got3, left3 = optimise.optimise_contexts(reader, ids[:2], hashes[:2], [2.0], store3, batch=2, deadline=5.0)
    assert got3 == {} and sorted(left3) == [(0, 2.0), (1, 2.0)] and not list((tmp_path / "cut").glob("*.pt"))


def test_contexts_with_stored_vectors_are_chosen_first(steerable, tmp_path):
    import random

    reader, _, _ = steerable
    store = optimise.VectorStore(tmp_path / "optimised", reader, steps=3, lr=0.1)
    hashes = [f"ctx{i}" for i in range(12)]
    seeded = list(range(12))
    random.Random(7).shuffle(seeded)
    assert optimise.choose_contexts(hashes, 4, 7, store, [2.0, 4.0]) == seeded[:4]  # nothing stored: seeded order
    assert (
        optimise.choose_contexts(hashes, 20, 7, store, [2.0]) == seeded
        and optimise.choose_contexts(hashes, 0, 7, store, [2.0]) == []
    )
    late = seeded[-2:]  # the two last of the seeded order have vectors (at one ratio each) from an earlier run
    (tmp_path / "optimised").mkdir()
    store.file(hashes[late[0]], 4.0).write_bytes(b"x")
    store.file(hashes[late[1]], 2.0).write_bytes(b"x")
    assert optimise.choose_contexts(hashes, 3, 7, store, [2.0, 4.0]) == [late[0], late[1], seeded[0]]
    assert optimise.choose_contexts(hashes, 3, 7, store, [2.0]) == [late[1], seeded[0], seeded[1]]  # other ratio


def test_optimised_mode_answers_the_questions_of_its_contexts_only(steerable, tmp_path):
    reader, _, ex = steerable
    ed = prepare_eval(reader, ex)
    vec = {
        (i, 4.0): optimise.Optimised(optimise.mean_pooled(reader, ed.ctx_ids[i], 4.0), 0, 0, False, 0, 0, 0)
        for i in (0, 2)
    }
    store = ResultStore(tmp_path / "results.jsonl", ed.qids)
    evaluate_all(reader, ed, store, [4.0], {}, 3, modes=("optimised",), optimised=vec)
    row = store.get("optimised", 4.0, None)
    want = [q for q, c in zip(ed.qids, ed.q_ctx) if c in (0, 2)]
    assert row["qids"] == want and len(row["predictions"]) == len(want) < len(ed.qids)
    assert row["slot_len"] == [budget(ed.ctx_ids[c].shape[0], 4.0) for c in ed.q_ctx if c in (0, 2)]
    # the same answers as the reader reading those vectors directly
    direct = reader.generate([vec[(0, 4.0)].vectors], [(0, ed.q_ids[0])], 3)
    assert row["predictions"][0] == direct[0]
    # another subset (more contexts optimised later) is evaluated again, not taken for done
    vec[(1, 4.0)] = vec[(0, 4.0)]
    evaluate_all(reader, ed, store, [4.0], {}, 3, modes=("optimised",), optimised=vec)
    assert len(store.get("optimised", 4.0, None)["qids"]) == len(ed.qids)


def test_a_result_made_under_other_settings_is_evaluated_again(steerable, tmp_path):
    """A stored row is reused only under the settings it was made with (reader, prompt, max_new_tokens, the
    compressor's weights, the optimised vectors' settings): a resumed run with another setting re-evaluates
    it, the report and the prediction files leave the stale row out."""
    reader, _, ex = steerable
    ed = prepare_eval(reader, ex)
    path = tmp_path / "results.jsonl"
    base = {**reader.settings(), "max_new_tokens": 3}
    store = ResultStore(path, ed.qids, base)
    evaluate_all(reader, ed, store, [4.0], {}, 3, modes=("lead",))
    assert store.has("lead", 4.0, None, ed.qids) and store.get("lead", 4.0, None)["settings"] == base
    again = ResultStore(path, ed.qids, base)  # the same settings: read back, nothing evaluated
    n_lines = len(path.read_text().splitlines())
    evaluate_all(reader, ed, again, [4.0], {}, 3, modes=("lead",))
    assert len(path.read_text().splitlines()) == n_lines
    other = ResultStore(path, ed.qids, {**base, "max_new_tokens": 2})  # another setting: stale, not reported
    assert not other.has("lead", 4.0, None, ed.qids) and other.current() == []
    evaluate_all(reader, ed, other, [4.0], {}, 2, modes=("lead",))
    assert (
        len(path.read_text().splitlines()) == n_lines + 1
        and other.get("lead", 4.0, None)["settings"]["max_new_tokens"] == 2
    )
    # a seeded mode's row depends on the compressor's weights, an optimised row on its vectors' settings
    from utils.latent.modes import module_fingerprint

    m = torch.nn.Linear(2, 2)
    fp = module_fingerprint({"latent": m})
    with torch.no_grad():
        m.weight[0, 0] += 1
    assert module_fingerprint({"latent": m}) != fp
    other.seed_settings[0] = fp
    other.mode_settings["optimised"] = optimise_fp = {"steps": 3}
    assert other.settings_for("latent", 0)["compressor"] == fp and "compressor" not in other.settings_for("lead", None)
    assert other.settings_for("optimised", None)["optimised"] == optimise_fp
    # a row of an older run without question ids is taken to cover the questions only if it has as many scores
    path.write_text('{"mode": "lead", "ratio": 4.0, "seed": null, "f1_per": [1.0], "em_per": [1.0]}\n')
    assert ResultStore(path, ed.qids).rows == {}
