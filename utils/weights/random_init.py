"""A same-architecture null model: the weights a model had before training (``random:<model>[@seed]``).

:class:`RandomInitWeights` is a :class:`~utils.weights.sources.WeightSource` with the exact
architecture of a model (its configuration: dimensions, experts, tied embeddings, padding token) whose
matrices are drawn fresh by the architecture's own initialiser, as ``transformers`` writes it in
``_init_weights`` for every family of the table (:mod:`utils.weights.families`): every linear weight,
expert, router and embedding ~ N(0, r) with ``r = config.initializer_range`` (0.02 unless the
configuration says otherwise); the padding token's row of the token embedding is 0 where the
architecture declares a padding index; GPT-2's two ``c_proj`` (W_O and W_down) ~ N(0, r / sqrt(2 n_layer)).
Norm gains are 1 (Gemma: stored 0 for a gain 1 + 0) and biases 0, as transformers initialises them.

Each matrix is generated on demand from its own seed, a hash of the spec's seed and the matrix's place
(``layers.3.q``, ``layers.3.experts.5.up``, ``W_embed``), so any matrix can be had alone, in any order,
always the same: a 70B architecture needs the memory of one matrix, not of the model. Only the
configuration of the named model is read (``config.json``, or the GGUF header); its weights are not needed.

:func:`build_random_model` gives the runnable ``transformers`` model (for notebooks that run it):
built from the configuration with its own initialiser (seeded), then every matrix replaced by the
streamed one (read through the family's table against the model's own parameter names), so that
``open_weights(spec)`` and ``load_model(spec)`` describe the same network.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path

import torch

from .families import family_of
from .layout import VECTOR_KEYS, Layout, dims_of
from .sources import GGUFWeights, MatrixRef, WeightSource, folder_config, gguf_config, hf_config, text_config
from .specs import RandomSpec, download_from_hub, resolve_model


def tensor_seed(seed: int, key: str) -> int:
    """The seed of one tensor: a stable 63-bit hash of the spec's seed and the tensor's place."""
    h = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def init_std(scaled: bool, initializer_range: float, n_layer: int) -> float:
    """Standard deviation of the initialiser: ``r``, or ``r / sqrt(2 n_layer)`` for GPT-2's scaled ``c_proj``."""
    return initializer_range / math.sqrt(2 * n_layer) if scaled else initializer_range


