"""The conformance oracle: every family of the table read by the project and checked against transformers' forward.

For each case (a tiny model of a family, built with transformers' own configuration class and
initialiser, every norm gain and bias randomised, saved as safetensors) the project opens the saved
checkpoint and transformers loads it (float64, eager attention and experts). Random inputs go through
transformers' model with every position id 0 (rotary is then the identity), and, per block:

1. **attention logits**: the project's ``folded`` kernels, with the stated input norm, scale, per-token
   factors, bias terms and soft-cap, reproduce the differences ``log p(t, u) - log p(t, 0)`` of
   transformers' attention probabilities to 1e-5 relative (multi-head latent attention: the content and
   the decoupled rotary kernels together);
2. **OV**: the attention module's output equals ``Σ_h P_h X W_V,hᵀ W_O,hᵀ`` (plus biases) from the
   project's ``raw`` per-head matrices and the module's own probabilities; the ``folded`` circuits give the
   same on the normalised stream (after the post-attention norm where the family has one);
3. **MLP**: the project's gate / up / down (each expert's, combined with transformers' router top-k
   weights; the router's logits from the project's router matrix; the shared experts) reproduce the MLP;
4. **coverage**: the matrices the weight sweep analyses are exactly the checkpoint's tensors of two or
   more dimensions, each element once (tied ones once, each expert separately), and as many elements as
   transformers' parameters of two or more dimensions;
5. **GGUF**, where llama.cpp has the architecture: the same weights converted as llama.cpp does (names
   from the ``gguf`` package's own map) read back equal, matrix by matrix and kernel by kernel.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from family_cases import ATTN, ATTN_OUT, CASES, MLP_IN, MLP_OUT, build_case, gguf_from_checkpoint, load_reference

from utils.attention import attention_form, folded_shifts, layer_kernels, token_factors
from utils.weights import FAMILIES, open_weights

T, B = 6, 2


def record(built, check: str) -> None:
    """Note a passed check for the README's family table (``make families`` sets TSPECTRA_CONFORMANCE)."""
    import os

    from utils.files import append_jsonl

    path = os.environ.get("TSPECTRA_CONFORMANCE")
    if path:
        append_jsonl(path, {"case": built.case, "family": built.src.family, "check": check})


def _module(root, path: str):
    for p in path.split("."):
        root = getattr(root, p)
    return root


def _layers(model, L: int):
    for _, m in model.named_modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) == L:
            return list(m)
    raise AssertionError("no block list found")


