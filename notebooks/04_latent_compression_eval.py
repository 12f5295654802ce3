# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
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
output_root: str = "output"  # root folder for results
data: str = "synthetic"  # "synthetic", a SQuAD v1.1/v2.0 JSON path, or "hub:<dataset name>" (needs `datasets` + network)
n_eval: int = 150  # evaluation questions, one per context (200 or more supported for SQuAD files)
n_train_paragraphs: int = 200  # synthetic training paragraphs (each gives 4-6 questions)
max_train_questions: int = 2000  # cap on training questions (SQuAD: taken from contexts not in the eval set)
seed: int = 0  # data split, synthetic generation and training seed
M: int = 16  # vectors (or tokens for token_budget) that replace the context
system_prompt: str = "Extract the answer from the context. Reply with the answer words only.\nExample: Context: Tom Hill lives in Rome. Ada Park plays the flute every evening.\nQuestion: Which instrument does Ada Park play?\nAnswer: flute"  # shared scaffold, one-shot
anchor_text: str = "Answer:"  # anchor string before the answer in the `anchor` mode
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
device: str = "cpu"  # "cpu" or "cuda"
device_map: str = ""  # passed to from_pretrained when set (e.g. "auto" on a multi-GPU node)
resume: bool = False  # resume training from this run's checkpoints if present

# %%
import json
import random
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from utils import latent as LT
from utils import latent_train as TR
from utils.models import load_model
from utils.qa_data import load_hub_squad, load_squad_json, one_question_per_context, parse_squad, make_synthetic_squad
from utils.qa_metrics import bootstrap_ci, paired_bootstrap_ci, score_predictions
from utils.report import fmt, md_image, md_table
from utils.runs import start_run

# one clear error per bad parameter, before any work
if n_eval < 2:
    raise ValueError(f"n_eval={n_eval}: need at least 2 evaluation questions")
if M < 1:
    raise ValueError(f"M={M}: the number of latent vectors must be >= 1")
if eval_batch_size < 1 or train_batch_size < 1:
    raise ValueError("eval_batch_size and train_batch_size must be >= 1")
if train_budget_s < 0 or adapter_budget_s < 0:
    raise ValueError("training budgets must be >= 0 seconds")
if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
    raise ValueError(f"device={device!r}: use 'cpu', or 'cuda' on a machine with a GPU")
if not (data == "synthetic" or data.startswith("hub:") or Path(data).is_file()):
    raise FileNotFoundError(f"data={data!r} is neither 'synthetic', 'hub:<name>' nor an existing SQuAD JSON file; "
                            "e.g. data='../shared/data/squad-v1.1-dev-part-a.json'")

params = dict(model=model, run_name=run_name, output_root=output_root, data=data, n_eval=n_eval,
              n_train_paragraphs=n_train_paragraphs, max_train_questions=max_train_questions, seed=seed, M=M,
              system_prompt=system_prompt, anchor_text=anchor_text, anchor_all=anchor_all, max_new_tokens=max_new_tokens,
              eval_batch_size=eval_batch_size, train_budget_s=train_budget_s, adapter_budget_s=adapter_budget_s,
              max_steps=max_steps, train_batch_size=train_batch_size, lr=lr, salience_lr=salience_lr, hidden_layer=hidden_layer, d_enc=d_enc,
              enc_layers=enc_layers, w_tf=w_tf, w_first=w_first, w_kce=w_kce, K=K, w_kd=w_kd,
              kd_temperature=kd_temperature, w_entropy=w_entropy, w_salience=w_salience,
              salience_pretrain_steps=salience_pretrain_steps, history_every=history_every, n_boot=n_boot,
              bf16=bf16, device=device, device_map=device_map, resume=resume)
