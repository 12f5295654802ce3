"""The weight sweep: singular-value summaries of every 2-D weight of a model.

:func:`weight_sweep` streams every 2-D weight from a :class:`~utils.weights.WeightSource` and
returns one row per matrix. On the CPU, two worker threads each read a matrix and take its
singular values from the Gram matrix of its short side (:func:`utils.spectral.gram`, accumulated
over blocks, one BLAS thread each), so loading overlaps computing. On a GPU, same-shape matrices of
consecutive layers are stacked and decomposed as one batch.

Memory does not grow with the model: a worker holds one matrix in its stored dtype (bf16: 2 bytes
a value), one block of it in the compute dtype and the Gram; nothing else stays resident (the
readers do not memory-map, see :mod:`utils.weights.shards`). A 128256 x 4096 embedding costs its
1 GB of bf16 plus ~200 MB, never a 4.2 GB float64 copy.

Precision (``precision``): ``"float64"`` (the CPU default) is exact to ~1.5e-8 sigma_max per
value; ``"float32"`` (the GPU default, or on request on the CPU) is the fast path, ~3.5e-4 sigma_max
per value through a float32 Gram on the CPU (see :mod:`utils.spectral.core`); its effective-rank
error against float64 is measured by ``bench/bench_scale.py``.

Resuming (``cache``): each matrix's singular values (and ``per_matrix`` columns) are appended to a
JSONL file as soon as they are computed. A later sweep with the same file, model files and settings
reads them back and computes only the rest, so an interrupted sweep continues where it stopped and a
finished one is not recomputed; the table is the same, value for value, as an uninterrupted sweep's.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import re
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..device import resolve_device, uses_device_path
from ..files import append_jsonl, read_jsonl, to_jsonable, write_jsonl
from ..progress import progress_bar
from ..spectral import check_finite, gram_svdvals, limited_threads, summarize, svdvals
from ..weights import MatrixRef, WeightSource

#: the order of a block's matrices in the tables (the attention, then the MLP or the router, experts, shared experts)
PER_LAYER_ORDER = [
    "W_Q",
    "W_Q_a",
    "W_Q_b",
    "W_K",
    "W_V",
    "W_KV_a",
    "W_KV_b",
    "W_O",
    "W_router",
    "W_gate",
    "W_up",
    "W_down",
    "W_shared_router",
    "W_shared_gate",
    "W_shared_up",
    "W_shared_down",
]
PRECISIONS = ("auto", "float64", "float32")
CACHE_FORMAT = "weight_sweep/1"
INFLIGHT_FACTOR = 1.5  # matrices in hand at once, in units of the largest one (see _Scheduler)


def _what(ref: MatrixRef) -> str:
    e = "" if getattr(ref, "expert", -1) < 0 else f", expert {ref.expert}"
    return f"weight {ref.name!r} (layer {ref.layer}, {ref.weight_type}{e})"


def _row(ref: MatrixRef, S: np.ndarray) -> dict:
    r = {
        "layer_idx": ref.layer,
        "weight_type": ref.weight_type,
        "expert": getattr(ref, "expert", -1),
        "shape": f"{ref.shape[0]}x{ref.shape[1]}",
        "rows": ref.shape[0],
        "cols": ref.shape[1],
        "name": ref.name,
    }
    r.update(summarize(S).as_dict())
    return r


def select_matrices(src: WeightSource, include_model_level: bool = True) -> list[MatrixRef]:
    return [m for m in src.matrices() if include_model_level or m.layer >= 0]


def matrix_cost(shape: tuple[int, int]) -> int:
    """Relative CPU cost of one matrix: Gram ``long * short^2`` plus eigenvalues ``~2 short^3``, in Mflop (>= 1)."""
    k, m = min(shape), max(shape)
    return max(1, (m * k * k + 2 * k**3) // 10**6)


def compute_dtype(precision: str, dev: torch.device, batched: bool) -> torch.dtype:
    """float64 or float32 for ``precision`` (``"auto"``: float32 for a batched GPU SVD, else float64)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return torch.float32 if batched and uses_device_path(dev) else torch.float64
    return getattr(torch, precision)


