"""Notebook 01: effective ranks of every weight matrix.

* :mod:`.sweep`: :func:`weight_sweep`, the streamed, resumable sweep over every 2-D weight.
* :mod:`.tables`: statistics by weight type, early / middle / late phases, largest transitions,
  variance explained.
* :mod:`.rmt`: random-matrix diagnostics and the permuted null of every matrix, as a ``per_matrix``
  hook of the same sweep (:class:`RMTColumns`, :func:`rmt_sweep`) and their tables.
"""

from .rmt import RMTColumns, layer_quality, null_summary, quality_by_type, quality_table, rmt_sweep, with_null_ratios
from .sweep import PER_LAYER_ORDER, PRECISIONS, SweepCache, weight_sweep
from .tables import (
    MODEL_LEVEL_COLUMNS,
    PhaseAnalysis,
    down_projection,
    expert_spread,
    experts_averaged,
    extremes,
    largest_transitions,
    layer_table,
    milestone_table,
    per_layer,
    phase_analysis,
    phase_bounds,
    quantisation_summary,
    stats_by_weight_type,
    trend_label,
    variance_explained,
    weight_types,
    with_full_rank,
)

__all__ = [
    "RMTColumns",
    "layer_quality",
    "null_summary",
    "quality_by_type",
    "quality_table",
    "rmt_sweep",
    "with_null_ratios",
    "MODEL_LEVEL_COLUMNS",
    "down_projection",
    "experts_averaged",
    "expert_spread",
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
    "quantisation_summary",
    "stats_by_weight_type",
    "trend_label",
    "variance_explained",
    "weight_sweep",
    "weight_types",
]
