"""Run a notebook headless with parameters, or list its parameters.

    python -m utils.run_notebook notebooks/01_weight_ranks.py --run-name smollm2 -p layer_idx 12
    python -m utils.run_notebook notebooks/01_weight_ranks.py --list-params

The jupytext ``.py`` source is converted in memory, executed by papermill with the parameters
injected after the ``parameters`` cell (``run_name`` and ``output_root`` are always passed), and the
executed notebook is written to ``<output_root>/<notebook>/<run_name>/<notebook>.ipynb`` next to the
report the notebook writes. A failing cell makes the command exit 1; the executed notebook is kept,
with the error visible in the failing cell. The notebook file is written under a temp name and
renamed when execution ends, so no half-written notebook is ever left under the final name.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import tempfile
from pathlib import Path

from .runs import _umask_mode

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


class NotebookFailed(RuntimeError):
    """A cell raised; ``.notebook`` is the executed notebook kept for inspection."""

    def __init__(self, message: str, notebook: Path):
        super().__init__(message)
        self.notebook = notebook


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
    raise FileNotFoundError(f"notebook {str(name)!r} not found{' (ambiguous)' if matches else ''}; "
                            f"known notebooks: {known}")


def _to_ipynb(src: Path, dst: Path) -> None:
    import jupytext
    import nbformat

    nb = jupytext.read(src) if src.suffix == ".py" else nbformat.read(src, as_version=4)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, dst)


def list_params(notebook: str | os.PathLike) -> list[dict]:
    """The notebook's parameters: name, type, default and help text (from papermill)."""
    import papermill as pm

    src = find_notebook(notebook)
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td) / (src.stem + ".ipynb")
        _to_ipynb(src, tmp)
        params = pm.inspect_notebook(str(tmp))
    return [{"name": k, "type": v.get("inferred_type_name"), "default": v.get("default"),
             "help": v.get("help", "")} for k, v in params.items()]


def parse_value(raw: str):
    """A command-line value as a Python literal where it is one (``12``, ``0.5``, ``True``), else a string."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def execute(notebook: str | os.PathLike, run_name: str = "default", params: dict | None = None,
            output_root: str | os.PathLike = "output", progress: bool = True,
            timeout: int | None = None) -> Path:
    """Execute a notebook with parameters; returns its run folder.

    Raises :class:`NotebookFailed` (the executed notebook kept, error visible) if a cell fails.
    """
    import papermill as pm

    src = find_notebook(notebook)
    known = {p["name"] for p in list_params(src)}
    params = dict(params or {})
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for {src.stem}; "
                         f"its parameters are: {', '.join(sorted(known))}")
    out_root = Path(output_root).resolve()
    params.update(run_name=run_name, output_root=str(out_root))
    run_dir = out_root / src.stem / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"{src.stem}.ipynb"
    fd, partial = tempfile.mkstemp(prefix=f".{src.stem}.", suffix=".partial.ipynb", dir=run_dir)
    os.close(fd)
    os.chmod(partial, _umask_mode())  # mkstemp makes it 0600
    with tempfile.TemporaryDirectory() as td:
        inp = Path(td) / (src.stem + ".ipynb")
        _to_ipynb(src, inp)
        try:
            pm.execute_notebook(str(inp), partial, parameters=params, kernel_name="python3",
                                cwd=str(REPO_ROOT), progress_bar=progress, execution_timeout=timeout)
        except pm.PapermillExecutionError as e:
            os.replace(partial, final)
            raise NotebookFailed(f"{src.stem}: cell {e.exec_count} raised {e.ename}: {e.evalue}\n"
                                 f"executed notebook kept with the error visible: {final}", final) from None
        except BaseException:
            if Path(partial).exists() and Path(partial).stat().st_size > 0:
                os.replace(partial, final)
            else:
                Path(partial).unlink(missing_ok=True)
            raise
    os.replace(partial, final)
    return run_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m utils.run_notebook", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebook", help="notebooks/NN_name.py, NN_name or NN")
    ap.add_argument("--run-name", default="default", help="results go to <output-root>/<notebook>/<run-name>/")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="set a parameter (repeatable); values are Python literals or plain strings")
    ap.add_argument("--model", default=None,
                    help="set the `model` parameter, for notebooks that have one (others ignore it)")
    ap.add_argument("--output-root", default=str(REPO_ROOT / "output"))
    ap.add_argument("--list-params", action="store_true", help="print the notebook's parameters and exit")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    a = ap.parse_args(argv)
    try:
        if a.list_params:
            from .report import md_table

            rows = [[p["name"], p["type"], p["default"], p["help"]] for p in list_params(a.notebook)]
            print(md_table(["parameter", "type", "default", "help"], rows))
            return 0
        params = {k: parse_value(v) for k, v in a.param}
        if a.model is not None:
            if any(p["name"] == "model" for p in list_params(a.notebook)):
                params.setdefault("model", a.model)
            else:
                print(f"note: {find_notebook(a.notebook).stem} takes no `model` parameter; --model ignored")
        run_dir = execute(a.notebook, a.run_name, params, a.output_root, timeout=a.timeout)
    except NotebookFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