run = start_run("04_latent_compression_eval", run_name, params=params, output_root=output_root)
random.seed(seed)
np.random.seed(seed)
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
    if data == "synthetic":
        train_ex, _ = parse_squad(make_synthetic_squad(n_train_paragraphs, seed=1000 + seed), "synthetic-train")
        eval_pool, data_stats = parse_squad(make_synthetic_squad(n_eval, seed=2000 + seed), "synthetic-eval")
        eval_ex = one_question_per_context(eval_pool, seed=seed)[:n_eval]
    else:
        all_ex, data_stats = load_hub_squad(data[4:]) if data.startswith("hub:") else load_squad_json(data)
        contexts = list(dict.fromkeys(e.context for e in all_ex))
        random.Random(seed).shuffle(contexts)
        if len(contexts) < n_eval + 1:
            raise ValueError(f"{data} has {len(contexts)} contexts: too few for n_eval={n_eval} plus training")
        eval_ctx = set(contexts[:n_eval])
        eval_ex = [e for e in one_question_per_context([e for e in all_ex if e.context in eval_ctx], seed=seed)]
        train_ex = [e for e in all_ex if e.context not in eval_ctx]
    random.Random(seed).shuffle(train_ex)
    train_ex = train_ex[:max_train_questions]
    dev_ex = train_ex[-16:]          # a small held-out slice for the training-time history
    train_ex = train_ex[:-16] if len(train_ex) > 32 else train_ex

with run.timer("load_model"):
    kw = {"device_map": device_map} if device_map else {}
    llm, tok = load_model(model, dtype=torch.float32, device=device, **kw)
    if not device_map:
        llm.to(device)
    for p in llm.parameters():
        p.requires_grad_(False)

scaffold = LT.make_scaffold(tok, system_prompt=system_prompt, anchor=anchor_text)
enc_eval = LT.encode_examples(scaffold, eval_ex)
enc_train = LT.encode_examples(scaffold, train_ex)
enc_dev = LT.encode_examples(scaffold, dev_ex)
target_rms = LT.token_embedding_rms(llm)
ctx_lens = np.array([e.context.shape[0] for e in enc_eval])
# where the answer sits: the token index of the answer start, relative to the context length
ans_tok_pos = []
for e, x in zip(eval_ex, enc_eval):
    s = e.answer_starts[0] if e.answer_starts and e.answer_starts[0] >= 0 else e.context.find(e.answers[0])
    ans_tok_pos.append(len(LT.encode(tok, e.context[:max(s, 0)])))
ans_tok_pos = np.array(ans_tok_pos)
in_budget = float(np.mean(ans_tok_pos < M))
data_summary = {"source": data, "eval_questions": len(eval_ex), "train_questions": len(train_ex),
                "dev_questions": len(dev_ex), "stats": data_stats,
                "context_tokens_mean": float(ctx_lens.mean()), "context_tokens_max": int(ctx_lens.max()),
                "answer_start_token_mean": float(ans_tok_pos.mean()),
                "answer_start_rel_mean": float(np.mean(ans_tok_pos / np.maximum(ctx_lens, 1))),
                "answers_starting_within_first_M": in_budget, "target_rms": target_rms}
print(json.dumps(data_summary, indent=1, default=str))

# %% [markdown]
# ## Training the compressors
#
# `latent`: hidden states of the frozen LM (layer `hidden_layer`) feed a small transformer; a
# salience head ranks the context tokens, the top M (in context order) become slots = token
# embedding + learned residual, then an identity-initialised adapter and RMS matching. Losses:
# teacher-forced CE, first-token CE, first-K CE, KL(teacher || student) from the LM reading the
# text, an entropy term against collapse, and a salience BCE with soft labels (1 for words of the
# training paragraph's answers, 0.5 for words of its questions; never from evaluation items). The salience head
# is first pre-trained cheaply on cached hidden states, then everything trains through the LM.
# `adapter`: the same adapter on `mean_pool` vectors, same LM losses. Both stop at their budget.

# %%
history = []
t_run0 = time.perf_counter()


