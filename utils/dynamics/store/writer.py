"""Writing one run's spectra as they are recorded (per-run layout, see the package docstring)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ...files import Transaction, publish, temp_path_next_to
from ...provenance import utc_now
from .layout import (
    ANALYSES,
    BATCH_INDEX_DOC,
    EIG,
    EIGENVALUE_STORAGE,
    FORMAT,
    FORMAT_VERSION,
    h5py_module,
    write_attrs,
    write_spectrum,
)


class RunFileWriter(Transaction):
    """Writes one run's spectra to ``path`` (per-run layout, see the module docstring).

    Data goes into a temp file next to ``path`` as it is recorded (so a long run does not hold
    its spectra in memory); :meth:`close` writes the step and loss arrays and renames the temp
    file to ``path``. :meth:`abort` (or an exception inside ``with``) deletes the temp file:
    nothing ever appears under ``path`` half-written.

    metadata: run metadata (config, seed, versions, ...), any JSON-able values.
    model_info: model description (class name, parameter count, ``description`` text, ...).
    sv_dtype / eig_dtype: storage types of singular values (float32) and eigenvalues (complex64).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        metadata: dict | None = None,
        model_info: dict | None = None,
        sv_dtype="float32",
        eig_dtype="complex64",
        overwrite: bool = True,
    ):
        h5py = h5py_module()
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True or choose another name")
        self.sv_dtype = np.dtype(sv_dtype)
        self.eig_dtype = np.dtype(eig_dtype)
        if self.eig_dtype.kind != "c":
            raise ValueError(f"eig_dtype must be complex (keeps both parts), got {self.eig_dtype}")
        self._tmp = temp_path_next_to(self.path)
        self._f = h5py.File(self._tmp, "w")
        self._f.attrs["format"] = FORMAT
        self._f.attrs["format_version"] = FORMAT_VERSION
        self._f.attrs["layout"] = "run"
        self._f.attrs["batch_index"] = BATCH_INDEX_DOC
        self._f.attrs["eigenvalue_storage"] = EIGENVALUE_STORAGE
        self._layers = self._f.create_group("layers")
        self.metadata = dict(metadata or {})
        self.metadata.setdefault("created_utc", utc_now())
        self.model_info = dict(model_info or {})
        self._shapes: dict[str, tuple[int, ...]] = {}
        self.checkpoint_steps: list[int] = []
        self.loss_steps: list[int] = []
        self.loss_values: list[float] = []
        self.closed = False

    # -- recording ---------------------------------------------------------------------------
    def log_loss(self, step: int, loss: float) -> None:
        """Append one (step, loss) pair to ``batch_numbers`` / ``loss_values``."""
        self._check_open()
        self.loss_steps.append(int(step))
        self.loss_values.append(float(loss))

    def write_checkpoint(
        self, step: int, spectra: dict[str, dict[str, np.ndarray]], shapes: dict[str, Sequence[int]]
    ) -> int:
        """Store one checkpoint: ``spectra[name][analysis]`` arrays, ``shapes[name]`` weight shapes.

        The first checkpoint fixes the set of layers and their shapes; later ones must match.
        Returns the checkpoint index ``i`` (the ``batch_<i>`` name).
        """
        self._check_open()
        i = len(self.checkpoint_steps)
        if i == 0:
            for name in spectra:
                if "/" in name:
                    raise ValueError(f"parameter name {name!r} contains '/', which HDF5 reads as a group path")
                g = self._layers.create_group(name)
                shp = tuple(int(s) for s in shapes[name])
                g.attrs["shape"] = np.asarray(shp, dtype=np.int64)
                self._shapes[name] = shp
        else:
            if set(spectra) != set(self._shapes):
                missing = sorted(set(self._shapes) - set(spectra))
                extra = sorted(set(spectra) - set(self._shapes))
                raise ValueError(
                    f"checkpoint {i} (step {step}) has other weights than checkpoint 0: "
                    f"missing {missing[:5]}, new {extra[:5]}"
                )
            for name in spectra:
                if tuple(int(s) for s in shapes[name]) != self._shapes[name]:
                    raise ValueError(
                        f"weight {name} changed shape from {self._shapes[name]} to {tuple(shapes[name])} at step {step}"
                    )
        for name, by_analysis in spectra.items():
            g = self._layers[name]
            for analysis, values in by_analysis.items():
                if analysis not in ANALYSES:
                    raise ValueError(f"unknown analysis {analysis!r}; expected one of {ANALYSES}")
                sub = g.require_group(analysis)
                dtype = self.eig_dtype if analysis == EIG else self.sv_dtype
                write_spectrum(sub, f"batch_{i}", values, dtype)
        self.checkpoint_steps.append(int(step))
        self._f.flush()
        return i

    # -- finishing ---------------------------------------------------------------------------
    def close(self) -> Path:
        """Write steps, losses, metadata and model groups; move the file to its final name."""
        if self.closed:
            return self.path
        f = self._f
        f.create_dataset("batch_numbers", data=np.asarray(self.loss_steps, dtype=np.int64))
        f.create_dataset("loss_values", data=np.asarray(self.loss_values, dtype=np.float64))
        f.create_dataset("batches", data=np.asarray(self.checkpoint_steps, dtype=np.int64))
        write_attrs(f.create_group("metadata"), self.metadata)
        mg = f.create_group("model")
        write_attrs(mg, self.model_info)
        names = list(self._shapes)
        mg.create_dataset("parameter_names", data=np.asarray(names, dtype=object), dtype=h5py_module().string_dtype())
        maxd = max((len(s) for s in self._shapes.values()), default=2)
        shp = np.zeros((len(names), maxd), dtype=np.int64)
        for j, n in enumerate(names):
            shp[j, : len(self._shapes[n])] = self._shapes[n]
        mg.create_dataset("parameter_shapes", data=shp)
        f.close()
        publish(self._tmp, self.path)
        self.closed = True
        return self.path

    def abort(self) -> None:
        """Drop everything recorded; no file appears under ``path``."""
        if self.closed:
            return
        with contextlib.suppress(Exception):
            self._f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)
        self.closed = True

    def _check_open(self):
        if self.closed:
            raise RuntimeError(f"the writer for {self.path} is already closed")
