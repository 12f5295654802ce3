"""Model families as data: one table per family, read by every loader (no code per family).

Each :class:`Family` says, for one architecture (a set of Hugging Face ``model_type`` values and
llama.cpp GGUF architectures):

* **tensors**: where each *role* lives, as name templates relative to one block (``{i}`` the layer,
  ``{e}`` an expert), in Hugging Face safetensors (``hf``) and in llama.cpp's GGUF names (``gguf``);
  a role is a matrix (``q k v o``, ``gate up down``, the latent projections ``q_a q_b kv_a kv_b`` of
  multi-head latent attention, ``router`` and the experts' ``gate up down``, the shared experts
  ``shared_gate shared_up shared_down shared_router``) or a vector (norm gains and biases);
* **fused storage**: ``qkv`` (one matrix for queries, keys and values, in the layout ``qkv_layout``),
  ``gate_up`` (gate rows, then up rows), 3-D expert tensors (``experts_gate_up``, ``experts_down``:
  expert first) beside per-expert tensors; the readers split them into roles;
* **the attention** (:class:`AttentionSpec`): the input normalisation and its gain convention, QK-norm,
  the scale, a logit soft-cap, biases, partial rotary, ALiBi, a post-attention norm: what the attention
  does beyond ``softmax(q·k / sqrt(d_head))``;
* **the MLP** (:class:`MLPSpec`): gated or not, the activation, mixture of experts (which layers, how
  many experts, shared experts).

Every family here has a conformance test (``tests/test_families.py``) that builds a tiny random model
with transformers' own configuration class, saves it (safetensors, and GGUF where llama.cpp has the
architecture) and checks the project's reading against transformers' forward: attention logits,
OV circuits, MLP / experts, and that every parameter of two or more dimensions is read exactly once.
A ``model_type`` not in this table is refused by name (:class:`UnsupportedArchitecture`); to add a
family, add a table here and its case to that test.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

#: where a family is described (named in the error for an unknown architecture)
TABLE_PATH = "utils/weights/families.py"

#: per-layer matrix roles and their weight-type labels in the tables
WEIGHT_TYPE = {
    "q": "W_Q",
    "k": "W_K",
    "v": "W_V",
    "o": "W_O",
    "q_a": "W_Q_a",
    "q_b": "W_Q_b",
    "kv_a": "W_KV_a",
    "kv_b": "W_KV_b",
    "gate": "W_gate",
    "up": "W_up",
    "down": "W_down",
    "router": "W_router",
    "shared_gate": "W_shared_gate",
    "shared_up": "W_shared_up",
    "shared_down": "W_shared_down",
    "shared_router": "W_shared_router",
}
ROLE_OF = {v: k for k, v in WEIGHT_TYPE.items()}
#: roles that exist once per expert (with ``expert=e``)
EXPERT_ROLES = ("gate", "up", "down")
#: roles whose input side is the residual stream (d columns) / whose output side is (d rows)
D_IN_ROLES = ("q", "k", "v", "q_a", "kv_a", "gate", "up", "router", "shared_gate", "shared_up", "shared_router")
D_OUT_ROLES = ("o", "down", "shared_down")


class UnsupportedArchitecture(ValueError):
    """The checkpoint's architecture is not one of the families in the table."""


