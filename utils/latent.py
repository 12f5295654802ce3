"""Feeding a frozen causal LM a context as tokens or as vectors, and measuring what it answers.

A prompt is a list of *segments*: 1-D ``LongTensor`` token ids, or ``(k, d)`` float tensors that go
straight into ``inputs_embeds``. Every mode uses the same chat scaffold::

    [pre ids] [context: tokens | M vectors] [post ids: question + assistant header] ([anchor ids])

Batches are left-padded with an attention mask and position ids ``cumsum(mask) - 1`` so a row's
real tokens sit at positions 0..n-1 whatever its padding; greedy decoding reuses the KV cache.

Modes (``MODES``):
  text          context as tokens through ``input_ids``
  text_embed    the same prompt through ``inputs_embeds`` (must reproduce ``text``)
  anchor        ``text_embed`` plus an anchor string (e.g. "Answer:") before the answer
  token_budget  the first M context tokens, question and scaffold whole
  mean_pool     the context's token embeddings mean-pooled into M contiguous chunks (no training)
  adapter       ``mean_pool`` vectors through a trained adapter
  latent        a trained encoder's M vectors through its adapter (see :mod:`utils.latent_train`)
All continuous vectors are rescaled to the RMS of the model's real token embeddings.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

MODES = ("text", "text_embed", "anchor", "token_budget", "mean_pool", "adapter", "latent")
EMBED_MODES = ("text_embed", "anchor", "mean_pool", "adapter", "latent")
CONTEXT_PLACEHOLDER = "\u0000CTX\u0000"


# ----------------------------------------------------------------------------- model access
def input_embedding(model) -> torch.nn.Embedding:
    return model.get_input_embeddings()


def embed_ids(model, ids: torch.Tensor) -> torch.Tensor:
    """Token ids (...,) -> input embeddings (..., d) of the frozen model."""
    emb = input_embedding(model)
    return emb(ids.to(emb.weight.device))


def token_embedding_rms(model) -> float:
    """RMS of the real token embedding entries, sqrt(mean(E**2)) over the vocabulary."""
    w = input_embedding(model).weight.detach().float()
    return float(w.pow(2).mean().sqrt())


def scale_to_rms(x: torch.Tensor, target_rms: float, eps: float = 1e-6) -> torch.Tensor:
    """Rescale each vector (last dim) so that its RMS equals ``target_rms``."""
    rms = x.float().pow(2).mean(-1, keepdim=True).add(eps).sqrt()
    return (x * (target_rms / rms)).to(x.dtype)


def hidden_and_logits(model, inputs_embeds=None, input_ids=None, attention_mask=None, position_ids=None,
                      positions: torch.Tensor | None = None, past_key_values=None, use_cache=False):
    """Run the frozen LM; logits only where needed.

    ``positions`` (B, P) long: the columns whose next-token logits are wanted (all columns if None).
    Returns ``(logits (B, P, V) float32, past_key_values)``.
    """
    base = model.base_model
    out = base(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
               position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache)
    h = out.last_hidden_state
    if positions is not None:
        h = torch.gather(h, 1, positions.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
    logits = model.get_output_embeddings()(h).float()
    return logits, (out.past_key_values if use_cache else None)


class _StopForward(Exception):
    def __init__(self, value):
        self.value = value


def _decoder_layers(model):
    base = model.base_model
    for name in ("layers", "h", "blocks"):
        layers = getattr(base, name, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    return None


@torch.no_grad()
def context_hidden_states(model, ids: torch.Tensor, mask: torch.Tensor, layer: int) -> torch.Tensor:
    """Hidden states (B, T, d) of the frozen model's ``layer`` (0 = embeddings) over right-padded ids.

    Equals ``output_hidden_states[layer]`` for ``0 <= layer < L``, but stops the forward pass after
    decoder layer ``layer`` (a hook raises), so only ``layer / L`` of the model runs.
    """
    dev = input_embedding(model).weight.device
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    kw = dict(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev))
    layers = _decoder_layers(model)
    if layer == 0:
        return embed_ids(model, ids)
    if layers is not None and 0 < layer < len(layers):
        def hook(_m, _inp, out):
            raise _StopForward(out[0] if isinstance(out, tuple) else out)
        h = layers[layer - 1].register_forward_hook(hook)
        try:
            model.base_model(**kw, use_cache=False)
        except _StopForward as stop:
            return stop.value
        finally:
            h.remove()
    hs = model.base_model(**kw, output_hidden_states=True).hidden_states
    if not -len(hs) <= layer < len(hs):
        raise IndexError(f"hidden layer {layer} out of range: the model has {len(hs) - 1} layers")
    return hs[layer]


# ----------------------------------------------------------------------------- prompts
@dataclass
class Scaffold:
    """The shared chat scaffold: ids before the context, and a function for the ids after it."""
    tokenizer: object
    pre_ids: torch.Tensor
    post_template: tuple[str, str]          # text before / after the question, after the context
    anchor: str
    anchor_ids: torch.Tensor

    def post_ids(self, question: str) -> torch.Tensor:
        a, b = self.post_template
        return encode(self.tokenizer, a + question + b)

    def answer_ids(self, answer: str, anchored: bool = False) -> torch.Tensor:
        """Gold answer tokens as the continuation (a leading space after an anchor)."""
        return encode(self.tokenizer, (" " + answer.strip()) if anchored else answer.strip())


def encode(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def make_scaffold(tokenizer, system_prompt: str = "Answer the question with a short span copied from the context.",
                  anchor: str = "Answer:") -> Scaffold:
    """Build the scaffold from the tokenizer's chat template (a plain fallback when it has none).

    The user message is ``"Context:\\n{context}\\n\\nQuestion: {question}"``; the assistant turn is
    opened by the template's generation prompt.
    """
    qmark = "\u0001Q\u0001"
    user = f"Context:\n{CONTEXT_PLACEHOLDER}\n\nQuestion: {qmark}"
    text = None
    if getattr(tokenizer, "chat_template", None):
        msgs = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
               [{"role": "user", "content": user}]
        try:
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        except Exception:  # a template without system role support: fold it into the user turn
            text = tokenizer.apply_chat_template([{"role": "user", "content": (system_prompt + "\n\n" + user)
                                                   if system_prompt else user}],
                                                 tokenize=False, add_generation_prompt=True)
    if text is None:
        text = (system_prompt + "\n\n" if system_prompt else "") + user + "\nAnswer:"
        anchor = ""
    pre, post = text.split(CONTEXT_PLACEHOLDER)
    qa, qb = post.split(qmark)
    bos = getattr(tokenizer, "bos_token", None)
    pre_ids = encode(tokenizer, pre)
    if bos and not pre.startswith(bos) and getattr(tokenizer, "add_bos_token", False):
        pre_ids = torch.cat([torch.tensor([tokenizer.bos_token_id]), pre_ids])
    if anchor and qb.rstrip().endswith(anchor.strip()):
        anchor = ""  # the scaffold already ends with the anchor: never append it twice
    return Scaffold(tokenizer, pre_ids, (qa, qb), anchor, encode(tokenizer, anchor) if anchor else
                    torch.zeros(0, dtype=torch.long))


@dataclass
class EncodedExample:
    """Token ids of one example's pieces (1-D long tensors)."""
    pre: torch.Tensor
    context: torch.Tensor
    post: torch.Tensor
    answer: torch.Tensor            # first gold answer, plain continuation
    answer_anchored: torch.Tensor   # first gold answer after the anchor
    anchor: torch.Tensor            # the scaffold's anchor ids


