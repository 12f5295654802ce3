"""Notebook 03: is every layer a temperature-rescaled copy of one attention operator? (seed 003)

* :mod:`.geometry`: the per-head attention geometry of a model (QK singular values, attention
  entropy) as the seed's JSON schema, with validation.
* :mod:`.analysis`: the seed's experiments, vectorised, plus the rank-k follow-up and bootstrap.
"""

from .analysis import ANCHORS, RescaleResult, analyze, rank_k_correction, spectral_shapes
from .geometry import (
    GeometryError,
    collect_entropy,
    collect_spectra,
    extract_geometry,
    load_geometry,
    make_geometry,
    save_geometry,
    validate_geometry,
)

__all__ = [
    "ANCHORS",
    "GeometryError",
    "RescaleResult",
    "analyze",
    "collect_entropy",
    "collect_spectra",
    "extract_geometry",
    "load_geometry",
    "make_geometry",
    "rank_k_correction",
    "save_geometry",
    "spectral_shapes",
    "validate_geometry",
]
