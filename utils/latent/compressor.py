"""The context compressors trained against a frozen causal LM, and their checkpoints.

The ``latent`` compressor reads the context's token embeddings ``E`` (T, d) and the frozen
model's hidden states ``H`` (T, d) at layer ``hidden_layer``; a small transformer turns ``H`` into
features, a salience head scores every context token, and the M highest-scoring tokens (kept in
context order) become the M slots. Slot j is the token's embedding (gated by its salience, so the
LM losses reach the scores) plus a learned residual from its contextual features (zero at
initialisation); the M vectors go through an adapter (identity-initialised linear map) and are
rescaled to the RMS of real token embeddings. The ``adapter`` compressor is the same adapter on the
``mean_pool`` vectors, with no encoder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..files import atomic_path, atomic_write_text
from .prompts import chunk_mean_pool, context_hidden_states, embed_ids, input_embedding, pad_right, scale_to_rms


@dataclass
class TrainConfig:
    kind: str = "latent"  # "latent" (encoder + adapter) or "adapter" (adapter on mean_pool vectors)
    M: int = 16  # number of vectors replacing the context
    d_enc: int = 256  # encoder width
    n_layers: int = 1  # encoder transformer layers
    n_heads: int = 4  # encoder attention heads
    hidden_layer: int = 8  # frozen LM layer whose hidden states feed the encoder (0 = embeddings)
    max_context_tokens: int = 512  # positional table size of the encoder
    lr: float = 1e-4  # AdamW learning rate of the LM-loss phase
    salience_lr: float = 2e-3  # learning rate of the salience pre-training phase
    weight_decay: float = 0.0
    batch_size: int = 8
    max_steps: int = 200
    time_budget_s: float = 600.0  # stop training after this many seconds (whichever first)
    w_tf: float = 1.0  # teacher-forced answer CE
    w_first: float = 1.0  # first-token CE
    w_kce: float = 0.5  # first-K CE
    K: int = 4  # answer tokens in the first-K CE and the KD term
    w_kd: float = 0.5  # KD KL(teacher || student)
    kd_temperature: float = 2.0
    w_entropy: float = 0.1  # minus entropy of the batch-mean first-token distribution
    w_salience: float = 1.0  # salience BCE (latent only)
    salience_pretrain_steps: int = 200  # cheap salience-only steps on cached features before LM steps
    grad_clip: float = 1.0
    anchored: bool = False  # prompts end with the scaffold's anchor (answers after it)
    seed: int = 0
    bf16: bool = False  # autocast the frozen LM in bfloat16 (GPU)
    device: str = "cpu"

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


# ----------------------------------------------------------------------------- modules
class LatentEncoder(nn.Module):
    """Salience-ranked slot encoder: (H, E, mask) -> M vectors (see module docstring).

    Shapes: ``H``, ``E`` (B, T, d_model) float, ``mask`` (B, T) long/bool (1 = real token).
    ``forward`` returns ``(vectors (B, M', d_model), slot_mask (B, M') bool, salience (B, T))``
    with ``M' = min(M, T)``; rows shorter than M have trailing invalid slots.
    """

    def __init__(self, d_model: int, cfg: TrainConfig):
        super().__init__()
        self.M = cfg.M
        self.norm = nn.LayerNorm(d_model)
        self.inp = nn.Linear(d_model, cfg.d_enc)
        self.pos = nn.Embedding(cfg.max_context_tokens, cfg.d_enc)
        nn.init.normal_(self.pos.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.d_enc, cfg.n_heads, 2 * cfg.d_enc, dropout=0.0, batch_first=True, norm_first=True
        )
        self.body = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.salience = nn.Linear(cfg.d_enc, 1)
        self.residual = nn.Linear(cfg.d_enc, d_model)
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)
        # the residual is measured in units of the token-embedding RMS, so optimiser steps stay
        # small relative to the embeddings it corrects (set by Compressor)
        self.register_buffer("res_scale", torch.tensor(1.0))

    def features(self, H: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        T = H.shape[1]
        if T > self.pos.num_embeddings:
            raise ValueError(
                f"context of {T} tokens exceeds the encoder's max_context_tokens "
                f"{self.pos.num_embeddings}; raise it or cut contexts"
            )
        x = self.inp(self.norm(H.float())) + self.pos.weight[:T]
        return self.body(x, src_key_padding_mask=~mask.bool())

    def forward(self, H, E, mask):
        f = self.features(H, mask)
        s = self.salience(f).squeeze(-1)  # (B, T)
        s_masked = s.masked_fill(~mask.bool(), float("-inf"))
        k = min(self.M, H.shape[1])
        idx = s_masked.topk(k, dim=1).indices.sort(dim=1).values  # keep context order
        slot_mask = torch.gather(mask.bool(), 1, idx)
        g = torch.sigmoid(torch.gather(s, 1, idx)).unsqueeze(-1)
        gate = 1.0 + g - g.detach()  # value 1, gradient to s
        Esel = torch.gather(E.float(), 1, idx.unsqueeze(-1).expand(-1, -1, E.shape[-1]))
        fsel = torch.gather(f, 1, idx.unsqueeze(-1).expand(-1, -1, f.shape[-1]))
        return Esel * gate + self.res_scale * self.residual(fsel), slot_mask, s


class Compressor(nn.Module):
    """Encoder (``kind="latent"``) or mean pooling (``kind="adapter"``), then adapter, then RMS."""

    def __init__(self, d_model: int, cfg: TrainConfig, target_rms: float):
        super().__init__()
        if cfg.kind not in ("latent", "adapter"):
            raise ValueError(f"kind must be 'latent' or 'adapter', got {cfg.kind!r}")
        self.cfg = cfg
        self.encoder = LatentEncoder(d_model, cfg) if cfg.kind == "latent" else None
        if self.encoder is not None:
            self.encoder.res_scale.fill_(float(target_rms))
        self.adapter = nn.Linear(d_model, d_model)
        with torch.no_grad():
            self.adapter.weight.copy_(torch.eye(d_model))
            self.adapter.bias.zero_()
        self.register_buffer("target_rms", torch.tensor(float(target_rms)))

    def forward(self, llm, ctx_ids: Sequence[torch.Tensor], hidden: Sequence[torch.Tensor] | None = None):
        """List of per-example context ids -> (list of (m_b, d) vectors, salience (B, T) or None).

        ``hidden`` (optional) are cached (n_b, d) hidden states; otherwise they are computed with
        the frozen LM (counted in evaluation time).
        """
        dev = input_embedding(llm).weight.device
        if self.encoder is None:
            with torch.no_grad():
                pooled = [chunk_mean_pool(embed_ids(llm, c).float(), self.cfg.M) for c in ctx_ids]
            return [scale_to_rms(self.adapter(p.to(dev)), float(self.target_rms)) for p in pooled], None
        ids, mask = pad_right(ctx_ids, 0)
        ids, mask = ids.to(dev), mask.to(dev)
        with torch.no_grad():
            E = embed_ids(llm, ids).float()
            if hidden is None:
                H = context_hidden_states(llm, ids, mask, self.cfg.hidden_layer).float()
            else:
                H = torch.zeros_like(E)
                for b, h in enumerate(hidden):
                    H[b, : h.shape[0]] = h.to(dev, torch.float32)
        vec, slot_mask, sal = self.encoder(H, E, mask)
        out = scale_to_rms(self.adapter(vec), float(self.target_rms))
        return [out[b][slot_mask[b]] for b in range(out.shape[0])], (sal, mask)

    @torch.no_grad()
    def selected_positions(self, llm, ctx_ids: Sequence[torch.Tensor]) -> list[list[int]]:
        """Context positions whose tokens seed the M slots (latent only), in context order."""
        if self.encoder is None:
            raise ValueError("the adapter compressor has no token selection")
        dev = input_embedding(llm).weight.device
        ids, mask = pad_right(ctx_ids, 0)
        ids, mask = ids.to(dev), mask.to(dev)
        H = context_hidden_states(llm, ids, mask, self.cfg.hidden_layer).float()
        s = self.encoder.salience(self.encoder.features(H, mask)).squeeze(-1).masked_fill(~mask.bool(), float("-inf"))
        k = min(self.cfg.M, ids.shape[1])
        idx = s.topk(k, dim=1).indices.sort(dim=1).values
        return [[int(i) for i in idx[b] if i < c.shape[0]] for b, c in enumerate(ctx_ids)]

    def context_vectors(self, llm) -> Callable:
        """The callable :func:`utils.latent.build_prompts` expects (list of ids -> list of (m, d))."""

        def fn(ctx_ids):
            with torch.no_grad():
                return [v.detach() for v in self(llm, ctx_ids)[0]]

        return fn


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(
    path: str | Path, comp: Compressor, optimizer=None, step: int = 0, extra: dict | None = None
) -> Path:
    """Write ``<path>/config.json`` and ``<path>/weights.pt`` (model, optimizer, step), atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {
        "model": comp.state_dict(),
        "step": step,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
    }
    with atomic_path(path / "weights.pt") as tmp:
        torch.save(state, tmp)
    meta = {
        "config": asdict(comp.cfg),
        "d_model": comp.adapter.weight.shape[0],
        "target_rms": float(comp.target_rms),
        "step": step,
        "extra": extra or {},
    }
    atomic_write_text(path / "config.json", json.dumps(meta, indent=2) + "\n")
    return path


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[Compressor, dict]:
    """Rebuild a :class:`Compressor` from :func:`save_checkpoint`; returns ``(compressor, state)``
    where ``state`` has ``step`` and ``optimizer`` (for resuming)."""
    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "weights.pt").is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint: it needs config.json and weights.pt")
    meta = json.loads((path / "config.json").read_text())
    cfg = TrainConfig.from_dict(meta["config"])
    comp = Compressor(meta["d_model"], cfg, meta["target_rms"]).to(device)
    state = torch.load(path / "weights.pt", map_location=device, weights_only=True)
    comp.load_state_dict(state["model"])
    return comp, state
