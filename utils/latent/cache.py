"""What makes a step cheap: the frozen reader's key/values for a shared prompt prefix, layered prefill
with padding between cached and new tokens, greedy decoding from a cache, and the cached features
(hidden states the encoder reads, the teacher's top-k answer logits).

A *KV* is ``(layers, mask)``: ``layers`` a list of ``(keys, values)`` per decoder layer, shaped
``(B, heads, T, head_dim)``, and ``mask`` (B, T) long (1 = a real token). :func:`prefill` appends a
batch of rows (each a list of segments: 1-D token ids or ``(k, d)`` vectors) to a KV, left-padding
the new part so that padding sits *between* the cached tokens and each row's own tokens; position ids
are ``cumsum(mask) - 1`` over the whole row, so every row's real tokens have the positions they would
have without padding and without the cache (tested against the uncached reader).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .prompts import decoder_layers, embed_ids, input_embedding, pad_right


@dataclass
class KV:
    layers: list  # [(keys, values)] per decoder layer, (B, heads, T, head_dim)
    mask: torch.Tensor  # (B, T) long

    @property
    def size(self) -> int:
        return self.mask.shape[0]

    def select(self, index: Sequence[int] | torch.Tensor) -> "KV":
        """Rows ``index`` (repeats allowed): one context's cache shared by each of its questions."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.mask.device)
        return KV([(k.index_select(0, idx), v.index_select(0, idx)) for k, v in self.layers], self.mask[idx])

    def expand(self, B: int) -> "KV":
        """A batch-1 KV repeated ``B`` times (views, no copy)."""
        return KV([(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in self.layers], self.mask.expand(B, -1))


def _cache(kv: KV | None):
    from transformers import DynamicCache

    return DynamicCache() if kv is None else DynamicCache([(k, v) for k, v in kv.layers])


def _row_embeds(model, rows, T: int, pad_id: int):
    """Left-padded (B, T) ids or (B, T, d) embeddings and mask for rows of segments."""
    lens = [sum(s.shape[0] for s in r) for r in rows]
    any_vec = any(s.dtype.is_floating_point for r in rows for s in r)
    dev = input_embedding(model).weight.device
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for b, r in enumerate(rows):
        mask[b, T - lens[b] :] = 1
        col = T - lens[b]
        for s in r:
            if not s.dtype.is_floating_point:
                ids[b, col : col + s.shape[0]] = s
            col += s.shape[0]
    if not any_vec:
        return ids.to(dev), None, mask.to(dev)
    x = embed_ids(model, ids.to(dev))
    out = []
    for b, r in enumerate(rows):  # splice vectors in (keeps autograd through them)
        pieces, col = [x[b, : T - lens[b]]], T - lens[b]
        for s in r:
            pieces.append(s.to(x.dtype) if s.dtype.is_floating_point else x[b, col : col + s.shape[0]])
            col += s.shape[0]
        out.append(torch.cat(pieces, 0))
    return None, torch.stack(out, 0), mask.to(dev)


def prefill(
    model,
    kv: KV | None,
    rows: Sequence[Sequence[torch.Tensor]],
    pad_id: int,
    columns: torch.Tensor | None = None,
    keep_cache: bool = True,
) -> tuple[torch.Tensor, KV | None]:
    """Run ``rows`` after ``kv`` (module docstring).

    ``columns`` (B, P) long: the new columns whose next-token logits are wanted (default: the last
    one). Returns ``(logits (B, P, V) float32, the extended KV or None)``.
    """
    T = max(max(sum(s.shape[0] for s in r) for r in rows), 1)
    ids, emb, mask = _row_embeds(model, rows, T, pad_id)
    B = mask.shape[0]
    full = mask if kv is None else torch.cat([kv.mask.to(mask.device), mask], 1)
    pos = (full.cumsum(-1) - 1).clamp(min=0)[:, full.shape[1] - T :]
    out = model.base_model(
        input_ids=ids,
        inputs_embeds=emb,
        attention_mask=full,
        position_ids=pos,
        cache=_cache(kv),
        use_cache=True,
    )
    h = out.last_hidden_state
    if columns is None:
        columns = torch.full((B, 1), T - 1, dtype=torch.long)
    h = torch.gather(h, 1, columns.to(h.device).unsqueeze(-1).expand(-1, -1, h.shape[-1]))
    logits = model.get_output_embeddings()(h).float()
    new = KV([(layer.keys, layer.values) for layer in out.past_key_values.layers], full) if keep_cache else None
    return logits, new


@torch.no_grad()
def prefix_kv(model, ids: torch.Tensor) -> KV:
    """The reader's key/values for one shared prefix (batch 1); ``.expand(B)`` for a batch."""
    return prefill(model, None, [[ids]], 0)[1]


@torch.no_grad()
def greedy_decode(
    model, kv: KV, first_logits: torch.Tensor, max_new_tokens: int, stop_ids: Sequence[int]
) -> list[list[int]]:
    """Greedy continuation of every row of ``kv`` from the logits of its last token (B, V)."""
    stop = {int(i) for i in stop_ids}
    B = kv.size
    done = [False] * B
    gen: list[list[int]] = [[] for _ in range(B)]
    logits = first_logits
    cache, mask = _cache(kv), kv.mask
    for step in range(max_new_tokens):
        nxt = logits.argmax(-1)
        for b in range(B):
            t = int(nxt[b])
            if not done[b]:
                if t in stop:
                    done[b] = True
                else:
                    gen[b].append(t)
        if all(done) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=mask.device)], 1)
        pos = (mask.sum(-1, keepdim=True) - 1).to(mask.device)
        out = model.base_model(
            input_ids=nxt.view(B, 1), attention_mask=mask, position_ids=pos, cache=cache, use_cache=True
        )
        cache = out.past_key_values
        logits = model.get_output_embeddings()(out.last_hidden_state[:, -1]).float()
    return gen


