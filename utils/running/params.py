"""Notebook parameters: declared once in the ``parameters`` cell, typed, and checked up front.

Each notebook has one cell tagged ``parameters`` of lines ``name: type = literal  # help {rule}``: type
``str``, ``int``, ``float`` or ``bool``, a plain literal, and a comment. The comment is the help text
(papermill shows the same), and may end with a *rule* in braces, the parameter's choices or bounds:

========================  ================================================================================
``{last, middle, best}``  one of these values (read with the parameter's type: ``{4, 6, 10}`` for an int;
                          quote a value with a comma or an empty string: ``{"", auto}``)
``{0..}``, ``{1..64}``    a range, ends included, either end open (``{..1}``: at most 1)
``{> 0}``, ``{< 1}``      strict bounds; several terms are joined by commas: ``{> 0, ..1}``
``{layer of model}``      an index into the layers of the model named by parameter ``model`` (negative
                          counts from the end); ``{head of model}``: into its query heads
========================  ================================================================================

(No ``=`` in a rule: papermill reads a line with two ``=`` as no parameter at all.)

A parameter named ``device`` follows the device rule (``auto``, ``cpu``, ``cuda`` or ``cuda:N``, and a
GPU only where one is visible; see :mod:`utils.device`). :func:`notebook_parameters` reads the cell
once per process (cached by the file's size and modification time); :meth:`Param.convert` converts
a value given on the command line, in a sweep file or by papermill, and checks its choices and bounds;
:func:`check_params` checks what needs several values or the machine (model indices, the device).

Conversions (nothing else is accepted; each refusal is a :class:`ParameterError` naming the
parameter, what it must be and what it got):

* ``bool``: ``True/False``, ``1/0``, and the strings ``true/false/1/0`` in any case;
* ``int``: integers, integral floats and strings of ASCII digits with an optional sign (no ``1_000``);
* ``float``: finite numbers and decimal strings (``2e-3``; no ``nan``, ``inf`` or ``1_0``);
* ``str``: strings, and numbers as their text.
"""

from __future__ import annotations

import ast
import functools
import io
import math
import operator
import os
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

TYPES = {"str": str, "int": int, "float": float, "bool": bool}
_TRUE, _FALSE = {"true", "1"}, {"false", "0"}
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_RULE = re.compile(r"\{([^{}]*)\}\s*$")
_STRICT = re.compile(r"([<>])\s*(\S+)")
_RANGE = re.compile(r"(\S*?)\s*\.\.\s*(\S*)")
_INDEX = re.compile(r"(layer|head) of ([A-Za-z_]\w*)")
_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
INDEX_KINDS = {"layer": ("L", "layers"), "head": ("h", "query heads per layer")}
DEVICE = re.compile(r"auto|cpu|cuda(?::[0-9]+)?", re.IGNORECASE)
DEVICE_CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"


class ParameterError(ValueError):
    """A parameter value that does not fit its declared type or rule."""


@dataclass(frozen=True)
class Rule:
    """The choices, bounds or model index a parameter's comment declares (module docstring)."""

    text: str
    choices: tuple = ()
    bounds: tuple = ()  # ((op, number), ...)
    index: tuple | None = None  # (kind, name of the model parameter)

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(repr, self.choices))
        if self.bounds:
            words = {">": "greater than", ">=": "at least", "<": "less than", "<=": "at most"}
            return " and ".join(f"{words[op]} {b:g}" for op, b in self.bounds)
        return f"an index into the {INDEX_KINDS[self.index[0]][1]} of {self.index[1]}"

    def check(self, name: str, value) -> None:
        """Choices and bounds (an index needs the model: :func:`check_params`)."""
        if self.choices and value not in self.choices:
            raise ParameterError(f"parameter {name} must be {self.describe()}; got {value!r}")
        if self.bounds and not all(_OPS[op](value, b) for op, b in self.bounds):
            raise ParameterError(f"parameter {name} must be {self.describe()}; got {value!r}")


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: Any
    help: str  # the whole comment, as papermill reads it (rule included)
    rule: Rule | None = None

    def convert(self, value):
        """``value`` converted to the declared type and checked against the choices and bounds."""
        v = coerce_value(self.name, self.type, value)
        if self.rule is not None:
            self.rule.check(self.name, v)
        return v


def _comments(source: str) -> dict[int, str]:
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def parse_rule(name: str, type_name: str, comment: str, where: str) -> Rule | None:
    """The rule at the end of a parameter's comment, or None (module docstring)."""
    m = _RULE.search(comment)
    if not m:
        return None
    text = m.group(1).strip()
    bad = f"{where}: the rule {{{text}}} of {name}"
    if (ix := _INDEX.fullmatch(text)) is not None:
        if type_name != "int":
            raise ParameterError(f"{bad} needs an int parameter")
        return Rule(text, index=(ix.group(1), ix.group(2)))
    items = [s.strip() for s in _split(text)]
    if not items or not all(items):
        raise ParameterError(
            f"{bad} is empty or has an empty item: write {{a, b}}, {{0..}}, {{> 0}} or {{layer of model}}"
        )
    if all(_STRICT.fullmatch(s) or ".." in s for s in items):
        if type_name not in ("int", "float"):
            raise ParameterError(f"{bad}: bounds need an int or float parameter")
        try:
            return Rule(text, bounds=tuple(b for s in items for b in _bounds(s)))
        except ValueError:
            raise ParameterError(f"{bad}: write a range as lo..hi (either end may be left out) of numbers") from None
    try:
        values = tuple(coerce_value(name, type_name, ast.literal_eval(s) if s[0] in "'\"" else s) for s in items)
    except (ParameterError, ValueError, SyntaxError) as e:
        raise ParameterError(f"{bad}: {e}") from None
    return Rule(text, choices=values)


