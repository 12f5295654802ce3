"""HDF5 store of weight spectra recorded during training: per-run files, merge, verify, read.

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
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

SV = "singular_values"
EIG = "eigenvalues"
ANALYSES = (SV, EIG)
FORMAT = "transformer-spectra/spectral-store"
FORMAT_VERSION = 1
BATCH_INDEX_DOC = ("batch_<i> is the i-th recorded checkpoint of a run (0-based); its training "
                   "step is batches[offset_of_run + i]")

_DS_RE = re.compile(r"^batch_(\d+)(?:_run(\d+))?$")
_RUN_GROUP_RE = re.compile(r"^(metadata|model)_run(\d+)$")

__all__ = ["SV", "EIG", "RunFileWriter", "merge_runs", "MergeMismatchError", "SpectralFile",
           "verify_spectral_file", "VerifyReport", "write_attrs", "read_attrs"]


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def _h5py():
    import h5py

    return h5py


def write_attrs(group, values: dict) -> None:
    """Store a dict as HDF5 attributes: str/int/float/bool as is, anything else as JSON text.

    The names of the JSON-encoded keys go into the attribute ``_json_keys`` so that
    :func:`read_attrs` can decode them again.
    """
    from .runs import to_jsonable

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
        json_keys = set(json.loads(_as_str(group.attrs["_json_keys"])))
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


def _as_str(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GB"  # pragma: no cover


def _mkstemp_next_to(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _default_mode(tmp: Path) -> None:
    """Give a ``mkstemp`` file (mode 0600) the permissions a newly created file gets."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o666 & ~umask)


def _publish(tmp: Path, path: Path) -> None:
    _default_mode(tmp)
    os.replace(tmp, path)


def _write_spectrum(group, name: str, values: np.ndarray, dtype) -> None:
    values = np.asarray(values).astype(dtype, copy=False)
    if values.size == 0:
        group.create_dataset(name, data=values)
    else:
        group.create_dataset(name, data=values, chunks=values.shape, fletcher32=True)


# ----------------------------------------------------------------------------------------------
# per-run writer
# ----------------------------------------------------------------------------------------------
class RunFileWriter:
    """Writes one run's spectra to ``path`` (per-run layout, see the module docstring).

    Data goes into a temp file next to ``path`` as it is recorded (so a long run does not hold
    its spectra in memory); :meth:`close` writes the step and loss arrays and renames the temp
    file to ``path``. :meth:`abort` (or an exception inside ``with``) deletes the temp file:
    nothing ever appears under ``path`` half-written.

    metadata: run metadata (config, seed, versions, ...), any JSON-able values.
    model_info: model description (class name, parameter count, ``description`` text, ...).
    sv_dtype / eig_dtype: storage types of singular values (float32) and eigenvalues (complex64).
    """

    def __init__(self, path: str | os.PathLike, metadata: dict | None = None,
                 model_info: dict | None = None, sv_dtype="float32", eig_dtype="complex64",
                 overwrite: bool = True):
        h5py = _h5py()
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True or choose another name")
        self.sv_dtype = np.dtype(sv_dtype)
        self.eig_dtype = np.dtype(eig_dtype)
        if self.eig_dtype.kind != "c":
            raise ValueError(f"eig_dtype must be complex (keeps both parts), got {self.eig_dtype}")
        self._tmp = _mkstemp_next_to(self.path)
        self._f = h5py.File(self._tmp, "w")
        self._f.attrs["format"] = FORMAT
        self._f.attrs["format_version"] = FORMAT_VERSION
        self._f.attrs["layout"] = "run"
        self._f.attrs["batch_index"] = BATCH_INDEX_DOC
        self._f.attrs["eigenvalue_storage"] = "complex64 as HDF5 compound {r, i}; sorted by |lambda| descending"
        self._layers = self._f.create_group("layers")
        self.metadata = dict(metadata or {})
        self.metadata.setdefault("created_utc", _utc_now())
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

    def write_checkpoint(self, step: int, spectra: dict[str, dict[str, np.ndarray]],
                         shapes: dict[str, Sequence[int]]) -> int:
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
                raise ValueError(f"checkpoint {i} (step {step}) has other weights than checkpoint 0: "
                                 f"missing {missing[:5]}, new {extra[:5]}")
            for name in spectra:
                if tuple(int(s) for s in shapes[name]) != self._shapes[name]:
                    raise ValueError(f"weight {name} changed shape from {self._shapes[name]} to "
                                     f"{tuple(shapes[name])} at step {step}")
        for name, by_analysis in spectra.items():
            g = self._layers[name]
            for analysis, values in by_analysis.items():
                if analysis not in ANALYSES:
                    raise ValueError(f"unknown analysis {analysis!r}; expected one of {ANALYSES}")
                sub = g.require_group(analysis)
                dtype = self.eig_dtype if analysis == EIG else self.sv_dtype
                _write_spectrum(sub, f"batch_{i}", values, dtype)
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
        mg.create_dataset("parameter_names", data=np.asarray(names, dtype=object),
                          dtype=_h5py().string_dtype())
        maxd = max((len(s) for s in self._shapes.values()), default=2)
        shp = np.zeros((len(names), maxd), dtype=np.int64)
        for j, n in enumerate(names):
            shp[j, :len(self._shapes[n])] = self._shapes[n]
        mg.create_dataset("parameter_shapes", data=shp)
        f.close()
        _publish(self._tmp, self.path)
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

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


