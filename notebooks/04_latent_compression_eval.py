# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (transformer-spectra)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Latent compression: can a frozen reader answer from M vectors instead of the context?
#
# A frozen causal LM (the *reader*) answers SQuAD questions. Its context slot holds either the
# context's tokens or a compressed version of M = ceil(T / r) items for a context of T tokens, at
# ratios r. Every mode uses the same chat scaffold, the question as text and the same anchor
# ("Answer:"); only the context slot changes. Question-agnostic modes: no context (floor), lead-M,
# random-M in order, an oracle window of M tokens around the gold answer (the ceiling of hard
# selection), a trained token classifier's top-M in order (LLMLingua-2 style), the compressor's own
# selection fed back as token ids, a trained pool-and-project control, and `latent`. A separate
# question-aware track has BM25 sentence selection and a question-overlap window, cut to M tokens.
# The full context (`anchor`) is the reference: teacher-normalised F1 = (F1 - no context) / (anchor -
# no context). Metric: the official SQuAD v1.1 EM / F1; every question of each evaluation context is
# scored and intervals come from a bootstrap that resamples whole contexts.

# %% tags=["parameters"]
model: str = "smollm2"  # bundled default, or a .gguf path, an HF checkpoint dir, or a hub id
run_name: str = "default"  # results go to output/<notebook>/<run_name>/
output_root: str = "output"  # results root; a relative path is taken from the project root
data: str = "auto"  # auto (the shared SQuAD sample when present, else synthetic), synthetic, a SQuAD JSON path, or hub:NAME
checkpoint: str = "auto"  # saved compressor folder to evaluate without training; auto is the shipped one for smollm2; empty trains here
ratios: str = "4,10,6"  # compression ratios r (M is the context length over r, rounded up), most decisive first
seeds: str = "0"  # training seeds, comma separated (the acceptance run uses 0,1,2)
min_eval_questions: int = 900  # whole articles go to evaluation until this many questions (SQuAD files) {1..}
dev_articles: int = 1  # training-side articles held out as the dev split
split_seed: int = 0  # order in which articles are drawn for evaluation
max_eval_contexts: int = 20  # evaluate all questions of at most this many contexts (0 for all; keeps make run short) {0..}
max_train_contexts: int = 0  # train on at most this many training-side contexts (0 for all) {0..}
n_train_paragraphs: int = 200  # synthetic data only: training paragraphs
n_eval_paragraphs: int = 60  # synthetic data only: evaluation paragraphs
system_prompt: str = "Extract the answer from the context. Reply with the answer words only.\nExample: Context: Tom Hill lives in Rome. Ada Park plays the flute every evening.\nQuestion: Which instrument does Ada Park play?\nAnswer: flute"  # shared scaffold, one-shot
anchor_text: str = "Answer:"  # anchor string that ends every prompt
max_new_tokens: int = 8  # greedy decoding length {1..}
hidden_layers: str = "0,8"  # reader layers read by the compressors (0 is the token embeddings)
echo: bool = False  # read hidden states of a second copy of the context
d_enc: int = 192  # compressor trunk width {1..}
enc_layers: int = 1  # compressor trunk transformer layers {1..}
tau: float = 0.5  # pooling softmax temperature
salience_steps: int = 300  # label steps (token labels, no reader pass) {0..}
recall_steps: int = 100  # reader steps of span-recall and cloze pretraining on training-side text {0..}
qa_steps: int = 200  # reader steps of QA fine-tuning (cross-entropy and distillation) {0..}
train_batch_size: int = 8  # training batch size {1..}
lr: float = 0.0003  # AdamW learning rate of the reader steps
salience_lr: float = 0.002  # learning rate of the label steps
w_kd: float = 1.0  # weight of the distillation from the reader reading the full context
kd_topk: int = 32  # teacher logits cached per answer position {1..}
K: int = 4  # answer tokens distilled {1..}
w_salience: float = 0.5  # weight of the token-label loss during reader steps
recall_per_context: int = 6  # recall pseudo-questions per training context {0..}
n_boot: int = 2000  # bootstrap resamples (whole contexts) {0..}
device: str = "cpu"  # cpu, cuda, cuda:N or auto
budget_s: float = 0.0  # wall-clock budget in seconds: no new seed or mode starts after it (0 for none; resume continues) {0..}
resume: bool = False  # resume from the earlier attempt of this run name (checkpoints and finished modes)

# %%
import time
from dataclasses import asdict

import numpy as np

from utils import plots
from utils.files import append_jsonl
from utils.latent import cache, compressor, experiment, prompts, report
from utils.latent import split as splits
from utils.progress import progress_bar
from utils.running import start_run
from utils.running.params import ParameterError, check_file
from utils.weights import load_model

