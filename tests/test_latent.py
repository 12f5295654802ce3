"""Latent compression on a tiny random-init llama: the scaffold, the KV-prefix cache against the uncached
reader, grouped greedy decoding against a plain reference, the compressors, training, checkpoints."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from utils.latent import cache, compressor, evaluate, prompts, train
from utils.latent.reader import Reader
from utils.latent.squad import synthetic_examples
from utils.latent.trainer import prepare_train, train_seed
from utils.weights import load_model

SYSTEM = "Answer the question with a short span copied from the context."


def encode_examples(sc, examples):
    """Token ids of each example's pieces: scaffold prefix, context, question part, first gold answer."""
    return [
        SimpleNamespace(
            pre=sc.pre_ids,
            context=prompts.encode(sc.tokenizer, e.context),
            post=sc.post_ids(e.question),
            answer=sc.answer_ids(e.answers[0]),
        )
        for e in examples
    ]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    model, tok = load_model(str(tiny_llama_dir))
    sc = prompts.make_scaffold(tok)
    ex = synthetic_examples(4, seed=5)[:10]
    return model, tok, sc, ex, encode_examples(sc, ex)


@pytest.fixture(scope="module")
def reader(tiny, tiny_llama_dir):
    model, tok = tiny[:2]
    return Reader.wrap(model, tok, SYSTEM, "Answer:", str(tiny_llama_dir))


def test_scaffold_and_anchor(tiny):
    model, tok, sc, ex, enc = tiny
    full = tok.decode(torch.cat([enc[0].pre, enc[0].context, enc[0].post]).tolist())
    assert ex[0].context in full and ex[0].question in full and full.count("Context:") == 1
    assert tok.decode(sc.anchor_ids.tolist()) == "Answer:"
    assert evaluate.decode_answer(tok, tok("Answer: Oslo")["input_ids"], "Answer:") == "Oslo"


def test_kv_prefix_cache_gives_the_logits_of_the_uncached_reader(tiny):
    model, tok, sc, ex, enc = tiny
    pk = cache.prefix_kv(model, sc.pre_ids)
    rows = [[e.context[: 20 + 7 * i], e.post] for i, e in enumerate(enc[:4])]  # unequal lengths: padding
    cols = torch.tensor([[sum(s.shape[0] for s in r) - 1 - k for k in (3, 0)] for r in rows])
    T = max(sum(s.shape[0] for s in r) for r in rows)
    cols = cols + torch.tensor([[T - sum(s.shape[0] for s in r)] for r in rows])
    with torch.no_grad():
        lg, kv = cache.prefill(model, pk.expand(4), rows, tok.pad_token_id, columns=cols)
        # a second level: each context's cache shared by two "questions"
        qs = [[e.post[:5]] for e in enc[:2]] * 2
        lg2, _ = cache.prefill(model, kv.select([0, 1, 0, 1]), qs, tok.pad_token_id)
        for b, r in enumerate(rows):
            full = torch.cat([sc.pre_ids, *r]).view(1, -1)
            ref = model(input_ids=full).logits[0].float()
            n = full.shape[1]
            torch.testing.assert_close(lg[b, 0], ref[n - 4], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(lg[b, 1], ref[n - 1], rtol=1e-4, atol=1e-4)
        for b in range(4):
            full = torch.cat([sc.pre_ids, *rows[b % 2], qs[b][0]]).view(1, -1)
            torch.testing.assert_close(lg2[b, 0], model(input_ids=full).logits[0, -1].float(), rtol=1e-4, atol=1e-4)


def test_teacher_forced_logits_match_dense_log_softmax(tiny):
    model, tok, sc, ex, enc = tiny
    e = enc[1]
    prompt = torch.cat([e.pre, e.context, e.post])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.cat([prompt, e.answer]).view(1, -1)).logits[0].float(), -1)
        pk = cache.prefix_kv(model, sc.pre_ids)
        # vectors equal to the token embeddings go the inputs_embeds path and must give the same logits
        vec = prompts.embed_ids(model, e.context).float()
        lg, tg, va = cache.teacher_forced_logits(
            model, pk.expand(2), [[e.context, e.post], [vec, e.post]], [e.answer] * 2, 3
        )
    ref = [float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(e.answer.tolist())]
    for b in range(2):
        got = torch.log_softmax(lg[b], -1).gather(-1, tg[b].unsqueeze(-1)).squeeze(-1)[va[b]]
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-4)


def _reference_greedy(model, ids, n, stop):
    out, x = [], ids.clone()
    for _ in range(n):
        with torch.no_grad():
            t = int(model(input_ids=x.view(1, -1)).logits[0, -1].argmax())
        if t in stop:
            break
        out.append(t)
        x = torch.cat([x, torch.tensor([t])])
    return out


