"""Benchmark: one `latent` training step (batch 8, QA phase) before and after caching, in steps/s.

    .venv/bin/python bench/bench_latent_train.py [--model smollm2] [--steps 3] [--batch 8] [--ratio 4]

Before (the step of the previous notebook 04): every step runs the reader over each context to get the
hidden states the encoder reads, runs the teacher (the reader over the full prompt: prefix, context,
question, answer) for the distillation target, and runs the student prompt from its first token
(prefix included). After: the hidden states, the teacher's top-k answer logits and the key/values of
the fixed prompt prefix are cached once, so a step runs the reader only over the M slots, the question
and the answer. Both paths compute the same losses on the same batch (checked: the cross-entropy
agrees, the distillation agrees to the top-k truncation). Prints steps/s side by side and the ratio,
plus the one-off cost of building the caches.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from utils.latent import cache, compressor, prompts, train  # noqa: E402
from utils.latent.reader import Reader  # noqa: E402
from utils.latent.split import SHIPPED_SAMPLE  # noqa: E402
from utils.latent.squad import load_squad_json  # noqa: E402
from utils.latent.trainer import prepare_train  # noqa: E402

ONE_SHOT = (
    "Extract the answer from the context. Reply with the answer words only.\nExample: Context: Tom Hill lives in "
    "Rome. Ada Park plays the flute every evening.\nQuestion: Which instrument does Ada Park play?\nAnswer: flute"
)


def uncached_loss(llm, comp, cfg, ts, items, ratio, scaffold, pad_id):
    """The same loss as :func:`train.lm_loss`, recomputing everything from the raw prompt each step."""
    dev = comp.target_rms.device
    ctx = [ts.ctx_ids[it[0]] for it in items]
    ids, mask = prompts.pad_right(ctx, 0)
    with torch.no_grad():
        H = torch.stack(cache.hidden_states(llm, ids, mask, cfg.layers), 2).float()
        E = prompts.embed_ids(llm, ids).float()
    vecs, s = comp(H, E, mask.to(dev), ratio)
    answers = [it[2] for it in items]
    lg, tg, va = cache.teacher_forced_logits(
        llm, None, [[scaffold.pre_ids, v, it[1]] for v, it in zip(vecs, items)], answers, pad_id
    )
    with torch.no_grad():
        tlg, _, _ = cache.teacher_forced_logits(
            llm,
            None,
            [[scaffold.pre_ids, c, it[1]] for c, it in zip(ctx, items)],
            [a[: cfg.K] for a in answers],
            pad_id,
        )
    logp = torch.log_softmax(lg.float(), -1)
    nll = -logp.gather(-1, tg.unsqueeze(-1)).squeeze(-1)
    ce = (nll * va).sum() / va.sum()
    kl = []
    for b, a in enumerate(answers):
        k = min(cfg.K, a.shape[0])
        pt = torch.softmax(tlg[b, :k].float(), -1)
        kl.append(-(pt * logp[b, :k]).sum(-1).mean())
    kd = torch.stack(kl).mean()
    sal = train.label_loss(s, mask, [ts.labels[it[0]] for it in items])
    return cfg.w_ce * ce + cfg.w_kd * kd + cfg.w_salience * sal, {"ce": float(ce.detach()), "kd": float(kd.detach())}


def timed(fn, steps):
    fn()  # warm-up
    t = time.perf_counter()
    out = [fn() for _ in range(steps)]
    return (time.perf_counter() - t) / steps, out[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ratio", type=float, default=4.0)
    a = ap.parse_args()
    torch.manual_seed(0)
    reader = Reader.load(a.model, ONE_SHOT, "Answer:")
    llm, tok, sc = reader.model, reader.tokenizer, reader.scaffold
    ex, src = load_squad_json(SHIPPED_SAMPLE)[0][: 4 * a.batch], "the shipped SQuAD sample"
    cfg = compressor.TrainConfig(train_batch_size=a.batch)
    t0 = time.perf_counter()
    ts = prepare_train(reader, ex, cfg, topk=32, recall_per_context=1)
    t_cache = time.perf_counter() - t0
    comp = compressor.build(
        "latent", prompts.input_embedding(llm).weight.shape[1], cfg, prompts.token_embedding_rms(llm)
    )
    opt = train.make_optimizer(comp, cfg, "qa")
    items = ts.qa[: a.batch]
    pad = tok.pad_token_id or 0

    def step(loss_fn):
        def run():
            opt.zero_grad(set_to_none=True)
            loss, parts = loss_fn()
            loss.backward()
            return parts

        return run

    before, pb = timed(step(lambda: uncached_loss(llm, comp, cfg, ts, items, a.ratio, sc, pad)), a.steps)
    after, pa = timed(step(lambda: train.lm_loss(reader, comp, cfg, ts, items, a.ratio)), a.steps)
    ctx = sum(ts.ctx_ids[it[0]].shape[0] for it in items) / len(items)
    print(
        f"model {a.model}, {src}, batch {a.batch}, r = {a.ratio:g}, mean context {ctx:.0f} tokens, prefix "
        f"{sc.pre_ids.shape[0]} tokens, torch threads {torch.get_num_threads()}"
    )
    print(f"{'training step (QA phase, forward + backward)':48s} {'steps/s':>9s} {'s/step':>8s}")
    print(f"{'before: hidden states + teacher + full prompt':48s} {1 / before:9.3f} {before:8.2f}")
    print(f"{'after: cached prefix KV, teacher top-k, states':48s} {1 / after:9.3f} {after:8.2f}")
    print(f"speed-up after vs before: {before / after:.2f}x; one-off cache for {len(ex)} questions: {t_cache:.1f} s")
    print(f"same losses: ce {pb['ce']:.4f} vs {pa['ce']:.4f}; kd (full vs top-32) {pb['kd']:.3f} vs {pa['kd']:.3f}")


if __name__ == "__main__":
    main()