run = start_run("04_latent_compression_eval", globals())
ratio_list = [float(x) for x in ratios.split(",") if x.strip()]
seed_list = [int(x) for x in seeds.split(",") if x.strip()]
if not ratio_list or min(ratio_list) <= 1:
    raise ParameterError(f"ratios={ratios!r}: give compression ratios above 1, e.g. 4,6,10")
source = splits.resolve_data(data)
if source not in ("synthetic",) and not source.startswith("hub:"):
    check_file("data", source, "SQuAD JSON file (or use data=synthetic or data=auto)")
ckpt_path = experiment.resolve_checkpoint(checkpoint, model)
progress = lambda it, desc, total=None: progress_bar(it, desc=desc, total=total)  # noqa: E731
deadline = time.monotonic() + budget_s if budget_s > 0 else None

# %% [markdown]
# ## Data and split
#
# Whole articles go to evaluation (in a seeded order) until at least `min_eval_questions` questions
# are held out; the next `dev_articles` articles form the dev split and the rest is training, so no
# evaluation article, context or question is seen in training or in any dev check (checked below).
# With a saved `checkpoint`, the evaluation is every article of `data` that the checkpoint never saw.
# `max_eval_contexts` keeps the default run short; the acceptance run evaluates every context.

# %%
with run.timer("data"):
    meta = compressor.read_meta(ckpt_path) if ckpt_path else None
    if source == "synthetic":
        split = splits.synthetic_split(n_eval_paragraphs, n_train_paragraphs)
    else:
        examples, file_stats = splits.load_examples(source)
        split = (splits.held_out_split(examples, meta["seen_titles"], meta["seen_contexts"]) if meta
                 else splits.article_split(examples, min_eval_questions, dev_articles, split_seed))
    split.eval = splits.cap_contexts(split.eval, max_eval_contexts, seed=split_seed)
    split.train = splits.cap_contexts(split.train, max_train_contexts, seed=split_seed)
    disjoint = splits.check_disjoint(split)
    llm, tok = load_model(model, device=device)
    scaffold = prompts.make_scaffold(tok, system_prompt=system_prompt, anchor=anchor_text)
    ed = experiment.prepare_eval(tok, scaffold, split.eval, anchored=True)
    cfg = compressor.TrainConfig.from_dict(meta["config"]) if meta else compressor.TrainConfig(
        hidden_layers=hidden_layers, echo=echo, d_enc=d_enc, n_layers=enc_layers, tau=tau, ratios=ratios, lr=lr,
        salience_lr=salience_lr, batch_size=train_batch_size, salience_steps=salience_steps, recall_steps=recall_steps,
        qa_steps=qa_steps, w_kd=w_kd, K=K, w_salience=w_salience, device=device)
    ed.hidden = cache.cache_hidden(llm, ed.ctx_ids, cfg.layers, cfg.echo,
                                   progress=lambda it: progress(it, "eval hidden states"))
    prefix = cache.prefix_kv(llm, scaffold.pre_ids)
run.show(report.data_sentence(ed, split.stats, disjoint, source))
warn = experiment.budget_warning([c.shape[0] for c in ed.ctx_ids], ratio_list)
if warn:
    run.show(warn)

# %% [markdown]
# ## Training and evaluation (no training when a saved checkpoint is evaluated)
#
# The three compressors read cached hidden states of the reader (layers `hidden_layers`). `latent`
# (see `utils/latent/compressor.py`): a small transformer over those states, segment pooling at ratio
# r weighted by a learned salience, plus a zero-initialised projection of its features, rescaled to the
# reader's embedding RMS. Training, per seed and on the training side only: label steps (token labels:
# words of the paragraph's answers and questions), then span-recall and cloze pretraining on the
# unlabeled context text, then QA fine-tuning with cross-entropy and distillation from the reader
# reading the full context (its top-k answer logits, cached). `pool_adapter` gets the same reader steps;
# the token classifier gets as many label steps as `latent` has steps. Each reader step runs only over
# the M slots, the question and the answer, after the cached key/values of the prompt prefix. Each seed is
# trained whole; then every mode at every ratio is evaluated, the decisive comparisons first, each stored
# as it finishes (`budget_s` stops new work; `resume` continues).

# %%
pad_id, log_path = tok.pad_token_id or 0, run.path("train_log.jsonl")
if resume:
    for name in ["train_log.jsonl", "results.jsonl"] + [f"ckpt_seed{s}" for s in seed_list]:
        run.carry_over(name)
store = experiment.ResultStore(run.path("results.jsonl"))
evaluate = lambda mods: experiment.evaluate_all(llm, tok, ed, prefix, store, ratio_list, mods,  # noqa: E731
                                                max_new_tokens, scaffold.anchor, progress, deadline=deadline)