def test_grouped_generation_matches_one_example_without_cache(tiny):
    model, tok, sc, ex, enc = tiny
    pk = cache.prefix_kv(model, sc.pre_ids)
    slots = [enc[0].context, enc[3].context[:30], torch.zeros(0, dtype=torch.long)]
    qs = [(0, enc[0].post), (1, enc[1].post), (0, enc[2].post), (2, enc[3].post)]
    got = evaluate.generate_grouped(model, tok, pk, slots, qs, max_new_tokens=4, slot_batch=2, row_batch=3)
    stop = {tok.eos_token_id, tok.pad_token_id} | set(tok("\n", add_special_tokens=False)["input_ids"][:1])
    for (si, q), g in zip(qs, got):
        ref = _reference_greedy(model, torch.cat([sc.pre_ids, slots[si], q]), 4, stop)
        assert g == evaluate.decode_answer(tok, ref)


def _cfg(**kw):
    base = dict(
        hidden_layers="0,1",
        d_enc=16,
        n_heads=2,
        train_batch_size=4,
        salience_steps=3,
        recall_steps=2,
        qa_steps=2,
        ratios="2,4",
        kd_temperature=1.0,
    )
    base.update(kw)
    return compressor.TrainConfig(**base)


def _trainset(reader, ex, cfg):
    return prepare_train(reader, ex, cfg, topk=8, recall_per_context=2)


