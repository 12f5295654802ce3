"""Latent-compression pieces on a tiny random-init llama: prompt assembly, text vs inputs_embeds,
greedy decoding with the KV cache, teacher-forced scoring, training and checkpoints, the notebook."""

import json

import numpy as np
import pytest
import torch
from conftest import run_notebook_smoke

from utils.latent import compressor, evaluate, prompts, train
from utils.latent.squad import synthetic_examples
from utils.weights import load_model


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    model, tok = load_model(str(tiny_llama_dir))
    sc = prompts.make_scaffold(tok)
    ex = synthetic_examples(4, seed=5)[:10]
    return model, tok, sc, ex, prompts.encode_examples(sc, ex)


def test_scaffold_and_anchor(tiny):
    model, tok, sc, ex, enc = tiny
    full = tok.decode(torch.cat([enc[0].pre, enc[0].context, enc[0].post]).tolist())
    assert ex[0].context in full and ex[0].question in full and full.count("Context:") == 1
    # the anchor is appended once, and a generated repeat of it is stripped from the answer
    p = prompts.build_prompts("anchor", enc[:1], sc, model, 4, 1.0)[0]
    assert tok.decode(p[-1].tolist()) == "Answer:" and len(p) == 4
    assert evaluate.decode_answer(tok, tok("Answer: Oslo")["input_ids"], "Answer:") == "Oslo"


def _reference_greedy(model, ids, n, eos):
    """One example, no padding, no cache: re-run the full sequence each step."""
    out = []
    x = ids.clone()
    for _ in range(n):
        with torch.no_grad():
            t = int(model(input_ids=x.view(1, -1)).logits[0, -1].argmax())
        if t in eos:
            break
        out.append(t)
        x = torch.cat([x, torch.tensor([t])])
    return out


def test_text_and_text_embed_agree_and_match_unpadded_reference(tiny):
    model, tok, sc, ex, enc = tiny
    rms = prompts.token_embedding_rms(model)
    r_text = evaluate.evaluate_mode("text", model, tok, sc, enc, 4, rms, batch_size=5, max_new_tokens=5)
    r_emb = evaluate.evaluate_mode("text_embed", model, tok, sc, enc, 4, rms, batch_size=5, max_new_tokens=5)
    assert evaluate.agreement_rate(r_text["generated_ids"], r_emb["generated_ids"]) == 1.0
    np.testing.assert_allclose(r_text["gold_nll"], r_emb["gold_nll"], rtol=1e-4)
    eos = {tok.eos_token_id, tok.pad_token_id}
    for i in range(3):  # left padding + mask + positions + cache == one example alone without cache
        ids = torch.cat([enc[i].pre, enc[i].context, enc[i].post])
        assert r_text["generated_ids"][i] == _reference_greedy(model, ids, 5, eos)


def test_cache_and_no_cache_agree(tiny):
    model, tok, sc, ex, enc = tiny
    batch_prompts = prompts.build_prompts("text", enc[:4], sc, model, 4, 1.0)
    b, _ = prompts.assemble(model, batch_prompts, tok.pad_token_id, as_embeds=True)
    g1, f1 = evaluate.greedy_generate(model, b, 6, [tok.eos_token_id], use_cache=True)
    g2, f2 = evaluate.greedy_generate(model, b, 6, [tok.eos_token_id], use_cache=False)
    assert g1 == g2
    torch.testing.assert_close(f1, f2, rtol=1e-4, atol=1e-4)


def test_answer_nll_matches_dense_log_softmax(tiny):
    model, tok, sc, ex, enc = tiny
    e = enc[1]
    prompt = torch.cat([e.pre, e.context, e.post])
    full = torch.cat([prompt, e.answer])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=full.view(1, -1)).logits[0].float(), -1)
    ref = -np.mean([float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(e.answer.tolist())])
    r = evaluate.evaluate_mode("text", model, tok, sc, enc[:3], 4, 1.0, batch_size=3, max_new_tokens=2)
    assert r["gold_nll"][1] == pytest.approx(ref, rel=1e-4)