class RandomInitWeights(WeightSource):
    """Freshly initialised weights of a model's architecture (module docstring)."""

    kind = "random"

    def __init__(self, config, seed: int = 0, name: str | None = None, base: str = ""):
        if not hasattr(config, "to_dict"):
            cfg = text_config(dict(config))
            config = hf_config(str(cfg.get("model_type", "<missing model_type>")), cfg)
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        self.fam = family_of(getattr(config, "model_type", "<missing model_type>"), "the random: model's configuration")
        self.family = self.fam.name
        self.config = config
        self.model_type = config.model_type
        self.dims = dims_of(self.fam, config)
        self.layout = Layout(self.fam, config, None)
        self.seed = int(seed)
        self.base = base
        self.name = name or f"random:{base or self.model_type}@{self.seed}"
        self.initializer_range = float(getattr(config, "initializer_range", None) or 0.02)
        self.n_layer = self.dims.L
        pad = getattr(config, "pad_token_id", None)
        self.padding_row = pad if self.fam.embed_padding and isinstance(pad, int) and 0 <= pad < self.dims.V else None

    # -- the tensors -------------------------------------------------------------------------
    def generate(self, key: str, shape: tuple[int, int], std: float, zero_row: int | None = None) -> torch.Tensor:
        """The tensor at place ``key``: N(0, std) from its own seed (see :func:`tensor_seed`)."""
        g = torch.Generator().manual_seed(tensor_seed(self.seed, key))
        W = torch.randn(shape, generator=g, dtype=torch.float32).mul_(std)
        if zero_row is not None:
            W[zero_row] = 0.0
        return W

    @staticmethod
    def _key(layer: int, role: str, expert: int | None) -> str:
        return f"layers.{layer}.{role}" if expert is None else f"layers.{layer}.experts.{expert}.{role}"

    def _ref(self, layer: int, role: str, expert: int | None) -> MatrixRef:
        return replace(super()._ref(layer, role, expert), name=self._key(layer, role, expert))

    def _matrix(self, layer: int, role: str, expert: int | None) -> torch.Tensor:
        std = init_std(role in self.fam.init_scaled and expert is None, self.initializer_range, self.n_layer)
        return self.generate(self._key(layer, role, expert), self.layout.shape(role, expert), std)

    def layer_vector(self, layer: int, key: str, dtype: torch.dtype | None = torch.float32):
        """Norm weights and biases as transformers initialises them: gains 1 (Gemma: 0 for 1 + 0), biases 0."""
        if key not in VECTOR_KEYS:
            raise KeyError(f"unknown vector {key!r}; one of {', '.join(VECTOR_KEYS)}")
        return None  # the gains are exactly the norm offset and the biases 0: folding them changes nothing

    def norm_gain(self, layer: int, key: str, dtype: torch.dtype = torch.float64):
        return None

    def missing(self) -> list[MatrixRef]:
        return []

    def _model_level_shapes(self) -> dict[str, tuple[int, int]]:
        D, c, table = self.dims, self.config, self.fam.hf_model
        out = {"W_embed": (D.V, D.d)}
        if "W_pos" in table:
            out["W_pos"] = (int(getattr(c, "n_positions", None) or c.max_position_embeddings), D.d)
        if "W_type" in table:
            out["W_type"] = (int(c.type_vocab_size), D.d)
        if "W_pooler" in table:
            out["W_pooler"] = (D.d, D.d)
        if "W_unembed" in table and not self.tied:
            out["W_unembed"] = (D.V, D.d)
        return out

    def _raw(self, name: str) -> torch.Tensor:
        shapes = self._model_level_shapes()
        if name not in shapes:
            raise KeyError(f"no model-level matrix {name!r} in {self.name} (it has {', '.join(shapes)})")
        zero = self.padding_row if name == "W_embed" else None
        return self.generate(name, shapes[name], self.initializer_range, zero)

    def _model_level(self) -> list[MatrixRef]:
        return [MatrixRef(wt, -1, wt, shape) for wt, shape in self._model_level_shapes().items()]

    def tensor_names(self) -> list[str]:
        return [m.name for m in self.matrices()]

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "seed": self.seed, "base": self.base}

    def describe(self):
        import pandas as pd

        df = super().describe()
        extra = [
            ("initialiser", f"N(0, {self.initializer_range:g})" + (", c_proj scaled" if self.fam.init_scaled else "")),
            ("seed", self.seed),
        ]
        return pd.concat([df, pd.DataFrame(extra, columns=df.columns)], ignore_index=True)

    # -- the runnable model --------------------------------------------------------------------
    def fill_model(self, model) -> None:
        """Copy every streamed matrix into a ``transformers`` model of this architecture (its parameters
        located through the family's table, as a checkpoint's tensors are)."""
        params = dict(model.named_parameters())
        layout = Layout(self.fam, self.config, params, source="the transformers model")
        written = 0
        with torch.no_grad():
            for i in range(self.dims.L):
                for role, e in layout.layer_roles(i):
                    loc = layout.locate(i, role, e)
                    target = params[loc.name]
                    if loc.index is not None:
                        target = target[loc.index]
                    if loc.transpose:
                        target = target.T
                    W = self._matrix(i, role, e)
                    written += W.numel()
                    if loc.rows is None:
                        target.copy_(W)
                    elif loc.rows[0] == "slice":
                        target[loc.rows[1] : loc.rows[2]].copy_(W)
                    else:
                        target[torch.as_tensor(loc.rows[1])] = W
            for wt, n in layout.model_level(self.tied):
                params[n].copy_(self._raw(wt))
                written += params[n].numel()
        total = sum(p.numel() for p in params.values() if p.ndim >= 2)
        if written != total:  # a matrix the table did not place: never leave the architecture's draw silently
            raise RuntimeError(
                f"random init of {self.name}: {written} of the model's {total} matrix elements were set from the "
                "streamed matrices; the family table misses a tensor name (utils/weights/families.py)"
            )


def random_config(rs: RandomSpec):
    """``(transformers config, display name)`` of the model a ``random:`` spec names (weights not read)."""
    kind, where = resolve_model(rs.base)
    if kind == "gguf":
        src = GGUFWeights(where)
        return gguf_config(src.gguf)[1], rs.base
    folder = download_from_hub(where, weights=False) if kind == "hub" else Path(where)
    return folder_config(folder)[1], rs.base


def open_random(rs: RandomSpec, name: str | None = None) -> RandomInitWeights:
    """The :class:`RandomInitWeights` of a parsed ``random:`` spec (named ``name``, the spec as given)."""
    cfg, _ = random_config(rs)
    return RandomInitWeights(cfg, seed=rs.seed, name=name, base=rs.base)


def random_model(rs: RandomSpec, dtype: torch.dtype = torch.float32, attn_implementation: str | None = None):
    """The runnable ``transformers`` model of a ``random:`` spec: the architecture built from its configuration
    with its own initialiser (``torch.manual_seed(seed)``), every matrix then set to the one
    :class:`RandomInitWeights` streams."""
    import transformers

    src = open_random(rs)
    kw = {"dtype": dtype}
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    torch.manual_seed(src.seed)
    model = getattr(transformers, src.fam.auto_class).from_config(src.config, **kw)
    src.fill_model(model)
    return model


def build_random_model(rs: RandomSpec, dtype: torch.dtype = torch.float32, attn_implementation: str | None = None):
    """``(model, tokenizer)`` for a ``random:`` spec (:func:`random_model`); the tokenizer is the named model's."""
    from transformers import AutoTokenizer

    model = random_model(rs, dtype, attn_implementation)
    kind, where = resolve_model(rs.base)
    if kind == "gguf":
        tok = AutoTokenizer.from_pretrained(str(Path(where).parent), gguf_file=Path(where).name)
    else:
        tok = AutoTokenizer.from_pretrained(str(download_from_hub(where, weights=False) if kind == "hub" else where))
    return model, tok


__all__ = ["RandomInitWeights", "build_random_model", "open_random", "random_config", "random_model", "tensor_seed"]
