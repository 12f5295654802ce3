"""Benchmark: notebook 04's answer generation against transformers' own ``generate``, one question at a time.

    .venv/bin/python bench/bench_latent.py [--model smollm2] [--contexts 8] [--new 8]

Ours is the path every mode of notebook 04 takes (``utils.latent.evaluate.generate_grouped``): the
scaffold prefix's key/values computed once, each context prefilled once and shared by all of its
questions, question rows batched, greedy decoding with a KV cache. The baseline is the plain way: the
whole prompt (prefix + context + question + anchor) of each question through ``model.generate`` (greedy,
its own KV cache), one question at a time. Same prompts, same stop tokens, same answer decoding; prints
examples/s side by side, the ratio, and how many answers are identical. Data: the full-context (``anchor``)
mode on synthetic SQuAD paragraphs (every question of each, as the experiment scores them).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from utils.latent.cache import prefix_kv  # noqa: E402
from utils.latent.evaluate import decode_answer, generate_grouped, stop_ids  # noqa: E402
from utils.latent.modes import prepare_eval  # noqa: E402
from utils.latent.reader import Reader  # noqa: E402
from utils.latent.squad import synthetic_examples  # noqa: E402
from utils.weights import load_model  # noqa: E402


def baseline(model, tok, sc, ed, new: int) -> list[str]:
    """Each question's full prompt through ``model.generate``, one at a time."""
    stop = stop_ids(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stop[0]
    out = []
    for qi, q in enumerate(ed.q_ids):
        ids = torch.cat([sc.pre_ids, ed.ctx_ids[ed.q_ctx[qi]], q])[None]
        with torch.no_grad():
            g = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=pad,
            )[0, ids.shape[1] :].tolist()
        g = g[: next((i for i, t in enumerate(g) if t in stop), len(g))]
        out.append(decode_answer(tok, g, sc.anchor))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--contexts", type=int, default=8, help="synthetic paragraphs (4-6 questions each)")
    ap.add_argument("--new", type=int, default=8, help="greedy tokens per answer")
    a = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_model(a.model)
    model.generation_config.temperature = model.generation_config.top_p = model.generation_config.top_k = None
    reader = Reader.wrap(model, tok, "Answer the question with a short span copied from the context.", "Answer:")
    sc = reader.scaffold
    ed = prepare_eval(reader, synthetic_examples(a.contexts, seed=7), anchored=True)
    n = len(ed.q_ids)
    generate_grouped(model, tok, prefix_kv(model, sc.pre_ids), ed.ctx_ids[:1], [(0, ed.q_ids[0])], 2)  # warm-up
    t = time.perf_counter()
    prefix = prefix_kv(model, sc.pre_ids)
    ours = generate_grouped(model, tok, prefix, ed.ctx_ids, list(zip(ed.q_ctx, ed.q_ids)), a.new, anchor=sc.anchor)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    base = baseline(model, tok, sc, ed, a.new)
    t_base = time.perf_counter() - t
    same = sum(x == y for x, y in zip(ours, base))
    ctx = sum(c.shape[0] for c in ed.ctx_ids) / len(ed.ctx_ids)
    print(
        f"model {a.model}, {n} questions on {len(ed.ctx_ids)} contexts (mean {ctx:.0f} context tokens), "
        f"{a.new} new tokens, torch threads {torch.get_num_threads()}"
    )
    print(f"{'path':58s} {'examples/s':>11s} {'seconds':>9s}")
    print(f"{'ours: prefix cached, context prefilled once, rows batched':58s} {n / t_ours:11.3f} {t_ours:9.2f}")
    print(f"{'baseline: model.generate per question (full prompt)':58s} {n / t_base:11.3f} {t_base:9.2f}")
    print(f"speed-up: {t_base / t_ours:.2f}x;  identical answers: {same}/{n}")


if __name__ == "__main__":
    main()
