"""The spectral store's layout: names, patterns, attribute codec and small helpers (see the package docstring)."""

from __future__ import annotations

import contextlib
import json
import re

import numpy as np

from ...files import to_jsonable

SV = "singular_values"
EIG = "eigenvalues"
ANALYSES = (SV, EIG)
FORMAT = "transformer-spectra/spectral-store"
FORMAT_VERSION = 1
BATCH_INDEX_DOC = (
    "batch_<i> is the i-th recorded checkpoint of a run (0-based); its training step is batches[offset_of_run + i]"
)
EIGENVALUE_STORAGE = "complex64 as HDF5 compound {r, i}; sorted by |lambda| descending"
DATASET_RE = re.compile(r"^batch_(\d+)(?:_run(\d+))?$")
RUN_GROUP_RE = re.compile(r"^(metadata|model)_run(\d+)$")


def h5py_module():
    import h5py

    return h5py


def write_attrs(group, values: dict) -> None:
    """Store a dict as HDF5 attributes: str/int/float/bool as is, anything else as JSON text.

    The names of the JSON-encoded keys go into the attribute ``_json_keys`` so that
    :func:`read_attrs` can decode them again.
    """
    json_keys = []
    for k, v in values.items():
        k = str(k)
        if v is None:
            v, is_json = "null", True
        elif isinstance(v, (bool, np.bool_)):
            v, is_json = bool(v), False
        elif isinstance(v, (int, np.integer)):
            v, is_json = int(v), False
        elif isinstance(v, (float, np.floating)):
            v, is_json = float(v), False
        elif isinstance(v, str):
            is_json = False
        else:
            v, is_json = json.dumps(to_jsonable(v)), True
        group.attrs[k] = v
        if is_json:
            json_keys.append(k)
    if json_keys:
        group.attrs["_json_keys"] = json.dumps(sorted(set(json_keys)))


def read_attrs(group) -> dict:
    """Inverse of :func:`write_attrs` (also reads attributes written by anyone else)."""
    try:
        json_keys = set(json.loads(as_str(group.attrs["_json_keys"])))
    except (KeyError, ValueError, TypeError):
        json_keys = set()
    out = {}
    for k, v in group.attrs.items():
        if k == "_json_keys":
            continue
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        if k in json_keys and isinstance(v, str):
            with contextlib.suppress(ValueError):
                v = json.loads(v)
        out[k] = v
    return out


def as_str(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GB"  # pragma: no cover


def write_spectrum(group, name: str, values: np.ndarray, dtype) -> None:
    values = np.asarray(values).astype(dtype, copy=False)
    if values.size == 0:
        group.create_dataset(name, data=values)
    else:
        group.create_dataset(name, data=values, chunks=values.shape, fletcher32=True)