@dataclass(frozen=True)
class AttentionSpec:
    """What one family's attention does beyond ``softmax(q·k / sqrt(d_head))`` (module docstring).

    norm:        the normalisation of the attention's input: ``"rms"``, ``"layer"`` or None (no input norm:
                 OLMo 2 normalises the sublayer outputs; BERT is post-norm, its stream is already normalised)
    norm_offset: the gain is ``offset + w`` (Gemma stores ``w`` with gain ``1 + w``; its GGUF stores ``1 + w``)
    eps:         configuration keys of the norm's epsilon, first present wins
    qk_norm:     ``"head"`` (RMSNorm of each head's d_head vector: Qwen3, Gemma 3), ``"full"`` (of all
                 heads' h·d_head vector at once: OLMo 2) or None
    scale:       ``"head_dim"`` (1/sqrt(d_head)), ``"query_pre_attn_scalar"`` (Gemma 2/3), ``"mla"``
                 (1/sqrt(nope + rope) times the YaRN mscale², DeepSeek), ``"gpt2"`` (1/sqrt(d_head) if
                 ``scale_attn_weights``, divided by layer + 1 if ``scale_attn_by_inverse_layer_idx``)
    softcap:     configuration key of a logit soft-cap ``c·tanh(x / c)`` (Gemma 2), or None
    qkv_layout:  layout of a fused ``qkv`` tensor: ``"concat"`` (all q rows, all k, all v), ``"per_head"``
                 (per head q, k, v: GPT-NeoX), ``"falcon"`` (by the configuration: per KV group the group's
                 q heads then one k and one v; per head; or multi-query)
    mla:         multi-head latent attention (DeepSeek-V2/V3): q through ``q_a`` / ``q_b`` (or ``q``), keys and
                 values through ``kv_a`` (latent + a shared rotary key) and ``kv_b``
    rotary:      configuration keys of the rotary fraction or width (report only: rotary is the identity
                 at equal positions and is not part of a kernel)
    alibi:       configuration key that turns on ALiBi (a per-head linear position bias, not part of a kernel)
    parallel:    configuration key (or True) of a parallel block: attention and MLP read the same input
    """

    norm: str | None = "rms"
    norm_offset: float = 0.0
    eps: tuple[str, ...] = ("rms_norm_eps",)
    qk_norm: str | None = None
    scale: str = "head_dim"
    softcap: str | None = None
    qkv_layout: str = "concat"
    mla: bool = False
    rotary: tuple[str, ...] = ()
    alibi: str | None = None
    parallel: str | bool = False
    post_norm: bool = False


@dataclass(frozen=True)
class MLPSpec:
    """The MLP: gated (``act(gate) * up``) or not, the activation's configuration key, and experts.

    moe:      None (dense), ``"all"`` (every layer), ``"sparse_step"`` (Qwen-MoE: layers with
              ``(i + 1) % decoder_sparse_step == 0`` not in ``mlp_only_layers``), ``"first_k_dense"``
              (DeepSeek: layers from ``first_k_dense_replace`` on)
    n_experts / top_k / d_expert / d_shared: configuration keys (``d_shared``: a width key, or
              ``"n_shared_experts*moe_intermediate_size"``)
    router:   how the router turns logits into the top-k weights (report only; the conformance test reads
              transformers' own weights): ``"softmax_topk"``, ``"softmax_topk_norm"``, ``"sigmoid_group"``
    """

    gated: bool = True
    act: tuple[str, ...] = ("hidden_act",)
    d_ff: tuple[str, ...] = ("intermediate_size",)
    moe: str | None = None
    n_experts: str = ""
    top_k: str = ""
    d_expert: str = ""
    d_shared: str = ""
    shared_router: bool = False
    router: str = ""


@dataclass(frozen=True)
class Family:
    """One architecture family (module docstring)."""

    name: str
    model_types: tuple[str, ...]
    examples: str
    stack: str  # HF template of a block's prefix; {p} is whatever comes before it in the checkpoint
    hf: dict  # role -> template relative to the block prefix (a tuple: alternatives, the first present wins)
    hf_model: dict  # model-level weight type -> template ({p} = the checkpoint prefix)
    attention: AttentionSpec = AttentionSpec()
    mlp: MLPSpec = MLPSpec()
    gguf_archs: tuple[str, ...] = ()
    gguf: dict = field(default_factory=dict)  # role -> GGUF template ("blk.{i}." prefix included)
    gguf_model: dict = field(default_factory=dict)
    gguf_rotary_permuted: bool = False  # llama.cpp interleaves Q/K rows for rotary (llama arch)
    gguf_norm_offset: float = 0.0  # GGUF stores the whole gain for Gemma (its converter adds 1)
    causal: bool = True
    biases: str = ""  # attention biases: "" none, "optional" (a configuration flag), "q/k/v" or "all" (always)
    tied_default: bool = False  # tie_word_embeddings when the configuration does not say
    embed_padding: bool = True  # the token embedding has a padding row (zero at initialisation)
    kv_heads: str = "num_key_value_heads"  # configuration key of the KV heads ("" = as many as query heads)
    head_dim: str = "head_dim"  # configuration key of d_head ("" = d / h)
    conv1d: bool = False  # GPT-2: matrices stored (in, out)
    init_scaled: tuple[str, ...] = ()  # roles initialised with std / sqrt(2 n_layer) (GPT-2's c_proj)
    auto_class: str = "AutoModelForCausalLM"