# ----------------------------------------------------------------------------------------------
# merge
# ----------------------------------------------------------------------------------------------
class MergeMismatchError(ValueError):
    """Runs that cannot be merged: their layers, shapes or analyses differ."""


@dataclass
class _RunInfo:
    path: Path
    layers: dict[str, dict[str, Any]]   # name -> {"shape": tuple|None, "analyses": {analysis: (n_ds, length)}}
    n_ckpt: int
    n_loss: int


def _describe_run_file(path: Path) -> _RunInfo:
    h5py = _h5py()
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise MergeMismatchError(f"cannot open run file {path} as HDF5 ({e}); is it truncated, "
                                 "corrupted or still being written?") from None
    with f:
        if "layers" not in f:
            raise MergeMismatchError(f"{path} has no 'layers' group: not a spectral run file")
        if any(_RUN_GROUP_RE.match(k) for k in f.keys()):
            raise MergeMismatchError(f"{path} is already a merged file (it has *_run<r> groups); "
                                     "merge the original per-run files instead")
        layers = {}
        for name, g in f["layers"].items():
            shape = tuple(int(s) for s in g.attrs["shape"]) if "shape" in g.attrs else None
            analyses = {}
            for analysis, sub in g.items():
                keys = list(sub.keys())
                if any(_DS_RE.match(k) and _DS_RE.match(k).group(2) for k in keys):
                    raise MergeMismatchError(f"{path} is already a merged file (layers/{name}/{analysis} "
                                             "holds batch_<i>_run<r> datasets)")
                lengths = {sub[k].shape for k in keys}
                analyses[analysis] = (len(keys), sorted(lengths)[0] if lengths else None)
            layers[name] = {"shape": shape, "analyses": analyses}
        n_ckpt = int(f["batches"].shape[0]) if "batches" in f else max(
            (a[0] for L in layers.values() for a in L["analyses"].values()), default=0)
        n_loss = int(f["loss_values"].shape[0]) if "loss_values" in f else 0
    return _RunInfo(Path(path), layers, n_ckpt, n_loss)


def _compare_runs(ref: _RunInfo, other: _RunInfo, r_ref: int, r_other: int) -> list[str]:
    diffs = []
    a, b = set(ref.layers), set(other.layers)
    if a - b:
        diffs.append(f"layers only in run {r_ref}: {sorted(a - b, key=_natural_key)[:8]}"
                     + (" ..." if len(a - b) > 8 else ""))
    if b - a:
        diffs.append(f"layers only in run {r_other}: {sorted(b - a, key=_natural_key)[:8]}"
                     + (" ..." if len(b - a) > 8 else ""))
    for name in sorted(a & b, key=_natural_key):
        la, lb = ref.layers[name], other.layers[name]
        if la["shape"] != lb["shape"]:
            diffs.append(f"shape of {name}: {la['shape']} in run {r_ref} vs {lb['shape']} in run {r_other}")
            continue
        if set(la["analyses"]) != set(lb["analyses"]):
            diffs.append(f"analyses of {name}: {sorted(la['analyses'])} in run {r_ref} vs "
                         f"{sorted(lb['analyses'])} in run {r_other}")
            continue
        for an in la["analyses"]:
            if la["analyses"][an][1] != lb["analyses"][an][1]:
                diffs.append(f"{an} length of {name}: {la['analyses'][an][1]} in run {r_ref} vs "
                             f"{lb['analyses'][an][1]} in run {r_other}")
    return diffs


