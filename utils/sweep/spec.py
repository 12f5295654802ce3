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
parameters cell: converted to its declared types and checked against its rules (choices, bounds, a
layer index of the run's model when the model opens here; :mod:`utils.running.params`). ``gpu: true``
(or a ``device`` of ``cuda`` / ``cuda:N``) makes a run need a GPU worker (the Dask resource ``GPU=1``);
``device: auto`` runs anywhere. A sweep of more than ``max_runs`` runs is refused before its grid is
expanded (the command line's limit is :data:`MAX_RUNS`; ``--max-runs N`` or ``--yes`` lifts it).

A run's *key* (its folder name) joins its grid values, ``model=random-smollm2+anchor=last``, and
depends on nothing else, so a run keeps its key when a grid grows. A value that is a plain word
(letters, digits, ``_``, ``-``) is written as it is, a number with ``.`` as ``p``, ``random:X`` as
``random-X`` and a seed ``@N`` as ``-N``; any other value (a path, a hub id, text with other
characters) is written readably (the last components of a path, up to 40 characters, other characters
as ``-``) followed by a short hash of the exact value, so two paths ending alike never share a key:
``model=ckpt-final-3f2a91c0``. ``default`` for an entry without grid; a key longer than 100 characters
is cut and given a hash of the run's parameters. Two runs of one notebook with the same key are
refused, naming both. Every mistake is one :class:`SweepError` naming the key, e.g.
``sweeps/x.yaml: runs[1].grid.anchor: must be a non-empty list of values, got 'last'``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from ..running.context import PLACE
from ..running.params import ParameterError, check_params, notebook_parameters
from ..running.paths import RUN_NAME_RULE, BadRunName, check_run_name, find_notebook

TOP_KEYS = ("name", "description", "runs")
RUN_KEYS = ("notebook", "params", "grid", "gpu", "after")
RESERVED = PLACE  # run_name, output_root: set by the sweep for every run
MAX_KEY = 100
MAX_RUNS = 200  # the command line's default limit on the runs of one sweep file
_WORD = re.compile(r"[A-Za-z0-9_-]+")
_TAIL = 40  # characters of a path's last components in a key


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
    source: str = ""  # the notebook's file

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


def _hash(value) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _readable(s: str) -> str:
    """A path's last components (up to :data:`_TAIL` characters), other characters as ``-``."""
    parts = [c for c in re.split(r"[/\\]+", s) if c not in ("", ".")]
    tail: list[str] = []
    for c in reversed(parts):
        if tail and len("-".join([c] + tail)) > _TAIL:
            break
        tail.insert(0, c)
    return re.sub(r"[^A-Za-z0-9_]+", "-", "-".join(tail)).strip("-")[-_TAIL:].strip("-") or "x"


def _slug(value) -> str:
    """A value as part of a run key (module docstring): a function of the value alone, never of the other runs."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value).replace(".", "p").replace("+", "")
    s, prefix, seed = str(value).strip(), "", ""
    if s.lower().startswith("random:"):
        prefix, s = "random-", s[len("random:") :].strip()
        m = re.fullmatch(r"(.*)@([0-9]+)", s)
        if m:
            s, seed = m.group(1), f"-{m.group(2)}"
    if _WORD.fullmatch(s):
        return prefix + s + seed
    return f"{prefix}{_readable(s)}{seed}-{_hash(str(value))}"


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
        return declared[name].convert(value)
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


def _grid_size(where: str, grid) -> int:
    for k, values in grid.items():
        if not isinstance(values, list) or not values:
            _fail(f"{where}.grid.{k}", f"must be a non-empty list of values, got {values!r}")
    return math.prod(len(v) for v in grid.values())


def _expand_entry(where: str, nb_path: str, params: dict, grid: dict, gpu, index: int) -> list[RunSpec]:
    declared_list = notebook_parameters(nb_path)
    declared = {p.name: p for p in declared_list}
    defaults = {p.name: p.default for p in declared_list}
    stem = Path(nb_path).stem
    fixed = {k: _typed(f"{where}.params.{k}", declared, k, v) for k, v in params.items()}
    axes = {}
    for k, values in grid.items():
        if k in fixed:
            _fail(f"{where}.grid.{k}", "is also in params; give it in one place")
        axes[k] = [_typed(f"{where}.grid.{k}[{i}]", declared, k, v) for i, v in enumerate(values)]
        seen: dict = {}
        for i, v in enumerate(axes[k]):
            if (type(v), v) in seen:
                _fail(f"{where}.grid.{k}", f"lists {v!r} twice (items {seen[(type(v), v)]} and {i}); list it once")
            seen[(type(v), v)] = i
    if gpu is not None and not isinstance(gpu, bool):
        _fail(f"{where}.gpu", f"must be true or false, got {gpu!r}")
    runs = []
    for combo in itertools.product(*axes.values()):
        g = dict(zip(axes, combo))
        p = {**fixed, **g}
        try:  # model indices (when the model opens here) and the device's spelling
            check_params(declared_list, {**defaults, **p}, here=False)
        except ParameterError as e:
            _fail(where + (" (" + ", ".join(f"{k}={v!r}" for k, v in g.items()) + ")" if g else ""), str(e))
        device = str(p.get("device", "")).strip().lower()
        needs_gpu = bool(gpu) if gpu is not None else device.startswith("cuda")
        runs.append(RunSpec(stem, run_key(g), p, g, index, needs_gpu, source=str(nb_path)))
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
    """Keys cut to :data:`MAX_KEY`; two runs of one notebook under one key are refused, naming both."""
    out = [r if len(r.key) <= MAX_KEY else replace(r, key=f"{r.key[: MAX_KEY - 9]}-{_hash(r.params)}") for r in runs]
    seen: dict[tuple, RunSpec] = {}
    for r in out:
        other = seen.setdefault((r.notebook, r.key), r)
        if other is r:
            continue
        differ = sorted(k for k in set(r.params) | set(other.params) if r.params.get(k) != other.params.get(k))
        if not differ:
            _fail(where, f"runs[{other.entry}] and runs[{r.entry}] both give the run {r.notebook}/{r.key} with the "
                         "same parameters; remove one")  # fmt: skip
        _fail(where, f"runs[{other.entry}] and runs[{r.entry}] both give the run {r.notebook}/{r.key} (they differ in "
                     f"{', '.join(differ)}): a run's key is its grid values, so give the runs of one notebook "
                     "different grid values, e.g. move the differing parameters into one entry's grid")  # fmt: skip
    return out


def parse_sweep(data, where: str = "sweep", max_runs: int | None = None) -> Sweep:
    """A :class:`Sweep` from the parsed YAML ``data`` (module docstring); ``where`` names the file in messages.
    ``max_runs``: refuse, before expanding the grids, a sweep of more runs (None: no limit)."""
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
    checked = [_entry(f"{where}: runs[{i}]", item, i) for i, item in enumerate(entries)]
    total = sum(_grid_size(f"{where}: runs[{i}]", c[2]) for i, c in enumerate(checked))
    if max_runs is not None and total > max_runs:
        _fail(f"{where}: runs", f"the grids give {total:,} runs, more than the limit of {max_runs:,} (a guard against "
                                f"a mistyped grid): pass --max-runs {total} (or --yes) to run them all")  # fmt: skip
    runs, earlier = [], []
    for i, (nb_path, params, grid, gpu, after) in enumerate(checked):
        w = f"{where}: runs[{i}]"
        deps = _after(f"{w}.after", after, earlier)
        try:
            new = _expand_entry(w, nb_path, params, grid, gpu, i)
        except ParameterError as e:  # the notebook's own parameters cell is broken
            _fail(f"{w}.notebook", str(e))
        runs.extend(replace(r, after=deps) for r in new)
        earlier.append(Path(nb_path).stem)
    return Sweep(str(name), _unique_keys(runs, where), description=str(data.get("description") or ""), source=data)


def load_sweep(path, max_runs: int | None = None) -> Sweep:
    """Read and check the sweep file at ``path`` (``max_runs``: see :func:`parse_sweep`)."""
    p = Path(path)
    if not p.is_file():
        known = sorted(str(q) for q in Path("sweeps").glob("*.yaml")) if Path("sweeps").is_dir() else []
        raise SweepError(f"no sweep file {str(path)!r}" + (f"; sweep files here: {', '.join(known)}" if known else ""))
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"{p}: not valid YAML ({e})") from None
    sweep = parse_sweep(data, str(p), max_runs)
    sweep.path = p
    return sweep