class Forward:
    """One forward of transformers' model with hooks on every block (the oracle's measurements)."""

    def __init__(self, model, family: str, L: int, seed: int = 1):
        self.cap: dict = {}
        hooks = []
        attn = ATTN.get(family, "self_attn")

        def keep(v):  # a copy: some blocks add into their sublayers' outputs in place (Falcon)
            if isinstance(v, torch.Tensor):
                return v.detach().clone()
            return tuple(keep(t) for t in v) if isinstance(v, (tuple, list)) else v

        def pre(key):
            def f(mod, args, kwargs):
                self.cap[key] = keep(kwargs.get("hidden_states", args[0] if args else None))

            return f

        def post(key):
            def f(mod, args, kwargs, out):
                self.cap[key] = keep(out)

            return f

        def pre_all(key):
            def f(mod, args, kwargs):
                self.cap[key] = (keep(args), kwargs)

            return f

        for i, layer in enumerate(_layers(model, L)):
            hooks.append(layer.register_forward_pre_hook(pre(("x", i)), with_kwargs=True))
            a = _module(layer, attn)
            hooks.append(a.register_forward_pre_hook(pre(("attn_in", i)), with_kwargs=True))
            hooks.append(
                _module(layer, ATTN_OUT.get(family, attn)).register_forward_hook(
                    post(("attn_out", i)), with_kwargs=True
                )
            )
            if hasattr(layer, "post_attention_layernorm") and FAMILIES[family].attention.post_norm:
                hooks.append(layer.post_attention_layernorm.register_forward_hook(post(("post", i)), with_kwargs=True))
            mlp_in, mlp_out = _module(layer, MLP_IN.get(family, "mlp")), _module(layer, MLP_OUT.get(family, "mlp"))
            hooks.append(mlp_in.register_forward_pre_hook(pre(("mlp_in", i)), with_kwargs=True))
            hooks.append(mlp_out.register_forward_hook(post(("mlp_out", i)), with_kwargs=True))
            moe = _module(layer, "mlp") if hasattr(layer, "mlp") else None
            if moe is not None and hasattr(moe, "experts"):
                hooks.append(moe.gate.register_forward_hook(post(("router", i)), with_kwargs=True))
                hooks.append(moe.gate.register_forward_pre_hook(pre(("router_in", i)), with_kwargs=True))
                hooks.append(moe.experts.register_forward_pre_hook(pre_all(("experts_in", i)), with_kwargs=True))
                hooks.append(moe.experts.register_forward_hook(post(("experts_out", i)), with_kwargs=True))
                for sh in ("shared_expert", "shared_experts", "shared_expert_gate"):
                    if hasattr(moe, sh):
                        hooks.append(getattr(moe, sh).register_forward_hook(post((sh, i)), with_kwargs=True))
        g = torch.Generator().manual_seed(seed)
        d = model.config.get_text_config().hidden_size
        x = torch.randn(B, T, d, generator=g, dtype=torch.float64)
        # every position id 0 (rotary the identity), with an explicit all-ones attention mask: without one,
        # transformers (>= 5.25, encoders included) reads position ids that restart as packed sequences
        ones, zeros = torch.ones(B, T, dtype=torch.long), torch.zeros(B, T, dtype=torch.long)
        with torch.no_grad():
            out = model(inputs_embeds=x, attention_mask=ones, position_ids=zeros, output_attentions=True)
        for hk in hooks:
            hk.remove()
        self.probs = [a.detach() for a in out.attentions]


class Built:
    def __init__(self, case, folder):
        self.case = case
        self.folder = build_case(case, folder)
        self.model = load_reference(self.folder, case)
        self.src = open_weights(self.folder)
        self.fwd = Forward(self.model, self.src.family, self.src.dims.L)


_BUILT: dict[str, Built] = {}


@pytest.fixture
def built(request, tmp_path_factory):
    case = request.param
    if case not in _BUILT:
        _BUILT[case] = Built(case, tmp_path_factory.mktemp(case))
    return _BUILT[case]


ALL = list(CASES)


def _dense(K) -> torch.Tensor:
    return K.dense()


def _rel(pred: torch.Tensor, true: torch.Tensor) -> float:
    return float((pred - true).abs().max() / true.abs().max().clamp_min(1e-300))


# ----------------------------------------------------------------------------------------------- 1. logits
def predicted_logits(src, layer: int, x: torch.Tensor) -> torch.Tensor:
    """(h, T, T) pre-softmax logits of one sequence ``x`` (T, d) from the folded form (module docstring)."""
    form = attention_form(src, layer)
    n = form.normalise(x)
    fac = token_factors(src, layer, x)
    sh = folded_shifts(src, layer)
    D = src.dims
    K = layer_kernels(src, layer, "qk", kernel="folded")
    A = _dense(K)  # (h, d, d): n_t^T A_i n_u
    X, Y, idx = K.X, K.Y, K.index
    g = torch.as_tensor(idx)
    bil = torch.einsum("td,hde,ue->htu", n, A, n)
    cross = (
        torch.einsum("td,hdr,hr->ht", n, X, sh["k"][g])[:, :, None]
        + torch.einsum("hr,hre,ue->hu", sh["q"], Y[g], n)[:, None, :]
        + (sh["q"] * sh["k"][g]).sum(-1)[:, None, None]
    )
    logits = fac["q"].T[:, :, None] * fac["k"].T[g][:, None, :] * (bil + cross)
    if form.mla:
        R = layer_kernels(src, layer, "qk_rope", kernel="folded")
        Xr, Yr, gr = R.X, R.Y, torch.as_tensor(R.index)
        qr = torch.einsum("hdr,td->htr", Xr, n) + sh["q_rope"][:, None, :]
        kr = torch.einsum("hre,ue->hur", Yr[gr], n) + sh["k_rope"][gr][:, None, :]
        logits = logits + fac["q"].T[:, :, None] * torch.einsum("htr,hur->htu", qr, kr)
    assert logits.shape == (D.h, x.shape[0], x.shape[0])
    if form.softcap:
        logits = form.softcap * torch.tanh(logits / form.softcap)
    return logits


