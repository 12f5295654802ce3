"""Sweep files: what to run, read and checked before anything runs.

A sweep file is YAML::

    name: smollm2-vs-init            # the sweep's folder: output/<notebook>/<name>/<run key>/
    description: one line             # optional
    runs:
      - notebook: 01_weight_ranks     # NN_name, NN, or notebooks/NN_name.py
        grid: {model: [smollm2, "random:smollm2"]}
      - notebook: 03_sa_rescale
        params: {n_seqs: 8}           # fixed parameters of every run of this entry
        grid: {model: [smollm2, "random:smollm2"], anchor: [last, middle]}
      - notebook: 06_compare
        params: {sweep: smollm2-vs-init}
        after: all                    # wait for every run of the entries above (or a list of notebooks)

Each entry gives the cartesian product of its ``grid`` lists (one run when there is no grid), every
run with the entry's ``params``. Parameter names and values are checked against the notebook's own
parameters cell and converted to its declared types. ``gpu: true`` (or a ``device`` of ``cuda`` /
``cuda:N``) makes a run need a GPU worker (the Dask resource ``GPU=1``); ``device: auto`` runs anywhere.

A run's *key* (its folder name) joins the grid values, ``model=random-smollm2+anchor=last`` (characters
outside the run-name set become ``-``, a path gives its last component, ``.`` in a number gives ``p``);
``default`` for an entry without grid; two runs of one notebook whose keys would coincide get a short
hash of their parameters appended. Every mistake is one :class:`SweepError` naming the key, e.g.
``sweeps/x.yaml: runs[1].grid.anchor: must be a non-empty list of values, got 'last'``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..running.params import ParameterError, coerce_value, notebook_parameters
from ..running.paths import RUN_NAME_RULE, BadRunName, check_run_name, find_notebook

TOP_KEYS = ("name", "description", "runs")
RUN_KEYS = ("notebook", "params", "grid", "gpu", "after")
RESERVED = ("run_name", "output_root")  # set by the sweep for every run
MAX_KEY = 100


class SweepError(ValueError):
    """A sweep file that cannot be run; the message names the file and the key."""


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: notebook stem, run key, typed parameters (fixed and grid), placement."""

    notebook: str
    key: str
    params: dict
    grid: dict
    entry: int
    gpu: bool = False
    after: tuple = ()  # notebook stems of earlier entries this run waits for

    @property
    def label(self) -> str:
        return f"{self.notebook}/{self.key}"


@dataclass
class Sweep:
    name: str
    runs: list[RunSpec]
    path: Path | None = None
    description: str = ""
    source: dict = field(default_factory=dict)

    def notebooks(self) -> list[str]:
        return list(dict.fromkeys(r.notebook for r in self.runs))


def _slug(value) -> str:
    """A value as part of a folder name: ``random:path/to/model@3`` gives ``random-model-3``."""
    if isinstance(value, bool):
        return str(value).lower()
    s, prefix, seed = str(value).strip(), "", ""
    if isinstance(value, float):
        s = s.replace(".", "p")
    if s.lower().startswith("random:"):
        prefix, s = "random-", s[len("random:") :]
    if "@" in s and s.rsplit("@", 1)[1].isdigit():
        s, seed = s.rsplit("@", 1)
        seed = f"-{seed}"
    if "/" in s.rstrip("/"):
        s = Path(s.rstrip("/")).name
    s = re.sub(r"[^A-Za-z0-9_-]+", "-", prefix + s + seed).strip("-")
    return s or "x"


def _hash(params: dict) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_key(grid: dict) -> str:
    """The readable part of a run's folder name (module docstring)."""
    if not grid:
        return "default"
    return "+".join(f"{k}={_slug(v)}" for k, v in grid.items())


def _fail(where: str, msg: str):
    raise SweepError(f"{where}: {msg}")


def _typed(where: str, declared: dict, name: str, value):
    if name in RESERVED:
        _fail(where, f"{name} is set by the sweep for every run; remove it")
    if name not in declared:
        _fail(where, f"unknown parameter {name!r}; the parameters are: {', '.join(n for n in declared)}")
    try:
        return coerce_value(name, declared[name].type, value)
    except ParameterError as e:
        _fail(where, str(e))


def _entry(where: str, item, index: int) -> tuple[str, dict, dict, object, object]:
    if not isinstance(item, dict):
        _fail(where, f"must be a mapping with notebook, params, grid; got {item!r}")
    unknown = [k for k in item if k not in RUN_KEYS]
    if unknown:
        _fail(f"{where}.{unknown[0]}", f"unknown key; a run entry has: {', '.join(RUN_KEYS)}")
    if "notebook" not in item or not isinstance(item["notebook"], (str, int)):
        _fail(f"{where}.notebook", "missing: name the notebook, e.g. notebook: 01_weight_ranks")
    name = item["notebook"]  # YAML reads `notebook: 03` as the integer 3
    try:
        nb = find_notebook(f"{name:02d}" if isinstance(name, int) and not isinstance(name, bool) else str(name))
    except FileNotFoundError as e:
        _fail(f"{where}.notebook", str(e))
    params, grid = item.get("params") or {}, item.get("grid") or {}
    for k, v in (("params", params), ("grid", grid)):
        if not isinstance(v, dict):
            _fail(f"{where}.{k}", f"must be a mapping of parameter names to values, got {v!r}")
    return str(nb), params, grid, item.get("gpu"), item.get("after")


