"""Greedy decoding (plain and grouped by context slot over cached key/values), and answer decoding."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .cache import KV, greedy_decode, prefill
from .prompts import Batch, hidden_and_logits, input_embedding


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


# ----------------------------------------------------------------------------- evaluation
def decode_answer(tokenizer, ids: Sequence[int], anchor: str = "") -> str:
    """Decoded generation, first line, with a repeated anchor prefix removed."""
    s = tokenizer.decode(list(ids), skip_special_tokens=True).strip()
    s = s.split("\n")[0].strip()
    if anchor and s.startswith(anchor):
        s = s[len(anchor) :].strip()
    return s


def generate_grouped(
    llm,
    tokenizer,
    prefix: KV,
    slots: Sequence[torch.Tensor],
    questions: Sequence[tuple[int, torch.Tensor]],
    max_new_tokens: int = 8,
    slot_batch: int = 16,
    row_batch: int = 48,
    anchor: str = "",
    progress: Callable | None = None,
) -> list[str]:
    """Greedy answers to ``questions`` = ``[(slot index, question ids)]``, each reading its slot.

    ``slots[i]``: what fills the context slot (1-D ids, empty for no context, or (M, d) vectors).
    The shared prompt prefix comes from ``prefix``; each slot is run once (``slot_batch`` at a
    time) and its key/values are shared by all of its questions (``row_batch`` rows at a time).
    Returns the decoded answers in the order of ``questions``.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stop = [i for i in {tokenizer.eos_token_id, tokenizer.pad_token_id} if i is not None]
    stop += [i for i, t in _newline_ids(tokenizer)]
    by_slot: dict[int, list[int]] = {}
    for qi, (si, _) in enumerate(questions):
        by_slot.setdefault(si, []).append(qi)
    order = sorted(by_slot)
    out: list[str] = [""] * len(questions)
    it = range(0, len(order), slot_batch)
    for s in progress(it) if progress else it:
        chunk = order[s : s + slot_batch]
        with torch.no_grad():
            _, kv = prefill(llm, prefix.expand(len(chunk)), [[slots[i]] for i in chunk], pad_id)
        rows = [(b, qi) for b, si in enumerate(chunk) for qi in by_slot[si]]
        for r in range(0, len(rows), row_batch):
            part = rows[r : r + row_batch]
            with torch.no_grad():
                lg, kvq = prefill(llm, kv.select([b for b, _ in part]), [[questions[qi][1]] for _, qi in part], pad_id)
            gen = greedy_decode(llm, kvq, lg[:, -1], max_new_tokens, stop)
            for (_, qi), g in zip(part, gen):
                out[qi] = decode_answer(tokenizer, g, anchor)
    return out


def _newline_ids(tokenizer) -> list[tuple[int, str]]:
    """Token ids that decode to text starting with a newline (an answer ends at its first line)."""
    ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    return [(i, "\n") for i in ids[:1]]
