"""The weight sweep: singular-value summaries of every 2-D weight of a model.

:func:`weight_sweep` streams every 2-D weight from a :class:`~utils.weights.WeightSource` and
returns one row per matrix. On the CPU, two worker threads each dequantise a matrix and take its
singular values (float64 Gram + eigvalsh, one BLAS thread each), so loading overlaps computing.
On a GPU, same-shape matrices of consecutive layers are stacked and decomposed as one batch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..device import resolve_device
from ..progress import progress_bar
from ..spectral import check_finite, gram_svdvals, limited_threads, summarize, svdvals
from ..weights import MatrixRef, WeightSource

PER_LAYER_ORDER = ["W_Q", "W_K", "W_V", "W_O", "W_gate", "W_up", "W_down"]


def _check_finite(W: torch.Tensor, ref: MatrixRef) -> None:
    check_finite(W, f"weight {ref.name!r} (layer {ref.layer}, {ref.weight_type})")


def _row(ref: MatrixRef, S: np.ndarray) -> dict:
    r = {
        "layer_idx": ref.layer,
        "weight_type": ref.weight_type,
        "shape": f"{ref.shape[0]}x{ref.shape[1]}",
        "rows": ref.shape[0],
        "cols": ref.shape[1],
        "name": ref.name,
    }
    r.update(summarize(S).as_dict())
    return r


def select_matrices(src: WeightSource, include_model_level: bool = True) -> list[MatrixRef]:
    return [m for m in src.matrices() if include_model_level or m.layer >= 0]


def weight_sweep(
    src: WeightSource,
    device: str | None = "auto",
    workers: int = 2,
    include_model_level: bool = True,
    progress: bool = True,
    keep_spectra: bool = False,
    batched: bool | None = None,
    batch_bytes: int = 1 << 30,
    per_matrix: Callable[[torch.Tensor, MatrixRef, np.ndarray], dict] | None = None,
):
    """Singular-value summaries of every 2-D weight of ``src``.

    Returns a DataFrame (one row per matrix; columns ``layer_idx, weight_type, shape, rows, cols,
    name, n_sv, eff_rank, stable_rank, spectral_norm, frobenius_norm, sigma_min, condition_number,
    n50, n75, n90, n95, n99``; ``layer_idx`` is -1 for embeddings), and, if ``keep_spectra``, also a
    dict ``name -> singular values`` (float64, descending).
    device: ``"auto"`` / ``None`` (GPU if present), ``"cpu"`` or ``"cuda"``.
    batched: stack same-shape matrices (up to ``batch_bytes`` of float32) into one batched SVD;
    default: on a GPU only. Otherwise ``workers`` threads take one matrix each (float64 Gram).
    per_matrix: ``f(W, ref, S) -> dict`` called for every matrix while it is in memory (``W`` as
    loaded, ``S`` its singular values, descending); the returned columns are added to its row. It runs
    in the worker threads (one BLAS thread each), so further spectra of ``W`` cost no extra loading.
    """
    dev = resolve_device(device)
    refs = select_matrices(src, include_model_level)
    spectra: dict[str, np.ndarray] = {}
    rows: list[dict] = []
    bar = progress_bar(total=len(refs), desc=f"singular values ({dev.type})", unit="matrix", disable=not progress)

    def row(ref, W, S):
        r = _row(ref, S)
        if per_matrix is not None:
            r.update(per_matrix(W, ref, S))
        return r

    if batched is None:
        batched = dev.type != "cpu"
    if not batched:

        def work(ref):
            W = src.load(ref, dtype=None)
            _check_finite(W, ref)  # names the tensor; the finite check inside svdvals is not repeated
            S = gram_svdvals(W.float(), dev)
            return ref, S, row(ref, W, S)

        with limited_threads(1), ThreadPoolExecutor(max(1, workers)) as ex:
            # larger matrices first so the two workers finish together
            order = sorted(refs, key=lambda r: -r.shape[0] * r.shape[1] * min(r.shape))
            for ref, S, r in ex.map(work, order):
                bar.set_postfix_str(ref.name, refresh=False)
                rows.append(r)
                if keep_spectra:
                    spectra[ref.name] = S
                bar.update(1)
    else:
        groups: dict[tuple, list[MatrixRef]] = {}
        for r in refs:
            groups.setdefault((r.weight_type, r.shape), []).append(r)
        for (_, shape), members in groups.items():
            per = 4 * shape[0] * shape[1]
            step = max(1, batch_bytes // max(per, 1))
            for i in range(0, len(members), step):
                chunk = members[i : i + step]
                mats = []
                for ref in chunk:
                    W = src.load(ref, dtype=None)
                    _check_finite(W, ref)
                    mats.append(W.to(dev, torch.float32))
                S_all = svdvals(torch.stack(mats), device=dev, method="svd")
                for ref, W, S in zip(chunk, mats, S_all):
                    rows.append(row(ref, W, S))
                    if keep_spectra:
                        spectra[ref.name] = S
                bar.update(len(chunk))
    bar.close()
    df = pd.DataFrame(rows)
    order = {t: i for i, t in enumerate(PER_LAYER_ORDER)}
    df["_o"] = df["weight_type"].map(lambda t: order.get(t, 99))
    df["_l"] = df["layer_idx"].where(df["layer_idx"] >= 0, 10**9)
    df = df.sort_values(["_l", "_o", "weight_type"]).drop(columns=["_o", "_l"]).reset_index(drop=True)
    return (df, spectra) if keep_spectra else df