def _expand_entry(where: str, nb_path: str, params: dict, grid: dict, gpu, index: int) -> list[RunSpec]:
    declared = {p.name: p for p in notebook_parameters(nb_path)}
    stem = Path(nb_path).stem
    fixed = {k: _typed(f"{where}.params.{k}", declared, k, v) for k, v in params.items()}
    axes = {}
    for k, values in grid.items():
        if k in fixed:
            _fail(f"{where}.grid.{k}", "is also in params; give it in one place")
        if not isinstance(values, list) or not values:
            _fail(f"{where}.grid.{k}", f"must be a non-empty list of values, got {values!r}")
        axes[k] = [_typed(f"{where}.grid.{k}[{i}]", declared, k, v) for i, v in enumerate(values)]
    if gpu is not None and not isinstance(gpu, bool):
        _fail(f"{where}.gpu", f"must be true or false, got {gpu!r}")
    runs = []
    for combo in itertools.product(*axes.values()):
        g = dict(zip(axes, combo))
        p = {**fixed, **g}
        device = str(p.get("device", "")).strip().lower()
        needs_gpu = bool(gpu) if gpu is not None else device.startswith("cuda")
        runs.append(RunSpec(stem, run_key(g), p, g, index, needs_gpu))
    return runs


def _after(where: str, after, earlier: list[str]) -> tuple:
    if after is None:
        return ()
    if after == "all":
        return tuple(dict.fromkeys(earlier))
    names = [after] if isinstance(after, str) else after
    if not isinstance(names, list) or not all(isinstance(a, str) for a in names):
        _fail(where, f"must be 'all' or a list of notebooks of earlier entries, got {after!r}")
    out = []
    for a in names:
        match = [e for e in earlier if e == a or e.startswith(a)]
        if len(set(match)) != 1:
            known = ", ".join(earlier) or "none"
            _fail(where, f"{a!r} names no single notebook of an earlier entry (earlier: {known})")
        out.append(match[0])
    return tuple(dict.fromkeys(out))


def _unique_keys(runs: list[RunSpec], where: str) -> list[RunSpec]:
    """Append a parameter hash to keys that coincide within a notebook; identical runs are an error."""
    seen: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs):
        seen.setdefault((r.notebook, r.key), []).append(i)
    out = list(runs)
    for (nb, key), idx in seen.items():
        if len(idx) > 1:
            hashes = [_hash(runs[i].params) for i in idx]
            if len(set(hashes)) < len(hashes):
                a, b = (runs[i].entry for i in idx[:2])
                _fail(where, f"runs[{a}] and runs[{b}] both give the run {nb}/{key} with the same parameters")
            for i, h in zip(idx, hashes):
                out[i] = _replace_key(runs[i], f"{key[: MAX_KEY - 9]}-{h}")
    for i, r in enumerate(out):
        if len(r.key) > MAX_KEY:
            out[i] = _replace_key(r, f"{r.key[: MAX_KEY - 9]}-{_hash(r.params)}")
    return out


def _replace_key(r: RunSpec, key: str) -> RunSpec:
    return RunSpec(r.notebook, key, r.params, r.grid, r.entry, r.gpu, r.after)


def parse_sweep(data, where: str = "sweep") -> Sweep:
    """A :class:`Sweep` from the parsed YAML ``data`` (module docstring); ``where`` names the file in messages."""
    if not isinstance(data, dict):
        _fail(where, f"must be a mapping with keys {', '.join(TOP_KEYS)}; got {type(data).__name__}")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        _fail(f"{where}: {unknown[0]}", f"unknown key; a sweep file has: {', '.join(TOP_KEYS)}")
    name = data.get("name")
    if name is None:
        _fail(f"{where}: name", "missing: give the sweep a name (its output folder)")
    try:
        check_run_name(str(name) if isinstance(name, (str, int)) else name, "sweep name")
    except BadRunName:
        _fail(f"{where}: name", f"{name!r} is not allowed: use {RUN_NAME_RULE}")
    entries = data.get("runs")
    if not isinstance(entries, list) or not entries:
        _fail(f"{where}: runs", "must be a non-empty list of run entries (notebook, params, grid)")
    runs, earlier = [], []
    for i, item in enumerate(entries):
        w = f"{where}: runs[{i}]"
        nb_path, params, grid, gpu, after = _entry(w, item, i)
        deps = _after(f"{w}.after", after, earlier)
        try:
            new = _expand_entry(w, nb_path, params, grid, gpu, i)
        except ParameterError as e:  # the notebook's own parameters cell is broken
            _fail(f"{w}.notebook", str(e))
        runs.extend(RunSpec(r.notebook, r.key, r.params, r.grid, r.entry, r.gpu, deps) for r in new)
        earlier.append(Path(nb_path).stem)
    return Sweep(str(name), _unique_keys(runs, where), description=str(data.get("description") or ""), source=data)


def load_sweep(path) -> Sweep:
    """Read and check the sweep file at ``path``."""
    import yaml

    p = Path(path)
    if not p.is_file():
        known = sorted(str(q) for q in Path("sweeps").glob("*.yaml")) if Path("sweeps").is_dir() else []
        raise SweepError(f"no sweep file {str(path)!r}" + (f"; sweep files here: {', '.join(known)}" if known else ""))
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"{p}: not valid YAML ({e})") from None
    sweep = parse_sweep(data, str(p))
    sweep.path = p
    return sweep
