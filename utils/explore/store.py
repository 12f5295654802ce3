"""What a run keeps for its explorer, and reading a run folder back.

The tables a run writes (CSV / JSON) hold one number per matrix or head; an explorer also draws whole
spectra. The notebooks therefore save them once, as one ``.npz`` file beside the tables:

* 01: ``spectra.npz``: ``S<i>`` and ``N<i>`` (the singular values of row ``i`` of ``weight_ranks.csv`` and of
  its permuted null);
* 02: ``head_spectra.npz``: per circuit ``sv_<c>`` (L, h, r), ``eig_<c>`` and ``null_sv_<c>``, and ``layers``;
* 03: ``rescale_fits.npz``: ``sigma`` (L, H, r) and, per anchor choice, ``T_<anchor>``, ``resid_<anchor>``
  (L, H) and ``layer_<anchor>``;
* 07: ``diff_spectra.npz``: ``a<i>``, ``b<i>``, ``d<i>`` (top singular values of W_A, W_B, ΔW) and
  ``angles<i>`` (principal angles, degrees) of row ``i`` of ``weight_diff.csv``.

:class:`RunResults` reads a finished run folder (its ``run.json``, tables and arrays), lazily.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import atomic_path

ARRAYS = {
    "01_weight_ranks": "spectra.npz",
    "02_attention_kernels": "head_spectra.npz",
    "03_sa_rescale": "rescale_fits.npz",
    "07_model_diff": "diff_spectra.npz",
}


def save_arrays(run, name: str, **arrays) -> Path:
    """Write ``arrays`` as one compressed ``.npz`` into the run's folder (atomically) and record the file."""
    with atomic_path(run.path(name)) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})
    return run.register(name)


def save_weight_spectra(run, df: pd.DataFrame, spectra: dict, null_spectra: dict | None = None) -> Path:
    arrays = {f"S{i}": spectra[n] for i, n in enumerate(df["name"])}
    for i, n in enumerate(df["name"]):
        if null_spectra and n in null_spectra:
            arrays[f"N{i}"] = null_spectra[n]
    return save_arrays(run, ARRAYS["01_weight_ranks"], **arrays)


def save_head_spectra(run, sw, null=None) -> Path:
    arrays = {"layers": np.asarray(sw.layers)}
    for c in sw.sv:
        arrays[f"sv_{c}"] = sw.sv[c]
        if c in sw.eig:
            arrays[f"eig_{c}"] = sw.eig[c]
        if null is not None and c in null.sv:
            arrays[f"null_sv_{c}"] = null.sv[c]
    return save_arrays(run, ARRAYS["02_attention_kernels"], **arrays)


def save_rescale_fits(run, sigma: np.ndarray, results: dict) -> Path:
    """``results``: anchor choice -> :class:`~utils.rescale.RescaleResult` (its fitted scales and residuals)."""
    arrays = {"sigma": sigma}
    for a, r in results.items():
        arrays.update({f"T_{a}": r.T, f"resid_{a}": r.resid, f"layer_{a}": np.asarray(r.anchor_layer)})
    return save_arrays(run, ARRAYS["03_sa_rescale"], **arrays)


def save_diff_spectra(run, df: pd.DataFrame) -> Path:
    arrays = {}
    for i, row in enumerate(df.itertuples()):
        arrays.update({f"a{i}": row.sv_a, f"b{i}": row.sv_b, f"d{i}": row.sv_diff, f"angles{i}": row.angles})
    return save_arrays(run, ARRAYS["07_model_diff"], **arrays)


class ExplorerDataMissing(FileNotFoundError):
    """A run folder without what an explorer draws (a run made before explorers, or an unfinished one)."""


class RunResults:
    """A finished run folder read back (module docstring): ``notebook``, ``params``, ``table(name)``,
    ``json(name)``, ``arrays``."""

    def __init__(self, folder):
        self.dir = Path(folder).expanduser()
        rec = self.dir / "run.json"
        if not rec.is_file():
            raise ExplorerDataMissing(f"{self.dir} is not a run folder (no run.json): pass output/<notebook>/<run>")
        self.record = json.loads(rec.read_text())
        self.notebook = str(self.record.get("notebook", self.dir.parent.name))
        self.params = self.record.get("params", {})
        self.name = f"{self.notebook}/{self.dir.name}"

    def table(self, name: str) -> pd.DataFrame:
        return pd.read_csv(self._need(name))

    def json(self, name: str):
        return json.loads(self._need(name).read_text())

    def has(self, name: str) -> bool:
        return (self.dir / name).is_file()

    @cached_property
    def arrays(self):
        return np.load(self._need(ARRAYS[self.notebook]))

    def _need(self, name: str) -> Path:
        p = self.dir / name
        if not p.is_file():
            raise ExplorerDataMissing(
                f"{self.name} has no {name}: it was made before this explorer existed or did not finish; "
                "run the notebook again to explore it"
            )
        return p
