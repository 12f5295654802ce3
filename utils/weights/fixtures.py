"""Large random checkpoints with the exact layout of real models, for the scale benchmark.

``make fixtures`` (``python -m utils.weights.fixtures``) writes, once, a sharded bf16 safetensors
checkpoint with the exact ``config.json``, tensor names, shapes and dtype of

* ``llama-3.1-8b``: meta-llama/Llama-3.1-8B (32 layers, d 4096, GQA 32/8, untied 128256 x 4096
  embedding and head; 8.03 B parameters, 16.1 GB in 4 shards),
* ``qwen2.5-3b``: Qwen/Qwen2.5-3B (36 layers, d 2048, GQA 16/2, q/k/v biases, tied 151936 x 2048
  embedding; 3.09 B parameters, 6.2 GB in 2 shards),
* ``mixtral-8x7b-2l`` (``python -m utils.weights.fixtures mixtral-8x7b-2l``, for ``bench/bench_moe.py``):
  Mixtral-8x7B with 2 of its 32 blocks, 8 experts each (3.16 B parameters, 6.3 GB),
* ``deepseek-v3-2l``: DeepSeek-V3 with 2 of its 61 blocks (one dense, one mixture with 16 of its 256
  routed experts and the shared one), multi-head latent attention at full size (3.37 B parameters, 6.7 GB);
  the mixture-of-experts fixtures are written as transformers holds them in memory (fused 3-D expert
  tensors), the layout newer checkpoints use,

with random weights (normal, std = the config's ``initializer_range``; norms 1), into
``$TSPECTRA_FIXTURES/<name>-random`` (default ``~/.cache/transformer-spectra/fixtures``): outside
the repository, never in CI. Each is streamed to disk tensor by tensor and block by block
(:func:`utils.weights.shards.write_checkpoint`), so writing one needs ~100 MB of memory. A fixture
folder is an ordinary checkpoint folder: ``open_weights(fixture_dir("llama-3.1-8b"))``, notebooks
01 and 02 with ``-p model <folder>``, ``transformers.AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from ..spectral.null import derived_seed
from .shards import row_blocks, stored_nbytes, write_checkpoint

FIXTURE_ENV = "TSPECTRA_FIXTURES"
DEFAULT_ROOT = "~/.cache/transformer-spectra/fixtures"
MARKER = "fixture.json"

_LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}
_QWEN25_3B = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 32768,
    "max_window_layers": 36,
    "model_type": "qwen2",
    "num_attention_heads": 16,
    "num_hidden_layers": 36,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
# Mixtral-8x7B's configuration with 2 of its 32 blocks: every matrix has its real shape (8 experts per block)
_MIXTRAL_8X7B_2L = {
    "architectures": ["MixtralForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mixtral",
    "num_attention_heads": 32,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 2,
    "num_key_value_heads": 8,
    "num_local_experts": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 32000,
}
# DeepSeek-V3's configuration with 2 of its 61 blocks (the first dense, the second a mixture) and 16 of its
# 256 routed experts: every matrix has its real shape (multi-head latent attention with q / kv latents of
# 1536 / 512, 128 heads of 128 + 64 rotary; experts 2048 wide); a full block of 256 experts would be 23 GB
_DEEPSEEK_V3_2L = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "first_k_dense_replace": 1,
    "hidden_act": "silu",
    "hidden_size": 7168,
    "initializer_range": 0.02,
    "intermediate_size": 18432,
    "kv_lora_rank": 512,
    "max_position_embeddings": 163840,
    "model_type": "deepseek_v3",
    "moe_intermediate_size": 2048,
    "n_group": 8,
    "n_routed_experts": 16,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 2,
    "num_key_value_heads": 128,
    "q_lora_rank": 1536,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "rms_norm_eps": 1e-06,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
    "rope_theta": 10000,
    "routed_scaling_factor": 2.5,
    "tie_word_embeddings": False,
    "topk_group": 4,
    "torch_dtype": "bfloat16",
    "v_head_dim": 128,
    "vocab_size": 129280,
}
FIXTURES = {
    "llama-3.1-8b": _LLAMA_31_8B,
    "qwen2.5-3b": _QWEN25_3B,
    "mixtral-8x7b-2l": _MIXTRAL_8X7B_2L,
    "deepseek-v3-2l": _DEEPSEEK_V3_2L,
}
MODELS = {
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "qwen2.5-3b": "Qwen/Qwen2.5-3B",
    "mixtral-8x7b-2l": "mistralai/Mixtral-8x7B-v0.1, 2 of 32 blocks",
    "deepseek-v3-2l": "deepseek-ai/DeepSeek-V3, 2 of 61 blocks, 16 of 256 routed experts",
}
#: fixtures ``make fixtures`` writes unless named (the mixture-of-experts ones are for bench_moe.py)
DEFAULT_FIXTURES = ("llama-3.1-8b", "qwen2.5-3b")


def fixture_root() -> Path:
    """``$TSPECTRA_FIXTURES`` or ``~/.cache/transformer-spectra/fixtures``."""
    return Path(os.environ.get(FIXTURE_ENV, "").strip() or DEFAULT_ROOT).expanduser()


def fixture_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """The folder of fixture ``name`` (one of :data:`FIXTURES`)."""
    if name not in FIXTURES:
        raise KeyError(f"unknown fixture {name!r}; known: {', '.join(FIXTURES)}")
    return (Path(root).expanduser() if root else fixture_root()) / f"{name}-random"


def fixture_ready(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a complete fixture (written under a temp name, then renamed)."""
    return (Path(folder) / MARKER).is_file() and (Path(folder) / "config.json").is_file()


