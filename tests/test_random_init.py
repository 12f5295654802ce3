"""The same-architecture null model ``random:<model>[@seed]``: spec parsing, the initialiser against
transformers' own, per-tensor seeding, load_model agreeing with open_weights, a 70B config."""

import json
import math

import pytest
import torch

from utils.weights import ModelNotFound, load_model, open_weights, resolve_model
from utils.weights.random_init import RandomInitWeights, tensor_seed
from utils.weights.specs import RandomSpec, parse_random_spec


def test_random_spec_parsing(tmp_path):
    assert parse_random_spec("smollm2") is None
    assert parse_random_spec("random:smollm2") == RandomSpec("smollm2", 0)
    assert parse_random_spec("random:smollm2@3") == RandomSpec("smollm2", 3)
    assert parse_random_spec(" RANDOM:org/name@12 ") == RandomSpec("org/name", 12)
    odd = tmp_path / "ckpt@v2"  # an existing path with '@' in it is a path, not a seed
    odd.mkdir()
    assert parse_random_spec(f"random:{odd}") == RandomSpec(str(odd), 0)
    assert resolve_model("random:smollm2@1") == ("random", RandomSpec("smollm2", 1))
    with pytest.raises(ModelNotFound, match="seed 'x' after '@' is not a non-negative integer"):
        parse_random_spec("random:smollm2@x")
    with pytest.raises(ModelNotFound, match="names no model after 'random:'"):
        parse_random_spec("random:")
    with pytest.raises(ModelNotFound, match="model path not found"):
        open_weights("random:/no/such/model")


def _pooled_std(tensors):
    return torch.cat([t.reshape(-1) for t in tensors]).std().item()


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_initialiser_matches_transformers_per_tensor_kind(tiny_model_dirs, family):
    folder = tiny_model_dirs[family]
    src = open_weights(f"random:{folder}@7")
    ref = open_weights(folder)  # the tiny checkpoint: transformers' own init of the same config, saved
    assert src.family == ref.family and src.dims == ref.dims
    assert [(m.layer, m.weight_type, m.shape) for m in src.matrices()] == [
        (m.layer, m.weight_type, m.shape) for m in ref.matrices()
    ]
    cfg = json.loads((folder / "config.json").read_text())
    r = cfg.get("initializer_range", 0.02)
    L = src.dims.L
    for role in ("q", "k", "v", "o", "up", "down"):
        ours = _pooled_std([src.layer_weight(i, role) for i in range(L)])
        theirs = _pooled_std([ref.layer_weight(i, role) for i in range(L)])
        expected = r / math.sqrt(2 * L) if family == "gpt2" and role in ("o", "down") else r
        assert ours == pytest.approx(expected, rel=0.05), role
        assert theirs == pytest.approx(expected, rel=0.05), role  # transformers agrees with the rule
        assert abs(torch.cat([src.layer_weight(i, role).reshape(-1) for i in range(L)]).mean()) < 0.1 * expected
    embed = next(m for m in src.matrices() if m.weight_type == "W_embed")
    E = src.load(embed)
    pad = cfg.get("pad_token_id")
    if family == "gpt2":  # no padding_idx in GPT-2's embedding
        assert E.std().item() == pytest.approx(r, rel=0.05)
    else:
        hf_embed = ref.load(next(m for m in ref.matrices() if m.weight_type == "W_embed"))
        assert hf_embed[pad].abs().sum() == 0 and E[pad].abs().sum() == 0  # the padding row, as transformers
        assert E.std().item() == pytest.approx(hf_embed.std().item(), rel=0.05)


def test_tensors_are_seeded_one_by_one(tiny_llama_dir):
    a = open_weights(f"random:{tiny_llama_dir}@3")
    late_first = a.layer_weight(2, "down").clone()
    b = open_weights(f"random:{tiny_llama_dir}@3")
    assert torch.equal(b.layer_weight(0, "q"), a.layer_weight(0, "q"))  # any order, same tensor
    assert torch.equal(b.layer_weight(2, "down"), late_first)
    assert not torch.equal(open_weights(f"random:{tiny_llama_dir}@4").layer_weight(0, "q"), a.layer_weight(0, "q"))
    assert not torch.equal(a.layer_weight(0, "q"), a.layer_weight(1, "q"))
    assert tensor_seed(3, "layers.0.q") != tensor_seed(3, "layers.0.k") and 0 <= tensor_seed(3, "x") < 2**63


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_load_model_holds_the_streamed_matrices(tiny_model_dirs, family):
    spec = f"random:{tiny_model_dirs[family]}@5"
    src = open_weights(spec)
    model, tok = load_model(spec)
    params = dict(model.named_parameters())
    if family == "llama":
        assert torch.equal(params["model.layers.1.self_attn.k_proj.weight"], src.layer_weight(1, "k"))
        assert torch.equal(params["model.layers.2.mlp.down_proj.weight"], src.layer_weight(2, "down"))
        assert torch.equal(params["lm_head.weight"], src.load(next(m for m in src.matrices() if m.name == "W_unembed")))
    else:  # GPT-2: fused, transposed Conv1D storage
        d = src.dims.d
        fused = params["transformer.h.1.attn.c_attn.weight"]
        assert torch.equal(fused[:, d : 2 * d].T, src.layer_weight(1, "k"))
        assert torch.equal(params["transformer.h.0.mlp.c_proj.weight"].T, src.layer_weight(0, "down"))
        assert params["transformer.h.0.ln_1.weight"].eq(1).all()  # the rest: the architecture's own init
    with torch.no_grad():
        ids = tok("Attention is a bilinear form.", return_tensors="pt").input_ids
        assert torch.isfinite(model(ids).logits).all()


