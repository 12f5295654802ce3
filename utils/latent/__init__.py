"""Notebook 04: can a frozen causal LM answer from M vectors instead of its context?

* :mod:`.config`: :class:`ExperimentConfig`, the one typed configuration built from the notebook's parameters.
* :mod:`.experiment`: :class:`Experiment`, the notebook's phases (data, training, evaluation, the per-context
  ceiling, the amortisation run, results), each one resumable call under one time budget.
* :mod:`.reader`: :class:`Reader`, the frozen reader with its scaffold and cached prefix.
* :mod:`.squad`: SQuAD v1.1 / v2.0 files (offsets and encoding checked), a hub dataset, a seeded synthetic set.
* :mod:`.split`: which data (``auto`` is the sample shipped in ``utils/data``), the article-level split,
  held-out evaluation for a saved compressor.
* :mod:`.metric`: the official SQuAD EM / F1, question and context (cluster) bootstrap intervals.
* :mod:`.prompts`: the shared chat scaffold, embeddings, batching helpers.
* :mod:`.cache`: the reader's key/values for a shared prefix, layered prefill, cached hidden states and
  teacher top-k logits (what makes a training step cheap).
* :mod:`.select`: the hard-token baselines (lead, random, oracle window, top-M, BM25, overlap window).
* :mod:`.evaluate`: greedy decoding grouped by context slot, answer decoding.
* :mod:`.modes`: what fills the context slot in each mode, the evaluation jobs, the result store, the
  official prediction files.
* :mod:`.compressor`: the trained compressors (latent, pool_adapter, classifier) and their checkpoints.
* :mod:`.train`: token labels, recall pretraining tasks, losses and the (distributed) training loop.
* :mod:`.trainer`: per-seed training with checkpoints and resume, the shared training features.
* :mod:`.distributed`: one process's place in a DDP run (:class:`.distributed.Dist`).
* :mod:`.ddp`: the command that trains under DDP (``torchrun -m utils.latent.ddp``).
* :mod:`.optimise`: the question-agnostic ceiling, M vectors optimised per context.
* :mod:`.amortise`: one method toward the ceiling (regression onto optimised vectors), judged on dev.
* :mod:`.report`: the report's tables, acceptance checks and verdict.
"""

from .config import ExperimentConfig
from .experiment import Experiment
from .reader import Reader

__all__ = ["Experiment", "ExperimentConfig", "Reader"]
