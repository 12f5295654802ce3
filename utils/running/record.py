"""A notebook run: its staged output folder, typed parameters, timings, files, report and record.

Every notebook calls :func:`start_run` once, right after its parameters cell::

    run = start_run("01_weight_ranks", globals())

(About 400 lines: :class:`Run` is the one object a notebook talks to, so staging, the record and
the report calls stay together; parsing, paths and report assembly are in their own modules.)

which takes the run's context (:mod:`utils.running.context`): under the runner, the one the runner
made, checked and passed down; anywhere else (JupyterLab, plain papermill), one made here from the
notebook's own variables by the same rules. It writes the typed values back into ``globals()`` and
opens the run folder. Then::

    with run.timer("sweep"):
        ...
    run.save_csv(df, "weight_ranks.csv")       # a result file
    run.show(df_table)                          # on screen and in the report (tables, figures, text)
    run.finish()                                # report.md / report.html, run.json status "complete"

Staging. A run writes into a hidden staging folder next to its final place,
``<root>/<notebook>/.<run name>.staging-<id>/``; :meth:`Run.finish` swaps it in whole, so a
folder under a run's name always holds one complete run. Under the runner
(:mod:`utils.running.runner`) the runner claims the name, owns the staging folder (named in the run
context) and does the swap, recording ``failed`` and ``interrupted`` runs as well; a run outside the
runner claims the name itself (:mod:`utils.running.claim`: a lock, released by :meth:`Run.finish`).

``run.json`` holds: notebook, run name, status, start and end times (UTC) and the duration between
them (``duration_s``: the one duration the index, a sweep's ``index.csv`` and the report show; under
the runner it starts when the runner starts the notebook), the exact parameters, the git commit and
whether the tree had uncommitted changes (``git``: null values outside a git checkout), package
versions, timings, the file list, the kernel's process id.

Relative paths. :func:`start_run` makes the project root the kernel's working folder (the runner
starts its kernels there already): a relative path in any parameter (a model, a data file) means the
same file whether the runner, papermill from the root or from ``notebooks/``, ``jupytext --execute``
or JupyterLab started the notebook.

Runs from JupyterLab. An interactive run whose ``run_name`` is left at ``"default"`` is named
:data:`LAB_RUN_NAME` (``output/<notebook>/lab/``), so a Run All never replaces what ``make run``
wrote to ``output/<notebook>/default/``; set ``run_name`` to choose another name. A run outside the
runner rewrites ``<output root>/index.html`` when it ends.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from .. import progress as _progress  # read at call time (tests stand in a kernel for it)
from ..files import atomic_write_bytes, atomic_write_json, atomic_write_text, json_text, swap_in, write_jsonl
from ..provenance import git_state, models_read, models_read_count, package_versions, seconds_between, utc_now
from .claim import claim_run
from .context import RunContext, make_context
from .index import write_index_html
from .params import notebook_parameters
from .paths import PROJECT_ROOT, check_run_name, find_notebook, run_dir
from .report import assemble, df_to_md, markdown_to_html, md_table, normalize_code, source_cells

LAB_RUN_NAME = "lab"  # the run name of an interactive run (JupyterLab) left at run_name = "default"


class Run:
    """One notebook run (see module docstring)."""

    def __init__(
        self,
        notebook: str,
        run_name: str,
        params: dict,
        root: str | os.PathLike,
        stage: str | os.PathLike | None = None,
        group: str | None = None,
        source: str | os.PathLike | None = None,
    ):
        self.notebook = notebook
        self.run_name = check_run_name(run_name)
        self.group = group or None
        root = Path(root).resolve()
        self.final_dir = run_dir(root, notebook, run_name, self.group)
        self.cache_dir = root / ".cache"  # reusable results shared by runs (e.g. resumable sweeps)
        self.owns_stage = stage is None
        self._claim = None
        if stage is None:  # outside the runner: claim the name here (a cell run again takes over its lock)
            what = f"a kernel running {notebook} (run {run_name})"
            self._claim = claim_run(self.final_dir, root, what, takeover=True, group=self.group)
            stage = self._claim.stage
        self.dir = Path(stage)
        if not self.dir.is_dir():  # never re-created here: a runner that stopped has removed it on purpose
            raise FileNotFoundError(f"the run's staging folder {self.dir} is gone: the runner that started it stopped")
        self.params = dict(params)
        self.timings: dict[str, float] = {}
        self.files: list[str] = []
        self.started = utc_now("milliseconds")
        self.ended: str | None = None
        self.root = root
        self.versions = package_versions()
        self.git = git_state()
        self._models_from = models_read_count()  # models read by this run: from here on
        self.status = "running"
        self._outputs: dict[int, list[str]] = {}
        self._cell_runs: dict[int, int] = {}
        self._last_cell = -1
        try:
            self._cells = source_cells(source or find_notebook(notebook))
        except FileNotFoundError:
            self._cells = []
        self._code_index = {normalize_code(s): i for i, (k, s) in enumerate(self._cells) if k == "code"}
        self.error: dict | None = None
        self._write_record()
        if self.owns_stage:
            _watch_outside_runner(self)

    # -- paths and timing --------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """Path of an output file of this run (in the staging folder until the run is finished)."""
        return self.dir / name

    @contextlib.contextmanager
    def timer(self, label: str) -> Iterator[None]:
        """Time a block; the seconds go into ``run.json`` and the report's run record."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[label] = round(self.timings.get(label, 0.0) + time.perf_counter() - t, 4)
            self._write_record()

    def earlier_attempts(self) -> list[Path]:
        """Folders of earlier attempts of this run name (complete, interrupted, failed), newest first."""
        cands = [self.final_dir] + [self.final_dir.with_name(f"{self.run_name}.{s}") for s in ("interrupted", "failed")]
        return sorted((d for d in cands if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)

    def carry_over(self, name: str) -> Path | None:
        """Copy file or folder ``name`` from the newest earlier attempt that has it into this run
        (to resume from its checkpoints); returns the copy, or None when no attempt has it."""
        for d in self.earlier_attempts():
            src = d / name
            if src.exists():
                dst = self.dir / name
                if src.is_dir():  # not the temp files of a write a kill cut short
                    shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*.tmp"))
                else:
                    shutil.copy2(src, dst)
                return dst
        return None

    # -- result files --------------------------------------------------------------------------
    def register(self, name: str) -> Path:
        """Record a file written into the run folder by other means (h5py, torch.save)."""
        if not (self.dir / name).exists():
            raise FileNotFoundError(f"{self.dir / name} does not exist; write it before registering it")
        if name not in self.files:
            self.files.append(name)
        self._write_record()
        return self.dir / name

    def save_text(self, text: str, name: str) -> Path:
        atomic_write_text(self.dir / name, text)
        return self.register(name)

    def save_json(self, obj: Any, name: str) -> Path:
        atomic_write_json(self.dir / name, obj)
        return self.register(name)

    def save_jsonl(self, rows, name: str) -> Path:
        write_jsonl(self.dir / name, rows)
        return self.register(name)

    def save_csv(self, df, name: str, index: bool = False) -> Path:
        return self.save_text(df.to_csv(index=index), name)

    def save_figure(self, fig, name: str, dpi: int = 120) -> str:
        """Save a matplotlib figure as PNG in the run folder; returns the file name."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        atomic_write_bytes(self.dir / name, buf.getvalue())
        self.register(name)
        return name

    # -- the report ----------------------------------------------------------------------------
    def show(
        self,
        obj,
        name: str | None = None,
        caption: str | None = None,
        digits: int = 4,
        index: bool = False,
        details: str | None = None,
    ) -> None:
        """Put ``obj`` on screen and into the report, after the markdown of the current cell.

        ``obj``: a matplotlib figure (saved as ``name``, a PNG, then closed), a DataFrame (a
        markdown table with ``digits`` significant digits), or a markdown string. ``caption``:
        a line under it saying how to read it. ``details``: fold it under this summary line.
        """
        md, png = self._render(obj, name, digits, index)
        if caption:
            md += f"\n\n*{caption}*"
        if details:
            md = f"<details><summary>{details}</summary>\n\n{md}\n\n</details>"
        self._record(md)
        _display(md, png)

    def _render(self, obj, name, digits, index):
        if hasattr(obj, "savefig"):
            import matplotlib.pyplot as plt

            if not name:
                raise ValueError("a figure needs a file name, e.g. run.show(fig, 'ranks.png')")
            self.save_figure(obj, name)
            plt.close(obj)
            alt = name.rsplit(".", 1)[0].replace("_", " ")
            return f"![{alt}]({name})", (self.dir / name).read_bytes()
        if hasattr(obj, "to_csv") and hasattr(obj, "columns"):
            return df_to_md(obj, digits, index=index), None
        return str(obj), None

    def _record(self, md: str) -> None:
        cell = self._current_cell()
        count = _execution_count()
        if cell >= 0 and self._cell_runs.get(cell) != count:  # a re-executed cell replaces its outputs
            self._outputs[cell] = []
            self._cell_runs[cell] = count
        self._outputs.setdefault(cell, []).append(md)

    def _current_cell(self) -> int:
        code = _current_code()
        if code is not None:
            i = self._code_index.get(normalize_code(code))
            if i is not None:
                self._last_cell = i
                return i
        return -1 if self._last_cell < 0 else self._last_cell

    def report_markdown(self) -> str:
        return assemble(self._cells, self._outputs, [self.record_markdown()])

    def finish(self) -> None:
        """Write ``report.md`` and ``report.html``, mark the run complete and (when this run owns
        its staging folder) swap it into place (``run.final_dir``). Returns None, so that the last
        cell of a notebook shows nothing more than the report's path. A run is finished once: calling it
        again (re-running the last cell in Lab) is refused, with the way to a new run."""
        if self.status != "running":
            raise RuntimeError(
                f"run {self.notebook}/{self.run_name} is already {self.status} ({self.final_dir}); "
                "run the notebook from the top (start_run) for a new run"
            )
        md = self.report_markdown()
        self.save_text(md, "report.md")
        title = next((ln.lstrip("# ").strip() for ln in md.splitlines() if ln.startswith("# ")), self.notebook)
        index = os.path.relpath(Path(self.root) / "index.html", self.final_dir).replace(os.sep, "/")
        page = markdown_to_html(md, self.dir, title=f"{title} ({self.run_name})", index_href=index)
        self.save_text(page, "report.html")
        self.status = "complete"
        self.ended = utc_now("milliseconds")
        self._write_record()
        if self.owns_stage:
            for p in self.dir.iterdir():  # the claim's record of the stage's owner
                if p.name.startswith(".") and p.is_file():
                    p.unlink(missing_ok=True)
            swap_in(self.dir, self.final_dir)
            self.dir = self.final_dir
            self._claim.release()
        _refresh_index(self.root)
        print(f"report: {self.final_dir / 'report.html'}")

    def stop(self, status: str, error: dict | None = None) -> Path | None:
        """End a run outside the runner that cannot finish (a cell raised under papermill or jupytext, or the
        kernel is shutting down): record ``status`` and ``error`` and move the staging folder to
        ``<run name>.<status>/`` (the last complete run is untouched), then refresh the index. Returns that
        folder; None when the run is not this kernel's to end (the runner's, or already ended)."""
        if not self.owns_stage or self.status != "running" or not self.dir.is_dir():
            return None
        self.status, self.error, self.ended = status, error, utc_now("milliseconds")
        self._write_record()
        for p in self.dir.iterdir():
            if p.name.startswith(".") and p.is_file():
                p.unlink(missing_ok=True)
        target = self.final_dir.with_name(f"{self.run_name}.{status}")
        swap_in(self.dir, target, keep_missing=True)  # an earlier failed attempt's files are not lost
        self.dir = target
        self._claim.release()
        _refresh_index(self.root)
        return target

    # -- the record -----------------------------------------------------------------------------
    def record(self) -> dict:
        return {
            "notebook": self.notebook,
            "run_name": self.run_name,
            "group": self.group,
            "status": self.status,
            "error": self.error,
            "started_utc": self.started,
            "ended_utc": self.ended,
            "duration_s": seconds_between(self.started, self.ended),
            "params": self.params,
            "models": models_read(self._models_from),
            "git": self.git,
            "versions": self.versions,
            "timings_s": self.timings,
            "files": self.files,
            "pid": os.getpid(),
            "host": platform.node(),
        }

    def record_markdown(self) -> str:
        commit, dirty = self.git.get("commit"), self.git.get("dirty")
        if commit is None:
            code = "Code: not a git checkout (commit unknown)."
        else:
            state = {True: "with uncommitted changes", False: "no uncommitted changes"}.get(dirty, "changes unknown")
            code = f"Code: git commit `{commit[:12]}` ({state})."
        files = [f for f in self.files if f not in ("report.md", "report.html")]
        listed = [f"- [{f}]({f})" for f in files] or ["(none)"]
        return "\n".join(
            [
                "## Run record",
                "",
                f"Notebook `{self.notebook}`, run `{self.run_name}`"
                + (f" of sweep `{self.group}`" if self.group else "")
                + f", started {self.started} (UTC). {code}",
                "",
                "### Files",
                "",
                *listed,
                "- [run.json](run.json) (parameters, versions, timings, status)",
                f"- [{self.notebook}.ipynb]({self.notebook}.ipynb) (the executed notebook, where the runner wrote it)"
                if not self.owns_stage
                else "",
                "",
                "### Parameters",
                "",
                md_table(["parameter", "value"], [[k, f"`{v!r}`"] for k, v in self.params.items()]),
                "",
                "### Timings",
                "",
                md_table(["step", "seconds"], [[k, f"{v:.2f}"] for k, v in self.timings.items()]),
                "",
                "### Versions",
                "",
                md_table(["package", "version"], [[k, v] for k, v in self.versions.items()]),
                "",
            ]
        )

    def _write_record(self) -> None:
        atomic_write_text(self.dir / "run.json", json_text(self.record()))


def _watch_outside_runner(run: Run) -> None:
    """A run outside the runner ends as ``<name>.failed/`` when a cell raises in a headless kernel (plain
    papermill, ``jupytext --execute``: execution stops there, and ``run.finish()`` never comes), and as
    ``<name>.interrupted/`` when its kernel exits before ``run.finish()``; never as a hidden staging folder
    that says "running" forever. In Lab a cell that raised can be fixed and run again: the run stays open."""
    import atexit

    atexit.register(run.stop, "interrupted", {"ename": "KernelExit", "evalue": "the kernel exited before run.finish()"})
    ip = _kernel()
    if ip is None or not hasattr(ip, "events") or not _progress.headless():
        return

    def after_cell(result):
        err = getattr(result, "error_in_exec", None)
        if err is not None and run.stop("failed", {"ename": type(err).__name__, "evalue": str(err)}) is not None:
            print(f"run failed: {run.dir} (run.json records the error)")
        if run.status != "running":
            with contextlib.suppress(ValueError):
                ip.events.unregister("post_run_cell", after_cell)

    ip.events.register("post_run_cell", after_cell)


def _refresh_index(root) -> None:
    """Rewrite ``<root>/index.html`` after a run that the runner did not start (Lab, papermill, jupytext);
    the runner and the sweep write it themselves. Never fails the run."""
    if RunContext.from_env() is not None:
        return

    try:
        write_index_html(Path(root))
    except OSError as e:
        print(f"note: could not update the index of runs ({e})")


def _kernel():
    try:
        from IPython import get_ipython

        ip = get_ipython()
    except ImportError:
        return None
    return ip


def _current_code() -> str | None:
    ip = _kernel()
    if ip is None:
        return None
    try:
        return ip.kernel.get_parent("shell")["content"]["code"]
    except Exception:  # not an ipykernel, or no parent message
        ih = ip.user_ns.get("_ih") or []
        return ih[-1] if ih else None


def _execution_count() -> int:
    ip = _kernel()
    return int(getattr(ip, "execution_count", 0) or 0) if ip is not None else 0


def _display(md: str, png: bytes | None) -> None:
    ip = _kernel()
    if ip is None or type(ip).__name__ != "ZMQInteractiveShell":
        if png is None:
            print(md)
        return
    from IPython.display import Image, Markdown, display

    display(Image(data=png) if png is not None else Markdown(md))


def start_run(notebook: str, namespace: dict) -> Run:
    """The run's checked context, its typed parameters written into ``namespace``, and its run folder opened.

    Under the runner the context comes with the kernel's environment and is taken as it is; otherwise
    it is made from ``namespace`` (each declared parameter's value there, its default when absent) by
    :func:`~utils.running.context.make_context`, with every rule of the parameters cell checked before
    anything is created. A ``device`` parameter is resolved for the code (``auto`` becomes ``cpu`` or
    ``cuda``; the record keeps what was given). A notebook declares its rules beside its parameters
    (:mod:`utils.running.params`).
    """
    if _progress._in_kernel() and Path.cwd() != PROJECT_ROOT:  # one rule for relative paths (module docstring)
        os.chdir(PROJECT_ROOT)
    ctx = RunContext.from_env()
    if ctx is None:
        src = find_notebook(notebook)
        declared = {p.name for p in notebook_parameters(src)}
        given = {k: namespace[k] for k in declared if k in namespace}
        interactive = _progress._in_kernel() and not _progress.headless()
        if interactive and "run_name" in declared and given.get("run_name", "default") == "default":
            given["run_name"] = LAB_RUN_NAME  # an interactive run never replaces what `make run` wrote
        ctx = make_context(src, given)
    elif ctx.notebook != Path(notebook).stem:
        raise RuntimeError(f"this kernel was started by the runner for {ctx.notebook}, not {notebook}")
    values = dict(ctx.params)
    if "device" in values:
        from ..device import resolve_device  # torch: imported in the kernel only

        values["device"] = str(resolve_device(values["device"]))
    namespace.update(values)
    return Run(ctx.notebook, ctx.run_name, ctx.params, ctx.root, stage=ctx.stage, group=ctx.group, source=ctx.source)