# ------------------------------------------------------------------------------------------------
# building blocks of the tables (plain dicts, merged per family)
# ------------------------------------------------------------------------------------------------
_ATTN = {
    "q": "self_attn.q_proj.weight",
    "k": "self_attn.k_proj.weight",
    "v": "self_attn.v_proj.weight",
    "o": "self_attn.o_proj.weight",
    "q_bias": "self_attn.q_proj.bias",
    "k_bias": "self_attn.k_proj.bias",
    "v_bias": "self_attn.v_proj.bias",
    "o_bias": "self_attn.o_proj.bias",
    "attn_norm": "input_layernorm.weight",
}
_MLP = {
    "gate": "mlp.gate_proj.weight",
    "up": "mlp.up_proj.weight",
    "down": "mlp.down_proj.weight",
    "gate_bias": "mlp.gate_proj.bias",
    "up_bias": "mlp.up_proj.bias",
    "down_bias": "mlp.down_proj.bias",
}
_QK_NORM = {"q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight"}
_POST = {"post_attn_norm": "post_attention_layernorm.weight"}
_EXPERTS = {  # Qwen-MoE / DeepSeek per-expert tensors, and the fused 3-D ones transformers keeps in memory
    "router": "mlp.gate.weight",
    "experts_gate": "mlp.experts.{e}.gate_proj.weight",
    "experts_up": "mlp.experts.{e}.up_proj.weight",
    "experts_down": "mlp.experts.{e}.down_proj.weight",
    "experts_gate_up": "mlp.experts.gate_up_proj",
    "experts_down_fused": "mlp.experts.down_proj",
}
_LM = {"W_embed": "{p}embed_tokens.weight", "W_unembed": "lm_head.weight"}

_G_ATTN = {
    "q": "blk.{i}.attn_q.weight",
    "k": "blk.{i}.attn_k.weight",
    "v": "blk.{i}.attn_v.weight",
    "o": "blk.{i}.attn_output.weight",
    "q_bias": "blk.{i}.attn_q.bias",
    "k_bias": "blk.{i}.attn_k.bias",
    "v_bias": "blk.{i}.attn_v.bias",
    "o_bias": "blk.{i}.attn_output.bias",
    "attn_norm": "blk.{i}.attn_norm.weight",
    "attn_norm_bias": "blk.{i}.attn_norm.bias",
}
_G_MLP = {
    "gate": "blk.{i}.ffn_gate.weight",
    "up": "blk.{i}.ffn_up.weight",
    "down": "blk.{i}.ffn_down.weight",
    "gate_bias": "blk.{i}.ffn_gate.bias",
    "up_bias": "blk.{i}.ffn_up.bias",
    "down_bias": "blk.{i}.ffn_down.bias",
}
_G_QK_NORM = {"q_norm": "blk.{i}.attn_q_norm.weight", "k_norm": "blk.{i}.attn_k_norm.weight"}
_G_POST = {"post_attn_norm": "blk.{i}.post_attention_norm.weight"}
_G_EXPERTS = {
    "router": "blk.{i}.ffn_gate_inp.weight",
    "experts_gate_fused": "blk.{i}.ffn_gate_exps.weight",
    "experts_up_fused": "blk.{i}.ffn_up_exps.weight",
    "experts_down_fused": "blk.{i}.ffn_down_exps.weight",
    "experts_gate": "blk.{i}.ffn_gate.{e}.weight",  # older llama.cpp files: one tensor per expert
    "experts_up": "blk.{i}.ffn_up.{e}.weight",
    "experts_down": "blk.{i}.ffn_down.{e}.weight",
}
_G_SHARED = {
    "shared_gate": "blk.{i}.ffn_gate_shexp.weight",
    "shared_up": "blk.{i}.ffn_up_shexp.weight",
    "shared_down": "blk.{i}.ffn_down_shexp.weight",
}
_G_LM = {"W_embed": "token_embd.weight", "W_unembed": "output.weight"}

