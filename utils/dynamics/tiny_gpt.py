"""A small GPT-2 (nanoGPT scale) built from a ``transformers.GPT2Config``, trained byte-level
on text that is available offline, for spectral-dynamics experiments.

* Text: the long descriptions (``METADATA``) and licence files of the Python packages installed
  next to ``transformers`` (``*.dist-info``), read in sorted path order so the corpus is the same
  on every call in one environment; its SHA-256 goes into the run metadata because another
  environment (other packages installed) gives another corpus.
* Tokens: raw UTF-8 bytes, vocabulary 256; no tokenizer to train or ship.
* Model: ``GPT2LMHeadModel`` with the input embedding tied to the output head (GPT-2's default),
  so the 2-D weights are ``transformer.wte.weight`` ``(V, d)``, ``transformer.wpe.weight``
  ``(block, d)`` and, per layer, ``attn.c_attn.weight`` ``(d, 3d)``, ``attn.c_proj.weight``
  ``(d, d)``, ``mlp.c_fc.weight`` ``(d, 4d)``, ``mlp.c_proj.weight`` ``(4d, d)`` (GPT-2's Conv1D
  stores ``(in, out)``; singular values and eigenvalues do not depend on that orientation).
* Training: AdamW, cross-entropy on next-byte prediction, random windows drawn from a seeded
  ``torch.Generator``; the same seed gives the same run (on the same machine and torch build).
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..progress import progress_bar

__all__ = ["TinyGPTConfig", "offline_text", "encode_bytes", "make_tiny_gpt", "train_tiny_gpt"]


@dataclass
class TinyGPTConfig:
    """Sizes and optimiser settings of one tiny GPT-2 run (all plain values, JSON-able)."""

    n_layer: int = 4
    n_embd: int = 64
    n_head: int = 4
    block_size: int = 64  # context length in bytes
    batch_size: int = 16  # windows per optimiser step
    n_steps: int = 300  # optimiser steps
    lr: float = 2e-3  # AdamW peak learning rate (cosine decay to lr/10 after warmup)
    warmup_steps: int = 20
    weight_decay: float = 0.01
    dropout: float = 0.0
    vocab_size: int = 256  # byte-level

    def validate(self) -> None:
        for k in ("n_layer", "n_embd", "n_head", "block_size", "batch_size", "n_steps"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be a positive integer, got {getattr(self, k)!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def _site_packages() -> list[Path]:
    paths = []
    try:
        import transformers

        paths.append(Path(transformers.__file__).resolve().parents[1])
    except ImportError:  # pragma: no cover
        pass
    paths += [Path(p) for p in sys.path if p.endswith("site-packages")]
    seen, out = set(), []
    for p in paths:
        if p.is_dir() and p not in seen:
            seen.add(p)
            out.append(p)
    return out


def offline_text(max_chars: int = 1_000_000) -> tuple[str, dict]:
    """Up to ``max_chars`` characters of English-ish text found on this machine, no network.

    Returns ``(text, info)``; ``info`` holds the number of source files, the character count and
    the SHA-256 of the text (store it with a run: the corpus depends on what is installed).
    Raises ``RuntimeError`` when fewer than 10,000 characters can be found.
    """
    files: list[Path] = []
    for sp in _site_packages():
        for d in sorted(sp.glob("*.dist-info")):
            files += sorted(
                p
                for p in d.rglob("*")
                if p.is_file() and (p.name == "METADATA" or p.name.upper().startswith(("LICEN", "COPYING")))
            )
    parts, total, used = [], 0, 0
    for p in files:
        try:
            t = p.read_text(encoding="utf-8", errors="ignore")
        except OSError:
            continue
        if p.name == "METADATA":  # drop the RFC 822 header block, keep the long description
            t = t.split("\n\n", 1)[1] if "\n\n" in t else ""
        t = t.strip()
        if len(t) < 200:
            continue
        parts.append(t)
        used += 1
        total += len(t) + 2
        if total >= max_chars:
            break
    text = "\n\n".join(parts)[:max_chars]
    if len(text) < 10_000:
        raise RuntimeError(
            "found less than 10,000 characters of offline text in the installed "
            "packages' METADATA/licence files; pass your own text to encode_bytes()"
        )
    info = {
        "source": "site-packages *.dist-info METADATA and licence files",
        "n_files": used,
        "n_chars": len(text),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
    return text, info


def encode_bytes(text: str) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as a 1-D ``torch.long`` tensor of token ids in [0, 256)."""
    return torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64))


def make_tiny_gpt(cfg: TinyGPTConfig, seed: int = 0):
    """A randomly initialised ``GPT2LMHeadModel`` of the given sizes (initialisation seeded)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg.validate()
    gcfg = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=4 * cfg.n_embd,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(gcfg)
    model.train()
    return model


def _lr_at(step: int, cfg: TinyGPTConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.n_steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def train_tiny_gpt(
    model,
    data: torch.Tensor,
    cfg: TinyGPTConfig,
    seed: int = 0,
    on_step: Callable[[int, float, torch.nn.Module], None] | None = None,
    progress: bool = True,
) -> dict:
    """Train ``model`` on the byte stream ``data`` for ``cfg.n_steps`` AdamW steps.

    ``on_step(step, loss, model)`` is called before the first step (``step = 0``, the loss of the
    initial model on the first batch) and after every optimiser step ``step = 1..n_steps`` with
    that step's training loss (nats per byte). Returns ``{"final_loss", "seconds", "steps"}``.
    """
    cfg.validate()
    if data.ndim != 1 or data.numel() <= cfg.block_size + 1:
        raise ValueError(
            f"data must be a 1-D token stream longer than block_size+1 "
            f"({cfg.block_size + 1}); got shape {tuple(data.shape)}"
        )
    gen = torch.Generator().manual_seed(seed + 1_000_003)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    offs = torch.arange(cfg.block_size + 1)

    def batch():
        starts = torch.randint(0, data.numel() - cfg.block_size - 1, (cfg.batch_size,), generator=gen)
        w = data[starts[:, None] + offs]
        return w[:, :-1], w[:, 1:]

    def loss_of(x, y):
        logits = model(input_ids=x).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    model.train()
    t0 = time.perf_counter()
    x, y = batch()
    if on_step is not None:
        with torch.no_grad():
            on_step(0, float(loss_of(x, y)), model)
    iterator = progress_bar(range(1, cfg.n_steps + 1), desc=f"train seed {seed}", leave=False, disable=not progress)
    loss_val = float("nan")
    for step in iterator:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step - 1, cfg)
        loss = loss_of(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_val = float(loss.detach())
        if on_step is not None:
            on_step(step, loss_val, model)
        x, y = batch()
    return {"final_loss": loss_val, "seconds": time.perf_counter() - t0, "steps": cfg.n_steps}