def merge_runs(run_files: Sequence[str | os.PathLike], out_path: str | os.PathLike,
               overwrite: bool = False, _fail_after_layers: int | None = None) -> Path:
    """Merge per-run files into one file in the seed's layout (runs numbered 1..N in this order).

    Refuses (``MergeMismatchError``, a message listing what differs, run by run) when the runs'
    layers, weight shapes, analyses or spectrum lengths disagree. Runs may have different numbers
    of checkpoints and loss entries; ``merge_metadata/checkpoint_counts`` and ``loss_counts`` record
    them. The output is written under a temp name and renamed at the end, so an interrupted merge
    leaves no file under ``out_path``. ``_fail_after_layers`` is for tests (simulates a crash).
    """
    h5py = _h5py()
    paths = [Path(p) for p in run_files]
    if not paths:
        raise ValueError("merge_runs needs at least one run file")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"run file {p} does not exist")
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} exists; pass overwrite=True or choose another name")
    if out_path.resolve() in {p.resolve() for p in paths}:
        raise ValueError(f"the output {out_path} is one of the inputs")
    infos = [_describe_run_file(p) for p in paths]
    problems = []
    for r, info in enumerate(infos[1:], start=2):
        d = _compare_runs(infos[0], info, 1, r)
        if d:
            problems.append(f"run {r} ({info.path.name}) differs from run 1 ({infos[0].path.name}):\n  - "
                            + "\n  - ".join(d))
    if problems:
        raise MergeMismatchError("cannot merge runs whose layers or shapes disagree:\n" + "\n".join(problems))

    layer_names = sorted(infos[0].layers, key=_natural_key)
    from .runs import atomic_path

    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as out:
            out.attrs["format"] = FORMAT
            out.attrs["format_version"] = FORMAT_VERSION
            out.attrs["layout"] = "merged"
            out.attrs["batch_index"] = BATCH_INDEX_DOC
            out.attrs["eigenvalue_storage"] = "complex64 as HDF5 compound {r, i}; sorted by |lambda| descending"
            bn, lv, bt, loss_counts, ckpt_counts = [], [], [], [], []
            srcs = [h5py.File(p, "r") for p in paths]
            try:
                for r, src in enumerate(srcs, start=1):
                    b = src["batch_numbers"][()] if "batch_numbers" in src else np.zeros(0, np.int64)
                    v = src["loss_values"][()] if "loss_values" in src else np.zeros(0, np.float64)
                    c = src["batches"][()] if "batches" in src else np.arange(infos[r - 1].n_ckpt)
                    bn.append(np.asarray(b, np.int64))
                    lv.append(np.asarray(v, np.float64))
                    bt.append(np.asarray(c, np.int64))
                    loss_counts.append(len(v))
                    ckpt_counts.append(len(c))
                out.create_dataset("batch_numbers", data=np.concatenate(bn))
                out.create_dataset("loss_values", data=np.concatenate(lv))
                out.create_dataset("batches", data=np.concatenate(bt))
                lg = out.create_group("layers")
                for j, name in enumerate(layer_names):
                    if _fail_after_layers is not None and j >= _fail_after_layers:
                        raise RuntimeError("simulated interruption during merge")
                    g = lg.create_group(name)
                    for k, v in srcs[0]["layers"][name].attrs.items():
                        g.attrs[k] = v
                    for analysis in sorted(infos[0].layers[name]["analyses"]):
                        ga = g.create_group(analysis)
                        for r, src in enumerate(srcs, start=1):
                            sub = src["layers"][name][analysis]
                            for key in sorted(sub.keys(), key=_natural_key):
                                m = _DS_RE.match(key)
                                new = f"batch_{m.group(1)}_run{r}" if m else f"{key}_run{r}"
                                src.copy(sub[key], ga, name=new)
                for r, src in enumerate(srcs, start=1):
                    for grp, new in (("metadata", f"metadata_run{r}"), ("model", f"model_run{r}")):
                        if grp in src:
                            src.copy(src[grp], out, name=new)
                        else:
                            out.create_group(new)
                    out[f"metadata_run{r}"].attrs["source_file"] = paths[r - 1].name
                mm = out.create_group("merge_metadata")
                write_attrs(mm, {"n_runs": len(paths), "sources": [p.name for p in paths],
                                 "source_sizes": [p.stat().st_size for p in paths],
                                 "created_utc": _utc_now(), "format": FORMAT,
                                 "batch_index": BATCH_INDEX_DOC, "n_layers": len(layer_names)})
                mm.create_dataset("loss_counts", data=np.asarray(loss_counts, np.int64))
                mm.create_dataset("checkpoint_counts", data=np.asarray(ckpt_counts, np.int64))
                mm.create_dataset("run_ids", data=np.arange(1, len(paths) + 1, dtype=np.int64))
            finally:
                for s in srcs:
                    s.close()
        _default_mode(tmp)
    return out_path