_LLAMA_STACK = "{p}layers.{i}."
_GEMMA_ATTN = AttentionSpec(norm="rms", norm_offset=1.0)
_QWEN_MOE = MLPSpec(
    moe="sparse_step",
    n_experts="num_experts",
    top_k="num_experts_per_tok",
    d_expert="moe_intermediate_size",
    router="softmax_topk (renormalised if norm_topk_prob)",
)

#: the common decoder: llama-style names, RMSNorm, separate q / k / v / o, a gated MLP (families below change it)
_DECODER = Family(
    name="",
    model_types=(),
    examples="",
    stack=_LLAMA_STACK,
    hf={**_ATTN, **_MLP},
    hf_model=_LM,
    gguf={**_G_ATTN, **_G_MLP},
    gguf_model=_G_LM,
)
_G_FUSED_ATTN = {  # llama.cpp's names of a fused-qkv attention with biases and LayerNorm
    "qkv": "blk.{i}.attn_qkv.weight",
    "qkv_bias": "blk.{i}.attn_qkv.bias",
    "o": "blk.{i}.attn_output.weight",
    "o_bias": "blk.{i}.attn_output.bias",
    "attn_norm": "blk.{i}.attn_norm.weight",
    "attn_norm_bias": "blk.{i}.attn_norm.bias",
}
_G_PLAIN_MLP = {k: v for k, v in _G_MLP.items() if not k.startswith("gate")}  # up / down with biases
_LN = {"norm": "layer", "eps": ("layer_norm_epsilon",)}
_DEEPSEEK_ATTN = {
    "q": "self_attn.q_proj.weight",
    "q_a": "self_attn.q_a_proj.weight",
    "q_a_norm": "self_attn.q_a_layernorm.weight",
    "q_b": "self_attn.q_b_proj.weight",
    "kv_a": "self_attn.kv_a_proj_with_mqa.weight",
    "kv_a_norm": "self_attn.kv_a_layernorm.weight",
    "kv_b": "self_attn.kv_b_proj.weight",
    "o": "self_attn.o_proj.weight",
    "q_a_bias": "self_attn.q_a_proj.bias",
    "kv_a_bias": "self_attn.kv_a_proj_with_mqa.bias",
    "o_bias": "self_attn.o_proj.bias",
    "attn_norm": "input_layernorm.weight",
}
_G_DEEPSEEK_ATTN = {
    "q": "blk.{i}.attn_q.weight",
    "q_a": "blk.{i}.attn_q_a.weight",
    "q_a_norm": "blk.{i}.attn_q_a_norm.weight",
    "q_b": "blk.{i}.attn_q_b.weight",
    "kv_a": "blk.{i}.attn_kv_a_mqa.weight",
    "kv_a_norm": "blk.{i}.attn_kv_a_norm.weight",
    "kv_b": "blk.{i}.attn_kv_b.weight",
    "o": "blk.{i}.attn_output.weight",
    "attn_norm": "blk.{i}.attn_norm.weight",
}
_GEMMA_MLP = MLPSpec(act=("hidden_activation", "hidden_act"))