def test_latent_slots_budget_and_initial_selection(tiny):
    model, tok, sc, ex, enc = tiny
    cfg = _cfg(tau=1e-5)
    torch.manual_seed(0)
    d = model.get_input_embeddings().weight.shape[1]
    comp = compressor.build("latent", d, cfg, prompts.token_embedding_rms(model))
    ctx = [e.context for e in enc[:3]]
    hs = cache.cache_hidden(model, ctx, cfg.layers)
    ids, mask = prompts.pad_right(ctx, 0)
    H = torch.zeros(3, ids.shape[1], 2, d)
    for b, h in enumerate(hs):
        H[b, : h.shape[0]] = h.float()
    E = prompts.embed_ids(model, ids).float()
    vecs, s = comp(H, E, mask, 4.0)
    sel = comp.select(H, mask, 4.0)
    for b, c in enumerate(ctx):
        M = -(-c.shape[0] // 4)
        assert vecs[b].shape == (M, d) and len(sel[b]) == M and sel[b] == sorted(sel[b])
        # zero projector and a sharp softmax: each slot is its segment's most salient token, RMS-matched
        ref = prompts.scale_to_rms(E[b, sel[b]], prompts.token_embedding_rms(model))
        torch.testing.assert_close(vecs[b], ref, rtol=1e-3, atol=1e-3)


def test_training_lowers_the_loss_and_leaves_the_reader_frozen(tiny, reader):
    model, tok, sc, ex, enc = tiny
    cfg = _cfg(lr=3e-3)
    ts = _trainset(reader, ex, cfg)
    assert ts.stats["questions"] == len(ex) and all(lab.max() == 1.0 for lab in ts.labels)
    assert len(ts.qa[0][3][0]) == min(cfg.K, ts.qa[0][2].shape[0])  # teacher top-k per answer token
    torch.manual_seed(0)
    d = model.get_input_embeddings().weight.shape[1]
    comp = compressor.build("latent", d, cfg, prompts.token_embedding_rms(model))
    items = ts.qa[:4]
    with torch.no_grad():
        l0, parts = train.lm_loss(reader, comp, cfg, ts, items, 2.0)
    assert parts["kd"] > 0 and parts["ce"] > 0
    opt = train.make_optimizer(comp, cfg, "qa")
    for _ in range(3):
        opt.zero_grad()
        loss, _ = train.lm_loss(reader, comp, cfg, ts, items, 2.0)
        loss.backward()
        opt.step()
    with torch.no_grad():
        l1, _ = train.lm_loss(reader, comp, cfg, ts, items, 2.0)
    assert float(l1) < float(l0)
    assert all(not p.requires_grad for p in model.parameters())


def test_checkpoint_resume_refuses_other_config_and_names_a_truncated_file(tiny, reader, tmp_path):
    model, tok, sc, ex, enc = tiny
    cfg = _cfg()
    ts = _trainset(reader, ex, cfg)
    d = model.get_input_embeddings().weight.shape[1]
    meta = {"target_rms": prompts.token_embedding_rms(model), "d_model": d, "seen_titles": [], "seen_contexts": []}
    log = []
    mods = train_seed(reader, ts, cfg, 0, tmp_path / "ck", meta, resume=False, log=log.append)
    assert [r["phase"] for r in log if r["kind"] == "latent"] == ["salience"] * 3 + ["recall"] * 2 + ["qa"] * 2
    back, _, saved = compressor.load_bundle(tmp_path / "ck")
    assert saved["progress"] == {"latent": 7, "pool_adapter": 4, "classifier": 7}
    for k in compressor.KINDS:
        for name, v in mods[k].state_dict().items():
            torch.testing.assert_close(v, back[k].state_dict()[name])
    # the shipped form: float16 weights, no optimiser state, loads back as float32 within float16 rounding
    small, _, _ = compressor.load_bundle(compressor.export_bundle(tmp_path / "ck", tmp_path / "ship"))
    assert (tmp_path / "ship" / "latent.pt").stat().st_size < (tmp_path / "ck" / "latent.pt").stat().st_size
    for name, v in mods["latent"].state_dict().items():
        torch.testing.assert_close(small["latent"].state_dict()[name], v, rtol=1e-3, atol=1e-3)

    # a run stopped in the second module's training resumes to exactly the uninterrupted modules (each save
    # writes only the module in training; the finished latent module's file is not rewritten)
    class Stop(Exception):
        pass

    def stop_in_pool(r):
        if r["kind"] == "pool_adapter" and r["step"] == 3:
            raise Stop

    with pytest.raises(Stop):
        train_seed(reader, ts, cfg, 0, tmp_path / "cut", meta, resume=False, log=stop_in_pool, save_every=2)
    latent_file = (tmp_path / "cut" / "latent.pt").stat().st_mtime_ns
    assert compressor.read_meta(tmp_path / "cut")["progress"] == {"latent": 7, "pool_adapter": 2, "classifier": 0}
    assert not (tmp_path / "cut" / "classifier.pt").exists()
    again = train_seed(reader, ts, cfg, 0, tmp_path / "cut", meta, resume=True, save_every=2)
    assert (tmp_path / "cut" / "latent.pt").stat().st_mtime_ns == latent_file
    for k in compressor.KINDS:
        for name, v in mods[k].state_dict().items():
            torch.testing.assert_close(again[k].state_dict()[name], v, rtol=0, atol=0)
    # resuming a finished run trains nothing more
    log2 = []
    train_seed(reader, ts, cfg, 0, tmp_path / "ck", meta, resume=True, log=log2.append)
    assert log2 == []
    # issue 14: a resume with another configuration is refused, naming the fields and the fix
    with pytest.raises(compressor.CheckpointError, match=r"d_enc: checkpoint 16, now 32.*resume=false"):
        train_seed(reader, ts, _cfg(d_enc=32), 0, tmp_path / "ck", meta, resume=True)
    # issue 14: a truncated checkpoint says what is wrong and how to fix it, not torch's zip message
    f = tmp_path / "ck" / "latent.pt"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(compressor.CheckpointError, match=r"latent.pt is truncated or corrupt.*resume=false"):
        train_seed(reader, ts, cfg, 0, tmp_path / "ck", meta, resume=True)


def test_early_stopped_hidden_states_match_output_hidden_states(tiny):
    model, tok, sc, ex, enc = tiny
    ids, mask = prompts.pad_right([e.context for e in enc[:3]], tok.pad_token_id)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model.base_model(
            input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True
        ).hidden_states
    got = cache.hidden_states(model, ids, mask, [0, 1, 2])
    m = mask.bool()
    for layer in (0, 1, 2):
        torch.testing.assert_close(got[layer][m], ref[layer][m], rtol=1e-5, atol=1e-5)
    echo = cache.cache_hidden(model, [enc[0].context], [1], echo=True)[0]
    with torch.no_grad():
        twice = torch.cat([enc[0].context] * 2).view(1, -1)
        ref2 = model.base_model(input_ids=twice, output_hidden_states=True).hidden_states[1][
            0, enc[0].context.shape[0] :
        ]
    torch.testing.assert_close(echo[:, 0].float(), ref2, rtol=1e-2, atol=1e-2)


def test_training_prompt_is_the_evaluation_prompt(tiny, reader, monkeypatch):
    """A training step reads the slots and the question ids as evaluation does: one anchor, not two."""
    from utils.latent.modes import prepare_eval

    model, tok, sc, ex, enc = tiny
    cfg = _cfg()
    ts = _trainset(reader, ex, cfg)
    d = model.get_input_embeddings().weight.shape[1]
    comp = compressor.build("latent", d, cfg, prompts.token_embedding_rms(model))
    seen = []

    def capture(llm, prefix, prompt_parts, answers, pad_id):
        seen.extend(prompt_parts)
        return real(llm, prefix, prompt_parts, answers, pad_id)

    real = train.teacher_forced_logits
    monkeypatch.setattr(train, "teacher_forced_logits", capture)
    items = ts.qa[:2]
    with torch.no_grad():
        train.lm_loss(reader, comp, cfg, ts, items, 2.0)
    ed = prepare_eval(reader, ex, cfg.anchored)
    for parts, e in zip(seen, ex[: len(items)]):
        assert len(parts) == 2 and torch.equal(parts[1], ed.q_ids[ed.qids.index(e.id)])
        ids = parts[1].tolist()
        a = sc.anchor_ids.tolist()
        assert ids[-len(a) :] == a and ids[-2 * len(a) : -len(a)] != a  # ends with exactly one anchor


def test_the_gpu_branch_of_training_runs_on_the_cpu(tiny, reader):
    """issue 21: ``amp="bf16"`` takes the GPU path of a training step (bf16 autocast around the compressor and
    the reader) on the CPU: the reader's matmuls run in bfloat16 and the loss agrees with float32 to bf16
    precision; ``"auto"`` on the CPU is float32."""
    model, tok, sc, ex, enc = tiny
    ts = _trainset(reader, ex, _cfg())
    d = model.get_input_embeddings().weight.shape[1]
    seen = []
    hook = prompts.decoder_layers(model)[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    losses = {}
    try:
        for amp in ("bf16", "auto"):
            torch.manual_seed(0)
            comp = compressor.build("latent", d, _cfg(), prompts.token_embedding_rms(model))
            log, seen[:] = [], []
            train.train_module(reader, comp, _cfg(amp=amp), ts, log=log.append, phases=[("qa", 1)])
            losses[amp] = log[0]["loss"]
            assert set(seen) == {torch.bfloat16 if amp == "bf16" else torch.float32}, amp
    finally:
        hook.remove()
    assert np.isfinite(losses["bf16"]) and losses["bf16"] == pytest.approx(losses["auto"], rel=5e-2)


def test_torch_cuda_is_called_only_in_the_device_module():
    """issue 21: device-dependent calls live in utils/device.py (the latent code asks it, never torch.cuda)."""
    from conftest import REPO_ROOT

    for f in sorted((REPO_ROOT / "utils" / "latent").glob("*.py")):
        assert "torch.cuda" not in f.read_text(), f.name


def test_amortisation_regresses_the_slots_onto_the_optimised_vectors(tiny, reader):
    """issue 22: the amortisation term is the squared distance of the slots to the per-context targets at the
    embedding RMS, over slots x width x RMS^2 (checked by hand), and training with it brings the slots closer
    to the targets than the same steps without it."""
    from dataclasses import replace

    from utils.latent.amortise import train_arms, with_targets
    from utils.latent.select import budget

    model, tok, sc, ex, enc = tiny
    cfg = _cfg(lr=3e-3)
    ts = _trainset(reader, ex, cfg)
    d, rms = reader.d_model, reader.target_rms
    g = torch.Generator().manual_seed(0)
    raw = {i: torch.randn(budget(c.shape[0], 2.0), d, generator=g) for i, c in enumerate(ts.ctx_ids)}
    ts = with_targets(ts, raw, rms)
    torch.manual_seed(0)
    comp = compressor.build("latent", d, cfg, rms)
    items = ts.qa[:3]

    def slots(m, idx):
        H, E, mask = train.context_features(model, ts.ctx_ids, ts.hidden, idx, reader.device)
        with torch.no_grad():
            return m(H, E, mask, 2.0)[0]

    idx = [it[0] for it in items]
    with torch.no_grad():
        _, parts = train.lm_loss(reader, comp, replace(cfg, w_amortise=1.0), ts, items, 2.0)
    want = sum(float(((v - prompts.scale_to_rms(raw[i], rms)) ** 2).sum()) for v, i in zip(slots(comp, idx), idx))
    want /= sum(budget(ts.ctx_ids[i].shape[0], 2.0) for i in idx) * d * rms**2
    assert parts["amortise"] == pytest.approx(want, rel=1e-5)

    def distance(m):
        every = list(range(len(ts.ctx_ids)))
        return float(sum(((v - ts.targets[i]) ** 2).sum() for v, i in zip(slots(m, every), every)))

    arms = train_arms(reader, comp, cfg, ts, 2.0, steps=6, w_amortise=20.0)
    assert distance(arms["regression"]) < distance(arms["continued"])
