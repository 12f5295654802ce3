"""The run context: everything a run is, decided and checked once, then handed down whole.

:func:`make_context` reads the notebook's parameters cell (once per process), converts and checks every
value (types, choices, bounds, model indices, the device, the run name, the output root) and returns a
:class:`RunContext`: the notebook, its run name and group, the resolved output root, the typed
parameters with the defaults filled in, and (once the runner has claimed the run) its staging folder.
Nothing is created on the way, so a refusal leaves nothing behind.

The runner (:mod:`.runner`) builds the context, claims the run, and passes the context to the kernel in
one environment variable, :data:`CONTEXT_ENV` (JSON); papermill injects the same typed parameters, so
the executed notebook shows them. :func:`utils.running.start_run` takes the context it finds there as
it is. A notebook run any other way (JupyterLab, plain papermill, ``jupytext --execute``) has no
context in its environment: ``start_run`` makes one from the notebook's own variables, by the same
:func:`make_context`.

The run's name and root have one value each: ``--run-name`` / ``--output-root`` (the ``run_name`` and
``output_root`` arguments) and the notebook parameters of those names are the same setting, and two
different values are refused (:class:`~utils.running.params.ParameterError`) naming both.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .params import ParameterError, check_params, coerce_all, notebook_parameters
from .paths import check_output_root, check_run_name, find_notebook, output_root, run_dir

CONTEXT_ENV = "TSPECTRA_RUN_CONTEXT"
PLACE = ("run_name", "output_root")  # parameters that say where a run goes, not what it computes


@dataclass(frozen=True)
class RunContext:
    """One run, checked (module docstring). ``params``: every declared parameter, typed, as recorded."""

    notebook: str
    source: str
    run_name: str
    root: str
    params: dict
    group: str | None = None
    stage: str | None = None

    @property
    def final(self) -> Path:
        """Where the complete run will be: ``<root>/<notebook>/[<group>/]<run name>/``."""
        return run_dir(self.root, self.notebook, self.run_name, self.group)

    @property
    def label(self) -> str:
        return f"{self.notebook}/{self.group + '/' if self.group else ''}{self.run_name}"

    def with_stage(self, stage: Path) -> RunContext:
        return replace(self, stage=str(stage))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunContext:
        return cls(**json.loads(text))

    @classmethod
    def from_env(cls) -> RunContext | None:
        """The context the runner passed to this process, if any."""
        text = os.environ.get(CONTEXT_ENV, "").strip()
        return cls.from_json(text) if text else None


def _one(what: str, option, param):
    """The value of a setting given as an option and/or a parameter; two different values are refused."""
    if option is not None and param is not None and str(option) != str(param):
        raise ParameterError(
            f"the {what.replace('_', ' ')} is given twice, as {option!r} and as the parameter {what}={param!r}; "
            "give it once"
        )
    return option if option is not None else param


def make_context(
    notebook,
    given: dict | None = None,
    run_name: str | None = None,
    output_root_: str | None = None,
    group: str | None = None,
    here: bool = True,
) -> RunContext:
    """The checked context of a run of ``notebook`` with the parameters ``given`` (module docstring).

    ``run_name`` / ``output_root_``: the options of those names (``None``: not given); ``group``: the
    sweep the run belongs to; ``here``: the run executes on this machine (see
    :func:`~utils.running.params.check_params`). Raises :class:`ParameterError` (a value, an unknown
    name, a setting given twice), :class:`~utils.running.paths.BadRunName` or
    :class:`~utils.running.paths.OutputRootError`; creates nothing.
    """
    src = find_notebook(notebook)
    declared = notebook_parameters(src)
    given = dict(given or {})
    names = {p.name for p in declared}
    name = _one("run_name", run_name, given.pop("run_name", None) if "run_name" in names else None)
    root_value = _one("output_root", output_root_, given.pop("output_root", None) if "output_root" in names else None)
    typed = coerce_all(declared, given)
    values = {p.name: typed.get(p.name, p.default) for p in declared}
    name = check_run_name(str(name) if name is not None else values.get("run_name", "default"))
    if group is not None:
        check_run_name(group, "sweep name")
    root = output_root(root_value if root_value is not None else values.get("output_root"))
    check_output_root(root)
    values.update({k: v for k, v in (("run_name", name), ("output_root", str(root))) if k in names})
    check_params(declared, values, here=here)
    ctx = RunContext(src.stem, str(src), name, str(root), values, group)
    ctx.final  # noqa: B018  (inside the output root, or BadRunName)
    return ctx


def recorded(params: dict) -> dict:
    """The parameters that say what a run computes (where it went left out): what makes two runs the same."""
    return {k: v for k, v in params.items() if k not in PLACE}
