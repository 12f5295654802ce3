"""Streaming the 2-D weights of a model one tensor at a time, and its dimensions.

:func:`open_weights` gives a :class:`WeightSource` that reads single tensors from safetensors or
GGUF: weight-only analyses never build the model, so a 70B checkpoint needs memory for one matrix.
Every accessor returns a role in the ``nn.Linear`` convention ``(out_features, in_features)``
(see :mod:`utils.weights.arch`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .arch import (
    GGUF_ARCHS,
    GGUF_EMBEDDINGS,
    GGUF_ROLES,
    HF_NAMES,
    SUPPORTED,
    WEIGHT_TYPE,
    UnsupportedArchitecture,
    family_of,
    find_prefix,
    roles_of,
)
from .gguf import GGUFFile, unpermute_rotary
from .shards import INDEX_NAME, Checkpoint
from .specs import BUNDLED_NAME, ModelNotFound, download_from_hub, is_bundled, resolve_model


@dataclass(frozen=True)
class ModelDims:
    """L layers, d model width, d_ff MLP width, h query heads, n_kv KV heads, d_head, V vocabulary."""

    L: int
    d: int
    d_ff: int
    h: int
    n_kv: int
    d_head: int
    V: int

    def __getitem__(self, key: str) -> int:
        return self.as_dict()[key]

    @property
    def GQA(self) -> int:  # the seed's name for the number of KV heads
        return self.n_kv

    def as_dict(self) -> dict:
        return asdict(self)


def dims_from_hf_config(cfg: dict, family: str) -> ModelDims:
    if family == "gpt2":
        d, h = cfg["n_embd"], cfg["n_head"]
        return ModelDims(
            L=cfg["n_layer"], d=d, d_ff=cfg.get("n_inner") or 4 * d, h=h, n_kv=h, d_head=d // h, V=cfg["vocab_size"]
        )
    d, h = cfg["hidden_size"], cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or h
    d_head = cfg.get("head_dim") or d // h
    return ModelDims(
        L=cfg["num_hidden_layers"],
        d=d,
        d_ff=cfg["intermediate_size"],
        h=h,
        n_kv=n_kv,
        d_head=d_head,
        V=cfg["vocab_size"],
    )


def get_model_dims(obj) -> ModelDims:
    """Dimensions of a :class:`WeightSource`, a spec string, a transformers model or config."""
    if isinstance(obj, WeightSource):
        return obj.dims
    if isinstance(obj, (str, os.PathLike)):
        return open_weights(obj).dims
    cfg = getattr(obj, "config", obj)
    cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    if "text_config" in cfg_dict and "num_hidden_layers" not in cfg_dict:
        cfg_dict = cfg_dict["text_config"]
    return dims_from_hf_config(cfg_dict, family_of(cfg_dict.get("model_type", "?"), "model config"))


# ---------------------------------------------------------------------------------------
# streaming weights
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MatrixRef:
    """One 2-D weight: stored ``name``, ``layer`` (-1 for model-level), ``weight_type``, ``shape`` (out, in)."""

    name: str
    layer: int
    weight_type: str
    shape: tuple[int, int]
    role: str | None = None


class WeightSource:
    """Streams the 2-D weights of one model, one tensor at a time (see module docstring)."""

    family: str
    dims: ModelDims
    name: str
    kind: str

    # subclasses implement _raw(name) -> torch.Tensor and _role_tensor(layer, role)
    def layer_index(self, layer: int) -> int:
        """``layer`` as an index 0..L-1 (negative counts from the end); ``IndexError`` when out of range."""
        L = self.dims.L
        if not isinstance(layer, (int,)) or isinstance(layer, bool):
            raise TypeError(f"layer must be an int, got {type(layer).__name__}")
        if layer < -L or layer >= L:
            raise IndexError(
                f"layer index {layer} is out of range: {self.name} has L={L} layers "
                f"(valid 0..{L - 1}, or negative from the end)"
            )
        return layer % L

    def has_role(self, role: str) -> bool:
        return role in roles_of(self.family)

    def layer_weight(self, layer: int, role: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """Weight of ``role`` in ``layer``, ``(out_features, in_features)`` (see utils.arch)."""
        layer = self.layer_index(layer)
        if not self.has_role(role):
            raise KeyError(
                f"role {role!r} does not exist in the {self.family} family (roles: {', '.join(roles_of(self.family))})"
            )
        W = self._role_tensor(layer, role)
        return W if dtype is None else W.to(dtype)

    def matrices(self) -> list[MatrixRef]:
        """Every 2-D weight: per-layer roles first (layer order), then the model-level matrices."""
        out = []
        for i in range(self.dims.L):
            for role in roles_of(self.family):
                out.append(MatrixRef(self._role_name(i, role), i, WEIGHT_TYPE[role], self._role_shape(role), role))
        out.extend(self._model_level())
        return out

    def load(self, ref: MatrixRef, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        W = self._role_tensor(ref.layer, ref.role) if ref.role else self._raw(ref.name)
        return W if dtype is None else W.to(dtype)

    def _role_shape(self, role: str) -> tuple[int, int]:
        D = self.dims
        return {
            "q": (D.h * D.d_head, D.d),
            "k": (D.n_kv * D.d_head, D.d),
            "v": (D.n_kv * D.d_head, D.d),
            "o": (D.d, D.h * D.d_head),
            "gate": (D.d_ff, D.d),
            "up": (D.d_ff, D.d),
            "down": (D.d, D.d_ff),
        }[role]

    def fingerprint(self) -> dict:
        """What identifies these weights for cached results: kind, name, dims (subclasses add file stamps)."""
        return {"kind": self.kind, "name": self.name, "family": self.family, "dims": self.dims.as_dict()}

    def describe(self):
        """The model configuration as a two-column DataFrame (for reports)."""
        import pandas as pd

        D = self.dims
        rows = [
            ("model", self.name),
            ("source", self.kind),
            ("family", self.family),
            ("layers (L)", D.L),
            ("width (d)", D.d),
            ("MLP width (d_ff)", D.d_ff),
            ("query heads (h)", D.h),
            ("KV heads (n_kv)", D.n_kv),
            ("head width (d_head)", D.d_head),
            ("vocabulary (V)", D.V),
        ]
        return pd.DataFrame(rows, columns=["", "value"])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} family={self.family} {self.dims}>"


class HFWeights(WeightSource):
    """A Hugging Face checkpoint folder with safetensors files (sharded or not)."""

    kind = "hf_dir"

    def __init__(self, path: Path, name: str | None = None):
        self.path = Path(path)
        cfg_path = self.path / "config.json"
        try:
            self.config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path} is not valid JSON ({e}); fix or re-download the checkpoint") from e
        if "text_config" in self.config and "num_hidden_layers" not in self.config:
            self.config = {**self.config["text_config"], "model_type": self.config["text_config"].get("model_type")}
        self.family = family_of(self.config.get("model_type", "<missing model_type>"), str(cfg_path))
        self.dims = dims_from_hf_config(self.config, self.family)
        self.name = name or self.config.get("_name_or_path") or self.path.name
        if not self.name or self.name.startswith(("/", ".")):
            self.name = self.path.name
        if not (self.path / INDEX_NAME).is_file() and not any(self.path.glob("*.safetensors")):
            hint = (
                " (it holds pytorch_model.bin: re-save it with "
                "`model.save_pretrained(folder, safe_serialization=True)`)"
                if (self.path / "pytorch_model.bin").exists()
                else ""
            )
            raise ModelNotFound(f"no *.safetensors weights in {self.path}{hint}")
        self.checkpoint = Checkpoint(self.path)  # every shard's header validated here
        names = self.checkpoint.entries.keys()
        self._prefix = find_prefix(names, self.family)
        self._names = HF_NAMES[self.family]

    def tensor_names(self) -> list[str]:
        return list(self.checkpoint.entries)

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "files": _file_stamps([self.path / "config.json", *self.checkpoint.shards])}

    def _raw(self, name: str) -> torch.Tensor:
        if name not in self.checkpoint:
            raise KeyError(f"tensor {name!r} not in checkpoint {self.path}")
        return self.checkpoint.read(name)

    def _role_name(self, layer: int, role: str) -> str:
        tpl = self._names.roles.get(role)
        if tpl is None:  # gpt2 q/k/v live in the fused c_attn
            return self._names.roles["qkv"].format(p=self._prefix, i=layer) + f"[{role}]"
        return tpl.format(p=self._prefix, i=layer)

    def _role_tensor(self, layer: int, role: str) -> torch.Tensor:
        if self.family == "gpt2":
            if role in ("q", "k", "v"):
                W = self._raw(self._names.roles["qkv"].format(p=self._prefix, i=layer))  # (d, 3d) Conv1D
                d = self.dims.d
                j = "qkv".index(role)
                return W[:, j * d : (j + 1) * d].T.contiguous()
            return self._raw(self._role_name(layer, role)).T.contiguous()  # Conv1D stores (in, out)
        return self._raw(self._role_name(layer, role))

    def _model_level(self) -> list[MatrixRef]:
        out = []
        for wt, tpl in self._names.embeddings.items():
            n = tpl.format(p=self._prefix)
            if n in self.checkpoint:
                if wt == "W_unembed" and self.config.get("tie_word_embeddings", self.family == "gpt2"):
                    continue  # tied: the same matrix as W_embed
                out.append(MatrixRef(n, -1, wt, tuple(self.checkpoint.shape(n))))
        return out


class GGUFWeights(WeightSource):
    """A llama-style GGUF file; Q and K rows are returned in Hugging Face order."""

    kind = "gguf"

    def __init__(self, path: Path, name: str | None = None):
        self.path = Path(path)
        self.gguf = GGUFFile(self.path)
        arch = self.gguf.architecture
        if arch not in GGUF_ARCHS:
            raise UnsupportedArchitecture(
                f"unsupported GGUF architecture {arch!r} in {self.path}. GGUF files are read for "
                f"{', '.join(GGUF_ARCHS)}; for other models pass a Hugging Face checkpoint folder. "
                f"Supported families: {SUPPORTED}"
            )
        self.family = GGUF_ARCHS[arch]
        self.arch = arch
        g = self.gguf.get
        d = int(g(f"{arch}.embedding_length"))
        h = int(g(f"{arch}.attention.head_count"))
        n_kv = int(g(f"{arch}.attention.head_count_kv", h))
        d_head = int(g(f"{arch}.attention.key_length", d // h))
        V = g(f"{arch}.vocab_size")
        if V is None:
            V = self.gguf.tensors["token_embd.weight"].shape[0]
        self.dims = ModelDims(
            L=int(g(f"{arch}.block_count")),
            d=d,
            d_ff=int(g(f"{arch}.feed_forward_length")),
            h=h,
            n_kv=n_kv,
            d_head=d_head,
            V=int(V),
        )
        self.name = name or str(g("general.name") or self.path.stem)
        # llama.cpp permutes Q/K rows for llama and mistral (not for qwen2/qwen3)
        self._permuted = arch in ("llama", "mistral")

    def tensor_names(self) -> list[str]:
        return list(self.gguf.tensors)

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "files": _file_stamps([self.path])}

    def _raw(self, name: str) -> torch.Tensor:
        if name not in self.gguf.tensors:
            raise KeyError(f"tensor {name!r} not in {self.path}")
        return self.gguf.tensor(name)

    def _role_name(self, layer: int, role: str) -> str:
        return GGUF_ROLES[role].format(i=layer)

    def _role_tensor(self, layer: int, role: str) -> torch.Tensor:
        W = self._raw(self._role_name(layer, role))
        if self._permuted and role == "q":
            W = unpermute_rotary(W, self.dims.h)
        elif self._permuted and role == "k":
            W = unpermute_rotary(W, self.dims.n_kv)
        return W

    def _model_level(self) -> list[MatrixRef]:
        out = []
        for wt, n in GGUF_EMBEDDINGS.items():
            if n in self.gguf.tensors:
                out.append(MatrixRef(n, -1, wt, tuple(self.gguf.tensors[n].shape)))
        return out


def _file_stamps(paths) -> list:
    """``[file name, size, mtime_ns]`` of each file that exists: changes when a file is rewritten."""
    out = []
    for p in paths:
        if Path(p).is_file():
            st = Path(p).stat()
            out.append([Path(p).name, st.st_size, st.st_mtime_ns])
    return out


def open_weights(spec: str | os.PathLike) -> WeightSource:
    """A :class:`WeightSource` for any model spec (see module docstring)."""
    kind, where = resolve_model(spec)
    if kind == "random":
        from .random_init import open_random

        return open_random(where)
    if kind == "gguf":
        name = BUNDLED_NAME if is_bundled(spec) else None
        return GGUFWeights(where, name=name)
    if kind == "hub":
        return HFWeights(download_from_hub(where), name=where)
    return HFWeights(where)
