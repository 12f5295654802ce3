"""Per-seed training of the three compressors: the cached training features (built once, shared by every
seed, compressor and process), checkpoints with resume, and :func:`train_from_scratch`, the whole training
side of notebook 04 as the distributed command (:mod:`.distributed`) runs it.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..files import append_jsonl, atomic_path, read_jsonl
from .cache import teacher_topk
from .compressor import KINDS, TrainConfig, build, check_resumable, load_bundle, read_meta, save_bundle
from .distributed import Dist
from .prompts import encode
from .split import context_hash
from .squad import QAExample
from .train import TrainSet, recall_tasks, salience_labels, schedule, train_module


def prepare_train(
    reader,
    train: Sequence[QAExample],
    cfg: TrainConfig,
    topk: int,
    recall_per_context: int,
    progress: Callable | None = None,
) -> TrainSet:
    """Cached hidden states and labels per training context, recall tasks and teacher top-k per question."""
    tok = reader.tokenizer
    contexts = list(dict.fromkeys(e.context for e in train))
    index = {c: i for i, c in enumerate(contexts)}
    ctx_ids = [encode(tok, c) for c in contexts]
    t0 = time.perf_counter()
    hidden = reader.hidden(ctx_ids, cfg, progress=(lambda it: progress(it, "hidden states")) if progress else None)
    t_hidden = time.perf_counter() - t0
    qs, ans = {}, {}
    for e in train:
        qs.setdefault(e.context, []).append(e.question)
        ans.setdefault(e.context, set()).update(e.paragraph_answers or e.answers)
    labels = [salience_labels(tok, c, ids, sorted(ans[c]), qs[c]) for c, ids in zip(contexts, ctx_ids)]
    a = cfg.anchored
    qa_items = [
        (index[e.context], reader.question_ids(e.question, a), reader.scaffold.answer_ids(e.answers[0], a))
        for e in train
    ]
    t0 = time.perf_counter()
    tk = teacher_topk(
        reader.model,
        reader.prefix,
        ctx_ids,
        qa_items,
        reader.pad_id,
        k=topk,
        K=cfg.K,
        progress=(lambda it: progress(it, "teacher top-k")) if progress else None,
    )
    t_teacher = time.perf_counter() - t0
    rng = random.Random(0)
    recall = []
    for c in contexts:
        for q, ans_text in recall_tasks(c, recall_per_context, rng):
            recall.append((index[c], reader.question_ids(q, a), reader.scaffold.answer_ids(ans_text, a)))
    stats = {
        "contexts": len(contexts),
        "questions": len(qa_items),
        "recall_tasks": len(recall),
        "hidden_cache_s": round(t_hidden, 1),
        "teacher_cache_s": round(t_teacher, 1),
    }
    return TrainSet(ctx_ids, hidden, labels, [(*it, t) for it, t in zip(qa_items, tk)], recall, stats)


def shared_train_set(
    reader,
    train: Sequence[QAExample],
    cfg: TrainConfig,
    topk: int,
    recall_per_context: int,
    path: str | Path,
    dist: Dist | None = None,
    progress: Callable | None = None,
) -> TrainSet:
    """:func:`prepare_train`, built once: the main process builds it (or finds it in ``path`` made for the same
    reader, contexts and settings) and writes ``path``; every other process memory-maps that file."""
    dist = dist or Dist()
    path = Path(path)
    key = {
        **reader.identity(),
        "prefix": reader.scaffold.pre_ids.tolist(),
        "contexts": sorted({context_hash(e.context) for e in train}),
        "questions": sorted(e.id for e in train),
        "layers": cfg.layers,
        "echo": cfg.echo,
        "K": cfg.K,
        "topk": topk,
        "recall_per_context": recall_per_context,
        "anchored": cfg.anchored,
    }

    def read():
        try:
            d = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # missing, cut by a kill, or another format: built again by the main process
            return None
        return TrainSet(**d["train_set"]) if d.get("key") == key else None

    if dist.main:
        ts = read()
        if ts is None:
            ts = prepare_train(reader, train, cfg, topk, recall_per_context, progress)
            path.parent.mkdir(parents=True, exist_ok=True)
            fields = {k: getattr(ts, k) for k in ("ctx_ids", "hidden", "labels", "qa", "recall", "stats")}
            with atomic_path(path) as tmp:
                torch.save({"key": key, "train_set": fields}, tmp)
    dist.barrier()
    if not dist.main:
        ts = read()
        if ts is None:
            raise RuntimeError(f"{path} does not hold the training features rank 0 wrote for this run")
    return ts


def bundle_meta(cfg: TrainConfig, reader, split, scaffold_info: dict) -> dict:
    """What a checkpoint records besides weights: config, reader, prompt, and the data it saw."""
    side = split.train + split.dev
    return {
        "config": asdict(cfg),
        "d_model": reader.d_model,
        "target_rms": reader.target_rms,
        "model": reader.spec,
        "reader": reader.identity(),
        "scaffold": scaffold_info,
        "seen_titles": sorted({e.title for e in side}),
        "seen_contexts": sorted({context_hash(e.context) for e in side}),
        "dev_titles": sorted({e.title for e in split.dev}),
        "progress": {k: 0 for k in KINDS},
    }


def train_seed(
    reader,
    ts: TrainSet,
    cfg: TrainConfig,
    seed: int,
    ckpt_dir: Path,
    meta: dict,
    resume: bool,
    log: Callable | None = None,
    progress: Callable | None = None,
    save_every: int = 50,
    dist: Dist | None = None,
    until: int | None = None,
) -> dict:
    """Train the three compressors of one seed, resuming from ``ckpt_dir`` when asked (same config only);
    under ``dist`` every process trains its share and the main process alone writes ``ckpt_dir``; with
    ``until``, each compressor only up to that step (a resume continues)."""
    dist = dist or Dist()
    cfg = replace(cfg, seed=seed)
    dev = reader.device
    torch.manual_seed(seed)
    mods = {k: build(k, reader.d_model, cfg, meta["target_rms"]).to(dev) for k in KINDS}
    meta = {**meta, "config": asdict(cfg), "progress": {k: 0 for k in KINDS}}
    opts: dict = {}
    if resume and (ckpt_dir / "config.json").is_file():
        check_resumable(read_meta(ckpt_dir), cfg, reader.d_model)
        loaded, opts, saved = load_bundle(ckpt_dir, device=str(dev))
        for k, m in loaded.items():
            mods[k].load_state_dict(m.state_dict())
        meta["progress"] = saved.get("progress", meta["progress"])
    dist.barrier()  # every process has read the checkpoint before the main one writes it again
    for kind in KINDS:

        def save(step, opt, kind=kind):  # only the module in training changed since the last save
            meta["progress"][kind] = step
            opts[kind] = opt
            save_bundle(ckpt_dir, {kind: mods[kind]}, meta, {kind: opt})

        train_module(
            reader,
            mods[kind],
            cfg,
            ts,
            start_step=meta["progress"][kind],
            opt_state=opts.get(kind),
            log=log,
            save=save,
            save_every=save_every,
            progress=(lambda it, n, k=kind: progress(it, f"seed {seed} {k}", n)) if progress else None,
            dist=dist,
            until=until,
        )
    return mods


def finished_bundle(ckpt_dir: Path, cfg: TrainConfig, seed: int, d_model: int, device: str = "cpu") -> dict | None:
    """The modules of a seed whose training is complete in ``ckpt_dir`` with this configuration, else None
    (so a resumed run skips the training caches when every seed is done)."""
    if not (Path(ckpt_dir) / "config.json").is_file():
        return None
    cfg = replace(cfg, seed=seed)
    meta = read_meta(ckpt_dir)
    check_resumable(meta, cfg, d_model)
    done = all(meta.get("progress", {}).get(k, 0) >= sum(n for _, n in schedule(k, cfg)) for k in KINDS)
    return load_bundle(ckpt_dir, device=device)[0] if done else None


def load_training_log(path) -> list[dict]:
    return read_jsonl(path, repair=True) if Path(path).is_file() else []


def train_from_scratch(
    cfg, out: str | Path, dist: Dist, device, dtype=torch.float32, save_every: int = 50, until: int | None = None
) -> dict:
    """The training side of notebook 04 for an :class:`.config.ExperimentConfig`, on ``dist``'s processes:
    the article split, the shared features in ``<out>/train_cache.pt``, then every seed into
    ``<out>/ckpt_seed<N>/`` (``cfg.resume`` continues; ``until`` stops each compressor at that step), the
    log in ``<out>/train_log.jsonl``."""
    from .experiment import load_split
    from .reader import Reader

    out = Path(out)
    t = replace(cfg.train, device=str(device))
    reader = Reader.load(cfg.model, cfg.system_prompt, cfg.anchor_text, device=str(device), dtype=dtype)
    split, _ = load_split(cfg, None)
    prog = None
    if dist.main:
        from ..progress import progress_bar

        prog = lambda it, desc, total=None: progress_bar(it, desc=desc, total=total)  # noqa: E731
    ts = shared_train_set(
        reader, split.train, t, cfg.kd_topk, cfg.recall_per_context, out / "train_cache.pt", dist, prog
    )
    meta = bundle_meta(t, reader, split, {"system_prompt": cfg.system_prompt, "anchor": cfg.anchor_text})
    log_path = out / "train_log.jsonl"
    mods = {}
    for s in cfg.seed_list:
        mods[s] = train_seed(
            reader,
            ts,
            t,
            s,
            out / f"ckpt_seed{s}",
            meta,
            cfg.resume,
            log=lambda rec: append_jsonl(log_path, rec),
            progress=prog,
            save_every=save_every,
            dist=dist,
            until=until,
        )
    return mods
