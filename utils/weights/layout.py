"""Reading a family's table (:mod:`utils.weights.families`) against one set of stored tensors.

A :class:`Layout` joins a :class:`~utils.weights.families.Family`, a model's configuration (a
``transformers`` configuration object: its ``attribute_map`` gives every family the same names) and
the tensor names of one store: a safetensors checkpoint (Hugging Face names), a GGUF file (llama.cpp
names) or a live ``transformers`` model (the names it holds in memory). It answers, for every block:

* which matrices exist (:meth:`Layout.layer_roles`: attention roles, the dense MLP or the router, every
  expert's ``gate up down`` and the shared experts) and their shapes in the ``nn.Linear`` convention
  ``(out_features, in_features)``;
* where each one is stored (:meth:`Layout.locate`): a tensor, an expert's slice of a 3-D tensor, rows of a
  fused tensor (``qkv`` in the family's layout, ``gate_up``), transposed for GPT-2's Conv1D, Q/K rows
  interleaved by llama.cpp for rotary;
* the vectors (norm gains, biases) the folded kernels and the conformance tests need (:meth:`Layout.vector`).

:class:`ModelDims` holds the sizes; :func:`dims_of` reads them from a configuration.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .families import EXPERT_ROLES, WEIGHT_TYPE, Family, UnsupportedArchitecture


@dataclass(frozen=True)
class ModelDims:
    """L layers, d model width, d_ff MLP width, h query heads, n_kv KV heads, d_head, V vocabulary; for
    mixtures of experts ``n_experts`` (routed), ``d_expert`` and ``d_shared`` (the shared experts' width);
    for multi-head latent attention ``q_rank`` / ``kv_rank`` (latent widths), ``d_rope`` (the decoupled
    rotary part of each query/key head; ``d_head`` is then the content part) and ``d_v`` (value width)."""

    L: int
    d: int
    d_ff: int
    h: int
    n_kv: int
    d_head: int
    V: int
    d_v: int = 0
    n_experts: int = 0
    d_expert: int = 0
    d_shared: int = 0
    q_rank: int = 0
    kv_rank: int = 0
    d_rope: int = 0

    def __getitem__(self, key: str) -> int:
        return self.as_dict()[key]

    @property
    def GQA(self) -> int:  # the seed's name for the number of KV heads
        return self.n_kv

    @property
    def value_dim(self) -> int:
        """Width of one head's value (and of its OV circuit's rank): ``d_v``, else ``d_head``."""
        return self.d_v or self.d_head

    def as_dict(self) -> dict:
        return asdict(self)


def cfg_get(cfg, keys, default=None):
    """The first of the configuration attributes ``keys`` that is set (not None), else ``default``."""
    for k in (keys,) if isinstance(keys, str) else keys:
        if not k:
            continue
        if "*" in k:  # a product of two keys
            a, b = k.split("*")
            va, vb = cfg_get(cfg, a), cfg_get(cfg, b)
            if va is not None and vb is not None:
                return va * vb
            continue
        v = getattr(cfg, k, None)
        if v is None and isinstance(getattr(cfg, "rope_parameters", None), dict):
            v = cfg.rope_parameters.get(k)
        if v is not None:
            return v
    return default


def kv_heads(fam: Family, cfg) -> int:
    h = int(cfg.num_attention_heads)
    if fam.attention.qkv_layout == "falcon":
        if getattr(cfg, "new_decoder_architecture", False):
            return int(cfg.num_kv_heads)
        return 1 if getattr(cfg, "multi_query", False) else h
    return int(cfg_get(cfg, fam.kv_heads, h))


def dims_of(fam: Family, cfg) -> ModelDims:
    """The :class:`ModelDims` of a configuration of family ``fam``."""
    d, h = int(cfg.hidden_size), int(cfg.num_attention_heads)
    mlp, att = fam.mlp, fam.attention
    d_ff = cfg_get(cfg, mlp.d_ff) or 4 * d
    extra = {}
    if mlp.moe:
        extra["n_experts"] = int(cfg_get(cfg, mlp.n_experts, 0))
        extra["d_expert"] = int(cfg_get(cfg, mlp.d_expert, 0))
        if mlp.d_shared:
            extra["d_shared"] = int(cfg_get(cfg, mlp.d_shared, 0) or 0)
    if att.mla:
        d_head = int(cfg.qk_nope_head_dim)
        extra.update(
            q_rank=int(cfg.q_lora_rank or 0),
            kv_rank=int(cfg.kv_lora_rank),
            d_rope=int(cfg.qk_rope_head_dim),
            d_v=int(cfg.v_head_dim),
        )
    else:
        d_head = int(cfg_get(cfg, fam.head_dim, 0) or d // h)
    return ModelDims(
        L=int(cfg.num_hidden_layers),
        d=d,
        d_ff=int(d_ff),
        h=h,
        n_kv=kv_heads(fam, cfg),
        d_head=d_head,
        V=int(cfg.vocab_size),
        **extra,
    )


def moe_layer(fam: Family, cfg, layer: int) -> bool:
    """Whether block ``layer`` has a mixture of experts (the family's rule, :class:`~.families.MLPSpec`)."""
    rule = fam.mlp.moe
    if not rule or not int(cfg_get(cfg, fam.mlp.n_experts, 0) or 0):
        return False
    if rule == "all":
        return True
    if rule == "sparse_step":
        step = int(getattr(cfg, "decoder_sparse_step", 1) or 1)
        return layer not in (getattr(cfg, "mlp_only_layers", None) or []) and (layer + 1) % step == 0
    if rule == "first_k_dense":
        return layer >= int(getattr(cfg, "first_k_dense_replace", 0) or 0)
    raise ValueError(f"unknown MoE layer rule {rule!r} in the family table")


def role_shapes(D: ModelDims, gated: bool) -> dict[str, tuple[int, int]]:
    """Shape ``(out, in)`` of every matrix role (the expert roles at the expert width)."""
    qk = D.d_head + D.d_rope  # a query head's width (MLA: content + rotary part)
    shapes = {
        "q": (D.h * qk, D.d),
        "k": (D.n_kv * D.d_head, D.d),
        "v": (D.n_kv * D.value_dim, D.d),
        "o": (D.d, D.h * D.value_dim),
        "q_a": (D.q_rank, D.d),
        "q_b": (D.h * qk, D.q_rank),
        "kv_a": (D.kv_rank + D.d_rope, D.d),
        "kv_b": (D.h * (D.d_head + D.value_dim), D.kv_rank),
        "gate": (D.d_ff, D.d),
        "up": (D.d_ff, D.d),
        "down": (D.d, D.d_ff),
        "router": (D.n_experts, D.d),
        "shared_gate": (D.d_shared, D.d),
        "shared_up": (D.d_shared, D.d),
        "shared_down": (D.d, D.d_shared),
        "shared_router": (1, D.d),
    }
    return shapes


def expert_shape(D: ModelDims, role: str) -> tuple[int, int]:
    return (D.d, D.d_expert) if role == "down" else (D.d_expert, D.d)


@dataclass(frozen=True)
class Loc:
    """Where one matrix (or vector) is stored: tensor ``name``, its slice ``index`` along the first axis (an
    expert of a 3-D tensor), then ``rows`` of the (transposed, for Conv1D) matrix; ``unpermute`` > 0 undoes
    llama.cpp's rotary row interleave with that many heads."""

    name: str
    index: int | None = None
    rows: tuple | None = None  # ("slice", a, b) or ("take", tuple of row indices)
    transpose: bool = False
    unpermute: int = 0
    part: str = ""  # the role inside a fused tensor (for the displayed name)

    @property
    def label(self) -> str:
        """The stored name, with the expert and the part of a fused tensor: ``...qkv_proj.weight[k]``."""
        s = self.name
        if self.index is not None:
            s += f"[{self.index}]"
        if self.part:
            s += f"[{self.part}]"
        return s


def _row_sel(rows, W: torch.Tensor) -> torch.Tensor:
    if rows is None:
        return W
    if rows[0] == "slice":
        return W[rows[1] : rows[2]]
    return W[torch.as_tensor(rows[1])]


def select_rows(loc: Loc, W: torch.Tensor) -> torch.Tensor:
    """Apply a :class:`Loc`'s transpose and row selection to the tensor it names (already indexed)."""
    if loc.transpose:
        W = W.T if W.ndim == 2 else W
    W = _row_sel(loc.rows, W)
    if loc.unpermute:
        W = unpermute_rotary(W, loc.unpermute)
    return W.contiguous() if W.ndim == 2 else W


def unpermute_rotary(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation for rotary embeddings.

    llama.cpp's converter stores, within each head, the rows interleaved (pairs) instead of the
    Hugging Face half-split order. ``w``: ``(n_head * d_head, d)`` or a bias ``(n_head * d_head,)``;
    ``n_head`` is the number of query heads for Q and of KV heads for K.
    """
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def fused_rows(layout: str, part: str, D: ModelDims, cfg=None) -> tuple:
    """The rows of ``part`` (``q``, ``k`` or ``v``) in a fused qkv matrix of layout ``layout``."""
    h, n_kv, r = D.h, D.n_kv, D.d_head
    if layout == "falcon":
        if getattr(cfg, "new_decoder_architecture", False):
            layout = "grouped"
        elif not getattr(cfg, "multi_query", False):
            layout = "per_head"
        else:
            layout = "concat"
    if layout == "concat":
        sizes = {"q": h * r, "k": n_kv * r, "v": n_kv * r}
        a = {"q": 0, "k": sizes["q"], "v": sizes["q"] + sizes["k"]}[part]
        return ("slice", a, a + sizes[part])
    j = "qkv".index(part)
    if layout == "per_head":  # (h, 3, r): each head's q, k, v rows together (GPT-NeoX, Falcon-RW)
        idx = (np.arange(h)[:, None] * 3 * r + j * r + np.arange(r)[None, :]).reshape(-1)
    elif layout == "grouped":  # (n_kv, h / n_kv + 2, r): a group's query heads, then its key, then its value
        g = h // n_kv
        slot = {"q": np.arange(g), "k": np.array([g]), "v": np.array([g + 1])}[part]
        idx = (np.arange(n_kv)[:, None, None] * (g + 2) * r + slot[None, :, None] * r + np.arange(r)).reshape(-1)
    else:
        raise ValueError(f"unknown qkv layout {layout!r} in the family table")
    return ("take", tuple(int(i) for i in idx))


class MissingTensor(KeyError):
    """A tensor the configuration promises is not in the store."""


class Layout:
    """One family's table against one store's tensor names (module docstring).

    ``names``: the stored tensor names (None: no store, roles and shapes only); ``gguf``: the store uses
    llama.cpp's names (else Hugging Face's).
    """

    def __init__(self, family: Family, config, names=None, gguf: bool = False, source: str = "the checkpoint"):
        self.family, self.config, self.gguf = family, config, gguf
        self.names = set(names or ())
        self.source = source
        self.dims = dims_of(family, config)
        self.table = family.gguf if gguf else family.hf
        self.prefix = "" if gguf or names is None else self._find_prefix()

    # -- names ---------------------------------------------------------------------------------
    def _templates(self, key: str) -> tuple[str, ...]:
        t = self.table.get(key)
        if t is None:
            return ()
        return (t,) if isinstance(t, str) else tuple(t)

    def _full(self, tpl: str, layer: int | None = None, expert: int | None = None) -> str:
        if self.gguf:
            return tpl.format(i=layer, e=expert)
        return (self.family.stack + tpl).format(p=self.prefix, i=layer, e=expert)

    def _find_prefix(self) -> str:
        """The text before the block stack in the checkpoint's names (``model.``, ``transformer.``, ...).

        A checkpoint may hold more than one block stack of the same shape of names (Gemma 3's language model
        beside its vision tower): the prefix kept is the one whose stack has every block of the
        configuration and the token embedding, then one under ``language_model``, then the shortest; chosen
        the same way on every run."""
        stack = re.escape(self.family.stack).replace(r"\{p\}", "(?P<p>.*?)").replace(r"\{i\}", r"(?P<i>\d+)")
        probes = [t for key in ("q", "qkv", "q_a", "o") for t in self._templates(key)]
        embed = self.family.hf_model.get("W_embed", "")
        embeds = (embed,) if isinstance(embed, str) else tuple(embed)
        for tpl in probes:
            rx = re.compile("^" + stack + re.escape(tpl) + "$")
            layers: dict[str, set[int]] = {}
            for n in self.names:
                m = rx.match(n)
                if m:
                    layers.setdefault(m.group("p"), set()).add(int(m.group("i")))
            if layers:
                every = set(range(self.dims.L))
                return min(
                    layers,
                    key=lambda p, got=layers: (
                        not every <= got[p],
                        not any(e.format(p=p) in self.names for e in embeds if e),
                        "language_model" not in p,
                        len(p),
                        p,
                    ),
                )
        raise UnsupportedArchitecture(
            f"no {self.family.name} attention weights found in {self.source} (looked for names like "
            f"{self.family.stack.format(p='', i=0)}{probes[0]}); the configuration says {self.family.name} "
            "but the tensors disagree"
        )

    def stored(self, key: str, layer: int | None = None, expert: int | None = None) -> str | None:
        """The stored name of table entry ``key`` in ``layer`` (first alternative present), else None."""
        for tpl in self._templates(key):
            n = self._full(tpl, layer, expert)
            if n in self.names:
                return n
        return None

    # -- what exists ---------------------------------------------------------------------------
    def is_moe(self, layer: int) -> bool:
        return moe_layer(self.family, self.config, layer)

    def attention_roles(self) -> list[str]:
        if self.family.attention.mla:
            return (["q_a", "q_b"] if self.dims.q_rank else ["q"]) + ["kv_a", "kv_b", "o"]
        return ["q", "k", "v", "o"]

    def layer_roles(self, layer: int) -> list[tuple[str, int | None]]:
        """``(role, expert)`` of every matrix of block ``layer`` (expert None outside the experts)."""
        out = [(r, None) for r in self.attention_roles()]
        D, mlp = self.dims, self.family.mlp
        if self.is_moe(layer):
            out.append(("router", None))
            for e in range(D.n_experts):
                out.extend((r, e) for r in EXPERT_ROLES)
            if D.d_shared:
                out.extend((r, None) for r in ("shared_gate", "shared_up", "shared_down"))
                if mlp.shared_router:
                    out.append(("shared_router", None))
        else:
            out.extend((r, None) for r in (("gate", "up", "down") if mlp.gated else ("up", "down")))
        return out

    def shape(self, role: str, expert: int | None = None) -> tuple[int, int]:
        if expert is not None:
            return expert_shape(self.dims, role)
        return role_shapes(self.dims, self.family.mlp.gated)[role]

    # -- where -----------------------------------------------------------------------------------
    def locate(self, layer: int, role: str, expert: int | None = None) -> Loc:
        """Where matrix ``role`` (of expert ``expert``) of block ``layer`` is stored (module docstring)."""
        D, fam = self.dims, self.family
        tr = fam.conv1d and not self.gguf
        if expert is not None:
            n = self.stored(f"experts_{role}", layer, expert)
            if n is not None:
                return Loc(n)
            n = self.stored(f"experts_{role}_fused", layer)
            if n is not None:
                return Loc(n, index=expert)
            n = self.stored("experts_gate_up", layer)
            if n is not None and role in ("gate", "up"):
                a = 0 if role == "gate" else D.d_expert
                return Loc(n, index=expert, rows=("slice", a, a + D.d_expert), part=role)
            raise self._missing(layer, f"experts_{role}", expert)
        n = self.stored(role, layer)
        if n is not None:
            return Loc(n, transpose=tr, unpermute=self._unpermute(role))
        if role in ("q", "k", "v") and self.stored("qkv", layer):
            rows = fused_rows(self._qkv_layout(), role, D, self.config)
            return Loc(self.stored("qkv", layer), rows=rows, transpose=tr, unpermute=self._unpermute(role), part=role)
        if role in ("gate", "up") and self.stored("gate_up", layer):
            a = 0 if role == "gate" else D.d_ff
            return Loc(self.stored("gate_up", layer), rows=("slice", a, a + D.d_ff), transpose=tr, part=role)
        raise self._missing(layer, role, None)

    def vector_loc(self, layer: int, key: str) -> Loc | None:
        """Where vector ``key`` (``attn_norm``, ``q_bias``, ...) of block ``layer`` is stored, or None."""
        n = self.stored(key, layer)
        if n is not None:
            return Loc(n, unpermute=self._unpermute(key[0]) if key in ("q_bias", "k_bias") else 0)
        part = key[0]
        if key in ("q_bias", "k_bias", "v_bias") and self.stored("qkv_bias", layer):
            rows = fused_rows(self._qkv_layout(), part, self.dims, self.config)
            return Loc(self.stored("qkv_bias", layer), rows=rows, part=part)
        return None

    def _qkv_layout(self) -> str:
        # llama.cpp stores every fused attn_qkv as all q rows, then k, then v: its converter reorders Falcon's
        # grouped and GPT-NeoX's per-head layouts (Phi-3's and GPT-2's are already in that order)
        return "concat" if self.gguf else self.family.attention.qkv_layout

    def _unpermute(self, role: str) -> int:
        if not (self.gguf and self.family.gguf_rotary_permuted):
            return 0
        return {"q": self.dims.h, "k": self.dims.n_kv}.get(role, 0)

    def _missing(self, layer: int, key: str, expert) -> MissingTensor:
        tpl = self._templates(key)
        want = self._full(tpl[0], layer, expert) if tpl else f"{key} of block {layer}"
        what = f"expert {expert}'s {key}" if expert is not None else key
        return MissingTensor(
            f"{self.source} has no {what} for block {layer} (looked for {want!r}); the checkpoint does not match "
            f"its configuration ({self.family.name}, {self.dims.L} layers): re-download or re-export it"
        )

    def norm_offset(self) -> float:
        """What to add to a stored norm weight to get the gain the model multiplies by (Gemma: 1 + w)."""
        return self.family.attention.norm_offset - (self.family.gguf_norm_offset if self.gguf else 0.0)

    # -- model level --------------------------------------------------------------------------------
    def model_level(self, tied: bool) -> list[tuple[str, str]]:
        """``(weight_type, stored name)`` of the model-level matrices present (an LM head tied to the
        embedding is the same matrix, listed once)."""
        out = []
        table = self.family.gguf_model if self.gguf else self.family.hf_model
        for wt, tpl in table.items():
            for t in (tpl,) if isinstance(tpl, str) else tpl:
                n = t.format(p=self.prefix)
                if n in self.names:
                    if not (wt == "W_unembed" and tied):
                        out.append((wt, n))
                    break
        return out

    def claimed(self) -> set[str]:
        """Every stored name this layout reads as a matrix or vector (for the coverage check)."""
        out = set()
        for i in range(self.dims.L):
            for role, e in self.layer_roles(i):
                try:
                    out.add(self.locate(i, role, e).name)
                except MissingTensor:
                    pass
            for key in VECTOR_KEYS:
                loc = self.vector_loc(i, key)
                if loc is not None:
                    out.add(loc.name)
        return out


#: vectors the analyses read (norm gains and biases); others (e.g. the MLP's pre-norm) are 1-D and not analysed
VECTOR_KEYS = (
    "attn_norm",
    "attn_norm_bias",
    "q_bias",
    "k_bias",
    "v_bias",
    "o_bias",
    "q_norm",
    "k_norm",
    "post_attn_norm",
    "q_a_norm",
    "kv_a_norm",
    "q_a_bias",
    "kv_a_bias",
    "gate_bias",
    "up_bias",
    "down_bias",
    "router_bias",
)

__all__ = ["WEIGHT_TYPE", "Layout", "Loc", "ModelDims", "cfg_get", "dims_of", "moe_layer", "select_rows"]