@pytest.mark.parametrize("built", ALL, indirect=True)
def test_attention_logits_match_transformers(built):
    src, fwd = built.src, built.fwd
    causal = FAMILIES[src.family].causal
    for layer in range(src.dims.L):
        for b in range(B):
            x = fwd.cap[("x", layer)][b]
            pred = predicted_logits(src, layer, x)
            logp = torch.log(fwd.probs[layer][b])
            mask = torch.tril(torch.ones(T, T, dtype=torch.bool)) if causal else torch.ones(T, T, dtype=torch.bool)
            dp = (pred - pred[:, :, :1]).masked_fill(~mask, 0)
            dt = (logp - logp[:, :, :1]).masked_fill(~mask, 0)
            assert dt.abs().max() > 1e-3, "the attention is too flat to test anything"
            assert _rel(dp, dt) < 1e-5, f"{built.case} layer {layer}: logits off by {_rel(dp, dt):.2e} relative"
    record(built, "logits")


# ------------------------------------------------------------------------------------------------- 2. OV
@pytest.mark.parametrize("built", ALL, indirect=True)
def test_ov_circuits_reproduce_the_attention_output(built):
    src, fwd = built.src, built.fwd
    D = src.dims
    for layer in range(D.L):
        P = fwd.probs[layer]  # (B, h, T, T)
        out = fwd.cap[("attn_out", layer)]
        out = out[0] if isinstance(out, tuple) else out
        form = attention_form(src, layer)
        if not form.mla:  # raw: the module's own input and probabilities, the project's per-head matrices
            u = fwd.cap[("attn_in", layer)]
            Bk = layer_kernels(src, layer, "ov", kernel="raw")
            Bd, g = _dense(Bk), torch.as_tensor(Bk.index)
            bv = src.layer_vector(layer, "v_bias", dtype=torch.float64)
            bo = src.layer_vector(layer, "o_bias", dtype=torch.float64)
            pred = torch.einsum("bhtu,hde,bue->btd", P, Bd, u)
            if bv is not None:
                per_head = torch.einsum("hdr,hr->hd", Bk.X, bv.reshape(D.n_kv, D.value_dim)[g])
                pred = pred + torch.einsum("bhtu,hd->btd", P, per_head)
            if bo is not None:
                pred = pred + bo
            assert _rel(pred, out) < 1e-9, f"{built.case} layer {layer}: raw OV off by {_rel(pred, out):.2e}"
        # folded: on the normalised residual stream, after the post-attention norm where there is one
        Bf = layer_kernels(src, layer, "ov", kernel="folded")
        Bfd = _dense(Bf)
        sh = folded_shifts(src, layer)
        for b in range(B):
            x = fwd.cap[("x", layer)][b]
            n = form.normalise(x)
            fac = token_factors(src, layer, x, attn_out=out[b])
            fv = fac["k"].T[torch.as_tensor(Bf.index)] if form.mla else torch.ones(D.h, T, dtype=torch.float64)
            written = torch.einsum("htu,hu,hde,ue->td", P[b], fv, Bfd, n) + torch.einsum(
                "htu,hu,hd->td", P[b], fv, sh["ov"]
            )
            pred = fac["o"][:, None] * (written + sh["o"])
            target = fwd.cap[("post", layer)][b] if form.post_norm else out[b]
            assert _rel(pred, target) < 1e-6, f"{built.case} layer {layer}: folded OV off by {_rel(pred, target):.2e}"
    record(built, "OV")


# ------------------------------------------------------------------------------------------------ 3. MLP
def _act(src):
    from transformers.activations import ACT2FN

    from utils.weights.layout import cfg_get

    return ACT2FN[cfg_get(src.config, src.fam.mlp.act)]


def _dense_mlp(src, layer, u, prefix=""):
    act = _act(src)

    def lin(role, z):
        W = src.layer_weight(layer, prefix + role, dtype=torch.float64)
        b = None if prefix else src.layer_vector(layer, f"{role}_bias", dtype=torch.float64)
        return z @ W.T + (0 if b is None else b)

    h = act(lin("gate", u)) * lin("up", u) if src.fam.mlp.gated else act(lin("up", u))
    return lin("down", h)


