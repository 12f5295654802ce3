"""Verifying a spectral store file: every run and dataset present, readable and finite."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from .layout import ANALYSES, EIG, SV, fmt_bytes
from .reader import SpectralFile, as_complex


@dataclass
class VerifyReport:
    """What :func:`verify_spectral_file` found. ``ok`` is False when ``problems`` is not empty."""

    path: str
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    runs: list[int] = field(default_factory=list)
    n_layers: int = 0
    n_layers_with_eigenvalues: int = 0
    checkpoints_per_run: dict[int, int] = field(default_factory=dict)
    datasets_per_analysis: dict[str, int] = field(default_factory=dict)  # expected per layer
    n_datasets: int = 0
    n_nonfinite_datasets: int = 0
    loss_min: float = math.nan
    loss_max: float = math.nan
    n_loss: int = 0
    file_size: int = 0
    input_size: int | None = None

    @property
    def size_ratio(self) -> float | None:
        return self.file_size / self.input_size if self.input_size else None

    def summary(self) -> str:
        """A short human-readable summary, like the seed's verification section."""
        lines = [f"Verification of {Path(self.path).name}: " + ("OK" if self.ok else "FAILED")]
        if self.runs:
            per = ", ".join(f"run{r}: {self.checkpoints_per_run.get(r, 0)}" for r in self.runs)
            lines.append(f"- runs present: {len(self.runs)} ({per} checkpoints per layer/analysis)")
        if self.n_layers:
            lines.append(
                f"- layers: {self.n_layers} with singular values, "
                f"{self.n_layers_with_eigenvalues} of them square with eigenvalues"
            )
            for an, n in self.datasets_per_analysis.items():
                lines.append(f"- datasets per layer in {an}: {n}")
            lines.append(f"- spectrum datasets checked: {self.n_datasets}; with NaN/Inf: {self.n_nonfinite_datasets}")
        if self.n_loss:
            lines.append(f"- loss values: {self.n_loss}, range {self.loss_min:.4g} to {self.loss_max:.4g}")
        if self.file_size:
            s = f"- file size: {fmt_bytes(self.file_size)}"
            if self.input_size:
                s += f"; inputs {fmt_bytes(self.input_size)}; size ratio {self.size_ratio:.2f}"
            lines.append(s)
        if self.notes:
            lines += ["Notes:"] + [f"  - {n}" for n in self.notes]
        if self.problems:
            lines += ["Problems:"] + [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def verify_spectral_file(
    path: str | os.PathLike, inputs: Iterable[str | os.PathLike] | None = None, max_listed: int = 10
) -> VerifyReport:
    """Check a spectral store file (merged, or per-run) and return a :class:`VerifyReport`.

    Checks: the file opens; every run has its ``metadata_run<r>``/``model_run<r>`` groups and data
    in every layer; every layer/analysis holds the expected number of datasets for each run
    (``merge_metadata/checkpoint_counts`` when present, else the most any layer holds); square
    weights (shape known) have eigenvalues; every dataset reads (checksums pass) and holds no NaN
    or Inf; the loss values are finite. ``inputs``: the per-run files, for the size ratio
    (default: the sizes recorded at merge time). Never raises for a bad file: the problems are in
    the report.
    """
    path = Path(path)
    rep = VerifyReport(path=str(path))
    if not path.is_file():
        rep.problems.append(f"{path} does not exist")
        return rep
    rep.file_size = path.stat().st_size
    try:
        sf = SpectralFile(path)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        rep.problems.append(str(e))
        return rep
    listed = 0

    def problem(msg):
        nonlocal listed
        listed += 1
        if listed <= max_listed:
            rep.problems.append(msg)
        elif listed == max_listed + 1:
            rep.problems.append("... (more problems not listed)")

    with sf:
        rep.notes += sf.notes
        rep.runs = list(sf.runs)
        rep.n_layers = len(sf.layers)
        f = sf.file
        mm = sf.merge_info()
        if sf.merged:
            expected_runs = list(range(1, int(mm["n_runs"]) + 1)) if "n_runs" in mm else rep.runs
            for r in expected_runs:
                for grp in (f"metadata_run{r}", f"model_run{r}"):
                    if grp not in f:
                        problem(f"run {r}: group {grp}/ is missing")
            missing_runs = sorted(set(expected_runs) - set(rep.runs))
            if missing_runs:
                problem(f"runs {missing_runs} listed in merge_metadata have no data")
            rep.runs = sorted(set(rep.runs) | set(expected_runs))
        counts = {}
        if sf.merged and "merge_metadata" in f and "checkpoint_counts" in f["merge_metadata"]:
            cc = f["merge_metadata"]["checkpoint_counts"][()]
            if len(cc) == len(rep.runs):
                counts = {r: int(c) for r, c in zip(rep.runs, cc)}
        if not counts:
            for r in rep.runs:
                counts[r] = max((len(sf.index[k].get(r, {})) for k in sf.index if k[1] == SV), default=0)
        if not sf.merged and "batches" in f:
            counts = {1: int(f["batches"].shape[0])}
        rep.checkpoints_per_run = counts
        total = sum(counts.values())
        for an in ANALYSES:
            if any(k[1] == an for k in sf.index):
                rep.datasets_per_analysis[an] = total
        if not rep.n_layers:
            problem("the 'layers' group is empty")
        for layer in sf.layers:
            shape = sf.shape(layer)
            ans = sf.analyses(layer)
            if SV not in ans:
                problem(f"{layer}: no singular_values")
            if EIG in ans:
                rep.n_layers_with_eigenvalues += 1
            if shape is not None and len(shape) == 2:
                square = shape[0] == shape[1]
                if square and EIG not in ans and EIG in rep.datasets_per_analysis:
                    problem(f"{layer}: square {shape} but no eigenvalues")
                if not square and EIG in ans:
                    problem(f"{layer}: eigenvalues stored for a non-square weight {shape}")
            for an in ans:
                per_run = sf.index[(layer, an)]
                for r in rep.runs:
                    n = len(per_run.get(r, {}))
                    if n != counts.get(r, n):
                        problem(f"{layer}/{an}: run {r} has {n} datasets, expected {counts[r]}")
                    for i in sorted(per_run.get(r, {})):
                        dpath = sf.dataset_path(layer, an, r, i)
                        rep.n_datasets += 1
                        try:
                            a = f[dpath][()]
                            a = as_complex(a) if an == EIG else np.asarray(a, dtype=np.float64)
                        except Exception as e:  # corrupted chunk, failed checksum, bad type
                            problem(f"cannot read {dpath}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
                            continue
                        bad = int((~np.isfinite(a)).sum())
                        if bad:
                            rep.n_nonfinite_datasets += 1
                            problem(f"{dpath}: {bad} NaN/Inf values")
        try:
            lv = np.asarray(f["loss_values"][()], dtype=np.float64) if "loss_values" in f else np.zeros(0)
        except Exception as e:
            problem(f"cannot read loss_values: {type(e).__name__}: {e}")
            lv = np.zeros(0)
        rep.n_loss = int(lv.size)
        if lv.size:
            fin = lv[np.isfinite(lv)]
            if fin.size < lv.size:
                problem(f"loss_values: {lv.size - fin.size} NaN/Inf values")
            if fin.size:
                rep.loss_min, rep.loss_max = float(fin.min()), float(fin.max())
        elif sf.merged or "loss_values" in f:
            rep.notes.append("no loss values stored")
        if inputs is not None:
            rep.input_size = sum(Path(p).stat().st_size for p in inputs)
        elif "source_sizes" in mm and isinstance(mm["source_sizes"], list):
            rep.input_size = int(sum(mm["source_sizes"]))
    rep.ok = not rep.problems
    return rep
