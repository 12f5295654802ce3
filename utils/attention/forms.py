"""Which operator a head's kernel is: the two conventions ``raw`` and ``folded``, and the per-family form.

**raw** (the seed documents' convention, and the default): the product of the checkpoint's weights,
``A_i = W_Q,iᵀ W_K,g`` and ``B_i = W_O,i W_V,g`` (multi-head latent attention: the products through the
latent projections, ``(W_Q_b,i W_Q_a)ᵀ (W_KV_b,i W_KV_a)``). It ignores everything between the weights.

**folded**: the bilinear form the model applies to its *normalised residual stream* ``n(x)`` (``x /
rms(x)`` for RMSNorm, ``(x - mean) / std`` for LayerNorm, ``x`` itself where the attention has no input
norm): the input norm's gain folded in as a diagonal, per-head QK-norm gains folded as a diagonal, the
family's scale included, the post-attention norm's gain folded into the OV circuit. For head ``i`` reading
KV head ``g``, with ``q̃_i = P_i n + a_i`` and ``k̃_g = R_g n + b_g`` (``a``, ``b``: the biases and the norm's
bias carried through, :func:`folded_shifts`), the pre-softmax logit is::

    logit(t, u) = c_q(t, i) · c_k(u, g) · q̃_i(n_t) · k̃_g(n_u)        kernel A_i = P_iᵀ R_g

exactly, where ``c_q`` and ``c_k`` are per-token factors, 1 unless a normalisation acts after the
projection (QK-norm: ``1 / rms`` of the head's, or of all heads', projected vector; MLA: ``1 / rms`` of the
query and key latents), and a soft-cap then maps the logit through ``c · tanh(logit / c)`` (Gemma 2): a
monotone map. The OV circuit ``B_i = diag(γ_post) W_O,i W_V,g diag(γ)`` writes ``c_o(t) · Σ_u p(t, u)
(B_i n_u + shift)`` (``c_o`` the post-norm's ``1 / rms``, 1 without one; MLA: the value latent's factor
``c_k(u)`` inside the sum). :func:`token_factors` computes every factor by these rules, and
``tests/test_families.py`` checks the whole form against transformers' forward for every family.

Rotary embeddings (and ALiBi) act between the projections and depend on positions; at equal positions
they are the identity and no kernel contains them. Multi-head latent attention's decoupled rotary part
is a separate kernel, ``circuit="qk_rope"`` (its key is shared by all heads and is not normalised).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..weights.layout import cfg_get as _cfg

KERNELS = ("raw", "folded")


def check_kernel(kernel: str) -> str:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r} (see utils.attention.forms)")
    return kernel


def kv_head_index(n_heads: int, n_kv: int) -> np.ndarray:
    """KV head read by each query head: ``i // (n_heads // n_kv)``, shape ``(n_heads,)``."""
    if n_heads <= 0 or n_kv <= 0 or n_heads % n_kv:
        raise ValueError(
            f"n_heads={n_heads} must be a positive multiple of n_kv={n_kv} "
            "(grouped-query attention shares each KV head among n_heads // n_kv query heads)"
        )
    return np.arange(n_heads) // (n_heads // n_kv)


