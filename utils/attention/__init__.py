"""Notebook 02: exact per-head QK / OV spectra (and the head analysis of notebook 03).

* :mod:`.forms`: the two kernel conventions (``raw``, ``folded``) and each family's attention form
  (:func:`attention_form`: scale, norms, soft-cap; :func:`folded_shifts`, :func:`token_factors`).
* :mod:`.heads`: :func:`layer_kernels` (one layer, a :class:`~utils.spectral.FactoredKernels`),
  :func:`sweep_attention` (every layer, streamed), per-head summaries.
* :mod:`.reference`: the dense d x d reference computation and the dense-vs-exact comparison.
* :mod:`.circuits`: Q-, K-, V-composition scores between heads, QK directionality.
"""

from .circuits import (
    COMPOSITIONS,
    CompositionScores,
    composition_scores,
    directionality,
    directionality_summary,
    directionality_table,
    head_null_table,
    layer_qk,
    top_pairs,
    with_null,
)
from .forms import KERNELS, AttentionForm, attention_form, folded_shifts, token_factors
from .heads import (
    CIRCUITS,
    TITLES,
    AttentionSweep,
    circuits_of,
    head_details,
    head_eigen_report,
    head_table,
    kv_head_index,
    layer_kernels,
    ov_kernels,
    qk_kernels,
    quartile_labels,
    summarize_heads,
    sweep_attention,
    sweep_tables,
)
from .reference import dense_kernel_spectra, dense_vs_exact, match_eigenvalues

__all__ = [
    "KERNELS",
    "AttentionForm",
    "attention_form",
    "circuits_of",
    "folded_shifts",
    "token_factors",
    "COMPOSITIONS",
    "CompositionScores",
    "composition_scores",
    "directionality",
    "directionality_summary",
    "directionality_table",
    "head_null_table",
    "layer_qk",
    "top_pairs",
    "with_null",
    "CIRCUITS",
    "TITLES",
    "AttentionSweep",
    "dense_kernel_spectra",
    "dense_vs_exact",
    "head_details",
    "head_eigen_report",
    "head_table",
    "kv_head_index",
    "layer_kernels",
    "match_eigenvalues",
    "ov_kernels",
    "qk_kernels",
    "quartile_labels",
    "summarize_heads",
    "sweep_attention",
    "sweep_tables",
]
