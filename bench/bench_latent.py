"""Benchmark: greedy QA decoding in `text` mode, batched with a KV cache vs one example at a time.

    .venv/bin/python bench/bench_latent.py [--model smollm2] [--n 16] [--batch 16] [--new 8]

Both paths use the same prompts (chat scaffold + synthetic context + question), the same greedy
decoding and produce the same tokens (checked); the batched path left-pads with an attention mask
and reuses the KV cache, the baseline runs each example alone (batch 1, also with the cache). A third
figure, one example at a time without the cache (the full sequence re-run every step), is printed
for reference. Prints examples/s side by side and the ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from utils.latent.evaluate import greedy_generate  # noqa: E402
from utils.latent.prompts import assemble, encode_examples, make_scaffold  # noqa: E402
from utils.latent.squad import one_question_per_context, synthetic_examples  # noqa: E402
from utils.weights import load_model  # noqa: E402


def run(model, tok, prompts, batch, new, cache):
    eos = [tok.eos_token_id, tok.pad_token_id]
    out = []
    t = time.perf_counter()
    for s in range(0, len(prompts), batch):
        b, _ = assemble(model, prompts[s : s + batch], tok.pad_token_id, as_embeds=False)
        out += greedy_generate(model, b, new, eos, use_cache=cache)[0]
    return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new", type=int, default=8)
    a = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_model(a.model)
    sc = make_scaffold(tok)
    enc = encode_examples(sc, one_question_per_context(synthetic_examples(a.n, seed=7))[: a.n])
    prompts = [[e.pre, e.context, e.post] for e in enc]
    run(model, tok, prompts[:2], 2, 2, True)  # warm-up
    g_b, t_b = run(model, tok, prompts, a.batch, a.new, True)
    g_1, t_1 = run(model, tok, prompts, 1, a.new, True)
    n_nc = max(1, a.n // 4)
    g_nc, t_nc = run(model, tok, prompts[:n_nc], 1, a.new, False)
    same = sum(x == y for x, y in zip(g_b, g_1))
    print(
        f"model {a.model}, {a.n} prompts (mean {sum(p[1].shape[0] for p in prompts) / a.n:.0f} context tokens), "
        f"{a.new} new tokens, torch threads {torch.get_num_threads()}"
    )
    print(f"{'path':38s} {'examples/s':>11s} {'seconds':>9s}")
    print(f"{'batched (batch %d) + KV cache' % a.batch:38s} {a.n / t_b:11.3f} {t_b:9.2f}")
    print(f"{'one at a time + KV cache (baseline)':38s} {a.n / t_1:11.3f} {t_1:9.2f}")
    print(f"{'one at a time, no cache (%d examples)' % n_nc:38s} {n_nc / t_nc:11.3f} {t_nc:9.2f}")
    print(
        f"speed-up batched vs one at a time: {t_1 / t_b:.2f}x;  one at a time cache vs no cache: "
        f"{(n_nc / t_nc) and (a.n / t_1) / (n_nc / t_nc):.2f}x"
    )
    print(f"identical generations batched vs one at a time: {same}/{a.n}")


if __name__ == "__main__":
    main()
