"""Architecture families and how their weight names map to common roles.

A *role* is one of ``q, k, v, o, gate, up, down`` (the projections of one block). Every accessor
returns the role in the ``nn.Linear`` convention ``(out_features, in_features)``:

====  ===================  =============================================================
role  shape                meaning
====  ===================  =============================================================
q     (h * d_head, d)      query projection (all heads stacked by rows)
k     (n_kv * d_head, d)   key projection (grouped-query attention: n_kv <= h)
v     (n_kv * d_head, d)   value projection
o     (d, h * d_head)      attention output projection
gate  (d_ff, d)            gated-MLP gate (llama family only)
up    (d_ff, d)            MLP input projection (GPT-2 ``c_fc``, BERT ``intermediate``)
down  (d, d_ff)            MLP output projection
====  ===================  =============================================================

Families:

* ``llama``: Llama, Mistral, Qwen2 / Qwen3 style decoders (separate q/k/v/o, gated MLP, GQA).
* ``gpt2``: GPT-2 (fused ``c_attn`` of shape (d, 3d) and Conv1D storage ``(in, out)``: transposed
  and split here).
* ``bert``: BERT-style encoders (``attention.self.query/key/value``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
WEIGHT_TYPE = {"q": "W_Q", "k": "W_K", "v": "W_V", "o": "W_O", "gate": "W_gate", "up": "W_up", "down": "W_down"}

# Hugging Face ``model_type`` -> family
MODEL_TYPES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "smollm3": "llama",
    "gpt2": "gpt2",
    "bert": "bert",
    "roberta": "bert",
}
# GGUF ``general.architecture`` -> family (GGUF is read for llama-style decoders)
GGUF_ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama"}

SUPPORTED = "llama / mistral / qwen2 / qwen3 (family 'llama'), gpt2 (family 'gpt2'), bert / roberta (family 'bert')"


class UnsupportedArchitecture(ValueError):
    """The checkpoint's architecture is not one of the supported families."""


def family_of(model_type: str, source: str = "config.json") -> str:
    fam = MODEL_TYPES.get(str(model_type).lower())
    if fam is None:
        raise UnsupportedArchitecture(
            f"unsupported architecture {model_type!r} (from {source}). Supported families: {SUPPORTED}. "
            "Add a mapping in utils/arch.py to support another decoder."
        )
    return fam


@dataclass(frozen=True)
class HFNames:
    """Per-layer tensor-name templates of one family (``{p}`` = checkpoint prefix, ``{i}`` = layer)."""

    layer_regex: str
    roles: dict  # role -> template; GPT-2 q/k/v come from the fused ``qkv`` entry
    embeddings: dict  # weight_type -> template (model-level 2-D matrices)
    conv1d: bool = False


HF_NAMES = {
    "llama": HFNames(
        layer_regex=r"^(?P<p>.*?)layers\.(?P<i>\d+)\.self_attn\.q_proj\.weight$",
        roles={
            "q": "{p}layers.{i}.self_attn.q_proj.weight",
            "k": "{p}layers.{i}.self_attn.k_proj.weight",
            "v": "{p}layers.{i}.self_attn.v_proj.weight",
            "o": "{p}layers.{i}.self_attn.o_proj.weight",
            "gate": "{p}layers.{i}.mlp.gate_proj.weight",
            "up": "{p}layers.{i}.mlp.up_proj.weight",
            "down": "{p}layers.{i}.mlp.down_proj.weight",
        },
        embeddings={"W_embed": "{p}embed_tokens.weight", "W_unembed": "lm_head.weight"},
    ),
    "gpt2": HFNames(
        layer_regex=r"^(?P<p>.*?)h\.(?P<i>\d+)\.attn\.c_attn\.weight$",
        roles={
            "qkv": "{p}h.{i}.attn.c_attn.weight",
            "o": "{p}h.{i}.attn.c_proj.weight",
            "up": "{p}h.{i}.mlp.c_fc.weight",
            "down": "{p}h.{i}.mlp.c_proj.weight",
        },
        embeddings={"W_embed": "{p}wte.weight", "W_pos": "{p}wpe.weight", "W_unembed": "lm_head.weight"},
        conv1d=True,
    ),
    "bert": HFNames(
        layer_regex=r"^(?P<p>.*?)encoder\.layer\.(?P<i>\d+)\.attention\.self\.query\.weight$",
        roles={
            "q": "{p}encoder.layer.{i}.attention.self.query.weight",
            "k": "{p}encoder.layer.{i}.attention.self.key.weight",
            "v": "{p}encoder.layer.{i}.attention.self.value.weight",
            "o": "{p}encoder.layer.{i}.attention.output.dense.weight",
            "up": "{p}encoder.layer.{i}.intermediate.dense.weight",
            "down": "{p}encoder.layer.{i}.output.dense.weight",
        },
        embeddings={
            "W_embed": "{p}embeddings.word_embeddings.weight",
            "W_pos": "{p}embeddings.position_embeddings.weight",
        },
    ),
}

# GGUF (llama.cpp) names of the llama family
GGUF_ROLES = {
    "q": "blk.{i}.attn_q.weight",
    "k": "blk.{i}.attn_k.weight",
    "v": "blk.{i}.attn_v.weight",
    "o": "blk.{i}.attn_output.weight",
    "gate": "blk.{i}.ffn_gate.weight",
    "up": "blk.{i}.ffn_up.weight",
    "down": "blk.{i}.ffn_down.weight",
}
GGUF_EMBEDDINGS = {"W_embed": "token_embd.weight", "W_unembed": "output.weight"}


def roles_of(family: str) -> tuple[str, ...]:
    return ROLES if family == "llama" else ("q", "k", "v", "o", "up", "down")


def find_prefix(names, family: str) -> str:
    """The prefix before the layer stack (``model.``, ``transformer.``, ``bert.`` or empty)."""
    rx = re.compile(HF_NAMES[family].layer_regex)
    for n in names:
        m = rx.match(n)
        if m:
            return m.group("p")
    raise UnsupportedArchitecture(
        f"no {family} attention weights found in the checkpoint (looked for names matching "
        f"{HF_NAMES[family].layer_regex!r}); the config says {family} but the tensors disagree"
    )
