"""The shared chat scaffold of notebook 04, the reader's embeddings, and right padding.

A prompt is a list of *segments*: 1-D ``LongTensor`` token ids, or ``(k, d)`` float tensors that go
straight into ``inputs_embeds``. Every mode uses the same chat scaffold::

    [pre ids] [context slot: tokens | M vectors | nothing] [post ids: question + assistant header] [anchor ids]

Batches are assembled over cached key/values in :mod:`.cache`. Continuous vectors are rescaled to the
RMS of real token embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

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


def decoder_layers(model):
    base = model.base_model
    for name in ("layers", "h", "blocks"):
        layers = getattr(base, name, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    return None


# ----------------------------------------------------------------------------- prompts
@dataclass
class Scaffold:
    """The shared chat scaffold: ids before the context, and a function for the ids after it."""

    tokenizer: object
    pre_ids: torch.Tensor
    post_template: tuple[str, str]  # text before / after the question, after the context
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


def make_scaffold(
    tokenizer,
    system_prompt: str = "Answer the question with a short span copied from the context.",
    anchor: str = "Answer:",
) -> Scaffold:
    """Build the scaffold from the tokenizer's chat template (a plain fallback when it has none).

    The user message is ``"Context:\\n{context}\\n\\nQuestion: {question}"``; the assistant turn is
    opened by the template's generation prompt.
    """
    qmark = "\u0001Q\u0001"
    user = f"Context:\n{CONTEXT_PLACEHOLDER}\n\nQuestion: {qmark}"
    text = None
    if getattr(tokenizer, "chat_template", None):
        msgs = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": user}
        ]
        try:
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        except Exception:  # a template without system role support: fold it into the user turn
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": (system_prompt + "\n\n" + user) if system_prompt else user}],
                tokenize=False,
                add_generation_prompt=True,
            )
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
    return Scaffold(
        tokenizer, pre_ids, (qa, qb), anchor, encode(tokenizer, anchor) if anchor else torch.zeros(0, dtype=torch.long)
    )


# ----------------------------------------------------------------------------- context representations
def pad_right(seqs: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D id tensors -> (ids (B, T), mask (B, T))."""
    T = max(max(s.shape[0] for s in seqs), 1)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : s.shape[0]] = s
        mask[b, : s.shape[0]] = 1
    return ids, mask
