"""Training a context compressor (encoder + adapter) against a frozen causal LM.

The ``latent`` compressor reads the context's token embeddings ``E`` (T, d) and the frozen
model's hidden states ``H`` (T, d) at layer ``hidden_layer``; a small transformer turns ``H`` into
features, a salience head scores every context token, and the M highest-scoring tokens (kept in
context order) become the M slots. Slot j is the token's embedding (gated by its salience, so the
LM losses reach the scores) plus a learned residual from its contextual features (zero at
initialisation); the M vectors go through an adapter (identity-initialised linear map) and are
rescaled to the RMS of real token embeddings. The ``adapter`` compressor is the same adapter on the
``mean_pool`` vectors, with no encoder.

Losses (each weighted, see :class:`TrainConfig`), on the gold answer after the prompt:
  tf       teacher-forced cross-entropy over all answer tokens
  first    cross-entropy of the first answer token
  kce      cross-entropy over the first K answer tokens
  kd       KL(teacher || student) over the first K answer positions, temperature tau (times tau^2);
           the teacher is the same frozen LM reading the full text prompt
  entropy  minus the entropy of the batch-mean first-token distribution (against collapse)
  salience binary cross-entropy of the salience scores against soft labels: 1 for words of the
           paragraph's gold answers, 0.5 for words of its questions, else 0 (training data
           only; latent only)
"""
from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .latent import (EncodedExample, answer_logits, chunk_mean_pool, context_hidden_states, embed_ids,
                     input_embedding, pad_right, scale_to_rms)
from .runs import atomic_path, atomic_write_text


@dataclass
class TrainConfig:
    kind: str = "latent"            # "latent" (encoder + adapter) or "adapter" (adapter on mean_pool vectors)
    M: int = 16                     # number of vectors replacing the context
    d_enc: int = 256                # encoder width
    n_layers: int = 1               # encoder transformer layers
    n_heads: int = 4                # encoder attention heads
    hidden_layer: int = 8           # frozen LM layer whose hidden states feed the encoder (0 = embeddings)
    max_context_tokens: int = 512   # positional table size of the encoder
    lr: float = 1e-4                # AdamW learning rate of the LM-loss phase
    salience_lr: float = 2e-3       # learning rate of the salience pre-training phase
    weight_decay: float = 0.0
    batch_size: int = 8
    max_steps: int = 200
    time_budget_s: float = 600.0    # stop training after this many seconds (whichever first)
    w_tf: float = 1.0               # teacher-forced answer CE
    w_first: float = 1.0            # first-token CE
    w_kce: float = 0.5              # first-K CE
    K: int = 4                      # answer tokens in the first-K CE and the KD term
    w_kd: float = 0.5               # KD KL(teacher || student)
    kd_temperature: float = 2.0
    w_entropy: float = 0.1          # minus entropy of the batch-mean first-token distribution
    w_salience: float = 1.0         # salience BCE (latent only)
    salience_pretrain_steps: int = 200  # cheap salience-only steps on cached features before LM steps
    grad_clip: float = 1.0
    anchored: bool = False          # prompts end with the scaffold's anchor (answers after it)
    seed: int = 0
    bf16: bool = False              # autocast the frozen LM in bfloat16 (GPU)
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
        layer = nn.TransformerEncoderLayer(cfg.d_enc, cfg.n_heads, 2 * cfg.d_enc, dropout=0.0,
                                           batch_first=True, norm_first=True)
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
            raise ValueError(f"context of {T} tokens exceeds the encoder's max_context_tokens "
                             f"{self.pos.num_embeddings}; raise it or cut contexts")
        x = self.inp(self.norm(H.float())) + self.pos.weight[:T]
        return self.body(x, src_key_padding_mask=~mask.bool())

    def forward(self, H, E, mask):
        f = self.features(H, mask)
        s = self.salience(f).squeeze(-1)                                  # (B, T)
        s_masked = s.masked_fill(~mask.bool(), float("-inf"))
        k = min(self.M, H.shape[1])
        idx = s_masked.topk(k, dim=1).indices.sort(dim=1).values          # keep context order
        slot_mask = torch.gather(mask.bool(), 1, idx)
        g = torch.sigmoid(torch.gather(s, 1, idx)).unsqueeze(-1)
        gate = 1.0 + g - g.detach()                                        # value 1, gradient to s
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
                    H[b, :h.shape[0]] = h.to(dev, torch.float32)
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


