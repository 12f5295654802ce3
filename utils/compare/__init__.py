"""Comparing runs (notebook 06): which runs, and their results read into one table per question.

* :mod:`.runs`: :func:`find_runs` (every run of a sweep, or a list of run folders), labelled by
  :func:`model_labels`.
* :mod:`.tables`: readers of each notebook's result files across runs (01 weight ranks, 02 attention
  heads, 03 rescale verdicts, 04 latent F1, 05 spectral dynamics) and their summary tables.

The figures are in :mod:`utils.plots.compare`.
"""

from ..running.labels import model_labels
from .runs import find_runs, runs_table
from .tables import (
    attention_heads,
    dynamics,
    kernel_summary,
    latent_points,
    rank_fraction_table,
    rescale_table,
    rescale_twin_sentence,
    weight_ranks,
)

__all__ = [
    "attention_heads",
    "dynamics",
    "find_runs",
    "kernel_summary",
    "latent_points",
    "model_labels",
    "rank_fraction_table",
    "rescale_table",
    "rescale_twin_sentence",
    "runs_table",
    "weight_ranks",
]
