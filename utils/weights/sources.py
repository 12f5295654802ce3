"""Streaming the weights of a model one tensor at a time, and its dimensions.

:func:`open_weights` gives a :class:`WeightSource` that reads single tensors from safetensors or
GGUF: weight-only analyses never build the model, so a 70B checkpoint needs memory for one matrix.
Every family is read through its table (:mod:`utils.weights.families`, :class:`~.layout.Layout`);
every accessor returns a matrix in the ``nn.Linear`` convention ``(out_features, in_features)``.

What a source lists (:meth:`WeightSource.matrices`) is every parameter of two or more dimensions of
the model, each exactly once: per block the attention's matrices, the MLP's (or the router, every
expert's ``gate up down`` and the shared experts), then the model-level ones (embeddings, an untied
output head, BERT's token-type embedding and pooler). Fused tensors are split into their roles
(``qkv`` into W_Q, W_K, W_V; ``gate_up`` into W_gate, W_up; a 3-D expert tensor into its experts). A
tensor of two or more dimensions that the family's table does not name is listed too, as
``other:<name>``, so nothing is skipped silently.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .families import D_IN_ROLES, D_OUT_ROLES, WEIGHT_TYPE, Family, UnsupportedArchitecture, family_of, gguf_family
from .gguf import QUANT_NAMES, GGUFFile, GGUFFormatError
from .layout import VECTOR_KEYS, Layout, Loc, MissingTensor, ModelDims, dims_of, select_rows
from .shards import INDEX_NAME, Checkpoint
from .specs import ModelNotFound


class QuantisedCheckpoint(ValueError):
    """A checkpoint folder whose weights are stored quantised (its config has a ``quantization_config``)."""


class IncompleteCheckpoint(ValueError):
    """A checkpoint that lacks a tensor its configuration promises (a layer missing)."""


@dataclass(frozen=True)
class MatrixRef:
    """One matrix: stored ``name`` (``[e]`` an expert of a 3-D tensor, ``[q]`` a part of a fused one),
    ``layer`` (-1 for model-level), ``weight_type``, ``shape`` (out, in), ``role`` and ``expert`` (-1 outside
    the experts)."""

    name: str
    layer: int
    weight_type: str
    shape: tuple[int, int]
    role: str | None = None
    expert: int = -1


# ---------------------------------------------------------------------------------------------- configs
def hf_config(model_type: str, values: dict):
    """The ``transformers`` configuration of ``model_type`` with ``values`` (class defaults elsewhere)."""
    from transformers import AutoConfig

    keep = {k: v for k, v in values.items() if k not in ("model_type", "architectures", "transformers_version")}
    try:
        return AutoConfig.for_model(model_type, **keep)
    except ValueError as e:  # a model_type transformers does not know
        raise UnsupportedArchitecture(f"transformers cannot build a configuration of {model_type!r}: {e}") from None


def text_config(cfg: dict) -> dict:
    """The language model's part of a multimodal configuration (its ``text_config``), else ``cfg``."""
    if "text_config" in cfg and "num_hidden_layers" not in cfg and isinstance(cfg["text_config"], dict):
        return {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type")}
    return cfg


def read_config_json(folder: Path) -> dict:
    cfg_path = Path(folder) / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON ({e}); fix or re-download the checkpoint") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path} is not a JSON object; fix or re-download the checkpoint")
    return text_config(cfg)


def folder_config(folder: Path) -> tuple[Family, object]:
    """``(family, transformers configuration)`` of a checkpoint folder; unknown architectures refused by name."""
    cfg = read_config_json(folder)
    fam = family_of(cfg.get("model_type", "<missing model_type>"), str(Path(folder) / "config.json"))
    return fam, hf_config(cfg["model_type"], cfg)


_GGUF_KEYS = {  # GGUF metadata (after "<arch>.") -> the canonical value it gives
    "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers",
    "attention.head_count": "num_attention_heads",
    "context_length": "max_position_embeddings",
}