def _family(**kw) -> Family:
    """A family: the common decoder with the fields that differ."""
    return replace(_DECODER, **kw)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        _family(
            name="llama",
            model_types=("llama",),
            examples="Llama 2 / 3.x, SmolLM2, TinyLlama",
            biases="optional",
            gguf_archs=("llama",),
            gguf_rotary_permuted=True,
        ),
        _family(name="mistral", model_types=("mistral",), examples="Mistral 7B, Ministral", gguf_rotary_permuted=True),
        _family(
            name="smollm3", model_types=("smollm3",), examples="SmolLM3", biases="optional", gguf_archs=("smollm3",)
        ),
        _family(
            name="mixtral",
            model_types=("mixtral",),
            examples="Mixtral 8x7B / 8x22B",
            hf={
                **_ATTN,
                "router": ("block_sparse_moe.gate.weight", "mlp.gate.weight"),
                "experts_gate": "block_sparse_moe.experts.{e}.w1.weight",
                "experts_up": "block_sparse_moe.experts.{e}.w3.weight",
                "experts_down": "block_sparse_moe.experts.{e}.w2.weight",
                "experts_gate_up": "mlp.experts.gate_up_proj",
                "experts_down_fused": "mlp.experts.down_proj",
            },
            gguf={**_G_ATTN, **_G_EXPERTS},  # a llama GGUF with experts (see gguf_family)
            gguf_rotary_permuted=True,
            mlp=MLPSpec(
                moe="all",
                n_experts="num_local_experts",
                top_k="num_experts_per_tok",
                d_expert="intermediate_size",
                router="softmax_topk, renormalised",
            ),
        ),
        _family(
            name="qwen2", model_types=("qwen2",), examples="Qwen2 / Qwen2.5", biases="q/k/v", gguf_archs=("qwen2",)
        ),
        _family(
            name="qwen2_moe",
            model_types=("qwen2_moe",),
            examples="Qwen1.5-MoE, Qwen2-57B-A14B",
            biases="q/k/v",
            hf={
                **_ATTN,
                **_MLP,
                **_EXPERTS,
                "shared_gate": "mlp.shared_expert.gate_proj.weight",
                "shared_up": "mlp.shared_expert.up_proj.weight",
                "shared_down": "mlp.shared_expert.down_proj.weight",
                "shared_router": "mlp.shared_expert_gate.weight",
            },
            gguf_archs=("qwen2moe",),
            gguf={**_G_ATTN, **_G_MLP, **_G_EXPERTS, **_G_SHARED, "shared_router": "blk.{i}.ffn_gate_inp_shexp.weight"},
            mlp=replace(_QWEN_MOE, d_shared="shared_expert_intermediate_size", shared_router=True),
        ),
        _family(
            name="qwen3",
            model_types=("qwen3",),
            examples="Qwen3 dense",
            biases="optional",
            hf={**_ATTN, **_QK_NORM, **_MLP},
            gguf_archs=("qwen3",),
            gguf={**_G_ATTN, **_G_QK_NORM, **_G_MLP},
            attention=AttentionSpec(qk_norm="head"),
        ),
        _family(
            name="qwen3_moe",
            model_types=("qwen3_moe",),
            examples="Qwen3-30B-A3B, Qwen3-235B-A22B",
            biases="optional",
            hf={**_ATTN, **_QK_NORM, **_MLP, **_EXPERTS},
            gguf_archs=("qwen3moe",),
            gguf={**_G_ATTN, **_G_QK_NORM, **_G_MLP, **_G_EXPERTS},
            attention=AttentionSpec(qk_norm="head"),
            mlp=_QWEN_MOE,
        ),
        _family(
            name="gemma",
            model_types=("gemma",),
            examples="Gemma 2B / 7B",
            biases="optional",
            gguf_archs=("gemma",),
            gguf_norm_offset=1.0,
            attention=_GEMMA_ATTN,
            mlp=_GEMMA_MLP,
            tied_default=True,
        ),
        _family(
            name="gemma2",
            model_types=("gemma2",),
            examples="Gemma 2 2B / 9B / 27B",
            biases="optional",
            hf={**_ATTN, **_POST, **_MLP},
            gguf_archs=("gemma2",),
            gguf={**_G_ATTN, **_G_POST, **_G_MLP},
            gguf_norm_offset=1.0,
            attention=replace(
                _GEMMA_ATTN, scale="query_pre_attn_scalar", softcap="attn_logit_softcapping", post_norm=True
            ),
            mlp=_GEMMA_MLP,
            tied_default=True,
        ),
        _family(
            name="gemma3_text",
            model_types=("gemma3_text",),
            examples="Gemma 3 1B (text), the language model of Gemma 3 4B-27B",
            biases="optional",
            hf={**_ATTN, **_QK_NORM, **_POST, **_MLP},
            gguf_archs=("gemma3",),
            gguf={**_G_ATTN, **_G_QK_NORM, **_G_POST, **_G_MLP},
            gguf_norm_offset=1.0,
            attention=replace(
                _GEMMA_ATTN,
                qk_norm="head",
                scale="query_pre_attn_scalar",
                softcap="attn_logit_softcapping",
                post_norm=True,
            ),
            mlp=_GEMMA_MLP,
            tied_default=True,
        ),
        _family(
            name="phi3",
            model_types=("phi3",),
            examples="Phi-3 mini / medium, Phi-4",
            hf={
                "qkv": "self_attn.qkv_proj.weight",
                "o": "self_attn.o_proj.weight",
                "attn_norm": "input_layernorm.weight",
                "gate_up": "mlp.gate_up_proj.weight",
                "down": "mlp.down_proj.weight",
            },
            gguf_archs=("phi3",),
            gguf={**_G_FUSED_ATTN, "gate_up": "blk.{i}.ffn_up.weight", "down": "blk.{i}.ffn_down.weight"},
            attention=AttentionSpec(rotary=("partial_rotary_factor",)),
        ),
        _family(
            name="olmo2",
            model_types=("olmo2",),
            examples="OLMo 2 1B / 7B / 13B / 32B",
            biases="optional",
            hf={**{k: v for k, v in _ATTN.items() if k != "attn_norm"}, **_QK_NORM, **_POST, **_MLP},
            gguf_archs=("olmo2",),
            gguf={
                **{k: v for k, v in _G_ATTN.items() if not k.startswith("attn_norm")},
                **_G_QK_NORM,
                **_G_POST,
                **_G_MLP,
            },
            attention=AttentionSpec(norm=None, qk_norm="full", post_norm=True),
        ),
        _family(
            name="gpt_neox",
            model_types=("gpt_neox",),
            examples="Pythia 14M-12B, GPT-NeoX-20B",
            biases="all",
            hf={
                "qkv": "attention.query_key_value.weight",
                "qkv_bias": "attention.query_key_value.bias",
                "o": "attention.dense.weight",
                "o_bias": "attention.dense.bias",
                "attn_norm": "input_layernorm.weight",
                "attn_norm_bias": "input_layernorm.bias",
                "up": "mlp.dense_h_to_4h.weight",
                "up_bias": "mlp.dense_h_to_4h.bias",
                "down": "mlp.dense_4h_to_h.weight",
                "down_bias": "mlp.dense_4h_to_h.bias",
            },
            # transformers 5 holds the head as lm_head in memory and saves it as embed_out
            hf_model={"W_embed": "{p}embed_in.weight", "W_unembed": ("embed_out.weight", "lm_head.weight")},
            gguf_archs=("gptneox",),
            gguf={**_G_FUSED_ATTN, **_G_PLAIN_MLP},
            attention=AttentionSpec(
                norm="layer",
                eps=("layer_norm_eps",),
                qkv_layout="per_head",
                rotary=("partial_rotary_factor", "rotary_pct"),
                parallel="use_parallel_residual",
            ),
            mlp=MLPSpec(gated=False),
            embed_padding=False,
            kv_heads="",
            head_dim="",
        ),
        _family(
            name="gptj",
            model_types=("gptj",),
            examples="GPT-J 6B",
            stack="{p}h.{i}.",
            hf={
                "q": "attn.q_proj.weight",
                "k": "attn.k_proj.weight",
                "v": "attn.v_proj.weight",
                "o": "attn.out_proj.weight",
                "attn_norm": "ln_1.weight",
                "attn_norm_bias": "ln_1.bias",
                "up": "mlp.fc_in.weight",
                "up_bias": "mlp.fc_in.bias",
                "down": "mlp.fc_out.weight",
                "down_bias": "mlp.fc_out.bias",
            },
            hf_model={"W_embed": "{p}wte.weight", "W_unembed": "lm_head.weight"},
            gguf_archs=("gptj",),
            gguf={**{k: _G_ATTN[k] for k in ("q", "k", "v", "o", "attn_norm", "attn_norm_bias")}, **_G_PLAIN_MLP},
            attention=AttentionSpec(**_LN, rotary=("rotary_dim",), parallel=True),
            mlp=MLPSpec(gated=False, act=("activation_function",), d_ff=("n_inner",)),
            embed_padding=False,
            kv_heads="",
            head_dim="",
        ),
        _family(
            name="falcon",
            model_types=("falcon",),
            examples="Falcon 7B / 40B / 180B",
            biases="optional",
            stack="{p}h.{i}.",
            hf={
                "qkv": "self_attention.query_key_value.weight",
                "qkv_bias": "self_attention.query_key_value.bias",
                "o": "self_attention.dense.weight",
                "o_bias": "self_attention.dense.bias",
                # new_decoder_architecture with two input norms names the attention's ln_attn
                "attn_norm": ("input_layernorm.weight", "ln_attn.weight"),
                "attn_norm_bias": ("input_layernorm.bias", "ln_attn.bias"),
                "up": "mlp.dense_h_to_4h.weight",
                "up_bias": "mlp.dense_h_to_4h.bias",
                "down": "mlp.dense_4h_to_h.weight",
                "down_bias": "mlp.dense_4h_to_h.bias",
            },
            hf_model={"W_embed": "{p}word_embeddings.weight", "W_unembed": "lm_head.weight"},
            gguf_archs=("falcon",),
            gguf={
                **_G_FUSED_ATTN,
                **_G_PLAIN_MLP,
                # Falcon-40B's attention norm is llama.cpp's attn_norm_2 (its attn_norm feeds the MLP)
                "attn_norm": ("blk.{i}.attn_norm_2.weight", "blk.{i}.attn_norm.weight"),
                "attn_norm_bias": ("blk.{i}.attn_norm_2.bias", "blk.{i}.attn_norm.bias"),
            },
            attention=AttentionSpec(**_LN, qkv_layout="falcon", alibi="alibi", parallel="parallel_attn"),
            mlp=MLPSpec(gated=False, act=("activation",), d_ff=("ffn_hidden_size",)),
            tied_default=True,
            embed_padding=False,
            kv_heads="",
            head_dim="",
        ),
        _family(
            name="deepseek_v3",
            model_types=("deepseek_v3", "deepseek_v2"),
            examples="DeepSeek-V2 / V2-Lite / V3 / R1, Kimi K2",
            biases="optional",
            hf={
                **_DEEPSEEK_ATTN,
                **_MLP,
                **_EXPERTS,
                "router_bias": "mlp.gate.e_score_correction_bias",
                "shared_gate": "mlp.shared_experts.gate_proj.weight",
                "shared_up": "mlp.shared_experts.up_proj.weight",
                "shared_down": "mlp.shared_experts.down_proj.weight",
            },
            gguf_archs=("deepseek2",),
            gguf={**_G_DEEPSEEK_ATTN, **_G_MLP, **_G_EXPERTS, **_G_SHARED, "router_bias": "blk.{i}.exp_probs_b.bias"},
            attention=AttentionSpec(scale="mla", mla=True, rotary=("qk_rope_head_dim",)),
            mlp=MLPSpec(
                moe="first_k_dense",
                n_experts="n_routed_experts",
                top_k="num_experts_per_tok",
                d_expert="moe_intermediate_size",
                d_shared="n_shared_experts*moe_intermediate_size",
                router="sigmoid (V3) or softmax (V2) scores, group-limited top-k, scaled",
            ),
        ),
        _family(
            name="gpt2",
            model_types=("gpt2",),
            examples="GPT-2 small-XL, DistilGPT-2",
            biases="all",
            stack="{p}h.{i}.",
            hf={
                "qkv": "attn.c_attn.weight",
                "qkv_bias": "attn.c_attn.bias",
                "o": "attn.c_proj.weight",
                "o_bias": "attn.c_proj.bias",
                "attn_norm": "ln_1.weight",
                "attn_norm_bias": "ln_1.bias",
                "up": "mlp.c_fc.weight",
                "up_bias": "mlp.c_fc.bias",
                "down": "mlp.c_proj.weight",
                "down_bias": "mlp.c_proj.bias",
            },
            hf_model={"W_embed": "{p}wte.weight", "W_pos": "{p}wpe.weight", "W_unembed": "lm_head.weight"},
            gguf_archs=("gpt2",),
            gguf={**_G_FUSED_ATTN, **_G_PLAIN_MLP},
            gguf_model={**_G_LM, "W_pos": "position_embd.weight"},
            attention=AttentionSpec(**_LN, scale="gpt2"),
            mlp=MLPSpec(gated=False, act=("activation_function",), d_ff=("n_inner",)),
            tied_default=True,
            embed_padding=False,
            kv_heads="",
            head_dim="",
            conv1d=True,
            init_scaled=("o", "down"),
        ),
        _family(
            name="bert",
            model_types=("bert", "roberta"),
            examples="BERT, RoBERTa, all-MiniLM-L6-v2",
            biases="all",
            stack="{p}encoder.layer.{i}.",
            hf={
                "q": "attention.self.query.weight",
                "k": "attention.self.key.weight",
                "v": "attention.self.value.weight",
                "q_bias": "attention.self.query.bias",
                "k_bias": "attention.self.key.bias",
                "v_bias": "attention.self.value.bias",
                "o": "attention.output.dense.weight",
                "o_bias": "attention.output.dense.bias",
                "up": "intermediate.dense.weight",
                "up_bias": "intermediate.dense.bias",
                "down": "output.dense.weight",
                "down_bias": "output.dense.bias",
            },
            hf_model={
                "W_embed": "{p}embeddings.word_embeddings.weight",
                "W_pos": "{p}embeddings.position_embeddings.weight",
                "W_type": "{p}embeddings.token_type_embeddings.weight",
                "W_pooler": "{p}pooler.dense.weight",
            },
            gguf_archs=("bert",),
            gguf={**{k: v for k, v in _G_ATTN.items() if not k.startswith("attn_norm")}, **_G_PLAIN_MLP},
            gguf_model={
                "W_embed": "token_embd.weight",
                "W_pos": "position_embd.weight",
                "W_type": "token_types.weight",
            },
            attention=AttentionSpec(norm=None, eps=("layer_norm_eps",)),
            mlp=MLPSpec(gated=False),
            causal=False,
            kv_heads="",
            head_dim="",
            auto_class="AutoModel",
        ),
    ]
}

