"""Notebook 07: model-vs-model diffs, matched weight by weight and streamed.

* :mod:`.match`: pair the matrices of two models, refusing mismatched architectures (the message names the
  first difference) and incomplete checkpoints (:func:`missing_matrices`).
* :mod:`.weights`: per-weight diff (relative change, spectrum / effective / stable rank of the
  difference, principal angles between top-k singular subspaces), the layers that changed most.
* :mod:`.heads`: per-head change of the QK / OV spectra and symmetry.
"""

from ..weights import IncompleteCheckpoint
from .heads import head_diff
from .match import ArchitectureMismatch, match_models, missing_matrices
from .weights import ARRAY_COLUMNS, changed_layers, diff_sweep, principal_angles, weight_diff

__all__ = [
    "ARRAY_COLUMNS",
    "ArchitectureMismatch",
    "IncompleteCheckpoint",
    "changed_layers",
    "diff_sweep",
    "head_diff",
    "match_models",
    "missing_matrices",
    "principal_angles",
    "weight_diff",
]
