"""utils.geometry: schema validation and round trip, entropy rule on hand-made attention, and
extraction from tiny models checked against dense oracles written here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from utils.rescale import geometry as G


def dense_qk_singvals(src) -> np.ndarray:
    """Oracle (test-only fallback for utils.attention): SVD of the dense d x d matrix W_Q_h^T W_K_g(h)."""
    dims = src.dims
    out = np.zeros((dims.L, dims.h, dims.d_head))
    for l in range(dims.L):
        Wq = src.layer_weight(l, "q").double().reshape(dims.h, dims.d_head, dims.d)
        Wk = src.layer_weight(l, "k").double().reshape(dims.n_kv, dims.d_head, dims.d)
        for h in range(dims.h):
            g = h // (dims.h // dims.n_kv)
            M = Wq[h].T @ Wk[g]  # (d, d), rank <= d_head
            out[l, h] = torch.linalg.svdvals(M)[: dims.d_head].numpy()
    return out


def _geom(L=3, H=2, ragged=True, seed=0):
    rng = np.random.default_rng(seed)
    sig = [
        [np.sort(rng.uniform(0, 2, int(rng.integers(1, 6)) if ragged else 5))[::-1] for _ in range(H)] for _ in range(L)
    ]
    return G.make_geometry(sig, rng.uniform(0, 3, (L, H)), model="toy")


# ----------------------------------------------------------------------------- schema
def test_round_trip(tmp_path):
    data = _geom()
    p = G.save_geometry(data, tmp_path / "g.json")
    back = G.load_geometry(p)
    assert back == json.loads(json.dumps(data))
    sigma = G.collect_spectra(back)
    K = max(len(s) for row in data["static"] for s in row["metric_singvals_per_head"])
    assert sigma.shape == (3, 2, K)
    for l, row in enumerate(data["static"]):
        for h, s in enumerate(row["metric_singvals_per_head"]):
            np.testing.assert_array_equal(sigma[l, h, : len(s)], s)
            assert np.all(sigma[l, h, len(s) :] == 0)
    np.testing.assert_array_equal(
        G.collect_entropy(back), [r["mean_attention_entropy_per_head"] for r in data["dynamic"]]
    )
    assert back["model"] == "toy" and back["schema"] == G.SCHEMA


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("static"), "missing key 'static'"),
        (lambda d: d.update(num_heads=0), "num_heads must be a positive integer"),
        (lambda d: d.update(num_layers="3"), "num_layers must be a positive integer"),
        (lambda d: d["dynamic"].pop(), "dynamic must be a list of num_layers=3 rows, got 2"),
        (
            lambda d: d["static"][1]["metric_singvals_per_head"].pop(),
            r"static\[1\].metric_singvals_per_head has 1 heads",
        ),
        (
            lambda d: d["static"][2]["metric_singvals_per_head"].__setitem__(0, []),
            r"static\[2\].metric_singvals_per_head\[0\] must be",
        ),
        (
            lambda d: d["static"][0]["metric_singvals_per_head"][1].__setitem__(0, -1.0),
            r"static\[0\].metric_singvals_per_head\[1\]\[0\] = -1.0",
        ),
        (lambda d: d["static"][0]["metric_singvals_per_head"][1].__setitem__(0, "x"), "not a finite non-negative"),
        (
            lambda d: d["dynamic"][2]["mean_attention_entropy_per_head"].__setitem__(1, float("nan")),
            r"dynamic\[2\].mean_attention_entropy_per_head\[1\] = nan",
        ),
        (lambda d: d["dynamic"][0].pop("mean_attention_entropy_per_head"), r"dynamic\[0\] has no list"),
        (lambda d: d["dynamic"][1]["mean_attention_entropy_per_head"].append(0.1), "has 3 heads, num_heads is 2"),
    ],
)
def test_validation_names_the_problem(mutate, message):
    data = json.loads(json.dumps(_geom()))
    mutate(data)
    with pytest.raises(G.GeometryError, match=message):
        G.validate_geometry(data)


def test_load_errors(tmp_path):
    with pytest.raises(G.GeometryError, match="does not exist"):
        G.load_geometry(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(G.GeometryError, match="not valid JSON"):
        G.load_geometry(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(G.GeometryError, match="top level"):
        G.load_geometry(tmp_path / "list.json")


# ----------------------------------------------------------------------------- entropy rule
def test_entropy_of_uniform_causal_attention():
    T = 6
    A = torch.tril(torch.ones(T, T, dtype=torch.float64))
    A = (A / A.sum(-1, keepdim=True)).expand(2, 3, T, T)
    ent = G.entropy_from_attentions(A, skip_first=2)
    expect = np.mean([math.log(i + 1) for i in range(2, T)])
    np.testing.assert_allclose(ent.numpy(), expect, rtol=1e-12)
    one_hot = torch.eye(T).expand(1, 2, T, T)
    assert torch.all(G.entropy_from_attentions(one_hot) == 0)
    with pytest.raises(ValueError, match="skip_first"):
        G.entropy_from_attentions(A, skip_first=T)


def test_default_text_is_long_enough():
    text = G.read_text()
    assert len(text.split()) > 2000
    with pytest.raises(FileNotFoundError, match="does not exist"):
        G.read_text("/no/such/file.txt")


# ----------------------------------------------------------------------------- tiny models
def _manual_entropy(model, chunks, skip_first):
    """Oracle: per sequence, per layer/head, a Python loop over query rows of the eager weights."""
    out = []
    for c in chunks:
        with torch.no_grad():
            att = model(input_ids=torch.tensor([c]), output_attentions=True).attentions
        seq = np.zeros((len(att), att[0].shape[1]))
        for l, a in enumerate(att):
            for h in range(a.shape[1]):
                rows = []
                for i in range(skip_first, a.shape[2]):
                    p = a[0, h, i].double().numpy()
                    p = p[p > 0]
                    rows.append(float(-(p * np.log(p)).sum()))
                seq[l, h] = np.mean(rows)
        out.append(seq)
    return np.mean(out, 0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_extract_geometry_tiny(tiny_model_dirs, family, tmp_path):
    from utils.weights import load_model, open_weights

    d = tiny_model_dirs[family]
    text = tmp_path / "t.txt"
    text.write_text(G.read_text()[:3000])
    geo = G.extract_geometry(
        str(d), text_path=str(text), seq_len=16, n_seqs=3, skip_first=1, batch_size=2, progress=False
    )
    G.validate_geometry(geo)
    src = open_weights(str(d))
    assert geo["num_layers"] == src.dims.L and geo["num_heads"] == src.dims.h
    np.testing.assert_allclose(G.collect_spectra(geo), dense_qk_singvals(src), rtol=1e-9, atol=1e-12)
    model, tok = load_model(str(d), attn_implementation="eager")
    chunks = G.token_chunks(tok, text.read_text(), 16, 3)
    assert len(chunks) == 3 and geo["n_seqs"] == 3 and geo["tokens_per_seq"] == len(chunks[0])
    np.testing.assert_allclose(G.collect_entropy(geo), _manual_entropy(model, chunks, 1), rtol=1e-5, atol=1e-6)
    assert geo["causal"] == (family != "bert")
    assert 0 < G.collect_entropy(geo).max() <= math.log(len(chunks[0])) + 1e-6


def test_token_chunks_rules(tiny_llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    text = "The river flows north. " * 40
    ids = tok(text, add_special_tokens=False)["input_ids"]
    chunks = G.token_chunks(tok, text, 10, 1000)
    assert len(chunks) == len(ids) // 10  # partial tail dropped
    short = G.token_chunks(tok, "The river.", 100, 4)
    assert len(short) == 1  # only one (partial) chunk: kept
    with pytest.raises(ValueError, match="seq_len"):
        G.token_chunks(tok, text, 1, 4)
