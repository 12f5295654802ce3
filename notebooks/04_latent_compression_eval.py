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
# # 04 · Latent compression: can a frozen LLM answer from M vectors instead of the context?
#
# A frozen causal LM answers extractive questions. The context reaches it either as tokens or as
# continuous vectors through `inputs_embeds`; a learned encoder compresses the context into **M**
# vectors and we measure what survives. Every mode uses the same chat scaffold and the full
# question as text; only the context slot changes:
#
# | mode | context slot |
# |---|---|
# | `text` | the context tokens (`input_ids`, left padding, attention mask, greedy, KV cache) |
# | `text_embed` | the same prompt through `inputs_embeds` (must reproduce `text`) |
# | `anchor` | `text_embed` plus an anchor string before the answer |
# | `token_budget` | the first M context tokens (the fair baseline at equal M) |
# | `mean_pool` | M chunk means of the context token embeddings (no training) |
# | `adapter` | the `mean_pool` vectors through a trained adapter |
# | `latent` | the trained encoder's M vectors through its adapter |
#
# Measures per mode: SQuAD v1.1 EM / F1 with bootstrap intervals and paired differences against
# `text`; first-token top-1 / top-5 accuracy and the gold answer's NLL under teacher forcing with
# the same masks and positions; compression ratio; wall-clock (encoder included) and examples/s at
# equal batch size; prediction diversity and a mode-collapse flag.

# %% tags=["parameters"]
model: str = "smollm2"  # bundled default, or a .gguf path, an HF checkpoint dir, or a hub id
run_name: str = "default"  # results go to output/<notebook>/<run_name>/
output_root: str = "output"  # results root; a relative path is taken from the project root
data: str = "synthetic"  # synthetic, a SQuAD v1.1/v2.0 JSON path, or hub:NAME (needs the datasets package and network)
n_eval: int = 150  # evaluation questions, one per context (200 or more supported for SQuAD files)
n_train_paragraphs: int = 200  # synthetic training paragraphs (each gives 4-6 questions)
max_train_questions: int = 2000  # cap on training questions (SQuAD: taken from contexts not in the eval set)
seed: int = 0  # data split, synthetic generation and training seed
M: int = 16  # vectors (or tokens for token_budget) that replace the context
system_prompt: str = "Extract the answer from the context. Reply with the answer words only.\nExample: Context: Tom Hill lives in Rome. Ada Park plays the flute every evening.\nQuestion: Which instrument does Ada Park play?\nAnswer: flute"  # shared scaffold, one-shot
anchor_text: str = "Answer:"  # anchor string before the answer in the anchor mode
anchor_all: bool = True  # also anchor token_budget, mean_pool, adapter and latent (same answer format as `anchor`)
max_new_tokens: int = 8  # greedy decoding length
eval_batch_size: int = 16  # batch size of every mode (equal for the timing comparison)
train_budget_s: float = 450.0  # wall-clock budget of the latent encoder training (seconds)
adapter_budget_s: float = 120.0  # wall-clock budget of the mean_pool adapter training (seconds)
max_steps: int = 100000  # LM-loss steps cap per trained component (the budget usually stops first)
train_batch_size: int = 8  # training batch size
lr: float = 0.0001  # AdamW learning rate of the LM-loss phase (encoder and adapters)
salience_lr: float = 0.002  # learning rate of the salience pre-training
hidden_layer: int = 8  # frozen-LM layer whose hidden states feed the encoder
d_enc: int = 256  # encoder width
enc_layers: int = 1  # encoder transformer layers
w_tf: float = 1.0  # weight: teacher-forced answer cross-entropy
w_first: float = 1.0  # weight: first-token cross-entropy
w_kce: float = 0.5  # weight: cross-entropy over the first K answer tokens
K: int = 4  # K of the first-K CE and the distillation
w_kd: float = 0.5  # weight: KL(teacher, student) distillation, the teacher is the LM reading the text
kd_temperature: float = 2.0  # distillation temperature
w_entropy: float = 0.1  # weight: minus entropy of the batch-mean first-token distribution
w_salience: float = 1.0  # weight: salience BCE, soft labels 1 for answer words and 0.5 for question words of the training paragraph
salience_pretrain_steps: int = 400  # cheap salience-only steps on cached hidden states
history_every: int = 20  # steps between dev-set first-token checks (metrics_history.jsonl)
n_boot: int = 2000  # bootstrap resamples for the intervals
bf16: bool = False  # bfloat16 autocast for the frozen LM during training (GPU)
device: str = "cpu"  # cpu, cuda, cuda:N or auto
device_map: str = ""  # passed to from_pretrained when set (auto on a multi-GPU node)
resume: bool = False  # resume training from this run's checkpoints if present

