"""Training a context compressor (see :mod:`.compressor`) against a frozen causal LM.

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

import re
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..files import append_jsonl, read_jsonl
from .compressor import Compressor, TrainConfig, save_checkpoint
from .evaluate import answer_logits, token_nll
from .prompts import EncodedExample, context_hidden_states, pad_right

# ----------------------------------------------------------------------------- labels and features
_STOP = set(
    "a an the of is was in on at to for and or by with as from that this which who whom whose what "
    "where when why how does did do has have had be been are were it its into than then".split()
)
_WORD = re.compile(r"[A-Za-z0-9]+")


def salience_labels(
    tokenizer,
    context: str,
    ctx_ids: torch.Tensor,
    answers: Sequence[str],
    questions: Sequence[str],
    question_weight: float = 0.5,
) -> torch.Tensor:
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
        if enc["input_ids"][: ctx_ids.shape[0]] == ctx_ids.tolist():
            starts = [a for a, _ in enc["offset_mapping"][: ctx_ids.shape[0]]]
            ends = [b for _, b in enc["offset_mapping"][: ctx_ids.shape[0]]]
            text_so_far = context
    except (NotImplementedError, TypeError, ValueError, KeyError):
        pass
    if starts is None:  # map each token to characters by walking the decoded prefix
        text_so_far, starts = "", []
        for i in range(ctx_ids.shape[0]):
            starts.append(len(text_so_far))
            text_so_far = tokenizer.decode(ctx_ids[: i + 1].tolist())
        ends = starts[1:] + [len(text_so_far)]
    spans = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(text_so_far)]
    for i, (a, b) in enumerate(zip(starts, ends)):
        for s, e, w in spans:
            if s < b and a < e and w in words:
                lab[i] = max(float(lab[i]), 1.0 if w in ans_words else question_weight)
    return lab


@torch.no_grad()
def cache_hidden_states(
    llm, ctx_ids: Sequence[torch.Tensor], layer: int, batch_size: int = 16, progress: Callable | None = None
) -> list[torch.Tensor]:
    """Hidden states (n_b, d) at ``layer`` for each context, computed in batches (for training)."""
    out = []
    it = range(0, len(ctx_ids), batch_size)
    for s in progress(it) if progress else it:
        chunk = ctx_ids[s : s + batch_size]
        ids, mask = pad_right(chunk, 0)
        H = context_hidden_states(llm, ids, mask, layer).float().cpu()
        out.extend(H[b, : c.shape[0]].clone() for b, c in enumerate(chunk))
    return out


# ----------------------------------------------------------------------------- losses
def compute_losses(
    llm,
    comp: Compressor,
    cfg: TrainConfig,
    batch: Sequence[EncodedExample],
    hidden: Sequence[torch.Tensor] | None,
    labels: Sequence[torch.Tensor] | None,
    pad_id: int,
    teacher_cache: dict | None = None,
) -> tuple[torch.Tensor, dict]:
    """Weighted training loss on one batch and its parts (floats) plus first-token diagnostics."""
    vecs, sal = comp(llm, [e.context for e in batch], hidden)
    tail = (lambda e: [e.anchor]) if cfg.anchored else (lambda e: [])
    prompts = [[e.pre, v, e.post] + tail(e) for e, v in zip(batch, vecs)]
    answers = [e.answer_anchored if cfg.anchored else e.answer for e in batch]
    ac = torch.autocast("cuda", dtype=torch.bfloat16) if (cfg.bf16 and torch.cuda.is_available()) else _null()
    with ac:
        lg, tg, va = answer_logits(llm, prompts, answers, pad_id, as_embeds=True)
    lg = lg.float()
    nll = token_nll(lg, tg)  # (B, A)
    vf = va.float()
    parts = {}
    parts["tf"] = (nll * vf).sum() / vf.sum().clamp(min=1)
    parts["first"] = (nll[:, 0] * vf[:, 0]).sum() / vf[:, 0].sum().clamp(min=1)
    K = max(1, cfg.K)
    vk = vf[:, :K]
    parts["kce"] = (nll[:, :K] * vk).sum() / vk.sum().clamp(min=1)
    if cfg.w_kd > 0:
        with torch.no_grad(), ac:
            tlg, _, _ = answer_logits(
                llm, [[e.pre, e.context, e.post] + tail(e) for e in batch], answers, pad_id, k=K, as_embeds=False
            )
        tau = cfg.kd_temperature
        kk = min(K, tlg.shape[1], lg.shape[1])
        pt = torch.log_softmax(tlg[:, :kk].float() / tau, -1)
        ps = torch.log_softmax(lg[:, :kk] / tau, -1)
        kl = (pt.exp() * (pt - ps)).sum(-1)  # (B, kk)
        parts["kd"] = (kl * vk[:, :kk]).sum() / vk[:, :kk].sum().clamp(min=1) * tau * tau
    else:
        parts["kd"] = torch.zeros(())
    p_first = torch.softmax(lg[:, 0], -1).mean(0)
    parts["entropy"] = (p_first * torch.log(p_first.clamp(min=1e-12))).sum()  # = -H(mean p)
    if comp.encoder is not None and labels is not None and cfg.w_salience > 0:
        s, mask = sal
        y = torch.zeros_like(s)
        for b, l in enumerate(labels):
            y[b, : l.shape[0]] = l.to(y.device)
        m = mask.bool()
        parts["salience"] = F.binary_cross_entropy_with_logits(s[m], y[m])
    else:
        parts["salience"] = torch.zeros(())
    total = (
        cfg.w_tf * parts["tf"]
        + cfg.w_first * parts["first"]
        + cfg.w_kce * parts["kce"]
        + cfg.w_kd * parts["kd"]
        + cfg.w_entropy * parts["entropy"]
        + cfg.w_salience * parts["salience"]
    )
    with torch.no_grad():
        top5 = lg[:, 0].topk(5, -1).indices
        ok1 = (top5[:, 0] == tg[:, 0]) & va[:, 0]
        ok5 = (top5 == tg[:, :1]).any(-1) & va[:, 0]
    diag = {k: float(v.detach()) for k, v in parts.items()}
    diag.update(
        first_acc=float(ok1.float().mean()), first_acc_top5=float(ok5.float().mean()), first_pred=top5[:, 0].tolist()
    )
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
        H[b, : h.shape[0]] = h.to(dev)
        y[b, : l.shape[0]] = l.to(dev)
        mask[b, : h.shape[0]] = True
    f = comp.encoder.features(H, mask)
    s = comp.encoder.salience(f).squeeze(-1)
    return F.binary_cross_entropy_with_logits(s[mask], y[mask])


# ----------------------------------------------------------------------------- training loop
def make_optimizer(comp: Compressor, cfg: TrainConfig):
    return torch.optim.AdamW(
        [p for p in comp.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )


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


def train_compressor(
    llm,
    tokenizer,
    comp: Compressor,
    cfg: TrainConfig,
    train_encoded: Sequence[EncodedExample],
    train_hidden: Sequence[torch.Tensor] | None = None,
    train_labels: Sequence[torch.Tensor] | None = None,
    diagnostics_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress: Callable | None = None,
    optimizer=None,
    start_step: int = 0,
    callback: Callable | None = None,
    callback_every: int = 0,
) -> list[dict]:
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
    if diagnostics_path:
        if resume:
            read_jsonl(diagnostics_path, repair=True)  # drop a torn last line before appending
        else:
            Path(diagnostics_path).unlink(missing_ok=True)
    t_start = time.perf_counter()
    n = len(train_encoded)

    def log(rec):
        records.append(rec)
        if diagnostics_path:
            append_jsonl(diagnostics_path, rec)

    # phase 1: salience pre-training on cached features (no LM pass)
    if (
        comp.encoder is not None
        and cfg.salience_pretrain_steps > 0
        and train_hidden is not None
        and train_labels is not None
        and step == 0
        and cfg.w_salience > 0
    ):
        sal_opt = torch.optim.AdamW(comp.encoder.parameters(), lr=cfg.salience_lr)
        it = range(cfg.salience_pretrain_steps)
        for i in progress(it, desc="salience pre-training") if progress else it:
            if time.perf_counter() - t_start > cfg.time_budget_s:
                break
            idx = torch.randint(0, n, (cfg.batch_size,), generator=g).tolist()
            comp.train()
            sal_opt.zero_grad(set_to_none=True)
            loss = salience_only_loss(comp, [train_hidden[j] for j in idx], [train_labels[j] for j in idx])
            loss.backward()
            sal_opt.step()
            comp.eval()
            log(
                {
                    "phase": "salience",
                    "kind": cfg.kind,
                    "step": i,
                    "salience": float(loss),
                    "elapsed_s": round(time.perf_counter() - t_start, 3),
                }
            )
    # phase 2: LM losses
    it = range(step, cfg.max_steps)
    for step in progress(it, desc=f"training {cfg.kind}") if progress else it:
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
        d.update(
            phase="lm",
            step=step,
            kind=cfg.kind,
            distinct_first_preds=len(c),
            batch=len(batch),
            dominant_first_preds=[[tokenizer.decode([t]), k] for t, k in c.most_common(3)],
            step_s=round(time.perf_counter() - t0, 3),
            elapsed_s=round(time.perf_counter() - t_start, 3),
        )
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
    return records