def meta_layout(config: dict, dtype: str = "BF16") -> list[tuple[str, tuple[int, ...], str]]:
    """``(name, shape, dtype)`` of every tensor transformers' model of ``config`` holds (built on the meta
    device: no memory), as its ``state_dict`` names them (mixtures of experts: fused 3-D expert tensors)."""
    import transformers

    from .families import family_of
    from .sources import hf_config

    cfg = hf_config(config["model_type"], config)
    with torch.device("meta"):
        model = getattr(transformers, family_of(config["model_type"]).auto_class).from_config(cfg)
    sd = model.state_dict()
    if getattr(cfg, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    return [(n, tuple(t.shape), dtype if t.dtype != torch.float32 or t.ndim > 1 else "F32") for n, t in sd.items()]


def tensor_layout(config: dict, dtype: str = "BF16") -> list[tuple[str, tuple[int, ...], str]]:
    """``(name, shape, dtype)`` of every tensor of a checkpoint of ``config``: llama / qwen2 / mistral as
    ``save_pretrained`` writes them; any other family as transformers holds it (:func:`meta_layout`)."""
    if config["model_type"] not in ("llama", "qwen2", "mistral"):
        return meta_layout(config, dtype)
    d, d_ff, V = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    h, n_kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    r = config.get("head_dim") or d // h
    qkv_bias = config["model_type"] == "qwen2" or config.get("attention_bias", False)
    out = [("model.embed_tokens.weight", (V, d))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for proj, rows in (("q", h * r), ("k", n_kv * r), ("v", n_kv * r)):
            out.append((f"{p}self_attn.{proj}_proj.weight", (rows, d)))
            if qkv_bias:
                out.append((f"{p}self_attn.{proj}_proj.bias", (rows,)))
        out.append((f"{p}self_attn.o_proj.weight", (d, h * r)))
        out += [(f"{p}mlp.gate_proj.weight", (d_ff, d)), (f"{p}mlp.up_proj.weight", (d_ff, d))]
        out.append((f"{p}mlp.down_proj.weight", (d, d_ff)))
        out += [(f"{p}input_layernorm.weight", (d,)), (f"{p}post_attention_layernorm.weight", (d,))]
    out.append(("model.norm.weight", (d,)))
    if not config.get("tie_word_embeddings", False):
        out.append(("lm_head.weight", (V, d)))
    return [(n, s, dtype) for n, s in out]


def random_blocks(seed: int = 0, std: float = 0.02):
    """``blocks(name, shape, dtype)`` for :func:`write_checkpoint`: normal(0, std) matrices and biases,
    norms 1, in row blocks of ~16M values, from a generator seeded by ``seed`` and the tensor name."""

    def blocks(name: str, shape: tuple[int, ...], dtype: torch.dtype):
        if name.endswith("norm.weight"):
            yield torch.ones(shape, dtype=dtype)
            return
        g = torch.Generator().manual_seed(derived_seed(seed, name))
        for a, b in row_blocks(shape):
            yield (torch.randn((b - a, *shape[1:]), generator=g) * std).to(dtype)

    return blocks


def make_fixture(
    name: str,
    folder: str | os.PathLike | None = None,
    seed: int = 0,
    max_shard_bytes: int = 5 * 10**9,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Write fixture ``name`` to ``folder`` (default :func:`fixture_dir`) unless it is already there."""
    config = FIXTURES[name]
    folder = Path(folder) if folder is not None else fixture_dir(name)
    if fixture_ready(folder) and not force:
        return folder
    layout = tensor_layout(config)
    total = sum(stored_nbytes(s, dt) for _, s, dt in layout)
    folder.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder.parent).free
    if free < total * 1.02:
        raise OSError(
            f"fixture {name} needs {total / 1e9:.1f} GB but {folder.parent} has {free / 1e9:.1f} GB free; "
            f"free some space or point {FIXTURE_ENV} to a larger disk"
        )
    from ..progress import progress_bar

    bar = progress_bar(total=total, desc=f"writing {name}", unit="B", unit_scale=True, disable=not progress)

    def on_tensor(tname: str, nbytes: int) -> None:
        bar.set_postfix_str(tname, refresh=False)
        bar.update(nbytes)

    marker = {"fixture": name, "layout_of": MODELS[name], "weights": "random normal", "seed": seed}
    marker.update(tensors=len(layout), bytes=total)
    try:
        write_checkpoint(
            folder,
            layout,
            random_blocks(seed, config.get("initializer_range", 0.02)),
            config=config,
            max_shard_bytes=max_shard_bytes,
            on_tensor=on_tensor,
            extra_files={MARKER: json.dumps(marker, indent=2) + "\n"},
        )
    finally:
        bar.close()
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m utils.weights.fixtures",
        description="Write the large random-weight checkpoints of the scale benchmark (once).",
    )
    ap.add_argument(
        "names",
        nargs="*",
        help=f"fixtures to write (default: {', '.join(DEFAULT_FIXTURES)}; known: {', '.join(FIXTURES)})",
    )
    ap.add_argument("--root", help=f"folder for the fixtures (default: ${FIXTURE_ENV} or {DEFAULT_ROOT})")
    ap.add_argument("--force", action="store_true", help="rewrite fixtures that are already there")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    names = args.names or list(DEFAULT_FIXTURES)
    unknown = [n for n in names if n not in FIXTURES]
    if unknown:
        ap.error(f"unknown fixture(s) {', '.join(unknown)}; known: {', '.join(FIXTURES)}")
    for n in names:
        folder = fixture_dir(n, args.root)
        state = "already present" if fixture_ready(folder) and not args.force else "written"
        try:
            make_fixture(n, folder, seed=args.seed, force=args.force)
        except OSError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{n} ({MODELS[n]} layout, random bf16 weights): {state}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