def dev_check(kind):
    """Teacher-forced first-token accuracy and NLL on the held-out dev slice (no generation)."""
    def cb(step, comp):
        with torch.no_grad():
            vecs = comp.context_vectors(llm)([e.context for e in enc_dev])
            prompts = [[e.pre, v, e.post] + ([e.anchor] if anchor_all else []) for e, v in zip(enc_dev, vecs)]
            lg, tg, va = LT.answer_logits(llm, prompts, [e.answer_anchored if anchor_all else e.answer
                                                         for e in enc_dev], tok.pad_token_id)
            lp = torch.log_softmax(lg, -1)
            nll = -(lp.gather(-1, tg.unsqueeze(-1)).squeeze(-1) * va).sum() / va.sum()
            acc = float(((lg[:, 0].argmax(-1) == tg[:, 0]) & va[:, 0]).float().mean())
        rec = {"phase": "train", "kind": kind, "step": step, "dev_first_acc": acc, "dev_nll": float(nll),
               "elapsed_s": round(time.perf_counter() - t_run0, 2)}
        history.append(rec)
        with open(run.path("metrics_history.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
    return cb


run.path("metrics_history.jsonl").unlink(missing_ok=True)
common = dict(M=M, d_enc=d_enc, n_layers=enc_layers, hidden_layer=hidden_layer, lr=lr, salience_lr=salience_lr, batch_size=train_batch_size,
              max_steps=max_steps, w_tf=w_tf, w_first=w_first, w_kce=w_kce, K=K, w_kd=w_kd,
              kd_temperature=kd_temperature, w_entropy=w_entropy, w_salience=w_salience,
              salience_pretrain_steps=salience_pretrain_steps, seed=seed, bf16=bf16, device=device, anchored=anchor_all,
              max_context_tokens=max(1024, int(max(x.context.shape[0] for x in enc_train + enc_eval)) + 1))
cfg_lat = TR.TrainConfig(kind="latent", time_budget_s=train_budget_s, **common)
cfg_ad = TR.TrainConfig(kind="adapter", time_budget_s=adapter_budget_s, **common)
d_model = TR.input_embedding(llm).weight.shape[1]
comp_lat = TR.Compressor(d_model, cfg_lat, target_rms).to(device)
comp_ad = TR.Compressor(d_model, cfg_ad, target_rms).to(device)

with run.timer("train_latent"):
    t0 = time.perf_counter()
    # hidden states and salience labels once per distinct training context
    uniq = list(dict.fromkeys(x.context for x in train_ex))
    first_enc = {}
    for x, e in zip(train_ex, enc_train):
        first_enc.setdefault(x.context, e.context)
    hid_u = TR.cache_hidden_states(llm, [first_enc[c] for c in uniq], hidden_layer, batch_size=16,
                                   progress=lambda it: tqdm(it, desc="caching hidden states"))
    hid_by_ctx = dict(zip(uniq, hid_u))
    cache_s = time.perf_counter() - t0
    qs_by_ctx, ans_by_ctx = {}, {}
    for x in train_ex:
        qs_by_ctx.setdefault(x.context, []).append(x.question)
        ans_by_ctx.setdefault(x.context, set()).update(x.paragraph_answers or x.answers)
    lab_by_ctx = {c: TR.salience_labels(tok, c, first_enc[c], sorted(ans_by_ctx[c]), qs_by_ctx[c]) for c in uniq}
    train_hidden = [hid_by_ctx[x.context] for x in train_ex]
    train_labels = [lab_by_ctx[x.context] for x in train_ex]
    cfg_lat.time_budget_s = max(0.0, train_budget_s - (time.perf_counter() - t0))
    rec_lat = TR.train_compressor(llm, tok, comp_lat, cfg_lat, enc_train, train_hidden, train_labels,
                                  diagnostics_path=run.path("train_diagnostics_latent.jsonl"),
                                  checkpoint_dir=run.path("ckpt_latent"), checkpoint_every=50, resume=resume,
                                  progress=lambda it, desc: tqdm(it, desc=desc), callback=dev_check("latent"),
                                  callback_every=history_every)
with run.timer("train_adapter"):
    rec_ad = TR.train_compressor(llm, tok, comp_ad, cfg_ad, enc_train,
                                 diagnostics_path=run.path("train_diagnostics_adapter.jsonl"),
                                 checkpoint_dir=run.path("ckpt_adapter"), checkpoint_every=50, resume=resume,
                                 progress=lambda it, desc: tqdm(it, desc=desc), callback=dev_check("adapter"),
                                 callback_every=history_every)
for r in rec_lat:
    r.setdefault("kind", "latent")
for r in rec_ad:
    r.setdefault("kind", "adapter")
run.save_jsonl(rec_lat + rec_ad, "train_diagnostics.jsonl")
lm_lat = [r for r in rec_lat if r["phase"] == "lm"]
lm_ad = [r for r in rec_ad if r["phase"] == "lm"]
train_summary = {"latent_lm_steps": len(lm_lat), "latent_salience_steps": len(rec_lat) - len(lm_lat),
                 "adapter_lm_steps": len(lm_ad), "hidden_cache_s": round(cache_s, 1),
                 "train_s_total": round(run.timings.get("train_latent", 0) + run.timings.get("train_adapter", 0), 1)}
print(train_summary)

# %% [markdown]
# ## Evaluation of every mode
#
# All modes run at the same batch size; the wall-clock of `latent` includes the frozen LM's pass
# over the context that feeds the encoder, and the encoder itself.

# %%
results = {}
COMPRESSED = ("token_budget", "mean_pool", "adapter", "latent")
ctx_fns = {"latent": comp_lat.context_vectors(llm), "adapter": comp_ad.context_vectors(llm)}
golds = [e.answers for e in eval_ex]
with run.timer("evaluate"):
    for mode in LT.MODES:
        r = LT.evaluate_mode(mode, llm, tok, scaffold, enc_eval, M, target_rms, batch_size=eval_batch_size,
                             max_new_tokens=max_new_tokens, context_vectors=ctx_fns.get(mode),
                             progress=lambda it, m=mode: tqdm(it, desc=m),
                             anchored=(mode == "anchor") or (anchor_all and mode in COMPRESSED))
        r["scores"] = score_predictions(r["predictions"], golds)
        results[mode] = r
        rec = {"phase": "eval", "mode": mode, "f1": r["scores"]["f1"], "em": r["scores"]["em"],
               "first_top1": float(np.mean(r["first_top1"])), "gold_nll": float(np.nanmean(r["gold_nll"])),
               "seconds": r["seconds"], "elapsed_s": round(time.perf_counter() - t_run0, 2)}
        history.append(rec)
        with open(run.path("metrics_history.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(mode, fmt(rec["f1"]), fmt(rec["em"]), f"{r['seconds']:.1f}s")

# %%
rows, metrics = [], {"data": data_summary, "training": train_summary, "modes": {}}
text_f1, text_em = results["text"]["scores"]["f1_per"], results["text"]["scores"]["em_per"]
for i, mode in enumerate(LT.MODES):
    r = results[mode]
    sc = r["scores"]
    f1m, f1lo, f1hi = bootstrap_ci(sc["f1_per"], n_boot=n_boot, seed=seed)
    emm, emlo, emhi = bootstrap_ci(sc["em_per"], n_boot=n_boot, seed=seed)
    dF1 = paired_bootstrap_ci(sc["f1_per"], text_f1, n_boot=n_boot, seed=seed)
    dEM = paired_bootstrap_ci(sc["em_per"], text_em, n_boot=n_boot, seed=seed)
    dF1a = paired_bootstrap_ci(sc["f1_per"], results["anchor"]["scores"]["f1_per"], n_boot=n_boot, seed=seed)
    first_ids = [g[0] if g else -1 for g in r["generated_ids"]]
    div = LT.diversity_stats(first_ids, r["predictions"], tok)
    nvec = np.array(r["n_prompt_vectors"])
    ctx = np.array(r["n_context_tokens"])
    m = {"em": emm, "em_ci": [emlo, emhi], "f1": f1m, "f1_ci": [f1lo, f1hi],
         "delta_f1_vs_text": dF1, "delta_em_vs_text": dEM, "delta_f1_vs_anchor": dF1a,
         "anchored": bool(r["anchored"]),
         "first_token_top1": 100 * float(np.mean(r["first_top1"])), "first_token_top5": 100 * float(np.mean(r["first_top5"])),
         "gold_nll": float(np.nanmean(r["gold_nll"])), "context_slot_mean": float(nvec.mean()),
         "compression_ratio": float(np.mean(ctx / np.maximum(nvec, 1))), "seconds": r["seconds"],
         "examples_per_s": r["examples_per_s"], **div}
    metrics["modes"][mode] = m
    rows.append([mode + (" (+anchor)" if r["anchored"] and mode != "anchor" else ""), f"{nvec.mean():.1f}", f"{m['compression_ratio']:.2f}", f"{emm:.1f} [{emlo:.1f}, {emhi:.1f}]",
                 f"{f1m:.1f} [{f1lo:.1f}, {f1hi:.1f}]", f"{dF1['diff']:+.1f} [{dF1['lo']:+.1f}, {dF1['hi']:+.1f}]",
                 f"{dF1a['diff']:+.1f} [{dF1a['lo']:+.1f}, {dF1a['hi']:+.1f}]",
                 f"{m['first_token_top1']:.1f} / {m['first_token_top5']:.1f}", f"{m['gold_nll']:.2f}",
                 f"{r['seconds']:.1f}", f"{r['examples_per_s']:.2f}", div["distinct_first_tokens"],
                 "yes" if div["collapsed"] else "no"])
agree = LT.agreement_rate(results["text"]["predictions"], results["text_embed"]["predictions"])
diffs = [(e.id, results["text"]["predictions"][i], results["text_embed"]["predictions"][i])
         for i, e in enumerate(eval_ex) if results["text"]["predictions"][i] != results["text_embed"]["predictions"][i]]
metrics["text_embed_agreement"] = {"rate": agree, "n_diff": len(diffs), "diffs": diffs[:20]}
heads = {}
for base in ("token_budget", "mean_pool", "adapter"):
    heads[base] = paired_bootstrap_ci(results["latent"]["scores"]["f1_per"], results[base]["scores"]["f1_per"],
                                      n_boot=n_boot, seed=seed)
metrics["latent_vs"] = heads
beats = {b: bool(h["lo"] > 0) for b, h in heads.items()}
metrics["latent_beats_significantly"] = beats
run.save_json(metrics, "metrics.json")
pred_rows = []
for i, e in enumerate(eval_ex):
    for mode in LT.MODES:
        r = results[mode]
        pred_rows.append({"id": e.id, "mode": mode, "question": e.question, "prediction": r["predictions"][i],
                          "golds": e.answers, "em": r["scores"]["em_per"][i], "f1": r["scores"]["f1_per"][i],
                          "first_top1": r["first_top1"][i], "first_top5": r["first_top5"][i],
                          "gold_nll": r["gold_nll"][i], "context_tokens": r["n_context_tokens"][i],
                          "context_slot": r["n_prompt_vectors"][i]})
run.save_jsonl(pred_rows, "predictions.jsonl")
table = md_table(["mode", "slot", "compr.", "EM [95% CI]", "F1 [95% CI]", "ΔF1 vs text [paired CI]",
                  "ΔF1 vs anchor [paired CI]",
                  "first tok top1/top5 %", "gold NLL", "wall s", "ex/s", "distinct 1st tok", "collapse"], rows)
print(table)

# %% [markdown]
# ## Figures: training curves and F1 by mode

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for ax, recs, title in ((axes[0], lm_lat, "latent"), (axes[1], lm_ad, "adapter")):
    if recs:
        st = [r["step"] for r in recs]
        for key in ("loss", "tf", "first", "kce", "kd", "entropy", "salience"):
            if any(abs(r.get(key, 0.0)) > 0 for r in recs):
                ax.plot(st, [r[key] for r in recs], label=key, lw=1)
        ax.legend(fontsize=7)
    ax.set_title(f"{title}: training losses per step")
    ax.set_xlabel("LM step")
sal = [r for r in rec_lat if r["phase"] == "salience"]
if sal:
    axes[2].plot([r["step"] for r in sal], [r["salience"] for r in sal], lw=1, label="salience BCE (pre-training)")
for kind in ("latent", "adapter"):
    h = [r for r in history if r.get("phase") == "train" and r["kind"] == kind]
    if h:
        axes[2].plot([r["step"] for r in h], [r["dev_nll"] for r in h], marker="o", label=f"{kind} dev NLL")
axes[2].legend(fontsize=7)
axes[2].set_title("salience pre-training / dev NLL")
fig.tight_layout()
img_loss = run.save_figure(fig, "loss_curves.png")
plt.close(fig)

fig, ax = plt.subplots(figsize=(8, 4))
f1s = [metrics["modes"][m]["f1"] for m in LT.MODES]
err = np.array([[metrics["modes"][m]["f1"] - metrics["modes"][m]["f1_ci"][0],
                 metrics["modes"][m]["f1_ci"][1] - metrics["modes"][m]["f1"]] for m in LT.MODES]).T
ax.bar(LT.MODES, f1s, yerr=err, capsize=4, color=["C0", "C0", "C0", "C1", "C2", "C2", "C3"])
ax.set_ylabel("F1 (95% bootstrap CI)")
ax.set_title(f"F1 by mode, M = {M}, n = {len(eval_ex)}")
plt.setp(ax.get_xticklabels(), rotation=20)
fig.tight_layout()
img_f1 = run.save_figure(fig, "f1_by_mode.png")
plt.close(fig)

# %% [markdown]
# ## Report

# %%
lat = metrics["modes"]["latent"]


def verdict(b):
    h = heads[b]
    word = "beats" if h["lo"] > 0 else ("is worse than" if h["hi"] < 0 else "is not distinguishable from")
    return (f"`latent` {word} `{b}`: ΔF1 = {h['diff']:+.1f} [{h['lo']:+.1f}, {h['hi']:+.1f}] "
            f"(paired bootstrap 95% CI, one-sided p(Δ<=0) = {h['p_le_0']:.3f})")


collapsed = [m for m in LT.MODES if metrics["modes"][m]["collapsed"]]
md = [f"# 04 · Latent compression on `{data}` with `{model}`", "",
      f"{len(eval_ex)} evaluation questions (one per context), M = {M}; contexts average "
      f"{data_summary['context_tokens_mean']:.1f} tokens (max {data_summary['context_tokens_max']}), so the "
      f"compression ratio of the M-vector modes is about {metrics['modes']['mean_pool']['compression_ratio']:.1f}x. "
      f"The answer starts within the first M context tokens for {100 * in_budget:.0f}% of the questions "
      f"(mean relative answer position {data_summary['answer_start_rel_mean']:.2f}).", "",
      "## Headline", "",
      f"- {verdict('token_budget')}", f"- {verdict('mean_pool')}", f"- {verdict('adapter')}",
      f"- `text` F1 {metrics['modes']['text']['f1']:.1f}, `latent` F1 {lat['f1']:.1f} "
      f"[{lat['f1_ci'][0]:.1f}, {lat['f1_ci'][1]:.1f}], `token_budget` F1 {metrics['modes']['token_budget']['f1']:.1f}, "
      f"`mean_pool` F1 {metrics['modes']['mean_pool']['f1']:.1f}.",
      f"- `text_embed` reproduces `text` on {100 * agree:.1f}% of the questions ({len(diffs)} differ)"
      + ("." if not diffs else "; differences come from floating-point differences between the input_ids "
         "and inputs_embeds paths at near-tied logits (same masks and positions), listed in metrics.json."),
      f"- Mode collapse flagged for: {', '.join(collapsed) if collapsed else 'none'}.", "",
      "## Modes", "", table, "",
      "slot: vectors or tokens in the context slot (mean); compr.: context tokens / slot; ΔF1: paired bootstrap "
      "against `text` on the same questions; first-token accuracy and gold NLL (nats per answer token, first gold "
      "answer) are teacher-forced with the same masks and positions as generation; wall s: prompt building, encoder "
      f"(and the LM pass feeding it) and greedy generation of {max_new_tokens} tokens at batch size {eval_batch_size}.", "",
      ("The compressed modes are marked (+anchor): they end with the same anchor as `anchor`, so `anchor` is their "
       "full-context reference and all of them answer in the same format. " if anchor_all else "")
      + "The trained modes (`adapter`, `latent`) can also learn the *answer format* (short spans) from the "
      "training losses; `adapter` is the control for that: the same losses and format signal with no content "
      "beyond the mean-pooled chunks.", "",
      md_image(img_f1, "F1 by mode"), "",
      "## Training", "",
      f"latent: {train_summary['latent_salience_steps']} salience pre-training steps and "
      f"{train_summary['latent_lm_steps']} LM steps (batch {train_batch_size}) in a {train_budget_s:.0f} s budget "
      f"(hidden-state cache {train_summary['hidden_cache_s']} s included); adapter: {train_summary['adapter_lm_steps']} "
      f"LM steps in {adapter_budget_s:.0f} s. Every step is in `train_diagnostics.jsonl`.", "",
      md_image(img_loss, "training losses"), ""]
last = lm_lat[-1] if lm_lat else None
if last:
    md += [md_table(["last latent step", "loss", "tf", "first", "kce", "kd", "entropy", "salience", "grad norm",
                     "first acc", "top5", "distinct", "dominant"],
                    [[last["step"], last["loss"], last["tf"], last["first"], last["kce"], last["kd"], last["entropy"],
                      last["salience"], last["grad_norm"], last["first_acc"], last["first_acc_top5"],
                      f"{last['distinct_first_preds']}/{last['batch']}", str(last["dominant_first_preds"])]]), ""]
sel = comp_lat.selected_positions(llm, [e.context for e in enc_eval[:6]])
md += ["## What the latent encoder keeps", "",
       "The context tokens whose embeddings seed the M slots (before the learned residual and adapter), "
       "for the first evaluation questions:", "",
       md_table(["question", "gold", "kept tokens (in order)"],
                [[eval_ex[i].question, eval_ex[i].answers[0],
                  " · ".join(tok.decode([int(enc_eval[i].context[j])]).strip() for j in sel[i])]
                 for i in range(len(sel))]), ""]
md += ["## Dominant predictions per mode", "",
       md_table(["mode", "distinct predictions", "dominant predictions (count)"],
                [[m, metrics["modes"][m]["distinct_predictions"],
                  "; ".join(f"{p!r}: {c}" for p, c in metrics["modes"][m]["dominant_predictions"][:3])]
                 for m in LT.MODES]), "",
       "## Examples", "",
       md_table(["question", "gold", "text", "token_budget", "mean_pool", "latent"],
                [[eval_ex[i].question, eval_ex[i].answers[0]] + [results[m]["predictions"][i] for m in
                                                                   ("text", "token_budget", "mean_pool", "latent")]
                 for i in range(min(8, len(eval_ex)))]), ""]
run.write_report("\n".join(md))
print("\n".join(md[:14]))