# %%
import time

import torch

from utils import plots
from utils.latent import experiment, prompts, report
from utils.latent.evaluate import agreement_rate, evaluate_mode
from utils.latent.metric import score_predictions
from utils.progress import progress_bar
from utils.running import start_run
from utils.running.params import ParameterError, check_file
from utils.weights import load_model

run = start_run("04_latent_compression_eval", globals(),
                positive=("M", "eval_batch_size", "train_batch_size", "max_new_tokens", "K", "history_every"),
                nonnegative=("train_budget_s", "adapter_budget_s", "n_boot", "salience_pretrain_steps"))
if n_eval < 2:
    raise ParameterError(f"n_eval={n_eval}: need at least 2 evaluation questions")
if data != "synthetic" and not data.startswith("hub:"):
    check_file("data", data, "SQuAD JSON file (or use data=synthetic)")
torch.manual_seed(seed)

# %% [markdown]
# ## Data
#
# The synthetic set (default) has passages of 4-6 short factual sentences about different people
# in random order, one question per sentence, so an answer is equally likely anywhere in the
# passage and keeping the first M tokens keeps it only by position. Training and evaluation
# paragraphs come from different generator seeds. For a SQuAD file the evaluation takes one
# question from each of `n_eval` random contexts and training uses questions of the other contexts.

# %%
with run.timer("data"):
    split = experiment.split_examples(data, n_eval, n_train_paragraphs, max_train_questions, seed)
with run.timer("load_model"):
    llm, tok = load_model(model, device=device, **({"device_map": device_map} if device_map else {}))
scaffold = prompts.make_scaffold(tok, system_prompt=system_prompt, anchor=anchor_text)
enc_eval, enc_train, enc_dev = (prompts.encode_examples(scaffold, x) for x in (split.eval, split.train, split.dev))
target_rms = prompts.token_embedding_rms(llm)
positions = experiment.answer_token_positions(tok, split.eval)
data_summary = experiment.data_summary(data, split, enc_eval, positions, M, target_rms)
run.show(report.data_sentence(data_summary, M))

# %% [markdown]
# ## Training the compressors
#
# `latent`: hidden states of the frozen LM (layer `hidden_layer`) feed a small transformer; a
# salience head ranks the context tokens, the top M (in context order) become slots = token
# embedding + learned residual, then an identity-initialised adapter and RMS matching. Losses:
# teacher-forced CE, first-token CE, first-K CE, KL(teacher || student) from the LM reading the
# text, an entropy term against collapse, and a salience BCE with soft labels (1 for words of the
# training paragraph's answers, 0.5 for words of its questions; never from evaluation items). The
# salience head is first pre-trained cheaply on cached hidden states, then everything trains through
# the LM. `adapter`: the same adapter on `mean_pool` vectors, same LM losses. Both stop at their budget.

# %%
history, t_run0 = [], time.perf_counter()
common = dict(M=M, d_enc=d_enc, n_layers=enc_layers, hidden_layer=hidden_layer, lr=lr, salience_lr=salience_lr,
              batch_size=train_batch_size, max_steps=max_steps, w_tf=w_tf, w_first=w_first, w_kce=w_kce, K=K,
              w_kd=w_kd, kd_temperature=kd_temperature, w_entropy=w_entropy, w_salience=w_salience,
              salience_pretrain_steps=salience_pretrain_steps, seed=seed, bf16=bf16, device=device,
              anchored=anchor_all, max_context_tokens=experiment.max_context(enc_train + enc_eval))