# ------------------------------------------------------------------------------------------ resume cache
def _encode(extra: dict) -> dict:
    """Columns of a ``per_matrix`` hook as JSON; non-finite floats kept exactly (``{"$float": "inf"}``)."""
    out = {}
    for k, v in extra.items():
        if isinstance(v, (float, np.floating)) and not math.isfinite(float(v)):
            v = {"$float": repr(float(v))}
        out[k] = to_jsonable(v)
    return out


def _decode(extra: dict) -> dict:
    return {k: float(v["$float"]) if isinstance(v, dict) and set(v) == {"$float"} else v for k, v in extra.items()}


class SweepCache:
    """Per-matrix results of one sweep in an append-only JSONL file (module docstring).

    Line 1 is a header (model, file stamps, precision, method, hook); then one record per matrix:
    ``name``, ``shape``, ``S`` (singular values, float64 as JSON numbers: exact) and ``extra``.
    """

    def __init__(self, path: str | Path, header: dict, resume: bool = True):
        self.path = Path(path)
        self.header = to_jsonable(header)
        self.done: dict[str, dict] = {}
        records = read_jsonl(self.path, repair=True) if resume else []
        if records:
            old = records[0]
            if old.get("format") != CACHE_FORMAT:
                raise ValueError(f"{self.path} is not a weight-sweep results file; pass another cache path")
            diff = [k for k in self.header if old.get(k) != self.header[k]]
            if diff:
                raise ValueError(
                    f"{self.path} holds results for other settings or model files (differs in: {', '.join(diff)}); "
                    "delete the file or start afresh with resume=False (notebook 01: -p resume false)"
                )
            self.done = {r["name"]: r for r in records[1:]}
        else:
            write_jsonl(self.path, [self.header])  # a new file, atomically

    def get(self, ref: MatrixRef) -> tuple[np.ndarray, dict] | None:
        r = self.done.get(ref.name)
        if r is None:
            return None
        if tuple(r["shape"]) != tuple(ref.shape):
            raise ValueError(f"{self.path}: {ref.name} has shape {r['shape']} there, {list(ref.shape)} in the model")
        return np.asarray(r["S"], dtype=np.float64), _decode(r.get("extra", {}))

    def add(self, ref: MatrixRef, S: np.ndarray, extra: dict) -> None:
        rec = {"name": ref.name, "shape": list(ref.shape), "S": np.asarray(S, dtype=np.float64).tolist()}
        append_jsonl(self.path, {**rec, "extra": _encode(extra)})


def cache_path(cache: str | Path, src, header: dict) -> Path:
    """``cache`` itself when it names a ``.jsonl`` file, else a file in that folder named by model and settings."""
    p = Path(cache)
    if p.suffix == ".jsonl":
        return p
    key = hashlib.sha1(json.dumps(to_jsonable(header), sort_keys=True).encode()).hexdigest()[:12]
    label = Path(str(src.name).rstrip("/")).name or "model"  # for people; the key covers everything
    return p / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', label)[:60]}-{key}.jsonl"


def _header(src, dtype: torch.dtype, method: str, per_matrix) -> dict:
    fp = src.fingerprint() if hasattr(src, "fingerprint") else {"name": str(src.name)}
    if per_matrix is None:
        hook = None
    elif hasattr(per_matrix, "cache_key"):  # a hook with settings names them all (RMTColumns)
        hook = per_matrix.cache_key()
    else:
        fn = per_matrix if hasattr(per_matrix, "__qualname__") else type(per_matrix)
        hook = f"{fn.__module__}.{fn.__qualname__}"
    precision = str(dtype).replace("torch.", "")
    return {
        "format": CACHE_FORMAT,
        "model": str(src.name),
        "fingerprint": fp,
        "precision": precision,
        "method": method,
        "per_matrix": hook,
    }


