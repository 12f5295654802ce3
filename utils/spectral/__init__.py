"""The spectral core: singular values of dense and factored low-rank matrices, and their metrics.

* :mod:`.core`: :func:`svdvals` (float64 Gram on the CPU, batched SVD on a GPU), :func:`gram_svdvals`.
* :mod:`.metrics`: effective rank, stable rank, energy counts, the complex-eigenvalue rule, summaries.
* :mod:`.factored`: :class:`FactoredKernels`, exact spectra of ``X Y`` products without forming them.
* :mod:`.threads`: the one thread limiter every parallel sweep uses.
* :mod:`.rmt`: Marchenko-Pastur bulk and spikes, power-law tail fits (random-matrix diagnostics).
* :mod:`.null`: permuted null models (:class:`~utils.spectral.null.PermutedWeights`).
"""

from . import null, rmt  # noqa: E402  (after the primitives they build on)
from .core import check_finite, gram_svd, gram_svdvals, svdvals
from .factored import FactoredKernels, KernelSpectra
from .metrics import (
    COMPLEX_RTOL,
    ENERGY_LEVELS,
    SpectrumSummary,
    complex_mask,
    effective_rank,
    energy_count,
    energy_counts,
    energy_share,
    stable_rank,
    summarize,
)
from .threads import limited_threads

__all__ = [
    "COMPLEX_RTOL",
    "ENERGY_LEVELS",
    "FactoredKernels",
    "KernelSpectra",
    "SpectrumSummary",
    "check_finite",
    "complex_mask",
    "effective_rank",
    "energy_count",
    "energy_counts",
    "energy_share",
    "gram_svd",
    "gram_svdvals",
    "limited_threads",
    "null",
    "rmt",
    "stable_rank",
    "summarize",
    "svdvals",
]
