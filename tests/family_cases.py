"""Tiny models of every family, built with transformers' own configuration classes (test-only).

:data:`CASES` maps a case id to ``(config class, keyword arguments, options)``; :func:`build_case` writes
the checkpoint (safetensors, every norm gain and bias randomised so that folding them is checked) and
:func:`gguf_from_checkpoint` writes the same weights as a GGUF file the way llama.cpp's converter does,
with the tensor names from the ``gguf`` package's own name map (``gguf.get_tensor_name_map``), not from
the project's table: an independent reading of the same weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
_S = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=128,
    max_position_embeddings=64,
    initializer_range=0.2,
    **IDS,
)
_DEC = dict(_S, intermediate_size=96, num_key_value_heads=2)
_MOE = dict(num_experts_per_tok=2)
_MLA = dict(
    _S,
    intermediate_size=96,
    moe_intermediate_size=32,
    num_key_value_heads=4,
    n_routed_experts=4,
    n_shared_experts=1,
    first_k_dense_replace=1,
    kv_lora_rank=16,
    qk_rope_head_dim=8,
    qk_nope_head_dim=16,
    v_head_dim=12,
    **_MOE,
)
_YARN = dict(  # DeepSeek-V3's YaRN rope scaling (factor 40 there): it changes the attention scale by mscale**2
    rope_type="yarn",
    rope_theta=10000.0,
    factor=4.0,
    original_max_position_embeddings=16,
    mscale=1.0,
    mscale_all_dim=1.0,
    beta_fast=32.0,
    beta_slow=1.0,
)
_DSV3 = dict(_MLA, q_lora_rank=24, n_group=2, topk_group=1, rope_parameters=_YARN)

#: case id -> (transformers config class, kwargs, options); options: "gguf" (llama.cpp architecture),
#: "fused" (write transformers' in-memory 3-D expert tensors instead of per-expert ones)
CASES: dict[str, tuple[str, dict, dict]] = {
    "llama": ("LlamaConfig", dict(_DEC, attention_bias=True), {"gguf": "llama"}),
    "mistral": ("MistralConfig", _DEC, {"gguf": "llama"}),
    "smollm3": ("SmolLM3Config", _DEC, {}),
    "mixtral": ("MixtralConfig", dict(_DEC, num_local_experts=4, **_MOE), {"gguf": "llama"}),
    "mixtral-fused": ("MixtralConfig", dict(_DEC, num_local_experts=4, **_MOE), {"fused": True}),
    "qwen2": ("Qwen2Config", _DEC, {"gguf": "qwen2"}),
    "qwen2_moe": (  # llama.cpp's qwen2moe has no dense blocks: every block a mixture here
        "Qwen2MoeConfig",
        dict(_DEC, num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=48, **_MOE),
        {"gguf": "qwen2moe"},
    ),
    "qwen2_moe-fused": (  # fused 3-D experts, and a dense first block (mlp_only_layers)
        "Qwen2MoeConfig",
        dict(
            _DEC,
            num_experts=4,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            decoder_sparse_step=1,
            mlp_only_layers=[0],
            **_MOE,
        ),
        {"fused": True},
    ),
    "qwen3": ("Qwen3Config", dict(_DEC, head_dim=24, attention_bias=True), {"gguf": "qwen3"}),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        dict(_DEC, head_dim=16, num_experts=4, moe_intermediate_size=32, norm_topk_prob=True, **_MOE),
        {"gguf": "qwen3moe"},
    ),
    "gemma": ("GemmaConfig", dict(_DEC, head_dim=32), {"gguf": "gemma"}),
    "gemma2": (
        "Gemma2Config",
        dict(
            _DEC,
            head_dim=32,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=None,
            sliding_window=16,
        ),
        {"gguf": "gemma2"},
    ),
    "gemma3_text": (
        "Gemma3TextConfig",
        dict(_DEC, head_dim=32, query_pre_attn_scalar=24, sliding_window=16),
        {"gguf": "gemma3"},
    ),
    "phi3": ("Phi3Config", dict(_DEC, partial_rotary_factor=0.5), {"gguf": "phi3"}),
    "olmo2": ("Olmo2Config", _DEC, {"gguf": "olmo2"}),
    "gpt_neox": (
        "GPTNeoXConfig",
        dict(_S, intermediate_size=96, rotary_pct=0.25, tie_word_embeddings=False),
        {"gguf": "gptneox"},
    ),
    "gptj": (
        "GPTJConfig",
        dict(
            n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=64, rotary_dim=8, initializer_range=0.2, **IDS
        ),
        {"gguf": "gptj"},
    ),
    "falcon-mqa": (
        "FalconConfig",
        dict(_S, multi_query=True, new_decoder_architecture=False, parallel_attn=True, bias=False),
        {"gguf": "falcon"},
    ),
    "falcon-gqa": (
        "FalconConfig",
        dict(_S, new_decoder_architecture=True, num_kv_heads=2, bias=True),
        {"gguf": "falcon"},
    ),
    # Falcon-RW's layout (per-head q, k, v; sequential block): llama.cpp does not convert it
    "falcon-mha": (
        "FalconConfig",
        dict(_S, multi_query=False, new_decoder_architecture=False, parallel_attn=False, bias=True),
        {},
    ),
    "deepseek_v3": ("DeepseekV3Config", _DSV3, {"gguf": "deepseek2"}),
    "deepseek_v3-fused": ("DeepseekV3Config", _DSV3, {"fused": True}),
    "deepseek_v2": ("DeepseekV2Config", dict(_MLA, q_lora_rank=None), {}),  # V2-Lite: no query latent
    "gpt2": (
        "GPT2Config",
        dict(
            n_embd=64,
            n_layer=2,
            n_head=4,
            vocab_size=128,
            n_positions=64,
            initializer_range=0.2,
            scale_attn_by_inverse_layer_idx=True,
            **IDS,
        ),
        {"gguf": "gpt2"},
    ),
    "bert": ("BertConfig", dict(_S, intermediate_size=96), {"gguf": "bert"}),
    "roberta": ("RobertaConfig", dict(_S, intermediate_size=96), {}),
}

#: module paths inside one block of each family (the oracle's own view of transformers' modules)
ATTN = {
    "gpt_neox": "attention",
    "gptj": "attn",
    "falcon": "self_attention",
    "gpt2": "attn",
    "bert": "attention.self",
    "roberta": "attention.self",
}
ATTN_OUT = {"bert": "attention.output.dense", "roberta": "attention.output.dense"}  # where W_O's output is read
MLP_IN = {"bert": "intermediate", "roberta": "intermediate"}
MLP_OUT = {"bert": "output.dense", "roberta": "output.dense"}


def is_encoder(cls: str) -> bool:
    return cls in ("BertConfig", "RobertaConfig")


def make_config(case: str, **overrides):
    import transformers as tf

    cls, kw, _ = CASES[case]
    return getattr(tf, cls)(**{**kw, **overrides})


def randomise_vectors(model, seed: int) -> None:
    """Every 1-D parameter and buffer that is a norm gain or a bias set at random (gains around their
    neutral value: 1, or 0 where the norm multiplies by 1 + w), so that folding them is tested."""
    g = torch.Generator().manual_seed(seed)
    offset_norms = type(model).__name__.startswith("Gemma")
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if p.ndim != 1 or not p.is_floating_point() or "inv_freq" in name or "embed_scale" in name:
                continue
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype)
            if "norm" in name.lower() and name.endswith("weight"):
                p.copy_((0.0 if offset_norms else 1.0) + 0.3 * noise)
            else:
                p.copy_(0.2 * noise)


def build_case(case: str, folder: Path, seed: int = 0, **overrides) -> Path:
    """Save a tiny model of ``case`` (module docstring; ``overrides`` change its configuration) into
    ``folder``; returns the folder."""
    import transformers as tf
    from safetensors.torch import save_file

    cls, _, opts = CASES[case]
    cfg = make_config(case, **overrides)
    torch.manual_seed(seed)
    auto = tf.AutoModel if is_encoder(cls) else tf.AutoModelForCausalLM
    model = auto.from_config(cfg)
    randomise_vectors(model, seed)
    folder.mkdir(parents=True, exist_ok=True)
    if opts.get("fused"):  # transformers' in-memory layout: fused 3-D expert tensors
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        if getattr(cfg, "tie_word_embeddings", False):
            sd.pop("lm_head.weight", None)
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
        cfg.save_pretrained(folder)
        assert any(re.search(r"experts\.gate_up_proj$", k) for k in sd), "the fused case holds no 3-D expert tensor"
    else:
        model.save_pretrained(folder)
    return folder


def load_reference(folder: Path, case: str):
    """transformers' own model of the saved checkpoint, float64, eager attention and experts; refuses a load
    that left any weight uninitialised (so a fused file is really read, not re-drawn)."""
    import transformers as tf

    cls, _, _ = CASES[case]
    auto = tf.AutoModel if is_encoder(cls) else tf.AutoModelForCausalLM
    model, info = auto.from_pretrained(
        str(folder),
        dtype=torch.float64,
        attn_implementation="eager",
        experts_implementation="eager",
        output_loading_info=True,
    )
    missing = [k for k in info["missing_keys"] if "inv_freq" not in k]
    assert not missing and not info.get("mismatched_keys"), f"{case}: transformers did not load {missing}"
    return model.eval()


# ------------------------------------------------------------------------------------------------ GGUF
def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter for the llama architecture: within each head, the two rotary halves interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_from_checkpoint(folder: Path, case: str, out: Path, qtype: str = "F32") -> Path:
    """The checkpoint in ``folder`` as a GGUF file, converted as llama.cpp's converter does (module docstring)."""
    import gguf
    from safetensors.torch import load_file

    from utils.weights.gguf import write_gguf

    cls, kw, opts = CASES[case]
    arch = opts["gguf"]
    cfg = make_config(case)
    L, d, h = cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or h
    if cls == "FalconConfig":
        n_kv = cfg.num_kv_heads if cfg.new_decoder_architecture else (1 if cfg.multi_query else h)
    r = getattr(cfg, "head_dim", None) or d // h
    sd = {k: v.double().numpy() for k, v in load_file(str(folder / "model.safetensors")).items()}
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[{v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch].name], L)
    # experts: one tensor per expert -> one 3-D tensor per block, as llama.cpp merges them
    merged: dict[str, np.ndarray] = {}
    groups: dict[str, dict[int, np.ndarray]] = {}
    for k, v in sd.items():
        m = re.match(r"^(.*\.experts)\.(\d+)\.(\w+)\.weight$", k)
        if m:
            groups.setdefault(f"{m.group(1)}.{m.group(3)}.weight", {})[int(m.group(2))] = v
        else:
            merged[k] = v
    for k, parts in groups.items():
        merged[k] = np.stack([parts[e] for e in sorted(parts)])
    tensors, skipped = {}, []
    for k, v in merged.items():
        name = k.replace("e_score_correction_bias", "e_score_correction.bias")
        if arch == "gpt2" and re.search(r"\.(c_attn|c_proj|c_fc)\.weight$", k):
            v = v.T  # Conv1D (in, out) -> (out, in)
        if arch == "llama" and re.search(r"\.(q_proj|k_proj)\.(weight|bias)$", k):
            v = llamacpp_permute(v, h if ".q_proj." in k else n_kv)
        if arch.startswith("gemma") and k.endswith("norm.weight"):
            v = v + 1.0  # llama.cpp stores Gemma's whole gain 1 + w
        if arch in ("falcon", "gptneox") and "query_key_value" in k:  # llama.cpp reorders to all q, k, v
            g = h // n_kv
            t = v.reshape(n_kv, g + 2, r, *v.shape[1:])
            v = np.concatenate(
                [
                    t[:, :g].reshape(-1, *v.shape[1:]),
                    t[:, g].reshape(-1, *v.shape[1:]),
                    t[:, g + 1].reshape(-1, *v.shape[1:]),
                ]
            )
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            skipped.append(k)
            continue
        tensors[new] = v
    assert all("pooler" in k for k in skipped), f"{case}: the GGUF conversion skipped {skipped}"
    a = arch
    md = {
        f"{a}.block_count": L,
        f"{a}.embedding_length": d,
        f"{a}.context_length": 64,
        f"{a}.attention.head_count": h,
        f"{a}.attention.head_count_kv": n_kv,
        f"{a}.vocab_size": cfg.vocab_size,
    }
    d_ff = (
        getattr(cfg, "intermediate_size", None)
        or getattr(cfg, "ffn_hidden_size", None)
        or getattr(cfg, "n_inner", None)
        or 4 * d
    )
    md[f"{a}.feed_forward_length"] = int(d_ff)
    if getattr(cfg, "head_dim", None) and arch != "deepseek2":
        md[f"{a}.attention.key_length"] = int(cfg.head_dim)
        md[f"{a}.attention.value_length"] = int(cfg.head_dim)
    eps = getattr(cfg, "rms_norm_eps", None)
    if eps is not None:
        md[f"{a}.attention.layer_norm_rms_epsilon"] = float(eps)
    else:
        md[f"{a}.attention.layer_norm_epsilon"] = float(
            getattr(cfg, "layer_norm_eps", None) or getattr(cfg, "layer_norm_epsilon", 1e-5)
        )
    if getattr(cfg, "attn_logit_softcapping", None):
        md[f"{a}.attn_logit_softcapping"] = float(cfg.attn_logit_softcapping)
    n_exp = (
        getattr(cfg, "num_local_experts", None)
        or getattr(cfg, "num_experts", None)
        or getattr(cfg, "n_routed_experts", None)
    )
    if n_exp:
        md[f"{a}.expert_count"] = int(n_exp)
        md[f"{a}.expert_used_count"] = int(cfg.num_experts_per_tok)
        md[f"{a}.expert_feed_forward_length"] = int(getattr(cfg, "moe_intermediate_size", None) or d_ff)
    if getattr(cfg, "shared_expert_intermediate_size", None):
        md[f"{a}.expert_shared_feed_forward_length"] = int(cfg.shared_expert_intermediate_size)
    if arch == "deepseek2":
        md[f"{a}.expert_shared_count"] = int(cfg.n_shared_experts)
        md[f"{a}.leading_dense_block_count"] = int(cfg.first_k_dense_replace)
        md[f"{a}.attention.q_lora_rank"] = int(cfg.q_lora_rank or 0)
        md[f"{a}.attention.kv_lora_rank"] = int(cfg.kv_lora_rank)
        md[f"{a}.attention.key_length"] = int(cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)
        md[f"{a}.attention.value_length"] = int(cfg.v_head_dim)
        md[f"{a}.rope.dimension_count"] = int(cfg.qk_rope_head_dim)
        md[f"{a}.expert_gating_func"] = 2 if cls == "DeepseekV3Config" else 1
        rp = getattr(cfg, "rope_parameters", None) or {}
        md[f"{a}.rope.freq_base"] = float(rp.get("rope_theta", 10000.0))
        if rp.get("rope_type") == "yarn":  # as llama.cpp's DeepseekV2Model writes it
            md[f"{a}.rope.scaling.type"] = "yarn"
            md[f"{a}.rope.scaling.factor"] = float(rp["factor"])
            md[f"{a}.rope.scaling.original_context_length"] = int(rp["original_max_position_embeddings"])
            md[f"{a}.rope.scaling.yarn_log_multiplier"] = 0.1 * float(rp["mscale_all_dim"])
    md["general.name"] = f"tiny {case}"
    return write_gguf(out, arch, md, tensors, qtype)


def save_config_only(folder: Path, case: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(make_config(case).to_dict()))
    return folder
