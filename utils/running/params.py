"""Notebook parameters: read from the ``parameters`` cell, typed, and checked by shared rules.

Each notebook has one cell tagged ``parameters`` of lines ``name: type = literal  # help``, with
type ``str``, ``int``, ``float`` or ``bool``. :func:`notebook_parameters` reads that cell (the same
way papermill does, plus the help comment), and :func:`coerce` converts a value given on the
command line or by papermill to the declared type:

* ``bool`` accepts ``True/False``, ``1/0`` and the strings ``true/false/yes/no/1/0`` in any case;
* ``int`` accepts integers and integer strings; ``float`` numbers and numeric strings;
* ``str`` accepts strings (numbers are turned into their text).

Anything else is a :class:`ParameterError` naming the parameter and its type. The shared
validators (:func:`check_positive`, :func:`check_choice`, :func:`check_index`, ...) give every
notebook the same rules and messages; ``device`` goes through :func:`utils.device.resolve_device`.
"""

from __future__ import annotations

import ast
import io
import os
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

TYPES = {"str": str, "int": int, "float": float, "bool": bool}
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}


class ParameterError(ValueError):
    """A parameter value that does not fit its declared type or rule."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: Any
    help: str


def _comments(source: str) -> dict[int, str]:
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def parse_parameters(source: str, where: str = "parameters cell") -> list[Param]:
    """The parameters declared in the source of a parameters cell (``name: type = literal  # help``)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ParameterError(f"{where}: line {e.lineno} is not valid Python ({e.msg})") from None
    comments = _comments(source)
    out = []
    for node in tree.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None):
            raise ParameterError(f"{where}: line {node.lineno} is not of the form `name: type = value  # help`")
        t = node.annotation.id if isinstance(node.annotation, ast.Name) else None
        if t not in TYPES:
            raise ParameterError(
                f"{where}: {node.target.id} has type {ast.unparse(node.annotation)!r}; use str, int, float or bool"
            )
        try:
            default = ast.literal_eval(node.value)
        except ValueError:
            raise ParameterError(f"{where}: the default of {node.target.id} is not a plain literal") from None
        out.append(Param(node.target.id, t, coerce_value(node.target.id, t, default), comments.get(node.lineno, "")))
    return out


def parameters_cell_source(path: str | os.PathLike) -> str:
    """The source of the cell tagged ``parameters`` in a jupytext ``.py`` or an ``.ipynb`` notebook."""
    import jupytext

    nb = jupytext.read(Path(path))
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ParameterError(f"{path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    return cells[0].source


def notebook_parameters(path: str | os.PathLike) -> list[Param]:
    """The parameters of the notebook at ``path`` (see module docstring)."""
    return parse_parameters(parameters_cell_source(path), where=f"{Path(path).name} parameters cell")


def coerce_value(name: str, type_name: str, value):
    """``value`` converted to ``type_name`` (module docstring), or :class:`ParameterError`."""
    bad = ParameterError(f"parameter {name} must be {_describe(type_name)}, got {value!r}")
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad
    if type_name == "int":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if type_name == "float":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if type_name == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise ParameterError(f"parameter {name} has unknown type {type_name!r}")


def _describe(type_name: str) -> str:
    return {
        "bool": "a bool (true/false, 1/0)",
        "int": "an integer",
        "float": "a number",
        "str": "a string",
    }.get(type_name, type_name)


def coerce_all(declared: Iterable[Param], given: dict) -> dict:
    """Every given value converted to its declared type; unknown names are a :class:`ParameterError`."""
    by_name = {p.name: p for p in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise ParameterError(f"unknown parameter(s) {', '.join(unknown)}; the parameters are: {', '.join(by_name)}")
    return {k: coerce_value(k, by_name[k].type, v) for k, v in given.items()}


# ----------------------------------------------------------------------------- shared rules
def check_positive(**values) -> None:
    """Each value must be > 0."""
    for k, v in values.items():
        if not v > 0:
            raise ParameterError(f"parameter {k} must be > 0, got {v!r}")


def check_nonnegative(**values) -> None:
    """Each value must be >= 0."""
    for k, v in values.items():
        if not v >= 0:
            raise ParameterError(f"parameter {k} must be >= 0, got {v!r}")


def check_choice(name: str, value, choices: Iterable) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ParameterError(f"parameter {name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_index(name: str, value: int, n: int, what: str) -> int:
    """``value`` as an index 0..n-1 (negative counts from the end); ``IndexError`` naming the range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(f"parameter {name} must be an integer, got {value!r}")
    if not -n <= value < n:
        raise IndexError(f"{name}={value} is out of range: there are {n} {what} (use 0..{n - 1}, or -1 for the last)")
    return value % n


def check_file(name: str, value: str, what: str = "file") -> Path:
    """An existing file named by parameter ``name``; ``FileNotFoundError`` naming it otherwise."""
    p = Path(value).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"parameter {name}={value!r}: no such {what}")
    return p