@pytest.mark.parametrize("built", ALL, indirect=True)
def test_mlp_and_experts_reproduce_transformers(built):
    src, fwd = built.src, built.fwd
    act = _act(src)
    for layer in range(src.dims.L):
        u = fwd.cap[("mlp_in", layer)]
        out = fwd.cap[("mlp_out", layer)]
        if not src.is_moe(layer):
            pred = _dense_mlp(src, layer, u)
            assert _rel(pred, out) < 1e-9, f"{built.case} layer {layer}: MLP off by {_rel(pred, out):.2e}"
            continue
        # the router's logits from the project's router matrix
        logits = fwd.cap[("router", layer)][0]
        r_in = fwd.cap[("router_in", layer)].reshape(-1, src.dims.d)
        Wr = src.layer_weight(layer, "router", dtype=torch.float64)
        assert _rel(r_in @ Wr.T, logits) < 1e-6  # DeepSeek's router computes its logits in float32
        # every expert of the project, weighted by transformers' own top-k choice
        (args, kwargs) = fwd.cap[("experts_in", layer)]
        h, idx, w = args[:3]
        pred = torch.zeros_like(h)
        for e in range(src.dims.n_experts):
            rows, slot = torch.nonzero(idx == e, as_tuple=True)
            if len(rows) == 0:
                continue
            z = h[rows]
            Wg, Wu, Wd = (src.layer_weight(layer, r, dtype=torch.float64, expert=e) for r in ("gate", "up", "down"))
            y = (act(z @ Wg.T) * (z @ Wu.T)) @ Wd.T
            pred.index_add_(0, rows, y * w[rows, slot, None])
        ex_out = fwd.cap[("experts_out", layer)]
        assert _rel(pred, ex_out) < 1e-9, f"{built.case} layer {layer}: experts off by {_rel(pred, ex_out):.2e}"
        total = pred.reshape(out.shape)
        if src.dims.d_shared:
            x2 = u.reshape(-1, src.dims.d)
            shared = _dense_mlp(src, layer, x2, prefix="shared_")
            if src.fam.mlp.shared_router:
                gate_logit = x2 @ src.layer_weight(layer, "shared_router", dtype=torch.float64).T
                key = "shared_expert_gate"
                assert _rel(gate_logit, fwd.cap[(key, layer)].reshape(gate_logit.shape)) < 1e-9
                shared = torch.sigmoid(gate_logit) * shared
            total = total + shared.reshape(out.shape)
        assert _rel(total, out) < 1e-9, f"{built.case} layer {layer}: MoE block off by {_rel(total, out):.2e}"
    record(built, "MLP")