#: HF model_type -> family name
MODEL_TYPES = {mt: f.name for f in FAMILIES.values() for mt in f.model_types}
#: GGUF general.architecture -> family name (a llama GGUF with experts is mixtral: see gguf_family)
GGUF_ARCHS = {a: f.name for f in FAMILIES.values() for a in f.gguf_archs}


def supported() -> str:
    """One line naming every supported ``model_type`` (for error messages)."""
    return ", ".join(sorted(MODEL_TYPES))


def family_of(model_type: str, source: str = "config.json") -> Family:
    """The :class:`Family` of a Hugging Face ``model_type``; :class:`UnsupportedArchitecture` naming the
    supported ones and the table otherwise."""
    name = MODEL_TYPES.get(str(model_type).lower())
    if name is None:
        raise UnsupportedArchitecture(
            f"unsupported architecture {model_type!r} (from {source}). Supported model types: {supported()}. "
            f"A family is described once, as data, in {TABLE_PATH}; add a table there and its case to "
            "tests/test_families.py (the conformance test against transformers' forward) to support another"
        )
    return FAMILIES[name]


def gguf_family(arch: str, n_experts: int = 0, source: str = "the GGUF file") -> Family:
    """The :class:`Family` of a GGUF ``general.architecture`` (``llama`` with experts is Mixtral)."""
    if arch == "llama" and n_experts:
        return FAMILIES["mixtral"]
    name = GGUF_ARCHS.get(arch)
    if name is None:
        raise UnsupportedArchitecture(
            f"unsupported GGUF architecture {arch!r} in {source}. GGUF files are read for "
            f"{', '.join(sorted(GGUF_ARCHS))}; for another model pass its Hugging Face checkpoint folder "
            f"(supported model types: {supported()}; the families are described in {TABLE_PATH})"
        )
    return FAMILIES[name]
