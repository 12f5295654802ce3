"""Null models: the same weights with their structure destroyed, to say whether a metric is large or small.

* :func:`permute_entries`: a matrix with its entries randomly permuted (seeded). It keeps the element
  distribution (every value, hence the Frobenius norm) and destroys every correlation between rows and
  columns. For light-tailed entries its spectrum is close to the Marchenko-Pastur law of i.i.d. entries with
  the same variance; entries with outliers (a heavy-tailed entry distribution, high kurtosis, as trained
  weights often have) give the null spikes of its own, so the null is the reference, not MP.
* :func:`permute_residual`: the residual-stream coordinates (the ``d`` side) of a layer's weights
  permuted together, one permutation per layer. Each head's QK / OV kernel becomes ``P A P^T``: its own
  spectrum, symmetry and norm are unchanged, only its alignment with other layers is destroyed (the
  null of composition scores).
* :class:`PermutedWeights`: a WeightSource whose every matrix comes back permuted (either mode), so any
  streamed analysis (weight sweep, attention sweep, composition scores) runs on the null model as is.
* :func:`ratio`, :func:`zscore`: a trained value beside its null.

Seeds are derived from one base seed and the matrix name (or layer), so a null is reproducible and
independent of the order in which matrices are visited.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

MODES = ("entries", "residual")


def derived_seed(seed: int, key) -> int:
    """A 63-bit seed from a base seed and a key (matrix name or layer), stable across runs."""
    return (int(seed) * 1_000_003 + zlib.crc32(str(key).encode())) % (2**63 - 1)


def _perm(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)


_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
ENTRIES_DRAW = "numpy-shuffle"  # how permute_entries draws; part of every cache key that stores a null


def permute_entries(W, seed: int = 0) -> torch.Tensor:
    """``W`` (any shape) with its entries randomly permuted; same shape, dtype and multiset of values.

    One copy of ``W`` in its own dtype is shuffled in place (Fisher-Yates, numpy's PCG64 seeded by
    ``seed``, on the bytes viewed as same-width integers, so bf16 is never widened): no index array, so
    the 128256 x 4096 bf16 embedding of an 8B model costs its own 1 GB, not 4 GB of int64 indices more.
    """
    W = torch.as_tensor(W).detach().cpu()
    out = torch.empty(W.shape, dtype=W.dtype)
    out.copy_(W)
    if out.numel() > 1:
        np.random.default_rng(seed).shuffle(out.view(-1).view(_SAME_WIDTH_INT[out.element_size()]).numpy())
    return out


def permute_residual(W, axis: int | None, perm: torch.Tensor) -> torch.Tensor:
    """``W`` with its residual-stream axis reordered by ``perm``: ``axis`` 1 (the columns: a matrix that reads
    the stream), 0 (the rows: one that writes it) or None (no residual side, e.g. MLA's ``q_b`` / ``kv_b``
    acting on latents: returned as it is). A WeightSource says which (``residual_axis(role)``)."""
    W = torch.as_tensor(W)
    if axis == 1:
        return W[:, perm]
    if axis == 0:
        return W[perm, :]
    return W


class PermutedWeights:
    """A WeightSource whose matrices come back permuted (module docstring); wraps ``src``.

    mode ``"entries"``: every matrix's entries, seeded by its name; ``"residual"``: one permutation of the
    d residual coordinates per layer, shared by that layer's roles (model-level matrices: their entries).
    """

    def __init__(self, src, seed: int = 0, mode: str = "entries"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.src, self.seed, self.mode = src, int(seed), mode
        self.dims, self.family = src.dims, getattr(src, "family", None)
        self.name = f"{getattr(src, 'name', 'model')} (null: {mode} permuted, seed {seed})"
        self.kind = getattr(src, "kind", "null")

    def __getattr__(self, item):  # layer_index, has_role, describe, ... from the wrapped source
        return getattr(self.src, item)

    def _residual_perm(self, layer: int) -> torch.Tensor:
        return _perm(self.dims.d, derived_seed(self.seed, f"layer {layer}"))

    def _permute(self, W, name: str, layer: int, role: str | None) -> torch.Tensor:
        if self.mode == "residual" and role is not None and layer >= 0:
            return permute_residual(W, self.src.residual_axis(role), self._residual_perm(layer))
        return permute_entries(W, derived_seed(self.seed, name))

    def matrices(self):
        return self.src.matrices()

    def load(self, ref, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        return self._permute(self.src.load(ref, dtype=dtype), matrix_key(ref), ref.layer, ref.role)

    def layer_weight(
        self, layer: int, role: str, dtype: torch.dtype | None = torch.float32, expert: int | None = None
    ) -> torch.Tensor:
        W = self.src.layer_weight(layer, role, dtype=dtype, expert=expert)
        L = self.dims.L
        return self._permute(W, _key(layer % L, role, expert), layer % L, role)


def _key(layer: int, role: str, expert: int | None) -> str:
    return f"layer {layer} {role}" + ("" if expert is None or expert < 0 else f" expert {expert}")


def matrix_key(ref) -> str:
    """The key a matrix's null seed derives from: ``"layer i role"`` (``"... expert e"`` for an expert; the
    same whichever accessor loads it), else its name."""
    return _key(ref.layer, ref.role, getattr(ref, "expert", -1)) if getattr(ref, "role", None) else ref.name


def ratio(trained, null) -> np.ndarray:
    """``trained / null`` (NaN where the null is 0 or missing)."""
    t, n = np.asarray(trained, dtype=float), np.asarray(null, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n != 0, t / n, np.nan)


def zscore(trained, null_sample, axis=None) -> np.ndarray:
    """``(trained - mean(null)) / std(null)`` against a null sample (std with ddof=1; NaN if it is 0)."""
    s = np.asarray(null_sample, dtype=float)
    mu, sd = np.nanmean(s, axis=axis), np.nanstd(s, axis=axis, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, (np.asarray(trained, dtype=float) - mu) / sd, np.nan)