# ----------------------------------------------------------------------------- labels and features
_STOP = set("a an the of is was in on at to for and or by with as from that this which who whom whose what "
            "where when why how does did do has have had be been are were it its into than then".split())
_WORD = re.compile(r"[A-Za-z0-9]+")


def salience_labels(tokenizer, context: str, ctx_ids: torch.Tensor, answers: Sequence[str],
                    questions: Sequence[str], question_weight: float = 0.5) -> torch.Tensor:
    """(n,) float labels for the context tokens: 1 for a token inside a word of any gold answer of
    this paragraph, ``question_weight`` for a word of any of its questions (stopwords excluded),
    else 0. Answers rank first, so the top-M slots keep answer candidates before entity words."""
    ans_words = {w.lower() for t in answers for w in _WORD.findall(t)} - _STOP
    q_words = {w.lower() for t in questions for w in _WORD.findall(t)} - _STOP
    words = ans_words | q_words
    lab = torch.zeros(ctx_ids.shape[0])
    starts = ends = None
    try:  # fast tokenizers give character offsets directly
        enc = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
        if enc["input_ids"][:ctx_ids.shape[0]] == ctx_ids.tolist():
            starts = [a for a, _ in enc["offset_mapping"][:ctx_ids.shape[0]]]
            ends = [b for _, b in enc["offset_mapping"][:ctx_ids.shape[0]]]
            text_so_far = context
    except (NotImplementedError, TypeError, ValueError, KeyError):
        pass
    if starts is None:  # map each token to characters by walking the decoded prefix
        text_so_far, starts = "", []
        for i in range(ctx_ids.shape[0]):
            starts.append(len(text_so_far))
            text_so_far = tokenizer.decode(ctx_ids[:i + 1].tolist())
        ends = starts[1:] + [len(text_so_far)]
    spans = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(text_so_far)]
    for i, (a, b) in enumerate(zip(starts, ends)):
        for (s, e, w) in spans:
            if s < b and a < e and w in words:
                lab[i] = max(float(lab[i]), 1.0 if w in ans_words else question_weight)
    return lab


@torch.no_grad()
def cache_hidden_states(llm, ctx_ids: Sequence[torch.Tensor], layer: int, batch_size: int = 16,
                        progress: Callable | None = None) -> list[torch.Tensor]:
    """Hidden states (n_b, d) at ``layer`` for each context, computed in batches (for training)."""
    out = []
    it = range(0, len(ctx_ids), batch_size)
    for s in (progress(it) if progress else it):
        chunk = ctx_ids[s:s + batch_size]
        ids, mask = pad_right(chunk, 0)
        H = context_hidden_states(llm, ids, mask, layer).float().cpu()
        out.extend(H[b, :c.shape[0]].clone() for b, c in enumerate(chunk))
    return out