# ------------------------------------------------------------------------------------------ progress
class SweepProgress:
    """A progress bar weighted by cost: per cent and ETA by work; ``k/N matrices`` and the matrices in hand.

    One line reads ``31%|###       | 02:10<04:50 | 12/226 matrices, now model.layers.3.mlp.up_proj.weight``
    (elapsed < remaining; a narrow terminal cuts the names, not the ETA).
    """

    def __init__(self, refs: list[MatrixRef], done: set[str], disable: bool):
        self.cost = {r.name: matrix_cost(r.shape) for r in refs}
        self.n, self.N = len(done), len(refs)
        self.running: dict[str, None] = {}
        self.lock = threading.Lock()
        fmt = "{percentage:3.0f}%|{bar:10}| {elapsed}<{remaining} | {desc}"
        total, initial = sum(self.cost.values()), sum(self.cost[n] for n in done)
        self.bar = progress_bar(total=total, initial=initial, desc=self._text(), bar_format=fmt, disable=disable)

    def _text(self) -> str:
        return f"{self.n}/{self.N} matrices, now {', '.join(self.running) or '-'}"

    def _describe(self) -> None:
        self.bar.set_description_str(self._text(), refresh=False)

    def start(self, ref: MatrixRef) -> None:
        with self.lock:
            self.running[ref.name] = None
            self._describe()

    def finish(self, ref: MatrixRef) -> None:
        with self.lock:
            self.running.pop(ref.name, None)
            self.n += 1
            self._describe()
            self.bar.update(self.cost[ref.name])

    def close(self) -> None:
        self.bar.close()


# ------------------------------------------------------------------------------------------ the sweep
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
    precision: str = "auto",
    cache: str | Path | None = None,
    resume: bool = True,
):
    """Singular-value summaries of every 2-D weight of ``src``.

    Returns a DataFrame (one row per matrix; columns ``layer_idx, weight_type, expert, shape, rows, cols,
    name, n_sv, eff_rank, stable_rank, spectral_norm, frobenius_norm, sigma_min, condition_number,
    n50, n75, n90, n95, n99``; ``layer_idx`` is -1 for embeddings, ``expert`` -1 outside the experts), and,
    if ``keep_spectra``, also a dict ``name -> singular values`` (float64, descending). ``df.attrs`` records
    ``cache`` (the results file or None), ``reused`` and ``computed`` (matrices read back / computed now).
    device: ``"auto"`` / ``None`` (GPU if present), ``"cpu"`` or ``"cuda"``.
    batched: stack same-shape matrices (up to ``batch_bytes`` of float32) into one batched SVD;
    default: on a GPU only. Otherwise ``workers`` threads take one matrix each (Gram).
    per_matrix: ``f(W, ref, S) -> dict`` called for every matrix while it is in memory (``W`` as
    loaded, ``S`` its singular values, descending); the returned columns are added to its row. It runs
    in the worker threads (one BLAS thread each), so further spectra of ``W`` cost no extra loading.
    precision: ``"auto"``, ``"float64"`` or ``"float32"`` (module docstring).
    cache: a ``.jsonl`` file, or a folder for one named after the model and settings, where results
    are appended as computed; with ``resume`` the results already there are reused (module docstring),
    else the file is started afresh.
    """
    dev = resolve_device(device)
    if batched is None:
        batched = uses_device_path(dev)
    dtype = compute_dtype(precision, dev, batched)
    refs = select_matrices(src, include_model_level)
    store = None
    if cache is not None:
        header = _header(src, dtype, "svd" if batched else "gram", per_matrix)
        store = SweepCache(cache_path(cache, src, header), header, resume)
    results: dict[str, tuple[np.ndarray, dict]] = {}
    for ref in refs:
        got = store.get(ref) if store is not None else None
        if got is not None:
            results[ref.name] = got
    todo = [r for r in refs if r.name not in results]
    bar = SweepProgress(refs, set(results), not progress)

    def done(ref, S, extra):
        results[ref.name] = (S, extra)
        if store is not None:
            store.add(ref, S, extra)
        bar.finish(ref)

    try:
        if todo and batched:
            _batched(src, todo, dev, dtype, batch_bytes, per_matrix, bar, done)
        elif todo:
            _threaded(src, todo, dev, dtype, workers, per_matrix, bar, done)
    finally:
        bar.close()
    rows = [{**_row(ref, results[ref.name][0]), **results[ref.name][1]} for ref in refs]
    df = pd.DataFrame(rows)
    order = {t: i for i, t in enumerate(PER_LAYER_ORDER)}
    df["_o"] = df["weight_type"].map(lambda t: order.get(t, 99))
    df["_l"] = df["layer_idx"].where(df["layer_idx"] >= 0, 10**9)
    df = df.sort_values(["_l", "_o", "weight_type", "expert", "name"], kind="stable")
    df = df.drop(columns=["_o", "_l"]).reset_index(drop=True)
    df.attrs.update(
        cache=None if store is None else str(store.path),
        reused=len(refs) - len(todo),
        computed=len(todo),
        method=f"{'batched svd' if batched else 'gram'} ({str(dtype).replace('torch.', '')})",
    )
    if keep_spectra:
        return df, {ref.name: results[ref.name][0] for ref in refs}
    return df