def test_pooling_budget_and_rms():
    x = torch.arange(10, dtype=torch.float32).view(10, 1).repeat(1, 3)
    p = prompts.chunk_mean_pool(x, 4)  # chunks [0,1] [2,3,4] [5,6] [7,8,9]
    np.testing.assert_allclose(p[:, 0].numpy(), [0.5, 3.0, 5.5, 8.0])
    assert prompts.chunk_mean_pool(x[:2], 4).shape == (4, 3)
    v = prompts.scale_to_rms(torch.randn(5, 8), 0.3)
    np.testing.assert_allclose(v.pow(2).mean(-1).sqrt().numpy(), 0.3, rtol=1e-4)
    d = evaluate.diversity_stats([1, 1, 1, 1, 2], ["a", "a", "a", "a", "b"])
    assert d["collapsed"] and d["distinct_first_tokens"] == 2 and d["dominant_predictions"][0] == ("a", 4)


def test_diversity_with_empty_generations(tiny):
    model, tok, sc, ex, enc = tiny
    d = evaluate.diversity_stats([-1, -1, 5], ["", "", "x"], tok)  # -1: empty generation
    assert d["dominant_first_tokens"][0] == ("<empty>", 2)


def _cfg(kind="latent", **kw):
    base = dict(
        kind=kind,
        M=4,
        d_enc=16,
        n_layers=1,
        n_heads=2,
        hidden_layer=1,
        lr=1e-2,
        batch_size=4,
        max_steps=2,
        w_kd=0.5,
        salience_pretrain_steps=0,
        max_context_tokens=256,
    )
    base.update(kw)
    return compressor.TrainConfig(**base)


def test_one_training_step_changes_weights_and_lowers_loss(tiny):
    model, tok, sc, ex, enc = tiny
    torch.manual_seed(0)
    comp = compressor.Compressor(
        model.get_input_embeddings().weight.shape[1], _cfg(lr=3e-3), prompts.token_embedding_rms(model)
    )
    batch = enc[:4]
    labels = [
        train.salience_labels(tok, x.context, e.context, x.paragraph_answers, [x.question]) for x, e in zip(ex, batch)
    ]
    assert all(l.sum() > 0 for l in labels)
    before = {k: v.clone() for k, v in comp.state_dict().items()}
    opt = train.make_optimizer(comp, comp.cfg)
    with torch.no_grad():
        l0, _ = train.compute_losses(model, comp, comp.cfg, batch, None, labels, tok.pad_token_id)
    d = train.train_step(model, comp, opt, comp.cfg, batch, None, labels, tok.pad_token_id)
    assert d["loss"] == pytest.approx(float(l0), rel=1e-4)
    with torch.no_grad():
        l1, _ = train.compute_losses(model, comp, comp.cfg, batch, None, labels, tok.pad_token_id)
    assert float(l1) < float(l0)
    changed = [k for k, v in comp.state_dict().items() if not torch.equal(v, before[k])]
    assert "adapter.weight" in changed and "encoder.residual.weight" in changed and "encoder.salience.weight" in changed
    assert all(not p.requires_grad for p in model.parameters())


def test_checkpoint_round_trip_and_resume(tiny, tmp_path):
    model, tok, sc, ex, enc = tiny
    d_model = model.get_input_embeddings().weight.shape[1]
    comp = compressor.Compressor(d_model, _cfg(), prompts.token_embedding_rms(model))
    recs = train.train_compressor(
        model, tok, comp, comp.cfg, enc, diagnostics_path=tmp_path / "d.jsonl", checkpoint_dir=tmp_path / "ck"
    )
    lines = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert len(lines) == 2 == len(recs)
    for key in (
        "tf",
        "first",
        "kce",
        "kd",
        "entropy",
        "grad_norm",
        "first_acc",
        "first_acc_top5",
        "distinct_first_preds",
        "dominant_first_preds",
    ):
        assert key in lines[0]
    back, state = compressor.load_checkpoint(tmp_path / "ck")
    assert state["step"] == 2 and back.cfg == comp.cfg
    for k, v in comp.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    f1, f2 = comp.context_vectors(model), back.context_vectors(model)
    ctx = [e.context for e in enc[:3]]
    for a, b in zip(f1(ctx), f2(ctx)):
        torch.testing.assert_close(a, b)
        assert a.shape == (4, d_model)
    # resume continues from step 2 up to max_steps = 3
    comp2 = compressor.Compressor(d_model, _cfg(max_steps=3), prompts.token_embedding_rms(model))
    recs2 = train.train_compressor(
        model,
        tok,
        comp2,
        comp2.cfg,
        enc,
        diagnostics_path=tmp_path / "d.jsonl",
        checkpoint_dir=tmp_path / "ck",
        resume=True,
    )
    assert [r["step"] for r in recs2] == [2]
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 3
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        compressor.load_checkpoint(tmp_path)


