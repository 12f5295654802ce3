"""transformer-spectra: the computation under the notebooks.

Subpackages, in the order a newcomer meets them:

========================  =============================================================  ========
package                   what it does                                                   notebook
========================  =============================================================  ========
``utils.weights``         find a model, stream its weights one tensor at a time, load it  all
``utils.spectral``        singular values, factored low-rank spectra, metrics, threads    all
``utils.weight_ranks``    effective ranks of every weight matrix                          01
``utils.attention``       exact per-head QK / OV kernel spectra                           02, 03
``utils.rescale``         attention geometry and the scalar-rescale analysis              03
``utils.latent``          SQuAD data and metric, prompt modes, compressors, training      04
``utils.dynamics``        spectra during training: recorder, HDF5 store, tiny GPT-2       05
``utils.running``         run folders, typed parameters, reports, the headless runner     all
``utils.sweep``           sweep files run as tasks on Dask, resumable, index of runs      all
``utils.compare``         several runs' results read side by side                         06
``utils.plots``           the shared figures (seaborn)                                    all
========================  =============================================================  ========

Small modules beside them: ``utils.files`` (atomic writes, JSONL), ``utils.device`` (the
``device`` rule), ``utils.progress`` (progress bars for Lab and for headless runs),
``utils.markdown`` (numbers and tables as markdown), ``utils.provenance`` (UTC times, package versions).

The names below are the public API; they load lazily, so ``import utils`` is cheap.
"""

from __future__ import annotations

import importlib

from .progress import quiet_libraries

_API = {
    "open_weights": "utils.weights",
    "load_model": "utils.weights",
    "get_model_dims": "utils.weights",
    "svdvals": "utils.spectral",
    "summarize": "utils.spectral",
    "effective_rank": "utils.spectral",
    "stable_rank": "utils.spectral",
    "energy_counts": "utils.spectral",
    "FactoredKernels": "utils.spectral",
    "weight_sweep": "utils.weight_ranks",
    "layer_kernels": "utils.attention",
    "sweep_attention": "utils.attention",
    "start_run": "utils.running",
    "resolve_device": "utils.device",
}

__all__ = sorted(_API)


quiet_libraries()


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'utils' has no attribute {name!r}")