class _Scheduler:
    """Hands matrices to worker threads, largest first, under a memory budget.

    A matrix is taken only while the matrices in hand (estimated at 4 bytes a value) fit in
    ``budget`` (1.5x the largest one), or when no other is in hand: two 128k-row embeddings are
    never held at once, so peak memory stays near one largest matrix while smaller ones keep the
    other worker busy.
    """

    def __init__(self, todo: list[MatrixRef]):
        self.pending = sorted(todo, key=lambda r: -matrix_cost(r.shape))
        self.budget = INFLIGHT_FACTOR * max(self.size(r) for r in todo)
        self.in_hand = 0
        self.stopped = False
        self.cond = threading.Condition()

    @staticmethod
    def size(ref: MatrixRef) -> int:
        return 4 * ref.shape[0] * ref.shape[1]

    def take(self) -> MatrixRef | None:
        with self.cond:
            while not self.stopped and self.pending:
                for i, ref in enumerate(self.pending):
                    if self.in_hand == 0 or self.in_hand + self.size(ref) <= self.budget:
                        self.in_hand += self.size(ref)
                        return self.pending.pop(i)
                self.cond.wait()
            return None

    def release(self, ref: MatrixRef) -> None:
        with self.cond:
            self.in_hand -= self.size(ref)
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


def _threaded(src, todo, dev, dtype, workers, per_matrix, bar, done) -> None:
    """``workers`` threads, one matrix each (:class:`_Scheduler`); results are handed to ``done`` in this
    thread as each matrix finishes (appended to the cache at once)."""
    sched, results = _Scheduler(todo), queue.Queue()

    def worker():
        while (ref := sched.take()) is not None:
            try:
                bar.start(ref)
                W = src.load(ref, dtype=None)
                S = gram_svdvals(W, dev, dtype, what=_what(ref))  # NaN / Inf reported with the tensor's name
                results.put((ref, S, per_matrix(W, ref, S) if per_matrix is not None else {}))
                del W
            except BaseException as e:  # handed to the main thread, which stops the sweep
                results.put(e)
            finally:
                sched.release(ref)

    with limited_threads(1):
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, min(workers, len(todo))))]
        for t in threads:
            t.start()
        try:
            for _ in range(len(todo)):
                while True:
                    try:
                        item = results.get(timeout=0.5)  # a timeout keeps Ctrl-C responsive
                        break
                    except queue.Empty:
                        continue
                if isinstance(item, BaseException):
                    raise item
                done(*item)
        finally:
            sched.stop()  # workers finish the matrix in hand and exit
        for t in threads:
            t.join()


def _batched(src, todo, dev, dtype, batch_bytes, per_matrix, bar, done) -> None:
    """Same-shape matrices stacked (up to ``batch_bytes`` of float32) into one batched SVD."""
    groups: dict[tuple, list[MatrixRef]] = {}
    for r in todo:
        groups.setdefault((r.weight_type, r.shape), []).append(r)
    for (_, shape), members in groups.items():
        step = max(1, batch_bytes // max(4 * shape[0] * shape[1], 1))
        for i in range(0, len(members), step):
            chunk = members[i : i + step]
            mats = []
            for ref in chunk:
                bar.start(ref)
                W = src.load(ref, dtype=None)
                check_finite(W, _what(ref))
                mats.append(W.to(dev, dtype))
            S_all = svdvals(torch.stack(mats), device=dev, method="svd", dtype=dtype)
            for ref, W, S in zip(chunk, mats, S_all):
                done(ref, S, per_matrix(W, ref, S) if per_matrix is not None else {})
