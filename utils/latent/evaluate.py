"""Greedy answers grouped by context slot over cached key/values, answer decoding and stop tokens."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .cache import KV, greedy_decode, prefill, shared_slot_batches


# ----------------------------------------------------------------------------- decoding and scoring
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
    stop = stop_ids(tokenizer)
    out: list[str] = [""] * len(questions)
    keys = [si for si, _ in questions]
    for kv, part in shared_slot_batches(llm, prefix, slots, keys, pad_id, slot_batch, row_batch, progress):
        with torch.no_grad():
            lg, kvq = prefill(llm, kv, [[questions[qi][1]] for qi in part], pad_id)
        gen = greedy_decode(llm, kvq, lg[:, -1], max_new_tokens, stop)
        for qi, g in zip(part, gen):
            out[qi] = decode_answer(tokenizer, g, anchor)
    return out


def stop_ids(tokenizer) -> list[int]:
    """Token ids that end an answer: end of sequence, padding, and the token a newline starts with."""
    stop = [i for i in {tokenizer.eos_token_id, tokenizer.pad_token_id} if i is not None]
    return stop + tokenizer("\n", add_special_tokens=False)["input_ids"][:1]
