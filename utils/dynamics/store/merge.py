"""Merging per-run files into one file in the seed's layout, refusing runs that disagree."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...files import default_file_mode, temp_path_next_to
from ...provenance import utc_now
from .layout import (
    BATCH_INDEX_DOC,
    DATASET_RE,
    EIGENVALUE_STORAGE,
    FORMAT,
    FORMAT_VERSION,
    RUN_GROUP_RE,
    h5py_module,
    natural_key,
    write_attrs,
)


class MergeMismatchError(ValueError):
    """Runs that cannot be merged: their layers, shapes or analyses differ."""


@dataclass
class _RunInfo:
    path: Path
    layers: dict[str, dict[str, Any]]  # name -> {"shape": tuple|None, "analyses": {analysis: (n_ds, length)}}
    n_ckpt: int
    n_loss: int


def _describe_run_file(path: Path) -> _RunInfo:
    h5py = h5py_module()
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise MergeMismatchError(
            f"cannot open run file {path} as HDF5 ({e}); is it truncated, corrupted or still being written?"
        ) from None
    with f:
        if "layers" not in f:
            raise MergeMismatchError(f"{path} has no 'layers' group: not a spectral run file")
        if any(RUN_GROUP_RE.match(k) for k in f.keys()):
            raise MergeMismatchError(
                f"{path} is already a merged file (it has *_run<r> groups); merge the original per-run files instead"
            )
        layers = {}
        for name, g in f["layers"].items():
            shape = tuple(int(s) for s in g.attrs["shape"]) if "shape" in g.attrs else None
            analyses = {}
            for analysis, sub in g.items():
                keys = list(sub.keys())
                if any(DATASET_RE.match(k) and DATASET_RE.match(k).group(2) for k in keys):
                    raise MergeMismatchError(
                        f"{path} is already a merged file (layers/{name}/{analysis} holds batch_<i>_run<r> datasets)"
                    )
                lengths = {sub[k].shape for k in keys}
                analyses[analysis] = (len(keys), sorted(lengths)[0] if lengths else None)
            layers[name] = {"shape": shape, "analyses": analyses}
        n_ckpt = (
            int(f["batches"].shape[0])
            if "batches" in f
            else max((a[0] for L in layers.values() for a in L["analyses"].values()), default=0)
        )
        n_loss = int(f["loss_values"].shape[0]) if "loss_values" in f else 0
    return _RunInfo(Path(path), layers, n_ckpt, n_loss)


def _compare_runs(ref: _RunInfo, other: _RunInfo, r_ref: int, r_other: int) -> list[str]:
    diffs = []
    a, b = set(ref.layers), set(other.layers)
    if a - b:
        diffs.append(
            f"layers only in run {r_ref}: {sorted(a - b, key=natural_key)[:8]}" + (" ..." if len(a - b) > 8 else "")
        )
    if b - a:
        diffs.append(
            f"layers only in run {r_other}: {sorted(b - a, key=natural_key)[:8]}" + (" ..." if len(b - a) > 8 else "")
        )
    for name in sorted(a & b, key=natural_key):
        la, lb = ref.layers[name], other.layers[name]
        if la["shape"] != lb["shape"]:
            diffs.append(f"shape of {name}: {la['shape']} in run {r_ref} vs {lb['shape']} in run {r_other}")
            continue
        if set(la["analyses"]) != set(lb["analyses"]):
            diffs.append(
                f"analyses of {name}: {sorted(la['analyses'])} in run {r_ref} vs "
                f"{sorted(lb['analyses'])} in run {r_other}"
            )
            continue
        for an in la["analyses"]:
            if la["analyses"][an][1] != lb["analyses"][an][1]:
                diffs.append(
                    f"{an} length of {name}: {la['analyses'][an][1]} in run {r_ref} vs "
                    f"{lb['analyses'][an][1]} in run {r_other}"
                )
    return diffs


def merge_runs(run_files: Sequence[str | os.PathLike], out_path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Merge per-run files into one file in the seed's layout (runs numbered 1..N in this order).

    Refuses (``MergeMismatchError``, a message listing what differs, run by run) when the runs'
    layers, weight shapes, analyses or spectrum lengths disagree. Runs may have different numbers
    of checkpoints and loss entries; ``merge_metadata/checkpoint_counts`` and ``loss_counts`` record
    them. The output is written under a temp name and renamed at the end, so an interrupted merge
    leaves no file under ``out_path``. Without ``overwrite`` the final name is created exclusively
    (a hard link), so of several merges racing to one new name exactly one succeeds and the others
    get ``FileExistsError``. The output folder must exist, the output must not be a folder, and each run
    file is given once (the same file twice, under any name, is refused).
    """
    h5py = h5py_module()
    paths = [Path(p) for p in run_files]
    if not paths:
        raise ValueError("merge_runs needs at least one run file")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"run file {p} does not exist")
    seen: dict[tuple[int, int], int] = {}
    for r, p in enumerate(paths, start=1):
        st = p.stat()
        first = seen.setdefault((st.st_dev, st.st_ino), r)
        if first != r:
            raise ValueError(
                f"run file {p} is given twice (runs {first} and {r}): a merged file of N runs needs N different "
                "run files; give each once"
            )
    out_path = Path(out_path)
    if out_path.is_dir():
        raise IsADirectoryError(
            f"the output {out_path} is a folder: give the merged file's name, e.g. {out_path}/merged.h5"
        )
    if not out_path.parent.is_dir():
        raise FileNotFoundError(
            f"output folder {out_path.parent} does not exist: create it first or choose another path"
        )
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} exists; pass --overwrite (overwrite=True) or choose another name")
    if out_path.resolve() in {p.resolve() for p in paths}:
        raise ValueError(f"the output {out_path} is one of the inputs")
    infos = [_describe_run_file(p) for p in paths]
    problems = []
    for r, info in enumerate(infos[1:], start=2):
        d = _compare_runs(infos[0], info, 1, r)
        if d:
            problems.append(
                f"run {r} ({info.path.name}) differs from run 1 ({infos[0].path.name}):\n  - " + "\n  - ".join(d)
            )
    if problems:
        raise MergeMismatchError("cannot merge runs whose layers or shapes disagree:\n" + "\n".join(problems))

    layer_names = sorted(infos[0].layers, key=natural_key)
    tmp = temp_path_next_to(out_path)
    try:
        with h5py.File(tmp, "w") as out:
            out.attrs["format"] = FORMAT
            out.attrs["format_version"] = FORMAT_VERSION
            out.attrs["layout"] = "merged"
            out.attrs["batch_index"] = BATCH_INDEX_DOC
            out.attrs["eigenvalue_storage"] = EIGENVALUE_STORAGE
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
                for name in layer_names:
                    g = lg.create_group(name)
                    for k, v in srcs[0]["layers"][name].attrs.items():
                        g.attrs[k] = v
                    for analysis in sorted(infos[0].layers[name]["analyses"]):
                        ga = g.create_group(analysis)
                        for r, src in enumerate(srcs, start=1):
                            sub = src["layers"][name][analysis]
                            for key in sorted(sub.keys(), key=natural_key):
                                m = DATASET_RE.match(key)
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
                write_attrs(
                    mm,
                    {
                        "n_runs": len(paths),
                        "sources": [p.name for p in paths],
                        "source_sizes": [p.stat().st_size for p in paths],
                        "created_utc": utc_now(),
                        "format": FORMAT,
                        "batch_index": BATCH_INDEX_DOC,
                        "n_layers": len(layer_names),
                    },
                )
                mm.create_dataset("loss_counts", data=np.asarray(loss_counts, np.int64))
                mm.create_dataset("checkpoint_counts", data=np.asarray(ckpt_counts, np.int64))
                mm.create_dataset("run_ids", data=np.arange(1, len(paths) + 1, dtype=np.int64))
            finally:
                for s in srcs:
                    s.close()
        _place(tmp, out_path, overwrite)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def _place(tmp: Path, out_path: Path, overwrite: bool) -> None:
    """Move the finished temp file to ``out_path``: replace it when ``overwrite``, else create it
    exclusively (``os.link`` fails when the name exists, even if another merge won the race)."""
    os.chmod(tmp, default_file_mode())
    if overwrite:
        os.replace(tmp, out_path)
        return
    try:
        os.link(tmp, out_path)
    except FileExistsError:
        raise FileExistsError(
            f"{out_path} was created by someone else while merging; pass --overwrite "
            "(overwrite=True) or choose another name"
        ) from None