# ------------------------------------------------------------------------------------------- 4. coverage
@pytest.mark.parametrize("built", ALL, indirect=True)
def test_every_parameter_is_analysed_once(built):
    from safetensors import safe_open

    src = built.src
    refs = src.matrices()
    assert not [r for r in refs if r.weight_type.startswith("other:")], "the table missed a tensor"
    with safe_open(str(built.folder / "model.safetensors"), "pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    big = {k: s for k, s in stored.items() if len(s) >= 2}
    covered: dict[str, int] = {}
    for r in refs:
        base = re.sub(r"(\[[^\]]*\])+$", "", r.name)
        covered[base] = covered.get(base, 0) + math.prod(r.shape)
    assert set(covered) == set(big), f"not analysed: {set(big) - set(covered)}; unknown: {set(covered) - set(big)}"
    for k, s in big.items():
        assert covered[k] == math.prod(s), f"{k}: {covered[k]} of {math.prod(s)} elements analysed"
    n_params = sum(p.numel() for p in built.model.parameters() if p.ndim >= 2)  # tied parameters once
    assert sum(math.prod(r.shape) for r in refs) == n_params
    for r in refs:  # every listed matrix loads, with its shape
        assert tuple(src.load(r).shape) == tuple(r.shape)
    record(built, "coverage")


# ---------------------------------------------------------------------------------------------- 5. GGUF
GGUF_CASES = [c for c in ALL if CASES[c][2].get("gguf")]


@pytest.mark.parametrize("built", GGUF_CASES, indirect=True)
def test_gguf_reads_the_same_weights(built, tmp_path):
    path = gguf_from_checkpoint(built.folder, built.case, tmp_path / "m.gguf")
    g, s = open_weights(path), built.src
    assert g.dims == s.dims, (g.dims, s.dims)
    assert g.family == s.family or (g.family, s.family) == ("llama", "mistral")  # llama.cpp writes Mistral as llama
    rg = {(r.layer, r.weight_type, r.expert): r for r in g.matrices()}
    rs = {(r.layer, r.weight_type, r.expert): r for r in s.matrices() if r.weight_type != "W_pooler"}
    assert set(rg) == set(rs), set(rg) ^ set(rs)
    for k in rs:
        np.testing.assert_allclose(g.load(rg[k]).numpy(), s.load(rs[k]).numpy(), rtol=0, atol=1e-6, err_msg=str(k))
    # GGUF stores no Gemma query_pre_attn_scalar and no GPT-2 scale_attn_by_inverse_layer_idx (llama.cpp has neither);
    # every other scale (YaRN's mscale of DeepSeek included) must come out of the GGUF header the same
    unstored_scale = s.fam.attention.scale == "query_pre_attn_scalar" or getattr(
        s.config, "scale_attn_by_inverse_layer_idx", False
    )
    for layer in range(s.dims.L):
        fs, fg = attention_form(s, layer), attention_form(g, layer)
        for c in ("qk", "ov") + (("qk_rope",) if fs.mla else ()):
            for kernel in ("raw", "folded"):
                a = _dense(layer_kernels(s, layer, c, kernel=kernel))
                b = _dense(layer_kernels(g, layer, c, kernel=kernel))
                if kernel == "folded" and c != "ov" and unstored_scale:
                    a, b = a / fs.scale, b / fg.scale
                assert _rel(b, a) < 1e-6, f"{built.case} layer {layer} {c} {kernel}"
    record(built, "GGUF")


def test_readme_family_table_is_generated_from_the_recorded_results():
    """The README's table is the rendering of docs/conformance.json (``make families``): every family has
    a conformance case, and every case of this file passed every check when it was recorded."""
    import json
    from pathlib import Path

    from utils.weights.family_table import TABLE_BEGIN, TABLE_END, family_table

    root = Path(__file__).resolve().parents[1]
    results = json.loads((root / "docs" / "conformance.json").read_text())
    text = (root / "README.md").read_text()
    section = text[text.index(TABLE_BEGIN) + len(TABLE_BEGIN) : text.index(TABLE_END)].strip()
    assert section == family_table(results), "README family table is stale: run `make families`"
    assert set(results["cases"]) == set(CASES)
    assert {r["family"] for r in results["cases"].values()} == set(FAMILIES)
    for case, r in results["cases"].items():
        want = ["logits", "OV", "MLP", "coverage"] + (["GGUF"] if CASES[case][2].get("gguf") else [])
        assert r["checks"] == want, (case, r["checks"])


def test_the_language_models_block_stack_is_chosen_beside_a_vision_tower():
    """Gemma 3 4B-27B checkpoints hold a vision tower whose blocks have the same names as the language
    model's: the prefix kept is the stack with every block of the configuration and the token embedding,
    whatever order the names come in."""
    from family_cases import make_config

    from utils.weights.layout import Layout

    cfg = make_config("gemma3_text")
    L = cfg.num_hidden_layers
    lm = [f"model.language_model.layers.{i}.self_attn.q_proj.weight" for i in range(L)]
    lm.append("model.language_model.embed_tokens.weight")
    tower_short = [f"model.vision_tower.vision_model.encoder.layers.{i}.self_attn.q_proj.weight" for i in range(L - 1)]
    tower_full = [f"vision.layers.{i}.self_attn.q_proj.weight" for i in range(L)]  # every block, no embedding
    for names in (lm + tower_short, tower_short + lm, tower_full + lm, list(reversed(tower_full + lm))):
        assert Layout(FAMILIES["gemma3_text"], cfg, names).prefix == "model.language_model."