# ----------------------------------------------------------------------------- losses
def compute_losses(llm, comp: Compressor, cfg: TrainConfig, batch: Sequence[EncodedExample],
                   hidden: Sequence[torch.Tensor] | None, labels: Sequence[torch.Tensor] | None,
                   pad_id: int, teacher_cache: dict | None = None) -> tuple[torch.Tensor, dict]:
    """Weighted training loss on one batch and its parts (floats) plus first-token diagnostics."""
    vecs, sal = comp(llm, [e.context for e in batch], hidden)
    tail = (lambda e: [e.anchor]) if cfg.anchored else (lambda e: [])
    prompts = [[e.pre, v, e.post] + tail(e) for e, v in zip(batch, vecs)]
    answers = [e.answer_anchored if cfg.anchored else e.answer for e in batch]
    ac = torch.autocast("cuda", dtype=torch.bfloat16) if (cfg.bf16 and torch.cuda.is_available()) else _null()
    with ac:
        lg, tg, va = answer_logits(llm, prompts, answers, pad_id, as_embeds=True)
    lg = lg.float()
    logp = torch.log_softmax(lg, -1)
    nll = -logp.gather(-1, tg.unsqueeze(-1)).squeeze(-1)                 # (B, A)
    vf = va.float()
    parts = {}
    parts["tf"] = (nll * vf).sum() / vf.sum().clamp(min=1)
    parts["first"] = (nll[:, 0] * vf[:, 0]).sum() / vf[:, 0].sum().clamp(min=1)
    K = max(1, cfg.K)
    vk = vf[:, :K]
    parts["kce"] = (nll[:, :K] * vk).sum() / vk.sum().clamp(min=1)
    if cfg.w_kd > 0:
        with torch.no_grad(), ac:
            tlg, _, _ = answer_logits(llm, [[e.pre, e.context, e.post] + tail(e) for e in batch], answers, pad_id,
                                      k=K, as_embeds=False)
        tau = cfg.kd_temperature
        kk = min(K, tlg.shape[1], lg.shape[1])
        pt = torch.log_softmax(tlg[:, :kk].float() / tau, -1)
        ps = torch.log_softmax(lg[:, :kk] / tau, -1)
        kl = (pt.exp() * (pt - ps)).sum(-1)                              # (B, kk)
        parts["kd"] = (kl * vk[:, :kk]).sum() / vk[:, :kk].sum().clamp(min=1) * tau * tau
    else:
        parts["kd"] = torch.zeros(())
    p_first = torch.softmax(lg[:, 0], -1).mean(0)
    parts["entropy"] = (p_first * torch.log(p_first.clamp(min=1e-12))).sum()   # = -H(mean p)
    if comp.encoder is not None and labels is not None and cfg.w_salience > 0:
        s, mask = sal
        y = torch.zeros_like(s)
        for b, l in enumerate(labels):
            y[b, :l.shape[0]] = l.to(y.device)
        m = mask.bool()
        parts["salience"] = F.binary_cross_entropy_with_logits(s[m], y[m])
    else:
        parts["salience"] = torch.zeros(())
    total = (cfg.w_tf * parts["tf"] + cfg.w_first * parts["first"] + cfg.w_kce * parts["kce"]
             + cfg.w_kd * parts["kd"] + cfg.w_entropy * parts["entropy"] + cfg.w_salience * parts["salience"])
    with torch.no_grad():
        top5 = lg[:, 0].topk(5, -1).indices
        ok1 = (top5[:, 0] == tg[:, 0]) & va[:, 0]
        ok5 = (top5 == tg[:, :1]).any(-1) & va[:, 0]
    diag = {k: float(v.detach()) for k, v in parts.items()}
    diag.update(first_acc=float(ok1.float().mean()), first_acc_top5=float(ok5.float().mean()),
                first_pred=top5[:, 0].tolist())
    return total, diag


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def salience_only_loss(comp: Compressor, H_list, labels) -> torch.Tensor:
    """Salience BCE on cached features (no LM pass): the cheap pre-training phase."""
    dev = comp.adapter.weight.device
    T = max(h.shape[0] for h in H_list)
    B, d = len(H_list), H_list[0].shape[1]
    H = torch.zeros(B, T, d, device=dev)
    y = torch.zeros(B, T, device=dev)
    mask = torch.zeros(B, T, dtype=torch.bool, device=dev)
    for b, (h, l) in enumerate(zip(H_list, labels)):
        H[b, :h.shape[0]] = h.to(dev)
        y[b, :l.shape[0]] = l.to(dev)
        mask[b, :h.shape[0]] = True
    f = comp.encoder.features(H, mask)
    s = comp.encoder.salience(f).squeeze(-1)
    return F.binary_cross_entropy_with_logits(s[mask], y[mask])


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | Path, comp: Compressor, optimizer=None, step: int = 0, extra: dict | None = None) -> Path:
    """Write ``<path>/config.json`` and ``<path>/weights.pt`` (model, optimizer, step), atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {"model": comp.state_dict(), "step": step,
             "optimizer": optimizer.state_dict() if optimizer is not None else None}
    with atomic_path(path / "weights.pt") as tmp:
        torch.save(state, tmp)
    meta = {"config": asdict(comp.cfg), "d_model": comp.adapter.weight.shape[0],
            "target_rms": float(comp.target_rms), "step": step, "extra": extra or {}}
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


# ----------------------------------------------------------------------------- training loop
def make_optimizer(comp: Compressor, cfg: TrainConfig):
    return torch.optim.AdamW([p for p in comp.parameters() if p.requires_grad], lr=cfg.lr,
                             weight_decay=cfg.weight_decay)


def train_step(llm, comp, opt, cfg, batch, hidden, labels, pad_id) -> dict:
    """One optimiser step on one batch; returns the diagnostics (losses before the step)."""
    comp.train()
    opt.zero_grad(set_to_none=True)
    total, diag = compute_losses(llm, comp, cfg, batch, hidden, labels, pad_id)
    total.backward()
    params = [p for p in comp.parameters() if p.grad is not None]
    gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    opt.step()
    comp.eval()
    diag.update(loss=float(total.detach()), grad_norm=float(gn))
    return diag


def train_compressor(llm, tokenizer, comp: Compressor, cfg: TrainConfig, train_encoded: Sequence[EncodedExample],
                     train_hidden: Sequence[torch.Tensor] | None = None,
                     train_labels: Sequence[torch.Tensor] | None = None,
                     diagnostics_path: str | Path | None = None, checkpoint_dir: str | Path | None = None,
                     checkpoint_every: int = 0, resume: bool = False, progress: Callable | None = None,
                     optimizer=None, start_step: int = 0,
                     callback: Callable | None = None, callback_every: int = 0) -> list[dict]:
    """Train ``comp`` against the frozen ``llm``; logs one JSON line per step.

    Stops after ``cfg.max_steps`` LM steps or ``cfg.time_budget_s`` seconds (salience
    pre-training included). With ``resume`` and a checkpoint in ``checkpoint_dir`` the weights,
    optimiser and step counter are restored first. Returns the list of step records.
    """
    for p in llm.parameters():
        p.requires_grad_(False)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = optimizer or make_optimizer(comp, cfg)
    step = start_step
    if resume and checkpoint_dir and (Path(checkpoint_dir) / "weights.pt").is_file():
        state = torch.load(Path(checkpoint_dir) / "weights.pt", map_location="cpu", weights_only=True)
        comp.load_state_dict(state["model"])
        if state.get("optimizer"):
            opt.load_state_dict(state["optimizer"])
        step = int(state.get("step", 0))
    records = []
    fh = open(diagnostics_path, "a" if resume else "w") if diagnostics_path else None
    t_start = time.perf_counter()
    n = len(train_encoded)

    def log(rec):
        records.append(rec)
        if fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()

    try:
        # phase 1: salience pre-training on cached features (no LM pass)
        if (comp.encoder is not None and cfg.salience_pretrain_steps > 0 and train_hidden is not None
                and train_labels is not None and step == 0 and cfg.w_salience > 0):
            sal_opt = torch.optim.AdamW(comp.encoder.parameters(), lr=cfg.salience_lr)
            it = range(cfg.salience_pretrain_steps)
            for i in (progress(it, desc="salience pre-training") if progress else it):
                if time.perf_counter() - t_start > cfg.time_budget_s:
                    break
                idx = torch.randint(0, n, (cfg.batch_size,), generator=g).tolist()
                comp.train()
                sal_opt.zero_grad(set_to_none=True)
                loss = salience_only_loss(comp, [train_hidden[j] for j in idx],
                                          [train_labels[j] for j in idx])
                loss.backward()
                sal_opt.step()
                comp.eval()
                log({"phase": "salience", "step": i, "salience": float(loss),
                     "elapsed_s": round(time.perf_counter() - t_start, 3)})
        # phase 2: LM losses
        it = range(step, cfg.max_steps)
        for step in (progress(it, desc=f"training {cfg.kind}") if progress else it):
            if time.perf_counter() - t_start > cfg.time_budget_s:
                break
            t0 = time.perf_counter()
            idx = torch.randint(0, n, (cfg.batch_size,), generator=g).tolist()
            batch = [train_encoded[j] for j in idx]
            hid = [train_hidden[j] for j in idx] if train_hidden is not None else None
            lab = [train_labels[j] for j in idx] if train_labels is not None else None
            d = train_step(llm, comp, opt, cfg, batch, hid, lab, pad_id)
            fp = d.pop("first_pred")
            c = Counter(fp)
            d.update(phase="lm", step=step, kind=cfg.kind, distinct_first_preds=len(c),
                     batch=len(batch), dominant_first_preds=[[tokenizer.decode([t]), k] for t, k in c.most_common(3)],
                     step_s=round(time.perf_counter() - t0, 3), elapsed_s=round(time.perf_counter() - t_start, 3))
            log(d)
            if callback and callback_every and (step + 1) % callback_every == 0:
                callback(step + 1, comp)
            if checkpoint_dir and checkpoint_every and (step + 1) % checkpoint_every == 0:
                save_checkpoint(checkpoint_dir, comp, opt, step + 1)
        last = [r for r in records if r.get("phase") == "lm"]
        if callback and last and not (callback_every and (last[-1]["step"] + 1) % callback_every == 0):
            callback(last[-1]["step"] + 1, comp)
        if checkpoint_dir:
            save_checkpoint(checkpoint_dir, comp, opt, (last[-1]["step"] + 1) if last else step)
    finally:
        if fh:
            fh.close()
    return records
