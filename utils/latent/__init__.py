"""Notebook 04: can a frozen causal LM answer from M vectors instead of its context?

* :mod:`.squad`: SQuAD v1.1 / v2.0 files, a hub dataset, a seeded synthetic set.
* :mod:`.metric`: the official SQuAD EM / F1 and (paired) bootstrap intervals.
* :mod:`.prompts`: the shared chat scaffold, the modes' context slots, batching.
* :mod:`.evaluate`: greedy decoding with a KV cache, teacher-forced answer logits, per-mode evaluation.
* :mod:`.compressor`: the trained compressors and their checkpoints.
* :mod:`.train`: salience labels, losses and the training loop.
* :mod:`.experiment`: the data split, training features, the dev check and the summary tables.
"""