def encode_examples(scaffold: Scaffold, examples, max_context_tokens: int | None = None) -> list[EncodedExample]:
    """Tokenise the context, question and first gold answer of each example."""
    out = []
    for e in examples:
        ctx = encode(scaffold.tokenizer, e.context)
        if max_context_tokens:
            ctx = ctx[:max_context_tokens]
        out.append(EncodedExample(scaffold.pre_ids, ctx, scaffold.post_ids(e.question),
                                  scaffold.answer_ids(e.answers[0]), scaffold.answer_ids(e.answers[0], True),
                                  scaffold.anchor_ids))
    return out


# ----------------------------------------------------------------------------- batching
@dataclass
class Batch:
    inputs_embeds: torch.Tensor | None   # (B, T, d) when any segment is a vector
    input_ids: torch.Tensor | None       # (B, T) when every segment is tokens
    attention_mask: torch.Tensor         # (B, T) long, 0 on left padding
    position_ids: torch.Tensor           # (B, T) long

    @property
    def size(self) -> int:
        return self.attention_mask.shape[0]


def assemble(model, prompts: Sequence[Sequence[torch.Tensor]], pad_id: int, as_embeds: bool,
             right: Sequence[torch.Tensor] | None = None) -> tuple[Batch, torch.Tensor]:
    """Left-pad a batch of segment lists (plus optional right-padded continuation ids).

    ``prompts[b]`` is a list of segments (1-D long ids or (k, d) vectors). ``right[b]`` (optional)
    is a 1-D id tensor placed after the prompt; rows are left-padded to a common prompt length and
    right-padded after the continuation. Returns ``(batch, prompt_end)`` where ``prompt_end[b]`` is
    the column of the last prompt token (the same for every row).
    """
    emb = input_embedding(model)
    dev, dtype = emb.weight.device, emb.weight.dtype
    lens = [sum(s.shape[0] for s in p) for p in prompts]
    rlens = [r.shape[0] for r in right] if right is not None else [0] * len(prompts)
    T0, R = max(lens), max(rlens)
    B = len(prompts)
    mask = torch.zeros(B, T0 + R, dtype=torch.long)
    ids = torch.full((B, T0 + R), pad_id, dtype=torch.long)
    any_vec = any(s.dtype.is_floating_point for p in prompts for s in p)
    if any_vec and not as_embeds:
        raise ValueError("a prompt with vector segments must go through inputs_embeds (as_embeds=True)")
    rows = []
    for b, p in enumerate(prompts):
        start = T0 - lens[b]
        mask[b, start:T0 + rlens[b]] = 1
        col, parts = start, []
        for s in p:
            if s.dtype.is_floating_point:
                parts.append(s.to(dev, dtype))
            else:
                ids[b, col:col + s.shape[0]] = s
                parts.append(None)
            col += s.shape[0]
        if right is not None:
            ids[b, T0:T0 + rlens[b]] = right[b]
        rows.append(parts)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    if not as_embeds:
        return Batch(None, ids.to(dev), mask.to(dev), pos.to(dev)), torch.full((B,), T0 - 1)
    x = emb(ids.to(dev))
    if any_vec:  # splice the vector segments in (keeps autograd through them)
        out_rows = []
        for b, p in enumerate(prompts):
            start, pieces, col = T0 - lens[b], [x[b, :T0 - lens[b]]], T0 - lens[b]
            for s, v in zip(p, rows[b]):
                pieces.append(v if v is not None else x[b, col:col + s.shape[0]])
                col += s.shape[0]
            pieces.append(x[b, T0:])
            out_rows.append(torch.cat(pieces, 0))
        x = torch.stack(out_rows, 0)
    return Batch(x, None, mask.to(dev), pos.to(dev)), torch.full((B,), T0 - 1)


