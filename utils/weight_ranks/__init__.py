"""Notebook 01: effective ranks of every weight matrix.

* :mod:`.sweep`: :func:`weight_sweep`, the streamed, resumable sweep over every 2-D weight.
* :mod:`.tables`: statistics by weight type, early / middle / late phases, largest transitions,
  variance explained.
"""

from .sweep import PER_LAYER_ORDER, PRECISIONS, SweepCache, weight_sweep
from .tables import (
    MODEL_LEVEL_COLUMNS,
    PhaseAnalysis,
    extremes,
    largest_transitions,
    layer_table,
    milestone_table,
    per_layer,
    phase_analysis,
    phase_bounds,
    stats_by_weight_type,
    trend_label,
    variance_explained,
    weight_types,
    with_full_rank,
)

__all__ = [
    "MODEL_LEVEL_COLUMNS",
    "extremes",
    "layer_table",
    "with_full_rank",
    "PER_LAYER_ORDER",
    "PRECISIONS",
    "SweepCache",
    "PhaseAnalysis",
    "largest_transitions",
    "milestone_table",
    "per_layer",
    "phase_analysis",
    "phase_bounds",
    "stats_by_weight_type",
    "trend_label",
    "variance_explained",
    "weight_sweep",
    "weight_types",
]
