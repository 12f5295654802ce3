"""Notebook 04: can a frozen causal LM answer from M vectors instead of its context?

* :mod:`.squad`: SQuAD v1.1 / v2.0 files (offsets and encoding checked), a hub dataset, a seeded synthetic set.
* :mod:`.split`: which data (``auto``), the article-level split, held-out evaluation for a saved compressor.
* :mod:`.metric`: the official SQuAD EM / F1, question and context (cluster) bootstrap intervals.
* :mod:`.prompts`: the shared chat scaffold, embeddings, batching helpers.
* :mod:`.cache`: the reader's key/values for a shared prefix, layered prefill, cached hidden states and
  teacher top-k logits (what makes a training step cheap).
* :mod:`.select`: the hard-token baselines (lead, random, oracle window, top-M, BM25, overlap window).
* :mod:`.evaluate`: greedy decoding grouped by context slot, answer decoding.
* :mod:`.compressor`: the trained compressors (latent, pool_adapter, classifier) and their checkpoints.
* :mod:`.train`: token labels, recall pretraining tasks, losses and the resumable training loop.
* :mod:`.experiment`: the modes, evaluation jobs and result store, per-seed training.
* :mod:`.report`: the report's tables, acceptance checks and verdict.
"""