def answer_columns(T: int, answer_lens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For left-padded rows ending in ``answer[:-1]``: the columns predicting each answer token, and validity.

    Row b's logits for answer token i sit at column ``T - A_b + i`` (the last prompt token for i = 0).
    """
    A = max(max(answer_lens), 1)
    i = torch.arange(A).view(1, -1)
    a = torch.tensor(list(answer_lens)).view(-1, 1)
    return (T - a + i).clamp(min=0, max=T - 1), i < a


def teacher_forced_logits(model, kv: KV | None, prompts, answers: Sequence[torch.Tensor], pad_id: int):
    """Logits over each gold answer after ``prompts`` (rows of segments), teacher-forced, with ``kv`` before.

    Returns ``(logits (B, A, V), targets (B, A), valid (B, A))``; differentiable through vector segments.
    """
    rows = [list(p) + [a[:-1]] for p, a in zip(prompts, answers)]
    T = max(sum(s.shape[0] for s in r) for r in rows)
    cols, valid = answer_columns(T, [a.shape[0] for a in answers])
    logits, _ = prefill(model, kv, rows, pad_id, columns=cols, keep_cache=False)
    targets = torch.zeros(valid.shape, dtype=torch.long)
    for b, a in enumerate(answers):
        targets[b, : a.shape[0]] = a
    return logits, targets.to(logits.device), valid.to(logits.device)


# ----------------------------------------------------------------------------- cached features
class _Stop(Exception):
    def __init__(self, value):
        self.value = value


@torch.no_grad()
def hidden_states(model, ids: torch.Tensor, mask: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
    """Hidden states (B, T, d) of the reader at each of ``layers`` (0 = embeddings) over right-padded ids;
    the forward pass stops after the deepest requested layer."""
    dev = input_embedding(model).weight.device
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    blocks = decoder_layers(model)
    deepest = max(layers)
    got: dict[int, torch.Tensor] = {0: embed_ids(model, ids)} if 0 in layers else {}
    hooks = []

    def make(i):
        def hook(_m, _inp, out):
            got[i] = out[0] if isinstance(out, tuple) else out
            if i == deepest:
                raise _Stop(None)

        return hook

    if deepest > 0:
        for i in sorted(set(layers) - {0}):
            hooks.append(blocks[i - 1].register_forward_hook(make(i)))
        try:
            model.base_model(
                input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), use_cache=False
            )
        except _Stop:
            pass
        finally:
            for h in hooks:
                h.remove()
    return [got[i] for i in layers]


@torch.no_grad()
def cache_hidden(
    model,
    ctx_ids: Sequence[torch.Tensor],
    layers: Sequence[int],
    echo: bool = False,
    batch_size: int = 16,
    progress: Callable | None = None,
) -> list[torch.Tensor]:
    """Per context: (n, len(layers), d) float16 hidden states. With ``echo`` the context is fed twice and
    the states of the second copy are kept (each has seen the whole context once)."""
    out = []
    it = range(0, len(ctx_ids), batch_size)
    for s in progress(it) if progress else it:
        chunk = ctx_ids[s : s + batch_size]
        seqs = [torch.cat([c, c]) if echo else c for c in chunk]
        ids, mask = pad_right(seqs, 0)
        hs = torch.stack(hidden_states(model, ids, mask, layers), 2).to(torch.float16).cpu()
        for b, c in enumerate(chunk):
            n = c.shape[0]
            out.append(hs[b, n : 2 * n].clone() if echo else hs[b, :n].clone())
    return out


def shared_slot_batches(
    model,
    prefix: KV,
    slots: Sequence[torch.Tensor],
    keys: Sequence[int],
    pad_id: int,
    slot_batch: int,
    row_batch: int,
    progress: Callable | None = None,
):
    """Rows grouped by the slot they read (``keys[j]``: row j's index into ``slots``): each slot is run once
    after ``prefix`` (``slot_batch`` at a time) and its key/values are shared by its rows. Yields ``(kv,
    rows)``: the cache of at most ``row_batch`` rows and their indices; ``progress`` wraps the slot batches."""
    by_slot: dict[int, list[int]] = {}
    for j, c in enumerate(keys):
        by_slot.setdefault(c, []).append(j)
    order = sorted(by_slot)
    it = range(0, len(order), slot_batch)
    for s in progress(it) if progress else it:
        chunk = order[s : s + slot_batch]
        with torch.no_grad():
            _, kv = prefill(model, prefix.expand(len(chunk)), [[slots[c]] for c in chunk], pad_id)
        rows = [(b, j) for b, c in enumerate(chunk) for j in by_slot[c]]
        for r in range(0, len(rows), row_batch):
            part = rows[r : r + row_batch]
            yield kv.select([b for b, _ in part]), [j for _, j in part]


@torch.no_grad()
def teacher_topk(
    model,
    prefix: KV,
    contexts: Sequence[torch.Tensor],
    items: Sequence[tuple[int, torch.Tensor, torch.Tensor]],
    pad_id: int,
    k: int = 32,
    K: int = 4,
    ctx_batch: int = 8,
    progress: Callable | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The reader's top-``k`` log-probabilities over the first ``K`` answer tokens, reading the full context.

    ``items``: ``(context index, question ids, answer ids)``; each context is run once after the prefix and
    its key/values are shared by its questions. Per item ``(values (a, k) float16, indices (a, k) int32)``
    with ``a = min(K, answer length)``, in the order of ``items``.
    """
    out: list = [None] * len(items)
    keys = [c for c, _, _ in items]
    for kv, part in shared_slot_batches(model, prefix, contexts, keys, pad_id, ctx_batch, 4 * ctx_batch, progress):
        ans = [items[j][2][:K] for j in part]
        lg, _, _ = teacher_forced_logits(model, kv, [[items[j][1]] for j in part], ans, pad_id)
        lp = torch.log_softmax(lg.float(), -1).topk(k, -1)
        for i, (j, a) in enumerate(zip(part, ans)):
            out[j] = (lp.values[i, : a.shape[0]].half().cpu(), lp.indices[i, : a.shape[0]].int().cpu())
    return out