@dataclass(frozen=True)
class AttentionForm:
    """What one block's attention computes from its residual stream (module docstring)."""

    family: str
    layer: int
    scale: float
    softcap: float | None
    input_norm: str | None
    eps: float
    qk_norm: str | None
    qk_eps: float
    post_norm: bool
    mla: bool
    rotary: str
    alibi: bool
    parallel: bool
    biases: tuple[str, ...]
    causal: bool

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``n(x)``: the input norm without its gain and bias (module docstring), over the last axis."""
        x = x.to(torch.float64)
        if self.input_norm == "rms":
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.input_norm == "layer":
            mu = x.mean(-1, keepdim=True)
            return (x - mu) * torch.rsqrt((x - mu).pow(2).mean(-1, keepdim=True) + self.eps)
        return x

    def notes(self, kernel: str) -> list[str]:
        """Sentences for a report: which operator the kernels are, and where it is exact."""
        check_kernel(kernel)
        out = []
        if kernel == "raw":
            out.append(
                "Kernels are `raw`: products of the checkpoint's weights (no norm gain, no scale"
                + (", no QK-norm" if self.qk_norm else "")
                + ")."
            )
        else:
            norm = {"rms": "RMSNorm", "layer": "LayerNorm", None: "no input norm"}[self.input_norm]
            s = (
                f"Kernels are `folded`: the bilinear form on the normalised residual stream n(x) ({norm}"
                + (", its gain folded in" if self.input_norm else "")
                + f"), scale {self.scale:.6g} included"
            )
            if self.qk_norm:
                where = "per head" if self.qk_norm == "head" else "over all heads"
                s += f", QK-norm gains ({where}) folded as a diagonal"
            if self.post_norm:
                s += ", the post-attention norm's gain folded into OV"
            out.append(s + ".")
            exact = []
            if self.qk_norm:
                exact.append("QK-norm divides each query and key by its own RMS (a per-token factor)")
            if self.mla:
                exact.append("the query and key/value latents are RMS-normalised (per-token factors)")
            if self.post_norm:
                exact.append("the post-attention norm divides each token's output by its RMS")
            if exact:
                out.append("Exact up to per-token factors: " + "; ".join(exact) + ".")
            if self.biases:
                out.append(f"Biases ({', '.join(self.biases)}) add affine terms beside the kernel (`folded_shifts`).")
        if self.softcap:
            out.append(
                f"Logits then pass through the soft-cap {self.softcap:g}·tanh(x / {self.softcap:g}), a monotone map."
            )
        if self.rotary:
            out.append(f"Rotary embeddings ({self.rotary}) act at run time and are not part of a kernel.")
        if self.alibi:
            out.append("ALiBi adds a per-head linear position bias at run time, not part of a kernel.")
        if self.mla:
            out.append(
                "Multi-head latent attention: the decoupled rotary part of each head is a separate kernel (qk_rope)."
            )
        return out


def attention_form(src, layer: int) -> AttentionForm:
    """The :class:`AttentionForm` of block ``layer`` of a WeightSource (from its family's table and config)."""
    fam, cfg, D = src.fam, src.config, src.dims
    spec = fam.attention
    layer = src.layer_index(layer)
    if spec.scale == "query_pre_attn_scalar":
        scale = float(cfg.query_pre_attn_scalar) ** -0.5
    elif spec.scale == "mla":
        scale = (D.d_head + D.d_rope) ** -0.5
        rp = getattr(cfg, "rope_parameters", None) or {}
        if rp.get("rope_type", "default") != "default" and rp.get("mscale_all_dim"):
            factor = float(rp["factor"])
            m = 0.1 * float(rp["mscale_all_dim"]) * math.log(factor) + 1.0 if factor > 1 else 1.0
            scale *= m * m
    elif spec.scale == "gpt2":
        scale = D.d_head**-0.5 if getattr(cfg, "scale_attn_weights", True) else 1.0
        if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
            scale /= float(layer + 1)
    else:
        scale = D.d_head**-0.5
    softcap = _cfg(cfg, spec.softcap) if spec.softcap else None
    eps = float(_cfg(cfg, spec.eps, 1e-6))
    rot = ""
    for k in spec.rotary:
        v = _cfg(cfg, k)
        if v is not None:
            rot = f"{k} = {v}"
            break
    if not rot and fam.name not in ("gpt2", "bert") and not (spec.alibi and _cfg(cfg, spec.alibi)):
        rot = "on every head dimension"
    parallel = bool(spec.parallel if isinstance(spec.parallel, bool) else _cfg(cfg, spec.parallel, False))
    biases = tuple(
        k
        for k in ("q_bias", "k_bias", "v_bias", "o_bias", "attn_norm_bias", "q_a_bias", "kv_a_bias")
        if src.layer_vector(layer, k) is not None
    )
    return AttentionForm(
        family=fam.name,
        layer=layer,
        scale=float(scale),
        softcap=float(softcap) if softcap else None,
        input_norm=spec.norm,
        eps=eps,
        qk_norm=spec.qk_norm,
        qk_eps=eps,
        post_norm=spec.post_norm,
        mla=spec.mla,
        rotary=rot,
        alibi=bool(spec.alibi and _cfg(cfg, spec.alibi)),
        parallel=parallel,
        biases=biases,
        causal=fam.causal,
    )


# ----------------------------------------------------------------------------------------- the factors
def _f64(W, device) -> torch.Tensor:
    W = W.detach()
    return (W if device is None else W.to(device)).to(torch.float64)


class _Parts:
    """One block's weights, gains and biases as float64 tensors (the pieces every factor is built from)."""

    def __init__(self, src, layer: int, device=None):
        self.src, self.layer, self.dev = src, src.layer_index(layer), device
        self.D = src.dims
        self.form = attention_form(src, layer)

    def W(self, role: str) -> torch.Tensor:
        return _f64(self.src.layer_weight(self.layer, role, dtype=None), self.dev)

    def vec(self, key: str, size: int) -> torch.Tensor:
        v = self.src.layer_vector(self.layer, key, dtype=None)
        return torch.zeros(size, dtype=torch.float64, device=self.dev) if v is None else _f64(v, self.dev)

    def gain(self, key: str, size: int) -> torch.Tensor:
        g = self.src.norm_gain(self.layer, key)
        return torch.ones(size, dtype=torch.float64, device=self.dev) if g is None else _f64(g, self.dev)

    def input_gain(self) -> torch.Tensor:
        """γ of the input norm (ones without an input norm)."""
        return (
            self.gain("attn_norm", self.D.d)
            if self.form.input_norm
            else torch.ones(self.D.d, dtype=torch.float64, device=self.dev)
        )

    def input_bias(self) -> torch.Tensor:
        return self.vec("attn_norm_bias", self.D.d)

    def qk_gains(self, which: str, n: int) -> torch.Tensor:
        """(n, r) QK-norm gains per head (ones without QK-norm)."""
        r = self.D.d_head
        if not self.form.qk_norm:
            return torch.ones(n, r, dtype=torch.float64, device=self.dev)
        key = f"{which}_norm"
        if self.form.qk_norm == "head":
            return self.gain(key, r).expand(n, r)
        return self.gain(key, n * r).reshape(n, r)

    def post_gain(self) -> torch.Tensor:
        return (
            self.gain("post_attn_norm", self.D.d)
            if self.form.post_norm
            else torch.ones(self.D.d, dtype=torch.float64, device=self.dev)
        )


def _mla_pieces(p: _Parts):
    """MLA: the per-head query maps (h, r + rr, ·) before the latent norm, the key/value maps after it."""
    D = p.D
    r, rr, rv = D.d_head, D.d_rope, D.value_dim
    kv_a = p.W("kv_a")  # (kv_rank + rr, d)
    kv_b = p.W("kv_b").reshape(D.h, r + rv, D.kv_rank)
    if D.q_rank:
        q_a, q_b = p.W("q_a"), p.W("q_b").reshape(D.h, r + rr, D.q_rank)
    else:
        q_a, q_b = None, p.W("q").reshape(D.h, r + rr, D.d)
    return q_a, q_b, kv_a, kv_b


def qk_factors(src, layer: int, kernel: str = "raw", part: str = "content", device=None):
    """``(X (h, d, r), Y (G, r, d), index)`` of block ``layer``'s QK kernels ``A_i = X[i] Y[index[i]]``.

    ``part="rope"`` gives MLA's decoupled rotary kernels (module docstring)."""
    check_kernel(kernel)
    p = _Parts(src, layer, device)
    D, f = p.D, p.form
    folded = kernel == "folded"
    gam = p.input_gain() if folded else None
    if f.mla:
        q_a, q_b, kv_a, kv_b = _mla_pieces(p)
        r = D.d_head
        rows = slice(0, r) if part == "content" else slice(r, r + D.d_rope)
        Qb = q_b[:, rows, :]  # (h, r', q_rank or d)
        if q_a is not None:
            Qb = Qb * p.gain("q_a_norm", D.q_rank) if folded else Qb
            P = Qb @ q_a  # (h, r', d)
        else:
            P = Qb
        if folded:
            P = f.scale * P * gam
        if part == "content":
            Wc = kv_a[: D.kv_rank]
            Kb = kv_b[:, :r, :]
            if folded:
                Kb = Kb * p.gain("kv_a_norm", D.kv_rank)
            R = Kb @ Wc  # (h, r, d)
            idx = np.arange(D.h)
        else:
            R = kv_a[D.kv_rank :][None]  # (1, rr, d): one rotary key for all heads
            idx = np.zeros(D.h, dtype=np.int64)
        if folded:
            R = R * gam
        return P.mT, R, idx
    if part != "content":
        raise ValueError(f"the {src.family} family has no decoupled rotary part (only multi-head latent attention)")
    r = D.d_head
    Q = p.W("q").reshape(D.h, r, D.d)
    K = p.W("k").reshape(D.n_kv, r, D.d)
    if folded:
        Q = f.scale * p.qk_gains("q", D.h)[..., None] * Q * gam
        K = p.qk_gains("k", D.n_kv)[..., None] * K * gam
    return Q.mT, K, kv_head_index(D.h, D.n_kv)


def ov_factors(src, layer: int, kernel: str = "raw", device=None):
    """``(X (h, d, r_v), Y (G, r_v, d), index)`` of block ``layer``'s OV circuits ``B_i = X[i] Y[index[i]]``."""
    check_kernel(kernel)
    p = _Parts(src, layer, device)
    D, f = p.D, p.form
    folded = kernel == "folded"
    rv = D.value_dim
    O = p.W("o").reshape(D.d, D.h, rv).permute(1, 0, 2)  # (h, d, rv)
    if f.mla:
        _, _, kv_a, kv_b = _mla_pieces(p)
        Vb = kv_b[:, D.d_head :, :]  # (h, rv, kv_rank)
        if folded:
            Vb = Vb * p.gain("kv_a_norm", D.kv_rank)
        V = Vb @ kv_a[: D.kv_rank]  # (h, rv, d)
        idx = np.arange(D.h)
    else:
        V = p.W("v").reshape(D.n_kv, rv, D.d)
        idx = kv_head_index(D.h, D.n_kv)
    if folded:
        V = V * p.input_gain()
        O = p.post_gain()[:, None] * O
    return O, V, idx


def folded_shifts(src, layer: int, device=None) -> dict[str, torch.Tensor]:
    """The affine terms beside the folded kernels (module docstring), float64:

    ``q`` (h, r) and ``k`` (G, r): ``a_i`` and ``b_g`` in head space (``q̃ = P n + a``); MLA adds ``q_rope``
    (h, rr) and ``k_rope`` (1, rr); ``ov`` (h, d): what head ``i`` writes for a unit of attention besides
    ``B_i n``; ``o`` (d,): the output bias (post-norm gain applied). Zeros where the model has no bias."""
    p = _Parts(src, layer, device)
    D, f = p.D, p.form
    beta = p.input_bias()
    out = {}
    if f.mla:
        q_a, q_b, kv_a, kv_b = _mla_pieces(p)
        r = D.d_head
        if q_a is not None:
            q0 = (q_a @ beta + p.vec("q_a_bias", D.q_rank)) * p.gain("q_a_norm", D.q_rank)
            qh = q_b @ q0  # (h, r + rr)
        else:
            qh = q_b @ beta
        out["q"], out["q_rope"] = f.scale * qh[:, :r], f.scale * qh[:, r:]
        c0 = kv_a @ beta + p.vec("kv_a_bias", D.kv_rank + D.d_rope)
        lat = c0[: D.kv_rank] * p.gain("kv_a_norm", D.kv_rank)
        kvh = kv_b @ lat  # (h, r + rv)
        out["k"], out["k_rope"] = kvh[:, :r], c0[D.kv_rank :][None]
        v0 = kvh[:, r:]  # (h, rv)
    else:
        r = D.d_head
        Q = p.W("q").reshape(D.h, r, D.d)
        K = p.W("k").reshape(D.n_kv, r, D.d)
        V = p.W("v").reshape(D.n_kv, D.value_dim, D.d)
        q0 = Q @ beta + p.vec("q_bias", D.h * r).reshape(D.h, r)
        k0 = K @ beta + p.vec("k_bias", D.n_kv * r).reshape(D.n_kv, r)
        out["q"] = f.scale * p.qk_gains("q", D.h) * q0
        out["k"] = p.qk_gains("k", D.n_kv) * k0
        v0 = (V @ beta + p.vec("v_bias", D.n_kv * D.value_dim).reshape(D.n_kv, D.value_dim))[kv_head_index(D.h, D.n_kv)]
    O = p.W("o").reshape(D.d, D.h, D.value_dim).permute(1, 0, 2)  # (h, d, rv)
    g_post = p.post_gain()
    out["ov"] = g_post * (O @ v0[..., None])[..., 0]
    out["o"] = g_post * p.vec("o_bias", D.d)
    return out


def token_factors(src, layer: int, x: torch.Tensor, attn_out: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The per-token factors of the folded form for residual-stream inputs ``x`` (T, d) (module docstring):
    ``q`` (T, h), ``k`` (T, G), MLA's ``k_rope`` (T, 1) and ``o`` (T,): with a post-attention norm, from the
    attention's output before that norm, ``attn_out`` (T, d) (omitted without it). Ones where no
    normalisation acts."""
    p = _Parts(src, layer)
    D, f = p.D, p.form
    x = x.to(torch.float64)
    xh = f.normalise(x) * p.input_gain() + p.input_bias()  # what the projections read
    T = x.shape[0]

    def inv_rms(z):
        return torch.rsqrt(z.pow(2).mean(-1) + f.qk_eps)

    out = {}
    if f.mla:
        q_a, _, kv_a, _ = _mla_pieces(p)
        if q_a is not None:
            cq = inv_rms(xh @ q_a.T + p.vec("q_a_bias", D.q_rank))
        else:
            cq = torch.ones(T, dtype=torch.float64)
        c = xh @ kv_a[: D.kv_rank].T + p.vec("kv_a_bias", D.kv_rank + D.d_rope)[: D.kv_rank]
        out["q"] = cq[:, None].expand(T, D.h)
        out["k"] = inv_rms(c)[:, None].expand(T, D.h)
        out["k_rope"] = torch.ones(T, 1, dtype=torch.float64)
    else:
        r = D.d_head
        ones = torch.ones
        if f.qk_norm:
            q = (xh @ p.W("q").T + p.vec("q_bias", D.h * r)).reshape(T, D.h, r)
            k = (xh @ p.W("k").T + p.vec("k_bias", D.n_kv * r)).reshape(T, D.n_kv, r)
            if f.qk_norm == "head":
                out["q"], out["k"] = inv_rms(q), inv_rms(k)
            else:
                out["q"] = inv_rms(q.reshape(T, -1))[:, None].expand(T, D.h)
                out["k"] = inv_rms(k.reshape(T, -1))[:, None].expand(T, D.n_kv)
        else:
            out["q"] = ones(T, D.h, dtype=torch.float64)
            out["k"] = ones(T, D.n_kv, dtype=torch.float64)
    if not f.post_norm:
        out["o"] = torch.ones(T, dtype=torch.float64)
    elif attn_out is not None:  # the post-norm's factor needs the attention's output before it
        out["o"] = torch.rsqrt(attn_out.to(torch.float64).pow(2).mean(-1) + f.eps)
    return out
