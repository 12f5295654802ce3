"""Reading a spectral store file: a merged file (written here or elsewhere) or a per-run file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from ...spectral import complex_mask, effective_rank
from .layout import DATASET_RE, EIG, RUN_GROUP_RE, SV, as_str, h5py_module, natural_key, read_attrs


class SpectralFile:
    """Read a spectral store file: a merged file in the seed's layout (written here or anywhere
    else) or a single per-run file (seen as run 1).

    Attributes: ``runs`` (sorted run ids), ``layers`` (parameter names, model order when known,
    else natural sort), ``notes`` (how ambiguous parts of a foreign file were interpreted).
    """

    def __init__(self, path: str | os.PathLike):
        h5py = h5py_module()
        self.path = Path(path)
        try:
            self.file = h5py.File(self.path, "r")
        except (OSError, ValueError) as e:
            raise OSError(
                f"cannot open {self.path} as HDF5 ({e}); the file is missing, truncated or corrupted"
            ) from None
        f = self.file
        self.notes: list[str] = []
        if "layers" not in f:
            self.close()
            raise ValueError(f"{self.path} has no 'layers' group: not a spectral store file")
        # index datasets: (layer, analysis) -> run -> {i: dataset name}
        self.index: dict[tuple[str, str], dict[int, dict[int, str]]] = {}
        runs: set[int] = set()
        self.merged = False
        for name, g in f["layers"].items():
            if not isinstance(g, h5py.Group):
                continue
            for analysis, sub in g.items():
                if not isinstance(sub, h5py.Group):
                    continue
                per_run: dict[int, dict[int, str]] = {}
                for key in sub.keys():
                    m = DATASET_RE.match(key)
                    if not m:
                        continue
                    r = int(m.group(2)) if m.group(2) else 1
                    self.merged |= m.group(2) is not None
                    per_run.setdefault(r, {})[int(m.group(1))] = key
                    runs.add(r)
                self.index[(name, analysis)] = per_run
        for k in f.keys():
            m = RUN_GROUP_RE.match(k)
            if m:
                runs.add(int(m.group(2)))
                self.merged = True
        self.runs = sorted(runs) or [1]
        self.layers = self._layer_order([n for n in f["layers"].keys()])
        self._split_top_level()

    # -- structure -----------------------------------------------------------------------------
    def _layer_order(self, names: list[str]) -> list[str]:
        grp = f"model_run{self.runs[0]}" if self.merged else "model"
        if grp in self.file and "parameter_names" in self.file[grp]:
            order = [as_str(s) for s in self.file[grp]["parameter_names"][()]]
            pos = {n: j for j, n in enumerate(order)}
            return sorted(names, key=lambda n: (pos.get(n, len(pos)), natural_key(n)))
        return sorted(names, key=natural_key)

    def analyses(self, layer: str) -> list[str]:
        """The analyses stored for ``layer`` (``singular_values`` first)."""
        return sorted((a for (n, a) in self.index if n == layer), key=lambda a: (a != SV, a))

    def shape(self, layer: str) -> tuple[int, ...] | None:
        g = self.file["layers"][layer]
        return tuple(int(s) for s in g.attrs["shape"]) if "shape" in g.attrs else None

    def checkpoint_indices(self, run: int, layer: str | None = None, analysis: str = SV) -> list[int]:
        """The checkpoint indices ``i`` present for ``run`` (of ``layer``, default the first layer)."""
        layer = layer or self.layers[0]
        return sorted(self.index.get((layer, analysis), {}).get(run, {}))

    def n_checkpoints(self, run: int) -> int:
        return len(self._ckpt_steps.get(run, []))

    def checkpoint_steps(self, run: int) -> np.ndarray:
        """Training step of each stored checkpoint of ``run``, in the order of
        :meth:`checkpoint_indices` (int64)."""
        return np.asarray(self._ckpt_steps.get(run, []), dtype=np.int64)

    def step_of(self, run: int, i: int) -> int:
        """Training step of checkpoint ``batch_<i>`` of ``run`` (``i`` when the file does not say)."""
        return self._step_of.get(run, {}).get(i, i)

    @property
    def loss_runs(self) -> list[int]:
        """Runs with a loss log (``[0]`` when a foreign file's log cannot be split by run)."""
        return sorted(self._loss)

    def loss(self, run: int) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, losses)`` logged by ``run`` (empty when the file does not say)."""
        return self._loss.get(run, (np.zeros(0, np.int64), np.zeros(0)))

    def metadata(self, run: int) -> dict:
        grp = f"metadata_run{run}" if self.merged else "metadata"
        return read_attrs(self.file[grp]) if grp in self.file else {}

    def model_info(self, run: int) -> dict:
        grp = f"model_run{run}" if self.merged else "model"
        return read_attrs(self.file[grp]) if grp in self.file else {}

    def merge_info(self) -> dict:
        return read_attrs(self.file["merge_metadata"]) if "merge_metadata" in self.file else {}

    def spectrum(self, layer: str, analysis: str, run: int, i: int) -> np.ndarray:
        """One stored spectrum: float64 singular values, or complex128 eigenvalues."""
        key = self.index[(layer, analysis)][run][i]
        a = self.file["layers"][layer][analysis][key][()]
        if analysis == EIG:
            return as_complex(a)
        return np.asarray(a, dtype=np.float64)

    def dataset_path(self, layer, analysis, run, i) -> str:
        return f"layers/{layer}/{analysis}/{self.index[(layer, analysis)][run][i]}"

    # -- top-level arrays split by run --------------------------------------------------------------
    def _split_top_level(self) -> None:
        f = self.file
        mm = f["merge_metadata"] if "merge_metadata" in f else None
        n_runs = len(self.runs)
        ckpt_counts = {r: len(self.checkpoint_indices(r)) for r in self.runs}
        counts_c = counts_l = None
        if mm is not None and "checkpoint_counts" in mm and len(mm["checkpoint_counts"]) == n_runs:
            counts_c = [int(c) for c in mm["checkpoint_counts"][()]]
        if mm is not None and "loss_counts" in mm and len(mm["loss_counts"]) == n_runs:
            counts_l = [int(c) for c in mm["loss_counts"][()]]

        # checkpoint steps
        batches = np.asarray(f["batches"][()]).ravel() if "batches" in f else None
        self._ckpt_steps: dict[int, list[int]] = {}
        self._step_of: dict[int, dict[int, int]] = {}
        if counts_c is None:
            counts_c = [ckpt_counts[r] for r in self.runs]
        use_batches = batches is not None and batches.size == sum(counts_c) and np.issubdtype(batches.dtype, np.number)
        if batches is not None and not use_batches:
            self.notes.append(
                f"'batches' has {batches.size} entries but the layers hold "
                f"{sum(counts_c)} checkpoints; using checkpoint indices as steps"
            )
        off = 0
        for r, c in zip(self.runs, counts_c):
            idx = self.checkpoint_indices(r)
            if use_batches and len(idx) == c:
                # the j-th stored checkpoint (sorted by i) has step batches[offset + j]
                steps = [int(s) for s in batches[off : off + c]]
            else:
                steps = [int(i) for i in idx]
            self._ckpt_steps[r] = steps
            self._step_of[r] = dict(zip(idx, steps))
            off += c

        # loss log
        self._loss: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if "loss_values" not in f:
            return
        lv = np.asarray(f["loss_values"][()], dtype=np.float64).ravel()
        bn = (
            np.asarray(f["batch_numbers"][()]).ravel().astype(np.int64)
            if "batch_numbers" in f
            else np.arange(lv.size, dtype=np.int64)
        )
        if bn.size != lv.size:
            self.notes.append(
                f"batch_numbers ({bn.size}) and loss_values ({lv.size}) differ in length; using entry indices as steps"
            )
            bn = np.arange(lv.size, dtype=np.int64)
        bounds = None
        if counts_l is not None and sum(counts_l) == lv.size:
            bounds = np.cumsum([0] + counts_l)
        elif n_runs == 1:
            bounds = np.array([0, lv.size])
        else:
            starts = [0] + [j for j in range(1, bn.size) if bn[j] < bn[j - 1]]
            if len(starts) == n_runs:
                bounds = np.array(starts + [bn.size])
                self.notes.append("loss entries split into runs where the step number drops")
            elif lv.size % n_runs == 0:
                bounds = np.arange(n_runs + 1) * (lv.size // n_runs)
                self.notes.append(f"loss entries split evenly: {lv.size // n_runs} per run")
        if bounds is None:
            self.notes.append("cannot tell which loss entry belongs to which run; all are given as run 0")
            self._loss[0] = (bn, lv)
            return
        for r, a, b in zip(self.runs, bounds[:-1], bounds[1:]):
            self._loss[r] = (bn[a:b], lv[a:b])

    # -- tables ----------------------------------------------------------------------------------
    def spectral_frame(self, top_k: int = 5):
        """One row per (run, checkpoint, layer): step, shape, effective rank, top-k singular values,
        and for square weights the spectral radius max|lambda| and the count of complex eigenvalues.

        Columns: run, checkpoint, step, layer, n_sv, eff_rank, sigma_1..sigma_k, eig_radius,
        n_complex_eig (NaN where absent).
        """
        import pandas as pd

        rows = []
        for layer in self.layers:
            has_eig = (layer, EIG) in self.index
            for r in self.runs:
                step_of = self._step_of.get(r, {})
                for i in self.checkpoint_indices(r, layer):
                    S = np.sort(self.spectrum(layer, SV, r, i))[::-1]
                    row = {
                        "run": r,
                        "checkpoint": i,
                        "step": step_of.get(i, i),
                        "layer": layer,
                        "n_sv": S.size,
                        "eff_rank": float(effective_rank(S)),
                    }
                    for k in range(top_k):
                        row[f"sigma_{k + 1}"] = float(S[k]) if k < S.size else np.nan
                    row["eig_radius"] = row["n_complex_eig"] = np.nan
                    if has_eig and i in self.index[(layer, EIG)].get(r, {}):
                        ev = self.spectrum(layer, EIG, r, i)
                        row["eig_radius"] = float(np.abs(ev).max()) if ev.size else np.nan
                        row["n_complex_eig"] = int(complex_mask(ev).sum()) if ev.size else 0
                    rows.append(row)
        return pd.DataFrame(rows)

    def first_last_checkpoints(self) -> dict[int, tuple[int, int]]:
        """run -> (index of its first recorded checkpoint, index of its last)."""
        return {r: (idx[0], idx[-1]) for r in self.runs if (idx := self.checkpoint_indices(r))}

    def getter(self, analysis: str):
        """``get(layer, run, i)``: the stored spectrum, or None where that checkpoint lacks it."""

        def get(layer, run, i):
            return (
                self.spectrum(layer, analysis, run, i) if i in self.checkpoint_indices(run, layer, analysis) else None
            )

        return get

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def as_complex(a: np.ndarray) -> np.ndarray:
    """Eigenvalues stored as complex, as compound {r, i} / {real, imag}, as (n, 2) or as reals."""
    a = np.asarray(a)
    if a.dtype.kind == "c":
        return a.astype(np.complex128)
    if a.dtype.names:
        names = [n.lower() for n in a.dtype.names]
        for re_n, im_n in (("r", "i"), ("real", "imag"), ("re", "im")):
            if re_n in names and im_n in names:
                return a[a.dtype.names[names.index(re_n)]].astype(np.float64) + 1j * a[
                    a.dtype.names[names.index(im_n)]
                ].astype(np.float64)
        raise ValueError(f"cannot read eigenvalues from compound type with fields {a.dtype.names}")
    if a.ndim == 2 and a.shape[1] == 2:
        return a[:, 0].astype(np.float64) + 1j * a[:, 1].astype(np.float64)
    return a.astype(np.complex128)