def test_notebook_smoke(tiny_llama_dir, tmp_path):
    params = dict(
        model=str(tiny_llama_dir),
        n_eval=4,
        n_train_paragraphs=6,
        M=4,
        max_new_tokens=3,
        eval_batch_size=4,
        train_budget_s=60.0,
        adapter_budget_s=30.0,
        max_steps=2,
        train_batch_size=4,
        hidden_layer=1,
        d_enc=16,
        salience_pretrain_steps=2,
        history_every=1,
        n_boot=50,
    )
    out = run_notebook_smoke("04_latent_compression_eval", params, tmp_path)
    for f in (
        "metrics.json",
        "predictions.jsonl",
        "metrics_history.jsonl",
        "train_diagnostics.jsonl",
        "report.md",
        "loss_curves.png",
        "f1_by_mode.png",
    ):
        assert (out / f).is_file(), f
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["modes"]) == set(prompts.MODES)
    # independent check: the text-mode F1 from the predictions with a separately written SQuAD F1
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    text = [r for r in rows if r["mode"] == "text"]
    f1 = [max(_squad_f1(r["prediction"], g) for g in r["golds"]) for r in text]
    assert m["modes"]["text"]["f1"] == pytest.approx(100 * np.mean(f1), abs=1e-9)
    assert m["text_embed_agreement"]["rate"] == 1.0
    preds = (out / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 4 * len(prompts.MODES)
    assert "| latent |" in (out / "report.md").read_text()


def test_notebook_rejects_bad_data_path(tiny_llama_dir, tmp_path):
    from utils.running.runner import NotebookFailed

    with pytest.raises(NotebookFailed, match="data='nope.json': no such SQuAD JSON file"):
        run_notebook_smoke("04_latent_compression_eval", dict(model=str(tiny_llama_dir), data="nope.json"), tmp_path)


def test_anchor_never_appended_twice(tiny):
    model, tok, sc, ex, enc = tiny
    p = prompts.build_prompts("anchor", enc[:1], sc, model, 4, 1.0, anchored=True)[0]
    assert sum(1 for s in p if torch.equal(s, sc.anchor_ids)) == 1

    # a scaffold whose assistant turn already ends with the anchor gets no second one
    class NoTemplate:
        chat_template = None
        bos_token = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    s2 = prompts.make_scaffold(NoTemplate(), anchor="Answer:")
    assert s2.anchor == "" and s2.anchor_ids.numel() == 0


def test_early_stopped_hidden_states_match_output_hidden_states(tiny):
    model, tok, sc, ex, enc = tiny
    ids, mask = prompts.pad_right([e.context for e in enc[:3]], tok.pad_token_id)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model.base_model(
            input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True
        ).hidden_states
    for layer in (0, 1, 2):
        got = prompts.context_hidden_states(model, ids, mask, layer)
        m = mask.bool()
        torch.testing.assert_close(got[m], ref[layer][m], rtol=1e-5, atol=1e-5)


def _squad_f1(pred: str, gold: str) -> float:
    """SQuAD v1.1 F1 written independently of utils.latent.metric (official normalisation)."""
    import re
    import string

    def norm(s):
        s = "".join(c for c in s.lower() if c not in set(string.punctuation))
        return re.sub(r"\b(a|an|the)\b", " ", s).split()

    p, g = norm(pred), norm(gold)
    common = sum(min(p.count(w), g.count(w)) for w in set(p))
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)