# ----------------------------------------------------------------------------------------------
# reader
# ----------------------------------------------------------------------------------------------
class SpectralFile:
    """Read a spectral store file: a merged file in the seed's layout (written here or anywhere
    else) or a single per-run file (seen as run 1).

    Attributes: ``runs`` (sorted run ids), ``layers`` (parameter names, model order when known,
    else natural sort), ``notes`` (how ambiguous parts of a foreign file were interpreted).
    """

    def __init__(self, path: str | os.PathLike):
        h5py = _h5py()
        self.path = Path(path)
        try:
            self._f = h5py.File(self.path, "r")
        except (OSError, ValueError) as e:
            raise OSError(f"cannot open {self.path} as HDF5 ({e}); the file is missing, truncated "
                          "or corrupted") from None
        f = self._f
        self.notes: list[str] = []
        if "layers" not in f:
            self.close()
            raise ValueError(f"{self.path} has no 'layers' group: not a spectral store file")
        # index datasets: (layer, analysis) -> run -> {i: dataset name}
        self._index: dict[tuple[str, str], dict[int, dict[int, str]]] = {}
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
                    m = _DS_RE.match(key)
                    if not m:
                        continue
                    r = int(m.group(2)) if m.group(2) else 1
                    self.merged |= m.group(2) is not None
                    per_run.setdefault(r, {})[int(m.group(1))] = key
                    runs.add(r)
                self._index[(name, analysis)] = per_run
        for k in f.keys():
            m = _RUN_GROUP_RE.match(k)
            if m:
                runs.add(int(m.group(2)))
                self.merged = True
        self.runs = sorted(runs) or [1]
        self.layers = self._layer_order([n for n in f["layers"].keys()])
        self._split_top_level()

    # -- structure -----------------------------------------------------------------------------
    def _layer_order(self, names: list[str]) -> list[str]:
        grp = f"model_run{self.runs[0]}" if self.merged else "model"
        if grp in self._f and "parameter_names" in self._f[grp]:
            order = [_as_str(s) for s in self._f[grp]["parameter_names"][()]]
            pos = {n: j for j, n in enumerate(order)}
            return sorted(names, key=lambda n: (pos.get(n, len(pos)), _natural_key(n)))
        return sorted(names, key=_natural_key)

    def analyses(self, layer: str) -> list[str]:
        """The analyses stored for ``layer`` (``singular_values`` first)."""
        return sorted((a for (n, a) in self._index if n == layer), key=lambda a: (a != SV, a))

    def shape(self, layer: str) -> tuple[int, ...] | None:
        g = self._f["layers"][layer]
        return tuple(int(s) for s in g.attrs["shape"]) if "shape" in g.attrs else None

    def checkpoint_indices(self, run: int, layer: str | None = None, analysis: str = SV) -> list[int]:
        """The checkpoint indices ``i`` present for ``run`` (of ``layer``, default the first layer)."""
        layer = layer or self.layers[0]
        return sorted(self._index.get((layer, analysis), {}).get(run, {}))

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
        return read_attrs(self._f[grp]) if grp in self._f else {}

    def model_info(self, run: int) -> dict:
        grp = f"model_run{run}" if self.merged else "model"
        return read_attrs(self._f[grp]) if grp in self._f else {}

    def merge_info(self) -> dict:
        return read_attrs(self._f["merge_metadata"]) if "merge_metadata" in self._f else {}

    def spectrum(self, layer: str, analysis: str, run: int, i: int) -> np.ndarray:
        """One stored spectrum: float64 singular values, or complex128 eigenvalues."""
        key = self._index[(layer, analysis)][run][i]
        a = self._f["layers"][layer][analysis][key][()]
        if analysis == EIG:
            return _as_complex(a)
        return np.asarray(a, dtype=np.float64)

    def _dataset_path(self, layer, analysis, run, i) -> str:
        return f"layers/{layer}/{analysis}/{self._index[(layer, analysis)][run][i]}"

    # -- top-level arrays split by run --------------------------------------------------------------
    def _split_top_level(self) -> None:
        f = self._f
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
        use_batches = (batches is not None and batches.size == sum(counts_c)
                       and np.issubdtype(batches.dtype, np.number))
        if batches is not None and not use_batches:
            self.notes.append(f"'batches' has {batches.size} entries but the layers hold "
                              f"{sum(counts_c)} checkpoints; using checkpoint indices as steps")
        off = 0
        for r, c in zip(self.runs, counts_c):
            idx = self.checkpoint_indices(r)
            if use_batches and len(idx) == c:
                # the j-th stored checkpoint (sorted by i) has step batches[offset + j]
                steps = [int(s) for s in batches[off:off + c]]
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
        bn = (np.asarray(f["batch_numbers"][()]).ravel().astype(np.int64)
              if "batch_numbers" in f else np.arange(lv.size, dtype=np.int64))
        if bn.size != lv.size:
            self.notes.append(f"batch_numbers ({bn.size}) and loss_values ({lv.size}) differ in "
                              "length; using entry indices as steps")
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

        from .spectral import effective_rank

        rows = []
        for layer in self.layers:
            has_eig = (layer, EIG) in self._index
            for r in self.runs:
                step_of = self._step_of.get(r, {})
                for i in self.checkpoint_indices(r, layer):
                    S = np.sort(self.spectrum(layer, SV, r, i))[::-1]
                    row = {"run": r, "checkpoint": i, "step": step_of.get(i, i),
                           "layer": layer, "n_sv": S.size, "eff_rank": float(effective_rank(S))}
                    for k in range(top_k):
                        row[f"sigma_{k + 1}"] = float(S[k]) if k < S.size else np.nan
                    row["eig_radius"] = row["n_complex_eig"] = np.nan
                    if has_eig and i in self._index[(layer, EIG)].get(r, {}):
                        ev = self.spectrum(layer, EIG, r, i)
                        row["eig_radius"] = float(np.abs(ev).max()) if ev.size else np.nan
                        row["n_complex_eig"] = int((np.abs(ev.imag) > 1e-6 * max(1e-30, np.abs(ev).max())).sum())
                    rows.append(row)
        return pd.DataFrame(rows)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _as_complex(a: np.ndarray) -> np.ndarray:
    """Eigenvalues stored as complex, as compound {r, i} / {real, imag}, as (n, 2) or as reals."""
    a = np.asarray(a)
    if a.dtype.kind == "c":
        return a.astype(np.complex128)
    if a.dtype.names:
        names = [n.lower() for n in a.dtype.names]
        for re_n, im_n in (("r", "i"), ("real", "imag"), ("re", "im")):
            if re_n in names and im_n in names:
                return (a[a.dtype.names[names.index(re_n)]].astype(np.float64)
                        + 1j * a[a.dtype.names[names.index(im_n)]].astype(np.float64))
        raise ValueError(f"cannot read eigenvalues from compound type with fields {a.dtype.names}")
    if a.ndim == 2 and a.shape[1] == 2:
        return a[:, 0].astype(np.float64) + 1j * a[:, 1].astype(np.float64)
    return a.astype(np.complex128)


