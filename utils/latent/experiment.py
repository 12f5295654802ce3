"""Notebook 04 as one experiment in phases: each phase is one call, resumable, under one time budget.

    exp = Experiment(ExperimentConfig.from_params(globals()), run)
    exp.prepare()    # data and split, the reader and its prefix cache, the evaluation features
    exp.train()      # the three compressors per seed (or the saved checkpoint, without training)
    exp.evaluate()   # every mode at every ratio, the decisive comparisons first
    exp.optimise()   # the per-context ceiling on the first optimise_contexts evaluation contexts
    exp.amortise()   # the amortisation run on the dev article (amortise_contexts > 0)
    exp.results()    # summary rows, acceptance, ceiling, prediction files, metrics.json

``run`` is the notebook's :class:`utils.running.Run` (its folder, ``carry_over`` for ``resume``, timers).
What the run folder holds: ``results.jsonl`` (every row with its question ids), ``predictions/`` (official
SQuAD prediction files and the evaluated questions as a SQuAD file), ``train_log.jsonl``, ``ckpt_seed<N>/``,
``optimised/`` (vectors per context and ratio), ``amortise_*`` (the amortisation run), ``metrics.json``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from ..files import append_jsonl
from .amortise import pick_contexts, train_arms, with_targets
from .compressor import TrainConfig, load_bundle, read_meta
from .config import ExperimentConfig
from .modes import MODES, ResultStore, evaluate_all, prepare_eval, write_prediction_files
from .optimise import VectorStore, choose_contexts, optimise_contexts
from .reader import Reader
from .select import budget
from .split import (
    Split,
    article_split,
    cap_contexts,
    check_disjoint,
    context_hash,
    held_out_split,
    load_examples,
    resolve_data,
    synthetic_split,
)
from .trainer import bundle_meta, finished_bundle, load_training_log, prepare_train, train_seed

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "latent-smollm2"


def resolve_checkpoint(checkpoint: str, model: str) -> str:
    """``auto`` -> the shipped compressor when the reader is the bundled SmolLM2 (any of its names: smollm2,
    bundled, default) and the bundle is present, else ``""`` (train here); any other value unchanged."""
    from ..weights.specs import is_bundled

    if checkpoint == "auto":
        return str(SHIPPED) if is_bundled(model) and (SHIPPED / "config.json").is_file() else ""
    return checkpoint


def budget_warning(ctx_lens: Sequence[int], ratios: Sequence[float]) -> str | None:
    """A warning when M = ceil(T / r) is not smaller than a context (nothing is compressed there)."""
    bad = {r: sum(1 for n in ctx_lens if budget(n, r) >= n) for r in ratios}
    bad = {r: k for r, k in bad.items() if k}
    if not bad:
        return None
    return (
        "Warning: M is not smaller than the context for "
        + ", ".join(f"{k} context(s) at r={r:g}" for r, k in bad.items())
        + " (those contexts are passed whole: M = ceil(T / r) >= T); use ratios above 1 and contexts of several tokens."
    )


def load_split(cfg: ExperimentConfig, meta: dict | None) -> tuple[Split, str]:
    """The data ``cfg.data`` names, split by article (module :mod:`.split`) and capped (``max_eval_contexts``,
    ``max_train_contexts``), and the source's name. With a checkpoint's ``meta`` the evaluation is everything
    the checkpoint never saw, and its training and dev side are rebuilt when this file and the split
    parameters give exactly the articles it saw (else left empty)."""
    split, source = _split(cfg, meta)
    split.eval = cap_contexts(split.eval, cfg.max_eval_contexts, seed=cfg.split_seed)
    split.train = cap_contexts(split.train, cfg.max_train_contexts, seed=cfg.split_seed)
    return split, source


def _split(cfg: ExperimentConfig, meta: dict | None) -> tuple[Split, str]:
    source = resolve_data(cfg.data)
    if source == "synthetic":
        return synthetic_split(cfg.n_eval_paragraphs, cfg.n_train_paragraphs), source
    if not source.startswith("hub:") and not Path(source).expanduser().is_file():
        raise FileNotFoundError(
            f"parameter data={cfg.data!r}: no such SQuAD JSON file (use data=auto for the shipped sample, "
            "synthetic, a SQuAD JSON path, or a hub dataset name)"
        )
    examples, _ = load_examples(source)
    if not meta:
        return article_split(examples, cfg.min_eval_questions, cfg.dev_articles, cfg.split_seed), source
    split = held_out_split(examples, meta["seen_titles"], meta["seen_contexts"])
    try:
        side = article_split(examples, cfg.min_eval_questions, cfg.dev_articles, cfg.split_seed)
    except ValueError:
        return split, source
    if {e.title for e in side.train + side.dev} == set(meta["seen_titles"]):
        split.train, split.dev = side.train, side.dev
        split.stats.update(train_articles=side.titles("train"), dev_articles=side.titles("dev"))
    return split, source


@dataclass
class Trained:
    modules: dict  # seed -> {kind: module}
    log: list = field(default_factory=list)  # training steps (empty for a saved checkpoint)
    sentence: str = ""


class Experiment:
    """The phases of notebook 04 (module docstring) for one configuration and one run folder."""

    def __init__(self, cfg: ExperimentConfig, run, progress: Callable | None = None):
        from ..progress import progress_bar

        self.cfg, self.run = cfg, run
        self.progress = progress or (lambda it, desc, total=None: progress_bar(it, desc=desc, total=total))
        self.deadline = time.monotonic() + cfg.budget_s if cfg.budget_s > 0 else None
        self.ckpt = resolve_checkpoint(cfg.checkpoint, cfg.model)
        self.meta = read_meta(self.ckpt) if self.ckpt else None
        here = {"device": cfg.train.device, "amp": cfg.train.amp}  # where this run computes, whatever the checkpoint
        self.train_cfg = TrainConfig.from_dict({**self.meta["config"], **here}) if self.meta else cfg.train
        self.optimised: dict = {}
        self.left: list = []
        self.res: dict | None = None
        if cfg.resume:
            for name in (
                "train_log.jsonl",
                "results.jsonl",
                "optimised",
                "amortise_results.jsonl",
                "amortise_log.jsonl",
            ):
                run.carry_over(name)
            for s in cfg.seed_list:
                run.carry_over(f"ckpt_seed{s}")

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    # -- phase 1 ------------------------------------------------------------------------------------
    def prepare(self) -> str:
        """Data, split, the reader and the evaluation features; returns the report's data paragraph."""
        from .report import data_sentence

        cfg = self.cfg
        with self.run.timer("data"):
            self.split, self.source = load_split(cfg, self.meta)
            self.disjoint = check_disjoint(self.split)
            self.reader = Reader.load(cfg.model, cfg.system_prompt, cfg.anchor_text, device=self.train_cfg.device)
            if self.meta:
                self.reader.check_checkpoint(self.meta, self.ckpt)
            self.ed = prepare_eval(self.reader, self.split.eval, self.train_cfg.anchored)
            self.ed.hidden = self.reader.hidden(
                self.ed.ctx_ids, self.train_cfg, progress=lambda it: self.progress(it, "eval hidden states")
            )
            self.ctx_of = dict(zip(self.ed.qids, self.ed.q_ctx))
            self.store = ResultStore(self.run.path("results.jsonl"), self.ed.qids, self.result_settings())
        text = data_sentence(self.ed, self.split.stats, self.disjoint, self.source)
        warn = budget_warning([c.shape[0] for c in self.ed.ctx_ids], cfg.ratio_list)
        return text + (f"\n\n{warn}" if warn else "")

    def result_settings(self, **extra) -> dict:
        """What a stored result depends on besides its mode, ratio, seed and questions (a row made under other
        settings is evaluated again, not reused)."""
        return {**self.reader.settings(), "max_new_tokens": self.cfg.max_new_tokens, **extra}

    # -- phase 2 ------------------------------------------------------------------------------------
    def train(self) -> Trained:
        """The compressors of every seed: the saved checkpoint, or trained here (whole seeds only, none
        started after the time budget; ``resume`` continues from the checkpoints)."""
        cfg, run, reader = self.cfg, self.run, self.reader
        if self.ckpt:
            seed = self.meta["config"]["seed"]
            self.modules = {seed: load_bundle(self.ckpt, device=str(reader.device))[0]}
            return Trained(
                self.modules,
                sentence=f"Evaluating the saved compressor `{self.ckpt}` (seed {seed}, trained on "
                f"{len(self.meta['seen_titles'])} articles) without training.",
            )
        t, log_path = self.train_cfg, run.path("train_log.jsonl")
        self.modules = {}
        for s in cfg.seed_list if cfg.resume else []:  # seeds already trained by an earlier attempt
            done = finished_bundle(run.path(f"ckpt_seed{s}"), t, s, reader.d_model, str(reader.device))
            if done:
                self.modules[s] = done
        with run.timer("train_features"):
            ts = None
            if len(self.modules) < len(cfg.seed_list):
                ts = prepare_train(reader, self.split.train, t, cfg.kd_topk, cfg.recall_per_context, self.progress)
        meta = bundle_meta(t, reader, self.split, {"system_prompt": cfg.system_prompt, "anchor": cfg.anchor_text})
        with run.timer("train"):
            for s in cfg.seed_list:  # whole seeds only: no seed starts after the budget
                if s not in self.modules and not self.out_of_time():
                    self.modules[s] = train_seed(
                        reader,
                        ts,
                        t,
                        s,
                        run.path(f"ckpt_seed{s}"),
                        meta,
                        cfg.resume,
                        log=lambda rec: append_jsonl(log_path, rec),
                        progress=self.progress,
                    )
        log = load_training_log(log_path)
        if log_path.is_file():
            run.register("train_log.jsonl")
        steps = [r["step_s"] for r in log if r["phase"] != "salience"]
        mean = f"{sum(steps) / len(steps):.2f} s" if steps else "not measured"
        return Trained(
            self.modules,
            log,
            f"Training data: {ts.stats if ts else 'cached by the earlier attempt'}. Steps per seed: latent "
            f"{t.salience_steps} label + {t.lm_steps} reader steps, pool_adapter {t.lm_steps} reader steps, "
            f"classifier {t.salience_steps + t.lm_steps} label steps (batch {t.train_batch_size}); mean reader "
            f"step {mean}.",
        )

    # -- phase 3 ------------------------------------------------------------------------------------
    def evaluate(self) -> list:
        """Every mode but ``optimised`` at every ratio into ``results.jsonl``; returns the jobs left undone."""
        with self.run.timer("evaluate"):
            self.left = evaluate_all(
                self.reader,
                self.ed,
                self.store,
                self.cfg.ratio_list,
                self.modules,
                self.cfg.max_new_tokens,
                self.progress,
                modes=tuple(m for m in MODES if m != "optimised"),
                deadline=self.deadline,
            )
        if self.store.path.is_file():
            self.run.register("results.jsonl")
        return self.left

    # -- phase 4 ------------------------------------------------------------------------------------
    def optimise(self) -> str:
        """The ceiling: vectors optimised per context (:mod:`.optimise`) for ``optimise_contexts`` evaluation
        contexts (a seeded order) at every ratio, then the ``optimised`` mode on their questions. No batch
        starts after ``optimise_budget_s`` (or the run's budget); each ratio is evaluated on the contexts done."""
        cfg = self.cfg
        n = min(cfg.optimise_contexts, len(self.ed.ctx_ids))
        if n == 0:
            return "Per-context optimisation skipped (`optimise_contexts = 0`)."
        store = VectorStore(
            self.run.path("optimised"), self.reader, cfg.optimise_steps, cfg.optimise_lr, self.train_cfg.amp
        )
        self.optimise_idx = choose_contexts(self.ed.hashes, n, cfg.split_seed, store, cfg.ratio_list)
        self.store.mode_settings["optimised"] = store.settings
        deadline = self.deadline
        if cfg.optimise_budget_s > 0:
            deadline = min(deadline or float("inf"), time.monotonic() + cfg.optimise_budget_s)
        with self.run.timer("optimise"):
            t0 = time.perf_counter()
            got, left = optimise_contexts(
                self.reader,
                [self.ed.ctx_ids[i] for i in self.optimise_idx],
                [self.ed.hashes[i] for i in self.optimise_idx],
                cfg.ratio_list,
                store,
                cfg.optimise_batch,
                self.train_cfg.amp,
                self.progress,
                deadline,
            )
            spent = time.perf_counter() - t0
            got = {(self.optimise_idx[k], r): o for (k, r), o in got.items()}  # evaluation context indices
            self.optimised = got
            # a ratio with no context optimised has no row; one with some is evaluated on those, and the contexts
            # cut by the budget are left undone (said in metrics.json and the stop line)
            some = [r for r in cfg.ratio_list if any(rr == r for _, rr in got)]
            cut = sorted({r for _, r in left})
            self.left += [("optimised", r, None) for r in cfg.ratio_list if r not in some or r in cut]
            self.left += evaluate_all(
                self.reader,
                self.ed,
                self.store,
                some,
                {},
                cfg.max_new_tokens,
                self.progress,
                modes=("optimised",),
                deadline=None,  # the contexts optimised are answered past budget_s too: a few questions each
                optimised=self.optimised,
            )
        if (self.run.path("optimised")).is_dir():
            self.run.register("optimised")
        per = {r: [o.seconds for (_, rr), o in got.items() if rr == r] for r in cfg.ratio_list}
        cost = ", ".join(f"r = {r:g}: {sum(v) / len(v):.0f} s" for r, v in per.items() if v)
        whole = sum(sum(v) / len(v) for v in per.values() if v)
        short = {r: n - len(v) for r, v in per.items() if len(v) < n}
        return (
            f"Chose {n} of {len(self.ed.ctx_ids)} evaluation contexts (a seeded sample) to optimise at r = "
            f"{', '.join(f'{r:g}' for r in cfg.ratio_list)} (at most {cfg.optimise_steps} Adam steps, learning rate "
            f"{cfg.optimise_lr:g}, {cfg.optimise_batch} contexts per batch). Cost per context on this machine: "
            f"{cost}, {whole:.0f} s for {'all ratios' if all(per.values()) else 'the ratios measured'} ({spent:.0f} s "
            "computed in this run, the rest read back from `optimised/`)."
            + (
                " Not optimised within the time budget (`optimise_budget_s`): "
                + ", ".join(f"{k} context(s) at r = {r:g}" for r, k in short.items())
                + "; the `optimised` rows cover the others (rerun with resume=true to go on)."
                if short
                else ""
            )
        )

    # -- phase 5 ------------------------------------------------------------------------------------
    def amortise(self) -> dict:
        """The amortisation run (:mod:`.amortise`) on ``amortise_contexts`` training contexts, scored on the dev
        article: :func:`.report.amortise_rows` with a ``sentence`` saying what ran (only the sentence when it
        did not), also added to ``metrics.json``."""
        from .report import amortise_rows

        cfg, reader, run = self.cfg, self.reader, self.run
        if cfg.amortise_contexts == 0:
            return {
                "sentence": "Amortisation run skipped (`amortise_contexts = 0`); the README gives the command and its "
                "measured result."
            }
        if not self.split.train or not self.split.dev:
            return {"sentence": "Amortisation run not possible: this run has no training side and dev article."}
        if not self.modules:
            return {"sentence": "Amortisation run not possible: no compressor was trained (time budget)."}
        stopped = {"sentence": "Amortisation run stopped by the time budget; rerun with resume=true."}
        if self.out_of_time():
            return stopped
        r, seed = cfg.main_ratio, sorted(self.modules)[0]
        self.dev_ed = prepare_eval(reader, self.split.dev, self.train_cfg.anchored)
        self.dev_ed.hidden = reader.hidden(self.dev_ed.ctx_ids, self.train_cfg)
        vstore = VectorStore(run.path("optimised"), reader, cfg.optimise_steps, cfg.optimise_lr, self.train_cfg.amp)
        arms_settings = {
            "amortise_steps": cfg.amortise_steps,
            "amortise_weight": cfg.amortise_weight,
            "amortise_contexts": cfg.amortise_contexts,
            "vectors": vstore.settings,
        }
        self.dev_store = ResultStore(
            run.path("amortise_results.jsonl"), self.dev_ed.qids, self.result_settings(**arms_settings)
        )
        self.dev_ctx_of = dict(zip(self.dev_ed.qids, self.dev_ed.q_ctx))
        with run.timer("amortise"):
            keep = set(pick_contexts(self.split.train, cfg.amortise_contexts, cfg.split_seed))
            train = [e for e in self.split.train if e.context in keep]
            ts = prepare_train(reader, train, self.train_cfg, cfg.kd_topk, cfg.recall_per_context)
            hashes = [context_hash(c) for c in dict.fromkeys(e.context for e in train)]  # prepare_train's order
            n_dev = min(cfg.amortise_dev_contexts, len(self.dev_ed.ctx_ids))

            def opt(ids, hs):
                amp, batch = self.train_cfg.amp, cfg.optimise_batch
                return optimise_contexts(reader, ids, hs, [r], vstore, batch, amp, self.progress, self.deadline)

            got, left = opt(ts.ctx_ids, hashes)
            dev_opt, left_dev = opt(self.dev_ed.ctx_ids[:n_dev], self.dev_ed.hashes[:n_dev])
            if left or left_dev or self.out_of_time():
                return stopped
            ts = with_targets(ts, {i: got[(i, r)].vectors for i in range(len(ts.ctx_ids))}, reader.target_rms)
            log_path = run.path("amortise_log.jsonl")
            t = replace(self.train_cfg, seed=seed)
            arms = train_arms(
                reader,
                self.modules[seed]["latent"],
                t,
                ts,
                r,
                cfg.amortise_steps,
                cfg.amortise_weight,
                log=lambda rec: append_jsonl(log_path, rec),
                progress=self.progress,
            )
            variants = {"start": self.modules[seed], **{a: {"latent": m} for a, m in arms.items()}}
            left = evaluate_all(
                reader,
                self.dev_ed,
                self.dev_store,
                [r],
                variants,
                cfg.max_new_tokens,
                self.progress,
                modes=("no_context", "anchor", "lead", "latent"),
                deadline=self.deadline,
            )
            left += evaluate_all(
                reader,
                self.dev_ed,
                self.dev_store,
                [r],
                {},
                cfg.max_new_tokens,
                self.progress,
                modes=("optimised",),
                deadline=self.deadline,
                optimised=dev_opt,
            )
            if left:
                return stopped
        for name in ("amortise_results.jsonl", "amortise_log.jsonl"):
            run.register(name)
        out = amortise_rows(self.dev_store, self.dev_ctx_of, r, cfg.n_boot)
        out["sentence"] = (
            f"Amortisation run at r = {r:g} from seed {seed}'s trained `latent`: {len(ts.ctx_ids)} training contexts "
            f"with optimised vectors ({len(ts.qa)} questions), {cfg.amortise_steps} QA steps per arm (batch "
            f"{t.train_batch_size}, w_amortise = {cfg.amortise_weight:g}), scored on the dev article "
            f"({', '.join(self.split.titles('dev'))}: {len(self.dev_ed.qids)} questions on "
            f"{len(self.dev_ed.ctx_ids)} contexts; the per-context ceiling on {n_dev} of them)."
        )
        if self.res is not None:
            self.res["amortise"] = {k: v for k, v in out.items() if k != "sentence"}
            run.save_json(self.res, "metrics.json")
        return out

    # -- phase 6 ------------------------------------------------------------------------------------
    def results(self) -> dict:
        """Summary rows, acceptance and verdict, the ceiling and amortisation rows; writes the prediction files
        and ``metrics.json``. Returns them as a dict (what ``metrics.json`` holds)."""
        from . import report

        cfg = self.cfg
        seeds = sorted(self.modules)
        rows = report.summary(self.store, self.ctx_of, cfg.ratio_list, seeds, cfg.n_boot)
        acc = report.acceptance(self.store, self.ctx_of, seeds, cfg.n_boot, r_main=4.0, r_far=10.0)
        ratios = sorted(cfg.ratio_list)
        ceiling = report.ceiling_rows(self.store, self.optimised, self.ctx_of, ratios, seeds, cfg.n_boot)
        out = {
            "data": {"source": self.source, **self.disjoint, **self.split.stats},
            "config": asdict(cfg),
            "summary": rows,
            "acceptance": acc,
            "verdict": report.verdict(acc),
            "ceiling": ceiling,
            "left_undone": self.left,
        }
        write_prediction_files(self.store, self.ed.examples, self.run.path("predictions"))
        self.run.register("predictions")
        self.run.save_json(out, "metrics.json")
        self.res = out
        return out

    def first_optimised(self) -> int:
        """The first evaluation context with optimised vectors (0 when none): where the examples start."""
        return min((i for i, _ in self.optimised), default=0)

    def stopped(self, trained: Trained) -> str | None:
        """What the time budget left undone, with the way to go on (None when everything ran)."""
        seeds = sorted(trained.modules)
        if not self.left and (self.ckpt or len(seeds) == len(self.cfg.seed_list)):
            return None
        return (
            f"**Stopped by the time budget** (`budget_s` = {self.cfg.budget_s:g} s, `optimise_budget_s` = "
            f"{self.cfg.optimise_budget_s:g} s for the `optimised` rows): seeds trained {seeds} of "
            f"{self.cfg.seed_list}; {len(self.left)} (mode, ratio, seed) evaluations not run: {self.left}. Rerun with "
            "`resume=true` to go on."
        )
