"""HDF5 store of weight spectra recorded during training: per-run files, merge, verify, read.

Modules: :mod:`.layout` (names, attribute codec), :mod:`.writer` (:class:`RunFileWriter`),
:mod:`.merge` (:func:`merge_runs`), :mod:`.reader` (:class:`SpectralFile`), :mod:`.verify`
(:func:`verify_spectral_file`), ``python -m utils.dynamics.store`` (merge / verify from the shell).

Merged layout (the seed's, ``000_dd5f2d955c5121dc``), for runs ``r = 1..R`` in merge order::

    batch_numbers          (sum_r n_loss_r,)  int64    steps at which a training loss was logged,
                                                       run 1's entries, then run 2's, ...
    loss_values            (sum_r n_loss_r,)  float64  the loss logged at that step (nats/token)
    batches                (sum_r n_ckpt_r,)  int64    the step of every recorded checkpoint: entry
                                                       offset_r + i is the step of ``batch_<i>_run<r>``
    layers/<parameter name>/singular_values/batch_<i>_run<r>   (min(m, n),) float32, descending
    layers/<parameter name>/eigenvalues/batch_<i>_run<r>       (n,) complex64, square weights only,
                                                       sorted by descending magnitude
    merge_metadata/        attrs: n_runs, sources (JSON list of file names), source_sizes (bytes),
                           created_utc, format; datasets: loss_counts (R,), checkpoint_counts (R,)
    metadata_run<r>/       run r's metadata (attrs: seed, config, versions, ... ; JSON for nested)
    model_run<r>/          run r's model description (attrs; datasets parameter_names, parameter_shapes)

``batch_<i>`` indexes the **i-th recorded checkpoint of that run** (0-based, in recording order),
not a step number; the step is ``batches[offset_r + i]``, with ``offset_r`` the sum of the earlier
runs' ``checkpoint_counts``. Each ``layers/<name>`` group carries the weight's ``shape`` attribute.

Eigenvalues are complex in general. They are stored as HDF5 compound ``{r, i}`` (h5py's native
complex type), so both parts are kept and h5py reads them back as numpy ``complex64``; a
reader in another language sees two float fields ``r`` and ``i``. The notebook plots magnitudes.
:class:`SpectralFile` also accepts eigenvalues stored as real arrays or as ``(n, 2)`` real/imag.

A per-run file (what :class:`RunFileWriter` and ``utils.recorder.SpectralRecorder`` write) has the
same layout without the run suffix: ``layers/<name>/<analysis>/batch_<i>``, top-level
``batch_numbers``, ``loss_values``, ``batches``, and groups ``metadata/`` and ``model/``.

Every spectrum dataset is written with the Fletcher-32 checksum filter, so corrupted bytes in
the data are reported by :func:`verify_spectral_file` rather than read back silently.
All final files appear atomically: written under a temp name in the same folder, then
``os.replace``; an interrupted write or merge leaves nothing under the final name.
"""

from .layout import EIG, SV, read_attrs, write_attrs
from .merge import MergeMismatchError, merge_runs
from .reader import SpectralFile
from .verify import VerifyReport, verify_spectral_file
from .writer import RunFileWriter

__all__ = [
    "SV",
    "EIG",
    "RunFileWriter",
    "merge_runs",
    "MergeMismatchError",
    "SpectralFile",
    "verify_spectral_file",
    "VerifyReport",
    "write_attrs",
    "read_attrs",
]