comps, records, train_summary = experiment.train_compressors(
    llm, tok, split, enc_train, enc_dev, {"latent": train_budget_s, "adapter": adapter_budget_s},
    common, run, resume, history, t_run0, history_every)
run.save_jsonl(records["latent"] + records["adapter"], "train_diagnostics.jsonl")
run.show(report.training_sentence(train_summary, train_batch_size, train_budget_s, adapter_budget_s))

# %% [markdown]
# ## Evaluation of every mode
#
# All modes run at the same batch size; the wall-clock of `latent` includes the frozen LM's pass over
# the context that feeds the encoder, and the encoder itself. In the table, *slot* is the number of
# vectors or tokens in the context slot, *compr.* the context tokens per slot, ΔF1 a paired bootstrap on
# the same questions; first-token accuracy and gold NLL (nats per answer token) are teacher-forced with
# the same masks and positions as generation. With `anchor_all` the compressed modes end with the same
# anchor as `anchor` (marked +anchor), so `anchor` is their full-context reference. The trained modes can
# also learn the answer format from the training losses; `adapter` is the control for that.

# %%
results, golds = {}, [e.answers for e in split.eval]
vectors = {k: c.context_vectors(llm) for k, c in comps.items()}
with run.timer("evaluate"):
    for mode in prompts.MODES:
        r = evaluate_mode(mode, llm, tok, scaffold, enc_eval, M, target_rms, batch_size=eval_batch_size,
                          max_new_tokens=max_new_tokens, context_vectors=vectors.get(mode),
                          progress=lambda it, m=mode: progress_bar(it, desc=m),
                          anchored=(mode == "anchor") or (anchor_all and mode in experiment.COMPRESSED))
        r["scores"] = score_predictions(r["predictions"], golds)
        results[mode] = r
        experiment.log_eval(history, run.path("metrics_history.jsonl"), mode, r, t_run0)
metrics = {"data": data_summary, "training": train_summary,
           "modes": experiment.mode_metrics(results, tok, n_boot, seed)}
run.show(report.mode_table(metrics["modes"]))

# %% [markdown]
# ## Headline
#
# Paired bootstrap of the `latent` F1 against each untrained or control mode at equal M, and whether
# `text_embed` (the same prompt through `inputs_embeds`) reproduces `text`.

# %%
verdicts = {b: report.paired_verdict(results, "latent", b, n_boot, seed)
            for b in ("token_budget", "mean_pool", "adapter")}
metrics["latent_vs"] = {b: v[0] for b, v in verdicts.items()}
metrics["latent_beats_significantly"] = {b: bool(v[0]["lo"] > 0) for b, v in verdicts.items()}
metrics["text_embed_agreement"] = report.agreement(results, split.eval, agreement_rate)
run.show(report.headline(verdicts, metrics))
run.save_json(metrics, "metrics.json")
run.save_jsonl(report.prediction_rows(split.eval, results), "predictions.jsonl")
m = metrics["modes"]
fig = plots.bars_with_intervals(prompts.MODES, [m[k]["f1"] for k in prompts.MODES],
                                [m[k]["f1_ci"][0] for k in prompts.MODES], [m[k]["f1_ci"][1] for k in prompts.MODES],
                                "F1 (95% bootstrap CI)", f"F1 by mode, M = {M}, n = {len(split.eval)}",
                                ["C0", "C0", "C0", "C1", "C2", "C2", "C3"])
run.show(fig, "f1_by_mode.png")

# %% [markdown]
# ## Training curves, and what the latent encoder keeps
#
# Losses per LM step for both trained compressors, the salience pre-training loss and the dev NLL;
# then the context tokens whose embeddings seed the M slots (before the residual and adapter) for the
# first evaluation questions, and a few predictions side by side.

# %%
run.show(plots.training_curves(records, history), "loss_curves.png")
lm_latent = [r for r in records["latent"] if r["phase"] == "lm"]
if lm_latent:
    run.show(report.last_step_table(lm_latent[-1]))
run.show(report.kept_tokens_table(comps["latent"], llm, tok, split.eval, enc_eval))
run.show(report.dominant_table(metrics["modes"]))
run.show(report.examples_table(split.eval, results))
run.finish()
