"""Greedy decoding, teacher-forced answer logits and the per-mode evaluation of :mod:`.prompts`."""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Sequence

import numpy as np
import torch

from .prompts import (
    EMBED_MODES,
    Batch,
    EncodedExample,
    Scaffold,
    assemble,
    build_prompts,
    hidden_and_logits,
    input_embedding,
)


# ----------------------------------------------------------------------------- decoding and scoring
@torch.no_grad()
def greedy_generate(
    model,
    batch: Batch,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    use_cache: bool = True,
    stop_on_newline_ids: Sequence[int] = (),
) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy decoding of a left-padded batch.

    With ``use_cache`` the prompt is run once and each new token reuses the KV cache; without it
    the whole sequence is re-run every step (the slow reference). Returns ``(token lists without
    the stop token, first-step logits (B, V))``.
    """
    emb = input_embedding(model)
    B = batch.size
    stop = set(int(i) for i in eos_ids) | set(int(i) for i in stop_on_newline_ids)
    mask, pos = batch.attention_mask, batch.position_ids
    x_emb, x_ids = batch.inputs_embeds, batch.input_ids
    done = torch.zeros(B, dtype=torch.bool)
    gen: list[list[int]] = [[] for _ in range(B)]
    past, first_logits, nxt = None, None, None
    last = torch.full((B, 1), pos.shape[1] - 1, dtype=torch.long, device=mask.device)
    for step in range(max_new_tokens):
        if step == 0 or not use_cache:
            logits, past = hidden_and_logits(
                model,
                inputs_embeds=x_emb,
                input_ids=x_ids,
                attention_mask=mask,
                position_ids=pos,
                positions=last,
                use_cache=use_cache,
            )
        else:
            kw = {"input_ids": nxt.view(B, 1)} if x_ids is not None else {"inputs_embeds": emb(nxt.view(B, 1))}
            logits, past = hidden_and_logits(
                model,
                attention_mask=mask,
                position_ids=pos[:, -1:],
                positions=torch.zeros((B, 1), dtype=torch.long, device=mask.device),
                past_key_values=past,
                use_cache=True,
                **kw,
            )
        logits = logits[:, -1]
        if step == 0:
            first_logits = logits.detach().cpu()
        nxt = logits.argmax(-1)
        for b in range(B):
            if not done[b]:
                t = int(nxt[b])
                if t in stop:
                    done[b] = True
                else:
                    gen[b].append(t)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=mask.device)], 1)
        pos = torch.cat([pos, pos[:, -1:] + 1], 1)
        if not use_cache:
            if x_ids is not None:
                x_ids = torch.cat([x_ids, nxt.view(B, 1)], 1)
            else:
                x_emb = torch.cat([x_emb, emb(nxt.view(B, 1))], 1)
            last = torch.full((B, 1), pos.shape[1] - 1, dtype=torch.long, device=mask.device)
    return gen, first_logits


def answer_logits(
    model, prompts, answers: Sequence[torch.Tensor], pad_id: int, k: int | None = None, as_embeds: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forced next-token logits over each gold answer (differentiable through vectors).

    Returns ``(logits (B, A, V), targets (B, A), valid (B, A) bool)`` with ``A = max answer length``
    (cut to ``k`` if given); ``logits[b, i]`` predicts ``answers[b][i]`` from the prompt and the
    previous answer tokens, at the same positions and mask as generation would use.
    """
    ans = [a[:k] if k else a for a in answers]
    # the last answer token is never an input, so feed all but it
    right = [a[:-1] if a.shape[0] > 0 else a for a in ans]
    batch, end = assemble(model, prompts, pad_id, as_embeds, right=right)
    A = max(max(a.shape[0] for a in ans), 1)
    cols = end.view(-1, 1) + torch.arange(A).view(1, -1)
    cols = cols.clamp(max=batch.attention_mask.shape[1] - 1).to(batch.attention_mask.device)
    logits, _ = hidden_and_logits(
        model,
        inputs_embeds=batch.inputs_embeds,
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        positions=cols,
    )
    targets = torch.zeros(len(ans), A, dtype=torch.long)
    valid = torch.zeros(len(ans), A, dtype=torch.bool)
    for b, a in enumerate(ans):
        targets[b, : a.shape[0]] = a
        valid[b, : a.shape[0]] = True
    return logits, targets.to(logits.device), valid.to(logits.device)


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position negative log-likelihood (nats) of ``targets`` (B, A) under ``logits`` (B, A, V)."""
    return -torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


# ----------------------------------------------------------------------------- evaluation
def decode_answer(tokenizer, ids: Sequence[int], anchor: str = "") -> str:
    """Decoded generation, first line, with a repeated anchor prefix removed."""
    s = tokenizer.decode(list(ids), skip_special_tokens=True).strip()
    s = s.split("\n")[0].strip()
    if anchor and s.startswith(anchor):
        s = s[len(anchor) :].strip()
    return s


def diversity_stats(
    first_tokens: Sequence[int], predictions: Sequence[str], tokenizer=None, collapse_share: float = 0.5, top: int = 5
) -> dict:
    """Distinct first tokens / predictions and a mode-collapse flag.

    ``collapsed`` is True when the most common prediction covers more than ``collapse_share`` of
    examples (and there are at least 4 examples) or when every example gets the same first token.
    """
    n = len(predictions)
    fc = Counter(int(t) for t in first_tokens)
    pc = Counter(predictions)
    dom_share = pc.most_common(1)[0][1] / n if n else float("nan")
    # t < 0 marks an empty generation (the first token was a stop token)
    first_dom = [
        ((tokenizer.decode([t]) if t >= 0 else "<empty>") if tokenizer is not None else t, c)
        for t, c in fc.most_common(top)
    ]
    return {
        "distinct_first_tokens": len(fc),
        "distinct_predictions": len(pc),
        "dominant_predictions": pc.most_common(top),
        "dominant_first_tokens": first_dom,
        "dominant_share": dom_share,
        "collapsed": bool(n >= 4 and (dom_share > collapse_share or len(fc) == 1)),
    }


def evaluate_mode(
    mode: str,
    model,
    tokenizer,
    scaffold: Scaffold,
    encoded: Sequence[EncodedExample],
    M: int,
    target_rms: float,
    batch_size: int = 8,
    max_new_tokens: int = 12,
    context_vectors: Callable | None = None,
    progress: Callable | None = None,
    anchored: bool | None = None,
) -> dict:
    """Generate and score every example in ``mode``.

    Returns per-example lists: ``predictions`` (str), ``generated_ids``, ``first_top1`` /
    ``first_top5`` (bool: gold first answer token ranks 1 / within 5 at the first answer position),
    ``gold_nll`` (mean NLL per gold answer token, nats), ``n_context_tokens``, ``n_prompt_vectors``
    (what replaced the context), and wall-clock ``seconds`` (prompt building, encoder included,
    generation; scoring excluded) and ``examples_per_s``.
    """
    if anchored is None or mode == "anchor":
        anchored = anchored or mode == "anchor"
    anchored = anchored and scaffold.anchor_ids.numel() > 0
    as_embeds = mode in EMBED_MODES
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = [i for i in {tokenizer.eos_token_id, tokenizer.pad_token_id} if i is not None]
    preds, gens, top1, top5, nll, nvec = [], [], [], [], [], []
    gen_seconds = 0.0
    it = range(0, len(encoded), batch_size)
    for s in progress(it) if progress else it:
        chunk = encoded[s : s + batch_size]
        t0 = time.perf_counter()
        prompts = build_prompts(mode, chunk, scaffold, model, M, target_rms, context_vectors, anchored)
        batch, _ = assemble(model, prompts, pad_id, as_embeds)
        g, _first = greedy_generate(model, batch, max_new_tokens, eos)
        gen_seconds += time.perf_counter() - t0
        with torch.no_grad():
            answers = [e.answer_anchored if anchored else e.answer for e in chunk]
            lg, tg, va = answer_logits(model, prompts, answers, pad_id, as_embeds=as_embeds)
            tok_nll = token_nll(lg, tg)
            for b in range(len(chunk)):
                v = va[b]
                nll.append(float(tok_nll[b][v].mean()) if bool(v.any()) else float("nan"))
                rank_ok = lg[b, 0].topk(5).indices
                top1.append(bool(rank_ok[0] == tg[b, 0]) and bool(v[0]))
                top5.append(bool((rank_ok == tg[b, 0]).any()) and bool(v[0]))
        for b, ids in enumerate(g):
            gens.append(ids)
            preds.append(decode_answer(tokenizer, ids, scaffold.anchor if anchored else ""))
            nvec.append(sum(x.shape[0] for x in prompts[b][1:2]))
    return {
        "mode": mode,
        "anchored": anchored,
        "predictions": preds,
        "generated_ids": gens,
        "first_top1": top1,
        "first_top5": top5,
        "gold_nll": nll,
        "n_context_tokens": [int(e.context.shape[0]) for e in encoded],
        "n_prompt_vectors": nvec,
        "seconds": gen_seconds,
        "examples_per_s": len(encoded) / gen_seconds if gen_seconds > 0 else float("nan"),
    }


def agreement_rate(a: Sequence, b: Sequence) -> float:
    """Fraction of positions where two prediction lists are equal."""
    if len(a) != len(b):
        raise ValueError("prediction lists differ in length")
    return float(np.mean([x == y for x, y in zip(a, b)])) if a else float("nan")
