"""Where things are: the project root, the notebooks, the output root and run folders.

One rule for results, whatever runs a notebook (the runner, papermill, ``jupytext --execute``,
JupyterLab): a relative ``output_root`` is resolved against the project root, not the kernel's
working folder, and the environment variable ``TSPECTRA_OUTPUT`` (when set) replaces the default
``output``. A run's folder is ``<output root>/<notebook>/<run name>/``, or
``<output root>/<notebook>/<group>/<run name>/`` for a run of a group (a sweep: the group is the
sweep's name, the run name its run key).

Run names and group names are one path component each from a documented character set
(:data:`RUN_NAME_RULE`, matched in full: no trailing newline slips through), checked before anything
is created; the resolved folder must lie inside the output root, and the output root must be a folder
this process can write to (:func:`check_output_root`, :func:`make_folder`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
DEFAULT_OUTPUT = "output"
OUTPUT_ENV = "TSPECTRA_OUTPUT"
RUN_NAME_RULE = (
    "1 to 100 characters from letters, digits, '_', '-', '=' and '+', starting with a letter or digit "
    "(one folder name: no '.', no '/', no spaces)"
)
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_=+-]{0,99}")


class RunRefused(ValueError):
    """A run that cannot start here: refused before anything is written (the message names the fix)."""


class BadRunName(RunRefused):
    """A run name that is not a single safe folder name."""


class OutputRootError(RunRefused):
    """An output root that is not a folder this process can write to."""


def check_run_name(name, what: str = "run name") -> str:
    """``name`` if it is a valid run name (:data:`RUN_NAME_RULE`), else :class:`BadRunName`."""
    if not isinstance(name, str) or not _RUN_NAME.fullmatch(name):
        raise BadRunName(f"{what} {name!r} is not allowed: use {RUN_NAME_RULE}")
    return name


def output_root(value: str | os.PathLike | None = None) -> Path:
    """The absolute output root for an ``output_root`` parameter value (module docstring)."""
    v = "" if value is None else str(value).strip()
    if v in ("", DEFAULT_OUTPUT):
        v = os.environ.get(OUTPUT_ENV, "").strip() or DEFAULT_OUTPUT
    p = Path(v).expanduser()
    return (p if p.is_absolute() else PROJECT_ROOT / p).resolve()


def check_output_root(root: Path) -> Path:
    """``root`` if it is, or can become, a folder: the nearest existing folder on its path must be a folder
    this process may write to. Creates nothing; :func:`make_folder` catches what only creating can show."""
    p = Path(root)
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise OutputRootError(
            f"the output root {root} cannot be a folder: {p} is a file; choose another --output-root (or move {p})"
        )
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputRootError(
            f"the output root {root} is not writable ({p}: permission denied); "
            "choose another --output-root or fix its permissions"
        )
    return Path(root)


def make_folder(folder: Path, root: Path) -> Path:
    """Create ``folder`` (and its parents) under the output root ``root``, or :class:`OutputRootError`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputRootError(
            f"cannot create {folder} under the output root {root} ({e.strerror or e}); "
            "choose another --output-root or fix its permissions"
        ) from None
    return folder


def run_dir(root: str | os.PathLike, notebook: str, run_name: str, group: str | None = None) -> Path:
    """``<root>/<notebook>/[<group>/]<run_name>``, checked to lie inside ``root``."""
    check_run_name(run_name)
    root = Path(root).resolve()
    parent = root / notebook / check_run_name(group, "group name") if group else root / notebook
    d = (parent / run_name).resolve()
    if root not in d.parents:
        raise BadRunName(f"run folder {d} would lie outside the output root {root}")
    return d


def find_notebook(name: str | os.PathLike) -> Path:
    """Accept ``notebooks/01_weight_ranks.py``, ``01_weight_ranks``, ``01`` or an .ipynb path."""
    p = Path(name)
    if p.is_file():
        return p.resolve()
    stem = p.stem if p.suffix in (".py", ".ipynb") else p.name
    matches = sorted(NOTEBOOK_DIR.glob(f"{stem}*.py"))
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(q.stem for q in sorted(NOTEBOOK_DIR.glob("[0-9]*.py")))
    raise FileNotFoundError(
        f"notebook {str(name)!r} not found{' (ambiguous)' if matches else ''}; known notebooks: {known}"
    )


def notebook_source(notebook: str) -> Path:
    """The ``.py`` source of a notebook named by its stem (``01_weight_ranks``)."""
    p = NOTEBOOK_DIR / f"{notebook}.py"
    if not p.is_file():
        raise FileNotFoundError(f"no notebook source {p}")
    return p