def _bounds(item: str) -> list[tuple[str, float]]:
    """``> x`` / ``< x``, or a range ``lo..hi`` as ``(">=", lo)``, ``("<=", hi)``."""
    if m := _STRICT.fullmatch(item):
        return [(m.group(1), float(m.group(2)))]
    m = _RANGE.fullmatch(item)
    if not m or not (m.group(1) or m.group(2)):
        raise ValueError(item)
    return [(op, float(v)) for op, v in ((">=", m.group(1)), ("<=", m.group(2))) if v]


def _split(text: str) -> list[str]:
    """Comma-separated items; quoted items may hold commas."""
    out, cur, quote = [], "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == ",":
            out.append(cur)
            cur = ""
            continue
        cur += ch
    return out + [cur]


def parse_parameters(source: str, where: str = "parameters cell") -> list[Param]:
    """The parameters declared in the source of a parameters cell (module docstring)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ParameterError(f"{where}: line {e.lineno} is not valid Python ({e.msg})") from None
    comments = _comments(source)
    out = []
    for node in tree.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None):
            raise ParameterError(f"{where}: line {node.lineno} is not of the form `name: type = value  # help`")
        name = node.target.id
        t = node.annotation.id if isinstance(node.annotation, ast.Name) else None
        if t not in TYPES:
            raise ParameterError(
                f"{where}: {name} has type {ast.unparse(node.annotation)!r}; use str, int, float or bool"
            )
        try:
            default = ast.literal_eval(node.value)
        except ValueError:
            raise ParameterError(f"{where}: the default of {name} is not a plain literal") from None
        comment = comments.get(node.lineno, "")
        p = Param(name, t, coerce_value(name, t, default), comment, parse_rule(name, t, comment, where))
        try:
            p.convert(p.default)
        except ParameterError as e:
            raise ParameterError(f"{where}: the default of {name} breaks its own rule ({e})") from None
        out.append(p)
    names = {p.name for p in out}
    for p in out:
        if p.rule is not None and p.rule.index is not None and p.rule.index[1] not in names:
            raise ParameterError(f"{where}: the rule {{{p.rule.text}}} of {p.name} names no parameter")
    return out


def parameters_cell_source(path: str | os.PathLike) -> str:
    """The source of the cell tagged ``parameters`` in a jupytext ``.py`` or an ``.ipynb`` notebook."""
    import jupytext  # a second of imports, for callers that only run notebooks

    nb = jupytext.read(Path(path))
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ParameterError(f"{path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    return cells[0].source


@functools.lru_cache(maxsize=64)
def _parameters(path: str, mtime_ns: int, size: int) -> tuple[Param, ...]:
    return tuple(parse_parameters(parameters_cell_source(path), where=f"{Path(path).name} parameters cell"))


def notebook_parameters(path: str | os.PathLike) -> list[Param]:
    """The parameters of the notebook at ``path``, read once per process while the file is unchanged."""
    p = Path(path).resolve()
    st = p.stat()
    return list(_parameters(str(p), st.st_mtime_ns, st.st_size))


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
        if isinstance(value, str) and _INT.fullmatch(value.strip()):
            return int(value.strip())
        raise bad
    if type_name == "float":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value.strip())
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
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
        "float": "a finite number",
        "str": "a string",
    }.get(type_name, type_name)


def coerce_all(declared: Iterable[Param], given: dict) -> dict:
    """Every given value converted and checked (:meth:`Param.convert`); unknown names are a :class:`ParameterError`."""
    by_name = {p.name: p for p in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise ParameterError(f"unknown parameter(s) {', '.join(unknown)}; the parameters are: {', '.join(by_name)}")
    return {k: by_name[k].convert(v) for k, v in given.items()}


# ----------------------------------------------------------------------------- checks across values
def check_params(declared: Iterable[Param], values: dict, here: bool = True) -> None:
    """The checks that need more than one value: model indices (``{layer of model}``) and the device.

    ``here``: the run executes on this machine, so a GPU must be visible for ``device=cuda`` and a model
    that cannot be opened is an error. With ``here=False`` (a sweep planned for a cluster) only the
    device's spelling is checked, and an index is checked only when its model opens here.
    """
    for p in declared:
        if p.name == "device" and p.name in values:
            check_device(values[p.name], here)
        if p.rule is not None and p.rule.index is not None and p.name in values:
            kind, model = p.rule.index
            try:
                dims = model_dims(values[model])
            except (OSError, ValueError) as e:  # ModelNotFound, UnsupportedArchitecture, bad files
                if here:
                    raise ParameterError(f"parameter {model}={values[model]!r}: {e}") from None
                continue
            attr, what = INDEX_KINDS[kind]
            n, v = getattr(dims, attr), values[p.name]
            if not -n <= v < n:
                raise ParameterError(
                    f"parameter {p.name}={v} is out of range: {values[model]} has {n} {what} "
                    f"(use 0..{n - 1}, or -1 for the last)"
                )


def check_device(value: str, here: bool = True) -> None:
    """The device rule (:mod:`utils.device`); an empty value is refused rather than read as ``auto``."""
    if not DEVICE.fullmatch(str(value).strip()):
        raise ParameterError(f"device={value!r} is not a device: use {DEVICE_CHOICES}")
    if here:
        from ..device import resolve_device  # imports torch: only where a run is about to start

        try:
            resolve_device(value)
        except ValueError as e:
            raise ParameterError(str(e)) from None


@functools.lru_cache(maxsize=32)
def model_dims(spec: str):
    """The dimensions of the model ``spec`` names (its configuration or file headers only)."""
    from ..weights import get_model_dims  # torch and the model readers: only for a notebook with a model index

    return get_model_dims(spec)


# ----------------------------------------------------------------------------- rules inside a notebook
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