def test_a_70b_architecture_needs_the_memory_of_one_matrix(tmp_path):
    cfg = {
        "model_type": "llama",
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))  # a config alone: no weights anywhere
    src = open_weights(f"random:{tmp_path}@2")
    assert isinstance(src, RandomInitWeights) and src.dims.L == 80 and src.dims.d_head == 128
    refs = src.matrices()
    assert len(refs) == 80 * 7 + 2 and sum(math.prod(m.shape) for m in refs) > 68e9
    W = src.layer_weight(79, "k")  # 1024 x 8192: 32 MB, generated on demand
    assert W.shape == (1024, 8192) and W.std().item() == pytest.approx(0.02, rel=0.01)


# ---------------------------------------------------------------------------------------------- every family
FAMILY_CASES = [c for c in __import__("family_cases").CASES if not c.endswith("-fused")]


@pytest.mark.parametrize("case", FAMILY_CASES)
def test_every_family_has_a_random_twin_with_its_initialiser(case, tmp_path):
    """``random:`` of every family: the same matrices as transformers' own model of that configuration
    (names, shapes, experts), each drawn like transformers draws it, and load_model holding exactly them."""
    from family_cases import CASES, build_case, save_config_only

    ref = open_weights(build_case(case, tmp_path / "trained"))  # transformers' own init, saved
    cfg_dir = save_config_only(tmp_path / "config-only", case)
    src = open_weights(f"random:{cfg_dir}@3")
    key = lambda m: (m.layer, m.weight_type, m.expert, m.shape)  # noqa: E731
    assert [key(m) for m in src.matrices()] == [key(m) for m in ref.matrices()]
    r = CASES[case][1].get("initializer_range", 0.02)
    by_type: dict[str, list] = {}
    for m in src.matrices():
        by_type.setdefault(m.weight_type, []).append(m)
    for wt, refs in by_type.items():
        ours = _pooled_std([src.load(m) for m in refs])
        theirs = _pooled_std([ref.load(m) for m in ref.matrices() if m.weight_type == wt])
        scaled = src.fam.init_scaled and any(m.role in src.fam.init_scaled for m in refs)
        expected = r / math.sqrt(2 * src.dims.L) if scaled else r
        if wt == "W_embed" and src.padding_row is not None:  # one zero row among V
            expected *= math.sqrt(1 - 1 / src.dims.V)
        assert ours == pytest.approx(expected, rel=0.1), wt
        assert theirs == pytest.approx(ours, rel=0.15), wt  # transformers' own init agrees with the rule
    embed_ref = next(m for m in ref.matrices() if m.weight_type == "W_embed")
    hf_pad = ref.load(embed_ref).abs().sum(1) == 0
    ours_pad = src.load(next(m for m in src.matrices() if m.weight_type == "W_embed")).abs().sum(1) == 0
    assert torch.equal(hf_pad, ours_pad)  # the padding row where transformers zeroes it, and only there


@pytest.mark.parametrize("case", ["mixtral", "qwen2_moe", "deepseek_v3", "phi3", "gpt_neox", "falcon-gqa", "gemma2"])
def test_random_model_of_every_family_holds_the_streamed_matrices(case, tmp_path):
    """The runnable random model (what load_model builds for random:) holds exactly the streamed matrices,
    read back through transformers' own saving (per-expert names on disk, 3-D experts in memory)."""
    from family_cases import save_config_only

    from utils.weights.random_init import random_model
    from utils.weights.specs import parse_random_spec

    spec = f"random:{save_config_only(tmp_path / 'cfg', case)}@5"
    src = open_weights(spec)
    random_model(parse_random_spec(spec)).save_pretrained(tmp_path / "saved")
    back = open_weights(tmp_path / "saved")
    for a, b in zip(src.matrices(), back.matrices(), strict=True):
        assert (a.layer, a.weight_type, a.expert) == (b.layer, b.weight_type, b.expert)
        assert torch.equal(src.load(a), back.load(b)), (a, b)