# ----------------------------------------------------------------------------- decoding and scoring
@torch.no_grad()
def greedy_generate(model, batch: Batch, max_new_tokens: int, eos_ids: Sequence[int], use_cache: bool = True,
                    stop_on_newline_ids: Sequence[int] = ()) -> tuple[list[list[int]], torch.Tensor]:
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
    past, first_logits = None, None
    last = torch.full((B, 1), pos.shape[1] - 1, dtype=torch.long, device=mask.device)
    for step in range(max_new_tokens):
        if step == 0 or not use_cache:
            logits, past = hidden_and_logits(model, inputs_embeds=x_emb, input_ids=x_ids, attention_mask=mask,
                                             position_ids=pos, positions=last, use_cache=use_cache)
        else:
            kw = {"input_ids": nxt.view(B, 1)} if x_ids is not None else {"inputs_embeds": emb(nxt.view(B, 1))}
            logits, past = hidden_and_logits(model, attention_mask=mask, position_ids=pos[:, -1:],
                                             positions=torch.zeros((B, 1), dtype=torch.long, device=mask.device),
                                             past_key_values=past, use_cache=True, **kw)
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


def answer_logits(model, prompts, answers: Sequence[torch.Tensor], pad_id: int, k: int | None = None,
                  as_embeds: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
    logits, _ = hidden_and_logits(model, inputs_embeds=batch.inputs_embeds, input_ids=batch.input_ids,
                                  attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                                  positions=cols)
    targets = torch.zeros(len(ans), A, dtype=torch.long)
    valid = torch.zeros(len(ans), A, dtype=torch.bool)
    for b, a in enumerate(ans):
        targets[b, :a.shape[0]] = a
        valid[b, :a.shape[0]] = True
    return logits, targets.to(logits.device), valid.to(logits.device)


# ----------------------------------------------------------------------------- context representations
def chunk_mean_pool(vectors: torch.Tensor, M: int) -> torch.Tensor:
    """Mean of ``M`` contiguous, near-equal chunks of a (n, d) sequence -> (M, d).

    Chunk j holds positions ``floor(j*n/M) .. floor((j+1)*n/M) - 1``; when n < M a chunk that would
    be empty takes the single token at ``floor(j*n/M)``.
    """
    n = vectors.shape[0]
    if n == 0:
        raise ValueError("cannot pool an empty context")
    out = []
    for j in range(M):
        a, b = (j * n) // M, ((j + 1) * n) // M
        out.append(vectors[min(a, n - 1):max(b, min(a, n - 1) + 1)].mean(0))
    return torch.stack(out, 0)


def mean_pool_vectors(model, ctx_ids: Sequence[torch.Tensor], M: int, target_rms: float) -> list[torch.Tensor]:
    """The ``mean_pool`` mode's M vectors per example (no training), RMS-matched."""
    with torch.no_grad():
        return [scale_to_rms(chunk_mean_pool(embed_ids(model, c), M), target_rms) for c in ctx_ids]


def pad_right(seqs: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D id tensors -> (ids (B, T), mask (B, T))."""
    T = max(max(s.shape[0] for s in seqs), 1)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :s.shape[0]] = s
        mask[b, :s.shape[0]] = 1
    return ids, mask


def build_prompts(mode: str, encoded: Sequence[EncodedExample], scaffold: Scaffold, model, M: int,
                  target_rms: float, context_vectors: Callable | None = None,
                  anchored: bool | None = None) -> list[list[torch.Tensor]]:
    """Segment lists for ``mode`` (see module docstring).

    ``anchored`` appends the anchor ids after the question (default: only in the ``anchor`` mode;
    the notebook can anchor the compressed modes too so that every compared mode answers in the
    same format).

    ``context_vectors(list of ctx ids) -> list of (M, d)`` supplies the vectors of the
    ``adapter`` and ``latent`` modes (trained components, see :mod:`utils.latent_train`).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    if anchored is None or mode == "anchor":
        anchored = anchored or mode == "anchor"
    tail = [scaffold.anchor_ids] if anchored and scaffold.anchor_ids.numel() else []
    if mode in ("text", "text_embed", "anchor"):
        return [[e.pre, e.context, e.post] + tail for e in encoded]
    if mode == "token_budget":
        return [[e.pre, e.context[:M], e.post] + tail for e in encoded]
    if mode == "mean_pool":
        vecs = mean_pool_vectors(model, [e.context for e in encoded], M, target_rms)
    else:
        if context_vectors is None:
            raise ValueError(f"mode {mode!r} needs trained context_vectors (train the encoder first)")
        with torch.no_grad():
            vecs = context_vectors([e.context for e in encoded])
    return [[e.pre, v, e.post] + tail for e, v in zip(encoded, vecs)]


# ----------------------------------------------------------------------------- evaluation
def decode_answer(tokenizer, ids: Sequence[int], anchor: str = "") -> str:
    """Decoded generation, first line, with a repeated anchor prefix removed."""
    s = tokenizer.decode(list(ids), skip_special_tokens=True).strip()
    s = s.split("\n")[0].strip()
    if anchor and s.startswith(anchor):
        s = s[len(anchor):].strip()
    return s


def diversity_stats(first_tokens: Sequence[int], predictions: Sequence[str], tokenizer=None,
                    collapse_share: float = 0.5, top: int = 5) -> dict:
    """Distinct first tokens / predictions and a mode-collapse flag.

    ``collapsed`` is True when the most common prediction covers more than ``collapse_share`` of
    examples (and there are at least 4 examples) or when every example gets the same first token.
    """
    n = len(predictions)
    fc = Counter(int(t) for t in first_tokens)
    pc = Counter(predictions)
    dom_share = pc.most_common(1)[0][1] / n if n else float("nan")
    # t < 0 marks an empty generation (the first token was a stop token)
    first_dom = [((tokenizer.decode([t]) if t >= 0 else "<empty>") if tokenizer is not None else t, c)
                 for t, c in fc.most_common(top)]
    return {"distinct_first_tokens": len(fc), "distinct_predictions": len(pc),
            "dominant_predictions": pc.most_common(top), "dominant_first_tokens": first_dom,
            "dominant_share": dom_share,
            "collapsed": bool(n >= 4 and (dom_share > collapse_share or len(fc) == 1))}


def evaluate_mode(mode: str, model, tokenizer, scaffold: Scaffold, encoded: Sequence[EncodedExample],
                  M: int, target_rms: float, batch_size: int = 8, max_new_tokens: int = 12,
                  context_vectors: Callable | None = None, progress: Callable | None = None,
                  anchored: bool | None = None) -> dict:
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
    for s in (progress(it) if progress else it):
        chunk = encoded[s:s + batch_size]
        t0 = time.perf_counter()
        prompts = build_prompts(mode, chunk, scaffold, model, M, target_rms, context_vectors, anchored)
        batch, _ = assemble(model, prompts, pad_id, as_embeds)
        g, _first = greedy_generate(model, batch, max_new_tokens, eos)
        gen_seconds += time.perf_counter() - t0
        with torch.no_grad():
            answers = [e.answer_anchored if anchored else e.answer for e in chunk]
            lg, tg, va = answer_logits(model, prompts, answers, pad_id, as_embeds=as_embeds)
            lp = torch.log_softmax(lg, -1)
            tok_nll = -lp.gather(-1, tg.unsqueeze(-1)).squeeze(-1)
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
    return {"mode": mode, "anchored": anchored, "predictions": preds, "generated_ids": gens, "first_top1": top1, "first_top5": top5,
            "gold_nll": nll, "n_context_tokens": [int(e.context.shape[0]) for e in encoded],
            "n_prompt_vectors": nvec, "seconds": gen_seconds,
            "examples_per_s": len(encoded) / gen_seconds if gen_seconds > 0 else float("nan")}


def agreement_rate(a: Sequence, b: Sequence) -> float:
    """Fraction of positions where two prediction lists are equal."""
    if len(a) != len(b):
        raise ValueError("prediction lists differ in length")
    return float(np.mean([x == y for x, y in zip(a, b)])) if a else float("nan")