# ----------------------------------------------------------------------------------------------
# verify
# ----------------------------------------------------------------------------------------------
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
            lines.append(f"- layers: {self.n_layers} with singular values, "
                         f"{self.n_layers_with_eigenvalues} of them square with eigenvalues")
            for an, n in self.datasets_per_analysis.items():
                lines.append(f"- datasets per layer in {an}: {n}")
            lines.append(f"- spectrum datasets checked: {self.n_datasets}; with NaN/Inf: "
                         f"{self.n_nonfinite_datasets}")
        if self.n_loss:
            lines.append(f"- loss values: {self.n_loss}, range {self.loss_min:.4g} to {self.loss_max:.4g}")
        if self.file_size:
            s = f"- file size: {_fmt_bytes(self.file_size)}"
            if self.input_size:
                s += f"; inputs {_fmt_bytes(self.input_size)}; size ratio {self.size_ratio:.2f}"
            lines.append(s)
        if self.notes:
            lines += ["Notes:"] + [f"  - {n}" for n in self.notes]
        if self.problems:
            lines += ["Problems:"] + [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def verify_spectral_file(path: str | os.PathLike,
                         inputs: Iterable[str | os.PathLike] | None = None,
                         max_listed: int = 10) -> VerifyReport:
    """Check a spectral store file (merged, or per-run) and return a :class:`VerifyReport`.

    Checks: the file opens; every run has its ``metadata_run<r>``/``model_run<r>`` groups and data
    in every layer; every layer/analysis holds the expected number of datasets for each run
    (``merge_metadata/checkpoint_counts`` when present, else the most any layer holds); square
    weights (shape known) have eigenvalues; every dataset reads (checksums pass) and holds no NaN
    or Inf; the loss values are finite. ``inputs``: the per-run files, for the size ratio
    (default: the sizes recorded at merge time). Never raises for a bad file: the problems are in
    the report.
    """
    h5py = _h5py()
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
        f = sf._f
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
                counts[r] = max((len(sf._index[k].get(r, {})) for k in sf._index if k[1] == SV), default=0)
        if not sf.merged and "batches" in f:
            counts = {1: int(f["batches"].shape[0])}
        rep.checkpoints_per_run = counts
        total = sum(counts.values())
        for an in ANALYSES:
            if any(k[1] == an for k in sf._index):
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
                per_run = sf._index[(layer, an)]
                for r in rep.runs:
                    n = len(per_run.get(r, {}))
                    if n != counts.get(r, n):
                        problem(f"{layer}/{an}: run {r} has {n} datasets, expected {counts[r]}")
                    for i in sorted(per_run.get(r, {})):
                        dpath = sf._dataset_path(layer, an, r, i)
                        rep.n_datasets += 1
                        try:
                            a = f[dpath][()]
                            a = _as_complex(a) if an == EIG else np.asarray(a, dtype=np.float64)
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


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m utils.spectral_store merge OUT RUN1.h5 RUN2.h5 ...`` or ``verify FILE [INPUTS...]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m utils.spectral_store", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="merge per-run files into one, then verify it")
    m.add_argument("out")
    m.add_argument("runs", nargs="+")
    m.add_argument("--overwrite", action="store_true")
    v = sub.add_parser("verify", help="verify a merged or per-run file")
    v.add_argument("file")
    v.add_argument("inputs", nargs="*", help="the per-run files it was merged from (size ratio)")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "merge":
            merge_runs(a.runs, a.out, overwrite=a.overwrite)
            rep = verify_spectral_file(a.out, inputs=a.runs)
        else:
            rep = verify_spectral_file(a.file, inputs=a.inputs or None)
    except (MergeMismatchError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}")
        return 2
    print(rep.summary())
    return 0 if rep.ok else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
