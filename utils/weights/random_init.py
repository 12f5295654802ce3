"""A same-architecture null model: the weights a model had before training (``random:<model>[@seed]``).

:class:`RandomInitWeights` is a :class:`~utils.weights.sources.WeightSource` with the exact
architecture of a model (its configuration: dimensions, tied embeddings, padding token) whose
tensors are drawn fresh by the architecture's own initialiser, as ``transformers`` writes it in
``_init_weights``:

=======  ==============================================================================
family   rule (``r = config.initializer_range``, 0.02 unless the configuration says otherwise)
=======  ==============================================================================
llama    every linear weight and the token embedding ~ N(0, r); the padding token's row is 0
gpt2     every Conv1D weight and both embeddings ~ N(0, r); the two ``c_proj`` (W_O and W_down)
         ~ N(0, r / sqrt(2 n_layer)) (GPT-2's scaled residual projections)
bert     every linear weight and both embeddings ~ N(0, r); the padding token's row is 0
=======  ==============================================================================

Each tensor is generated on demand from its own seed, a hash of the spec's seed and the tensor's
place (``layers.3.q``, ``W_embed``), so any tensor can be had alone, in any order, always the same:
a 70B architecture needs the memory of one matrix, not of the model. Only the configuration of the
named model is read (``config.json``, or the GGUF header); its weights are not needed.

:func:`build_random_model` gives the runnable ``transformers`` model (for notebooks that run it):
built from the configuration with its own initialiser (seeded), then every 2-D matrix replaced by
the streamed one, so that ``open_weights(spec)`` and ``load_model(spec)`` describe the same network.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from .arch import HF_NAMES, family_of, find_prefix, roles_of
from .sources import GGUFWeights, MatrixRef, WeightSource, dims_from_hf_config
from .specs import BUNDLED_NAME, RandomSpec, download_from_hub, is_bundled, resolve_model

#: roles whose GPT-2 weight is a ``c_proj`` (scaled by 1 / sqrt(2 n_layer))
GPT2_SCALED = ("o", "down")


def tensor_seed(seed: int, key: str) -> int:
    """The seed of one tensor: a stable 63-bit hash of the spec's seed and the tensor's place."""
    h = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def init_std(family: str, what: str, initializer_range: float, n_layer: int) -> float:
    """Standard deviation of the initialiser for a role (``q`` ... ``down``) or a model-level weight type."""
    if family == "gpt2" and what in GPT2_SCALED:
        return initializer_range / math.sqrt(2 * n_layer)
    return initializer_range


def _hf_config(model_type: str, values: dict):
    """The ``transformers`` configuration of ``model_type`` with ``values`` (class defaults elsewhere)."""
    from transformers import AutoConfig

    keep = {k: v for k, v in values.items() if k not in ("model_type", "architectures", "transformers_version")}
    return AutoConfig.for_model(model_type, **keep)


def _gguf_config(src: GGUFWeights):
    """A ``transformers`` configuration from a GGUF header (the fields the architecture needs)."""
    g, a, D = src.gguf.get, src.arch, src.dims
    values = {
        "hidden_size": D.d,
        "intermediate_size": D.d_ff,
        "num_hidden_layers": D.L,
        "num_attention_heads": D.h,
        "num_key_value_heads": D.n_kv,
        "head_dim": D.d_head,
        "vocab_size": D.V,
        "rms_norm_eps": g(f"{a}.attention.layer_norm_rms_epsilon", 1e-6),
        "max_position_embeddings": g(f"{a}.context_length", 2048),
        "tie_word_embeddings": "output.weight" not in src.gguf.tensors,
        "pad_token_id": g("tokenizer.ggml.padding_token_id"),
        "bos_token_id": g("tokenizer.ggml.bos_token_id"),
        "eos_token_id": g("tokenizer.ggml.eos_token_id"),
    }
    theta = g(f"{a}.rope.freq_base")
    if theta is not None:
        values["rope_parameters"] = {"rope_type": "default", "rope_theta": float(theta)}
    return _hf_config(a, {k: v for k, v in values.items() if v is not None})


class RandomInitWeights(WeightSource):
    """Freshly initialised weights of a model's architecture (module docstring)."""

    kind = "random"

    def __init__(self, config, seed: int = 0, name: str | None = None, base: str = ""):
        cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        if "text_config" in cfg and "num_hidden_layers" not in cfg:
            cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type")}
        model_type = str(cfg.get("model_type", "<missing model_type>"))
        self.family = family_of(model_type, "the configuration of the random: model")
        self.config = config if hasattr(config, "to_dict") else _hf_config(model_type, cfg)
        self.model_type = model_type
        self.dims = dims_from_hf_config(self.config.to_dict(), self.family)
        self.seed = int(seed)
        self.base = base
        self.name = f"random init of {name or model_type} (seed {self.seed})"
        self.initializer_range = float(getattr(self.config, "initializer_range", None) or 0.02)
        self.n_layer = self.dims.L
        pad = getattr(self.config, "pad_token_id", None)
        self.padding_row = pad if self.family != "gpt2" and isinstance(pad, int) and 0 <= pad < self.dims.V else None
        self.tied = bool(getattr(self.config, "tie_word_embeddings", self.family == "gpt2"))

    # -- the tensors -------------------------------------------------------------------------
    def generate(self, key: str, shape: tuple[int, int], std: float, zero_row: int | None = None) -> torch.Tensor:
        """The tensor at place ``key``: N(0, std) from its own seed (see :func:`tensor_seed`)."""
        g = torch.Generator().manual_seed(tensor_seed(self.seed, key))
        W = torch.randn(shape, generator=g, dtype=torch.float32).mul_(std)
        if zero_row is not None:
            W[zero_row] = 0.0
        return W

    def _role_name(self, layer: int, role: str) -> str:
        return f"layers.{layer}.{role}"

    def _role_tensor(self, layer: int, role: str) -> torch.Tensor:
        std = init_std(self.family, role, self.initializer_range, self.n_layer)
        return self.generate(self._role_name(layer, role), self._role_shape(role), std)

    def _model_level_shapes(self) -> dict[str, tuple[int, int]]:
        D, c = self.dims, self.config
        out = {"W_embed": (D.V, D.d)}
        if self.family == "gpt2":
            out["W_pos"] = (int(c.n_positions), D.d)
        elif self.family == "bert":
            out["W_pos"] = (int(c.max_position_embeddings), D.d)
        elif not self.tied:
            out["W_unembed"] = (D.V, D.d)
        return out

    def _raw(self, name: str) -> torch.Tensor:
        shapes = self._model_level_shapes()
        if name not in shapes:
            raise KeyError(f"no model-level matrix {name!r} in {self.name} (it has {', '.join(shapes)})")
        zero = self.padding_row if name == "W_embed" else None
        std = init_std(self.family, name, self.initializer_range, self.n_layer)
        return self.generate(name, shapes[name], std, zero)

    def _model_level(self) -> list[MatrixRef]:
        return [MatrixRef(wt, -1, wt, shape) for wt, shape in self._model_level_shapes().items()]

    def tensor_names(self) -> list[str]:
        return [m.name for m in self.matrices()]

    def describe(self):
        import pandas as pd

        df = super().describe()
        extra = [
            ("initialiser", f"N(0, {self.initializer_range:g})" + (", c_proj scaled" if self.family == "gpt2" else "")),
            ("seed", self.seed),
        ]
        return pd.concat([df, pd.DataFrame(extra, columns=df.columns)], ignore_index=True)

    # -- the runnable model --------------------------------------------------------------------
    def fill_model(self, model) -> None:
        """Copy every streamed 2-D matrix into a ``transformers`` model of this architecture."""
        params = dict(model.named_parameters())
        names = HF_NAMES[self.family]
        p = find_prefix(params, self.family)
        with torch.no_grad():
            for i in range(self.dims.L):
                for role in roles_of(self.family):
                    W = self.layer_weight(i, role)
                    if self.family == "gpt2" and role in ("q", "k", "v"):  # fused Conv1D (d, 3d)
                        j, d = "qkv".index(role), self.dims.d
                        params[names.roles["qkv"].format(p=p, i=i)][:, j * d : (j + 1) * d].copy_(W.T)
                    else:
                        target = params[names.roles[role].format(p=p, i=i)]
                        target.copy_(W.T if names.conv1d else W)
            for ref in self._model_level():
                target = params.get(names.embeddings[ref.weight_type].format(p=p))
                if target is not None:
                    target.copy_(self.load(ref))