def gguf_config(g: GGUFFile) -> tuple[Family, object]:
    """``(family, transformers configuration)`` from a GGUF header: the fields the table needs."""
    a = g.architecture

    def get(k, default=None):
        return g.get(f"{a}.{k}", default)

    fam = gguf_family(a, int(get("expert_count", 0) or 0), str(g.path))
    if fam.attention.mla and (get("attention.key_length_mla") is not None or "blk.0.attn_k_b.weight" in g.tensors):
        raise GGUFFormatError(
            f"{g.path} stores DeepSeek's latent attention split into attn_k_b / attn_v_b (llama.cpp's layout since "
            "2025), which is not read here: analyse the Hugging Face checkpoint of the model, or a GGUF file with "
            "the joint attn_kv_b tensor"
        )
    h = int(get("attention.head_count"))
    V = get("vocab_size")
    if V is None:
        V = g.tensors["token_embd.weight"].shape[0]
    values = {hf: get(k) for k, hf in _GGUF_KEYS.items()}
    values.update(
        vocab_size=int(V),
        tie_word_embeddings="output.weight" not in g.tensors,
        pad_token_id=g.get("tokenizer.ggml.padding_token_id"),
        bos_token_id=g.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=g.get("tokenizer.ggml.eos_token_id"),
    )
    kv = get("attention.head_count_kv", h)
    kv = int(kv if not isinstance(kv, (list, tuple)) else kv[0])
    if fam.attention.qkv_layout == "falcon":
        values.update(new_decoder_architecture=kv not in (1, h), multi_query=kv == 1, num_kv_heads=kv)
    elif fam.kv_heads:
        values[fam.kv_heads] = kv
    key_len = get("attention.key_length")
    if fam.head_dim and key_len is not None and not fam.attention.mla:
        values[fam.head_dim] = int(key_len)
    values[fam.mlp.d_ff[0]] = get("feed_forward_length")
    eps = get("attention.layer_norm_rms_epsilon", get("attention.layer_norm_epsilon"))
    if eps is not None:
        values[fam.attention.eps[0]] = eps
    if fam.attention.softcap and get("attn_logit_softcapping") is not None:
        values[fam.attention.softcap] = get("attn_logit_softcapping")
    if fam.attention.scale == "query_pre_attn_scalar" and key_len is not None:
        values["query_pre_attn_scalar"] = int(key_len)  # llama.cpp's default (its scale for 27B differs)
    if fam.mlp.moe:
        values[fam.mlp.n_experts] = int(get("expert_count", 0) or 0)
        values[fam.mlp.top_k] = int(get("expert_used_count", 0) or 0)
        values[fam.mlp.d_expert] = int(get("expert_feed_forward_length", 0) or get("feed_forward_length"))
        if fam.mlp.d_shared == "shared_expert_intermediate_size":
            values["shared_expert_intermediate_size"] = int(get("expert_shared_feed_forward_length", 0) or 0)
        elif fam.mlp.d_shared:
            values["n_shared_experts"] = int(get("expert_shared_count", 0) or 0)
        if fam.mlp.moe == "first_k_dense":
            values["first_k_dense_replace"] = int(get("leading_dense_block_count", 0) or 0)
    model_type = fam.model_types[0]
    if fam.attention.mla:
        rope = int(get("rope.dimension_count"))
        values.update(
            q_lora_rank=get("attention.q_lora_rank") or None,
            kv_lora_rank=int(get("attention.kv_lora_rank")),
            qk_rope_head_dim=rope,
            qk_nope_head_dim=int(key_len) - rope,
            v_head_dim=int(get("attention.value_length")),
        )
        # llama.cpp reads a missing gating function as softmax (the DeepSeek-V2 / V2.5 files written before the key)
        model_type = "deepseek_v3" if int(get("expert_gating_func", 1) or 1) == 2 else "deepseek_v2"
    theta = get("rope.freq_base")
    if theta is not None:
        values["rope_parameters"] = {"rope_type": "default", "rope_theta": float(theta)}
        if get("rope.scaling.type") == "yarn" and get("rope.scaling.factor"):
            # as llama.cpp writes YaRN (yarn_log_multiplier = 0.1 * mscale_all_dim); the MLA scale depends on it
            values["rope_parameters"].update(
                rope_type="yarn",
                factor=float(get("rope.scaling.factor")),
                original_max_position_embeddings=int(get("rope.scaling.original_context_length", 4096)),
            )
            if get("rope.scaling.yarn_log_multiplier"):
                m = float(get("rope.scaling.yarn_log_multiplier")) / 0.1
                values["rope_parameters"].update(mscale=m, mscale_all_dim=m)
    return fam, hf_config(model_type, {k: v for k, v in values.items() if v is not None})


