"""Where a notebook run writes, and what it records next to its results.

Every notebook calls :func:`start_run` once, after its parameters cell::

    run = start_run("01_weight_ranks", run_name, params=dict(model=model, ...), output_root=output_root)
    with run.timer("sweep"):
        ...
    run.save_csv(df, "weight_ranks.csv")
    img = run.save_figure(fig, "ranks_by_layer.png")      # returns the relative path for markdown
    run.write_report(markdown_text)                       # report.md, with the run record appended

All files land in ``<output_root>/<notebook>/<run_name>/`` and are written atomically (a temp
name in the same folder, then ``os.replace``), so an interrupted run never leaves a half-written
file under a final name. ``run.json`` holds the parameters, package versions, timings and the
list of files, and is rewritten after every save.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import math
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


def _umask_mode(mode: int = 0o666) -> int:
    um = os.umask(0)
    os.umask(um)
    return mode & ~um


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _umask_mode())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success rename it to ``path``, else delete it.

    For writers that need a file name (h5py, torch.save, ``DataFrame.to_csv``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def to_jsonable(obj: Any) -> Any:
    """Convert numpy / torch scalars and arrays, paths and NaN to plain JSON values."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if np is not None:
        if isinstance(obj, np.ndarray):
            return to_jsonable(obj.tolist())
        if isinstance(obj, np.generic):
            obj = obj.item()
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    from importlib import metadata

    names = ("torch", "transformers", "numpy", "pandas", "gguf", "safetensors", "h5py",
             "matplotlib", "papermill") + tuple(extra)
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    try:
        import torch

        out["cuda_available"] = str(torch.cuda.is_available())
        if torch.cuda.is_available():
            out["cuda_device"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    return out


class Run:
    """One notebook run's output folder, its parameters, timings and files."""

    def __init__(self, notebook: str, run_name: str, params: dict, output_root: str | os.PathLike):
        if not _SAFE.match(run_name or ""):
            raise ValueError(f"run_name {run_name!r} is not a plain folder name: use letters, digits, "
                             "'.', '_' and '-' only")
        self.notebook = notebook
        self.run_name = run_name
        self.dir = Path(output_root) / notebook / run_name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.params = dict(params)
        self.timings: dict[str, float] = {}
        self.files: list[str] = []
        self.started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.versions = package_versions()
        self._t0 = time.perf_counter()
        self._write_record()

    # -- paths and timing -------------------------------------------------------------
    def path(self, name: str) -> Path:
        """Absolute path of an output file of this run (not created)."""
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

    # -- saving -----------------------------------------------------------------------
    def _saved(self, name: str) -> Path:
        if name not in self.files:
            self.files.append(name)
        self._write_record()
        return self.dir / name

    def register(self, name: str) -> Path:
        """Record a file that was written into the run folder by other means (h5py, torch.save)."""
        if not (self.dir / name).exists():
            raise FileNotFoundError(f"{self.dir / name} does not exist; write it before registering it")
        return self._saved(name)

    def save_text(self, text: str, name: str) -> Path:
        atomic_write_text(self.dir / name, text)
        return self._saved(name)

    def save_json(self, obj: Any, name: str) -> Path:
        return self.save_text(json.dumps(to_jsonable(obj), indent=2) + "\n", name)

    def save_jsonl(self, rows, name: str) -> Path:
        return self.save_text("".join(json.dumps(to_jsonable(r)) + "\n" for r in rows), name)

    def save_csv(self, df, name: str, index: bool = False) -> Path:
        return self.save_text(df.to_csv(index=index), name)

    def save_figure(self, fig, name: str, dpi: int = 120) -> str:
        """Save a matplotlib figure as PNG; returns the file name to embed in the report."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        atomic_write_bytes(self.dir / name, buf.getvalue())
        self._saved(name)
        return name

    def write_report(self, markdown: str, name: str = "report.md") -> Path:
        """Write the markdown report with the run record (parameters, versions, timings) appended."""
        return self.save_text(markdown.rstrip() + "\n\n" + self.record_markdown(), name)

    # -- the record ---------------------------------------------------------------------
    def record(self) -> dict:
        return {
            "notebook": self.notebook, "run_name": self.run_name, "started_utc": self.started,
            "elapsed_s": round(time.perf_counter() - self._t0, 3), "params": self.params,
            "versions": self.versions, "timings_s": self.timings, "files": self.files,
        }

    def record_markdown(self) -> str:
        from .report import md_table

        lines = ["## Run record", "",
                 f"Notebook `{self.notebook}`, run `{self.run_name}`, started {self.started} (UTC).", "",
                 "### Parameters", "",
                 md_table(["parameter", "value"], [[k, f"`{v!r}`"] for k, v in self.params.items()]), "",
                 "### Timings", "",
                 md_table(["step", "seconds"], [[k, f"{v:.2f}"] for k, v in self.timings.items()]), "",
                 "### Versions", "",
                 md_table(["package", "version"], [[k, v] for k, v in self.versions.items()]), ""]
        return "\n".join(lines)

    def _write_record(self) -> None:
        atomic_write_text(self.dir / "run.json", json.dumps(to_jsonable(self.record()), indent=2) + "\n")


def start_run(notebook: str, run_name: str, params: dict, output_root: str | os.PathLike = "output") -> Run:
    """Create ``<output_root>/<notebook>/<run_name>/`` and start recording a run there."""
    return Run(notebook, run_name, params, output_root)