seeds_modules = {}
if ckpt_path:
    seeds_modules[meta["config"]["seed"]] = compressor.load_bundle(ckpt_path, device=device)[0]
    run.show(f"Evaluating the saved compressor `{ckpt_path}` (seed {meta['config']['seed']}, trained on "
             f"{len(meta['seen_titles'])} articles) without training.")
    with run.timer("evaluate"):
        left = evaluate(seeds_modules)
else:
    d_model = prompts.input_embedding(llm).weight.shape[1]
    for s in seed_list if resume else []:  # seeds already trained by an earlier attempt
        done = experiment.finished_bundle(run.path(f"ckpt_seed{s}"), cfg, s, d_model)
        if done:
            seeds_modules[s] = done
    with run.timer("train_features"):
        ts = (experiment.prepare_train(llm, tok, scaffold, split.train, cfg, prefix, kd_topk, recall_per_context,
                                       progress) if len(seeds_modules) < len(seed_list) else None)
    base_meta = experiment.bundle_meta(cfg, d_model, prompts.token_embedding_rms(llm), model, split,
                                       {"system_prompt": system_prompt, "anchor": anchor_text})
    with run.timer("train"):
        for s in seed_list:  # whole seeds only: no seed starts after the budget
            if s not in seeds_modules and (deadline is None or time.monotonic() < deadline):
                seeds_modules[s] = experiment.train_seed(llm, ts, cfg, s, prefix, pad_id,
                                                         run.path(f"ckpt_seed{s}"), base_meta, resume,
                                                         log=lambda rec: append_jsonl(log_path, rec), progress=progress)
    with run.timer("evaluate"):
        left = evaluate(seeds_modules)
    train_log = experiment.load_training_log(log_path)
    run.register("train_log.jsonl")
    step_s = [r["step_s"] for r in train_log if r["phase"] != "salience"] or [float("nan")]
    run.show(f"Training data: {ts.stats if ts else 'cached by the earlier attempt'}. Steps per seed: latent "
             f"{cfg.salience_steps} label + {cfg.lm_steps} reader steps, pool_adapter {cfg.lm_steps} reader steps, "
             f"classifier {cfg.salience_steps + cfg.lm_steps} label steps (batch {cfg.batch_size}); mean reader step "
             f"{np.mean(step_s):.2f} s.")
    run.show(plots.latent.training_curves(train_log), "training_curves.png")
run.register("results.jsonl")
if left or len(seeds_modules) < len(seed_list if not ckpt_path else seeds_modules):
    run.show(f"**Stopped by the time budget** (`budget_s` = {budget_s:g} s): seeds trained {sorted(seeds_modules)} of "
             f"{seed_list}; {len(left)} (mode, ratio, seed) evaluations not run: {left}. Rerun with `resume=true` "
             "to go on.")

# %% [markdown]
# ## Results: every mode at every ratio
#
# F1 with its 95 % context-bootstrap interval and teacher-normalised F1 (0 = no context, 1 = the full
# context). A seeded mode is the per-question mean over its seeds. The acceptance checks follow: per
# seed, `latent` - lead-M at r = 4 (target >= +5 F1 with the interval above 0), `latent` - its own
# selection as ids at r = 4 (>= +3, else the continuous part adds nothing), and `latent` - lead-M at r = 10
# (>= -2), each a paired context bootstrap.

# %%
clusters, eval_seeds = np.array(ed.q_ctx), sorted(seeds_modules)
rows = report.summary(store, clusters, ratio_list, eval_seeds, n_boot)
run.show(report.first_table(rows, ratio_list))
acc = report.acceptance(store, clusters, eval_seeds, n_boot, r_main=4.0, r_far=10.0)
run.show(report.verdict(acc))
run.show(report.acceptance_table(acc))
run.show(report.per_seed_table(store, ratio_list, eval_seeds), details="F1 of the trained modes per seed")
run.save_json({"data": {"source": source, **disjoint, **split.stats}, "config": asdict(cfg), "summary": rows,
               "acceptance": acc, "verdict": report.verdict(acc)}, "metrics.json")
run.show(plots.latent.f1_by_ratio(rows, ratio_list), "f1_by_ratio.png")

# %% [markdown]
# ## What the selectors keep, and a few answers
#
# The tokens kept by `latent`'s own selection and by the classifier for the first evaluation contexts
# at the smallest ratio, then the first questions with the answers of a few modes.

# %%
run.show(report.kept_tokens_table(tok, ed, seeds_modules[eval_seeds[0]], llm, min(ratio_list)))
run.show(report.examples_table(ed, store, min(ratio_list), eval_seeds[0]))
run.finish()