def random_config(rs: RandomSpec):
    """``(transformers config, display name)`` of the model a ``random:`` spec names (weights not read)."""
    kind, where = resolve_model(rs.base)
    if kind == "gguf":
        src = GGUFWeights(where, name=BUNDLED_NAME if is_bundled(rs.base) else None)
        return _gguf_config(src), src.name
    folder = download_from_hub(where, weights=False) if kind == "hub" else Path(where)
    cfg_path = folder / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON ({e}); fix or re-download the checkpoint") from e
    name = where if kind == "hub" else cfg.get("_name_or_path") or folder.name
    if "text_config" in cfg and "num_hidden_layers" not in cfg:
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type")}
    model_type = cfg.get("model_type", "<missing model_type>")
    family_of(model_type, str(cfg_path))
    return _hf_config(model_type, cfg), (name if not str(name).startswith(("/", ".")) else folder.name)


def open_random(rs: RandomSpec) -> RandomInitWeights:
    """The :class:`RandomInitWeights` of a parsed ``random:`` spec."""
    cfg, name = random_config(rs)
    return RandomInitWeights(cfg, seed=rs.seed, name=name, base=rs.base)


def build_random_model(rs: RandomSpec, dtype: torch.dtype = torch.float32, attn_implementation: str | None = None):
    """``(model, tokenizer)`` for a ``random:`` spec: the architecture built from its configuration
    with its own initialiser (``torch.manual_seed(seed)``), every 2-D matrix then set to the one
    :class:`RandomInitWeights` streams; the tokenizer is the named model's."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    src = open_random(rs)
    kw = {"dtype": dtype}
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    torch.manual_seed(src.seed)
    cls = AutoModel if src.family == "bert" else AutoModelForCausalLM
    model = cls.from_config(src.config, **kw)
    src.fill_model(model)
    kind, where = resolve_model(rs.base)
    if kind == "gguf":
        tok = AutoTokenizer.from_pretrained(str(Path(where).parent), gguf_file=Path(where).name)
    else:
        tok = AutoTokenizer.from_pretrained(str(download_from_hub(where, weights=False) if kind == "hub" else where))
    return model, tok