# ------------------------------------------------------------------------------------------ the sources
class WeightSource:
    """Streams the weights of one model, one tensor at a time (module docstring).

    Attributes: ``fam`` (the :class:`~.families.Family`), ``family`` (its name), ``config`` (a transformers
    configuration), ``dims`` (:class:`ModelDims`), ``name`` (the model as the user named it), ``kind``.
    Subclasses provide ``layout`` (a :class:`~.layout.Layout` over their stored names) and ``_read(loc)``.
    """

    fam: Family
    family: str
    config: object
    dims: ModelDims
    name: str
    kind: str
    layout: Layout

    def _read(self, loc: Loc) -> torch.Tensor:  # the stored tensor (or expert slice) a Loc names
        raise NotImplementedError

    @property
    def tied(self) -> bool:
        return bool(getattr(self.config, "tie_word_embeddings", self.fam.tied_default))

    # -- indices ---------------------------------------------------------------------------------
    def layer_index(self, layer: int) -> int:
        """``layer`` as an index 0..L-1 (negative counts from the end); ``IndexError`` when out of range."""
        L = self.dims.L
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise TypeError(f"layer must be an int, got {type(layer).__name__}")
        if layer < -L or layer >= L:
            raise IndexError(
                f"layer index {layer} is out of range: {self.name} has L={L} layers "
                f"(valid 0..{L - 1}, or negative from the end)"
            )
        return layer % L

    def layer_roles(self, layer: int) -> list[tuple[str, int | None]]:
        """``(role, expert)`` of every matrix of block ``layer`` (see :class:`~.layout.Layout`)."""
        return self.layout.layer_roles(self.layer_index(layer))

    def has_role(self, role: str, layer: int | None = None) -> bool:
        layers = range(self.dims.L) if layer is None else [self.layer_index(layer)]
        return any(r == role for i in layers for r, _ in self.layout.layer_roles(i))

    def is_moe(self, layer: int) -> bool:
        return self.layout.is_moe(self.layer_index(layer))

    @staticmethod
    def residual_axis(role: str) -> int | None:
        """The axis of a role's matrix that is the residual stream: 1 (it reads it), 0 (writes it) or None."""
        return 1 if role in D_IN_ROLES else 0 if role in D_OUT_ROLES else None

    # -- matrices ----------------------------------------------------------------------------------
    def layer_weight(
        self, layer: int, role: str, dtype: torch.dtype | None = torch.float32, expert: int | None = None
    ) -> torch.Tensor:
        """Matrix ``role`` of block ``layer`` (of expert ``expert``), ``(out_features, in_features)``."""
        layer = self.layer_index(layer)
        roles = self.layout.layer_roles(layer)
        if (role, expert) not in roles:
            have = sorted({r for r, _ in roles})
            if expert is not None and (role, 0) in roles:
                raise IndexError(f"expert {expert} is out of range: block {layer} has {self.dims.n_experts} experts")
            raise KeyError(
                f"role {role!r}{'' if expert is None else f' of expert {expert}'} does not exist in block {layer} "
                f"of this {self.family} model (its roles: {', '.join(have)})"
            )
        W = self._matrix(layer, role, expert)
        return W if dtype is None else W.to(dtype)

    def _matrix(self, layer: int, role: str, expert: int | None) -> torch.Tensor:
        try:
            loc = self.layout.locate(layer, role, expert)
        except MissingTensor as e:
            raise IncompleteCheckpoint(str(e).strip("'\"")) from None
        W = select_rows(loc, self._read(loc))
        want = self.layout.shape(role, expert)
        if tuple(W.shape) != tuple(want):
            raise IncompleteCheckpoint(
                f"{self.name}: {loc.label} has shape {list(W.shape)}, but the configuration gives {list(want)} for "
                f"{WEIGHT_TYPE[role]} of block {layer}: the checkpoint does not match its configuration"
            )
        return W

    def layer_vector(self, layer: int, key: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor | None:
        """Vector ``key`` of block ``layer`` (a norm's stored weight, a bias; see ``layout.VECTOR_KEYS``), or None
        when the model has none. Norm weights come as stored: the gain is ``norm_offset() + w``."""
        if key not in VECTOR_KEYS:
            raise KeyError(f"unknown vector {key!r}; one of {', '.join(VECTOR_KEYS)}")
        loc = self.layout.vector_loc(self.layer_index(layer), key)
        if loc is None:
            return None
        v = select_rows(loc, self._read(loc))
        return v if dtype is None else v.to(dtype)

    def norm_gain(self, layer: int, key: str, dtype: torch.dtype = torch.float64) -> torch.Tensor | None:
        """The gain a norm multiplies by (``offset + w``: Gemma stores ``w`` for a gain ``1 + w``), or None."""
        w = self.layer_vector(layer, key, dtype)
        return None if w is None else w + self.layout.norm_offset()

    def matrices(self) -> list[MatrixRef]:
        """Every matrix of the model (module docstring): blocks in order, then the model level."""
        out = []
        for i in range(self.dims.L):
            for role, e in self.layout.layer_roles(i):
                out.append(self._ref(i, role, e))
        out.extend(self._model_level())
        return out

    def _ref(self, layer: int, role: str, expert: int | None) -> MatrixRef:
        try:
            label = self.layout.locate(layer, role, expert).label
        except MissingTensor:
            label = f"layers.{layer}.{role}" + ("" if expert is None else f".{expert}")
        return MatrixRef(
            label, layer, WEIGHT_TYPE[role], self.layout.shape(role, expert), role, -1 if expert is None else expert
        )

    def load(self, ref: MatrixRef, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        if ref.role:
            W = self._matrix(ref.layer, ref.role, None if ref.expert < 0 else ref.expert)
        else:
            W = self._raw(ref.name)
            if W.ndim != 2:
                W = W.reshape(-1, W.shape[-1])
        return W if dtype is None else W.to(dtype)

    def _raw(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def _model_level(self) -> list[MatrixRef]:
        return []

    # -- completeness -----------------------------------------------------------------------------
    def missing(self) -> list[MatrixRef]:
        """The matrices the configuration promises whose tensor is not stored (empty when complete)."""
        out = []
        for i in range(self.dims.L):
            for role, e in self.layout.layer_roles(i):
                try:
                    self.layout.locate(i, role, e)
                except MissingTensor:
                    out.append(
                        MatrixRef(
                            f"layers.{i}.{role}",
                            i,
                            WEIGHT_TYPE[role],
                            self.layout.shape(role, e),
                            role,
                            -1 if e is None else e,
                        )
                    )
        return out

    def check_complete(self) -> None:
        """:class:`IncompleteCheckpoint` naming the first missing matrix, before any sweep starts."""
        miss = self.missing()
        if miss:
            r = miss[0]
            e = "" if r.expert < 0 else f" of expert {r.expert}"
            raise IncompleteCheckpoint(
                f"{self.name}: {len(miss)} weight matrices are missing, first {r.weight_type}{e} of layer {r.layer}; "
                f"the checkpoint does not match its configuration ({self.dims.L} layers): re-download or re-export it"
            )

    # -- identity and description ----------------------------------------------------------------------
    def fingerprint(self) -> dict:
        """What identifies these weights for cached results: kind, family, dims, the whole configuration (and
        file stamps, in subclasses)."""
        cfg = self.config.to_dict() if hasattr(self.config, "to_dict") else dict(self.config)
        cfg = {k: v for k, v in cfg.items() if k not in ("transformers_version", "_name_or_path", "torch_dtype")}
        return {"kind": self.kind, "family": self.family, "dims": self.dims.as_dict(), "config": cfg}

    def describe(self):
        """The model configuration as a two-column DataFrame (for reports)."""
        import pandas as pd

        D = self.dims
        rows = [
            ("model", self.name),
            ("source", self.kind),
            ("family", f"{self.family} ({self.fam.examples})"),
            ("layers (L)", D.L),
            ("width (d)", D.d),
            ("MLP width (d_ff)", D.d_ff),
            ("query heads (h)", D.h),
            ("KV heads (n_kv)", D.n_kv),
            ("head width (d_head)", D.d_head),
            ("vocabulary (V)", D.V),
        ]
        if D.n_experts:
            n_moe = sum(self.layout.is_moe(i) for i in range(D.L))
            rows += [
                ("experts per MoE block", D.n_experts),
                ("expert width", D.d_expert),
                ("MoE blocks", f"{n_moe} of {D.L}"),
            ]
            if D.d_shared:
                rows.append(("shared-expert width", D.d_shared))
        if self.fam.attention.mla:
            rows += [
                ("latent ranks (q, kv)", f"{D.q_rank or '-'}, {D.kv_rank}"),
                ("rotary part of a head (d_rope)", D.d_rope),
                ("value width (d_v)", D.value_dim),
            ]
        return pd.DataFrame(rows, columns=["", "value"])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} family={self.family} {self.dims}>"


def _extra_refs(layout: Layout, shapes: dict[str, tuple], claimed: set[str]) -> list[MatrixRef]:
    """Stored tensors of two or more dimensions the table does not name (listed as ``other:<name>``)."""
    out = []
    for n, shp in shapes.items():
        if len(shp) >= 2 and n not in claimed:
            rows = 1
            for s in shp[:-1]:
                rows *= int(s)
            out.append(MatrixRef(n, -1, "other:" + re.sub(r"\.weight$", "", n), (rows, int(shp[-1]))))
    return out


class HFWeights(WeightSource):
    """A Hugging Face checkpoint folder with safetensors files (sharded or not)."""

    kind = "hf_dir"

    def __init__(self, path: Path, name: str | None = None):
        self.path = Path(path)
        self.fam, self.config = folder_config(self.path)
        self.family = self.fam.name
        self.dims = dims_of(self.fam, self.config)
        self.name = name or str(path)
        if not (self.path / INDEX_NAME).is_file() and not any(self.path.glob("*.safetensors")):
            hint = (
                " (it holds pytorch_model.bin: re-save it with "
                "`model.save_pretrained(folder, safe_serialization=True)`)"
                if (self.path / "pytorch_model.bin").exists()
                else ""
            )
            raise ModelNotFound(f"no *.safetensors weights in {self.path}{hint}")
        self.checkpoint = Checkpoint(self.path)  # every shard's header validated here
        quant = read_config_json(self.path).get("quantization_config")
        if quant:
            method = quant.get("quant_method", "?") if isinstance(quant, dict) else "?"
            raise QuantisedCheckpoint(
                f"{self.path} stores quantised weights (quantization_config: quant_method {method!r}; e.g. FP8 "
                "codes with block scales): their spectra are not the model's. Analyse a bf16/fp16 export of the "
                "same model (for DeepSeek-V3/R1: its fp8_cast_bf16 conversion), or a GGUF file, which is read "
                "dequantised"
            )
        self.layout = Layout(self.fam, self.config, self.checkpoint.entries, gguf=False, source=str(self.path))

    def tensor_names(self) -> list[str]:
        return list(self.checkpoint.entries)

    def fingerprint(self) -> dict:
        files = [self.path / "config.json", *self.checkpoint.shards]
        return {**super().fingerprint(), "path": str(self.path.resolve()), "files": file_stamps(files)}

    def _read(self, loc: Loc) -> torch.Tensor:
        return self.checkpoint.read(loc.name, loc.index)

    def _raw(self, name: str) -> torch.Tensor:
        if name not in self.checkpoint:
            raise KeyError(f"tensor {name!r} not in checkpoint {self.path}")
        return self.checkpoint.read(name)

    def _model_level(self) -> list[MatrixRef]:
        out = [MatrixRef(n, -1, wt, tuple(self.checkpoint.shape(n))) for wt, n in self.layout.model_level(self.tied)]
        claimed = self.layout.claimed() | {r.name for r in out}
        if self.tied:  # the tied head is the embedding; it is not listed twice
            claimed |= {n for n in self.checkpoint.entries if n.endswith("lm_head.weight")}
        shapes = {n: e.shape for n, e in self.checkpoint.entries.items()}
        return out + _extra_refs(self.layout, shapes, claimed)


class GGUFWeights(WeightSource):
    """A GGUF file (llama.cpp's names; Q and K rows back in Hugging Face order for the llama architecture)."""

    kind = "gguf"

    def __init__(self, path: Path, name: str | None = None):
        self.path = Path(path)
        self.gguf = GGUFFile(self.path)
        self.arch = self.gguf.architecture
        self.fam, self.config = gguf_config(self.gguf)
        self.family = self.fam.name
        self.dims = dims_of(self.fam, self.config)
        self.name = name or str(path)
        self.display_name = str(self.gguf.get("general.name") or self.path.stem)
        self.layout = Layout(self.fam, self.config, self.gguf.tensors, gguf=True, source=str(self.path))

    def tensor_names(self) -> list[str]:
        return list(self.gguf.tensors)

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "path": str(self.path.resolve()), "files": file_stamps([self.path])}

    def _read(self, loc: Loc) -> torch.Tensor:
        return self.gguf.tensor(loc.name, loc.index)

    def _raw(self, name: str) -> torch.Tensor:
        if name not in self.gguf.tensors:
            raise KeyError(f"tensor {name!r} not in {self.path}")
        return self.gguf.tensor(name)

    def rounding_noise(self, ref: MatrixRef) -> tuple[str, torch.Tensor] | None:
        """``(quantisation type, variance of each value's rounding error)`` of a block-quantised matrix (the
        variance's shape is the matrix's), or None for a matrix stored unquantised (F32 / F16 / BF16) or in a
        type without a noise model here (:func:`utils.weights.gguf.rounding_steps`)."""
        loc = (
            self.layout.locate(ref.layer, ref.role, None if ref.expert < 0 else ref.expert)
            if ref.role
            else Loc(ref.name)
        )
        qtype = self.gguf.tensors[loc.name].ggml_type
        var = self.gguf.rounding_variance(loc.name, loc.index)
        if var is None:
            return None
        var = select_rows(loc, var)
        return QUANT_NAMES.get(qtype, str(qtype)), var.reshape(ref.shape)

    def _model_level(self) -> list[MatrixRef]:
        out = [MatrixRef(n, -1, wt, tuple(self.gguf.tensors[n].shape)) for wt, n in self.layout.model_level(False)]
        claimed = self.layout.claimed() | {r.name for r in out}
        shapes = {n: t.shape for n, t in self.gguf.tensors.items()}
        return out + _extra_refs(self.layout, shapes, claimed)

    def describe(self):
        df = super().describe()
        df.loc[df[""] == "model", "value"] = f"{self.name} ({self.display_name})"
        return df


def file_stamps(paths) -> list:
    """``[file name, size, mtime_ns]`` of each file that exists: changes when a file is rewritten."""
    out = []
    for p in paths:
        if Path(p).is_file():
            st = Path(p).stat()
            out.append([Path(p).name, st.st_size, st.st_mtime_ns])
    return out
