"""Where a result came from: the time in UTC and the versions of the packages that computed it.

Shared by the run record (:mod:`utils.running.record`) and the spectral store and recorder
(:mod:`utils.dynamics`), so every file says the same thing the same way.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import platform
from importlib import metadata

PACKAGES = ("torch", "transformers", "numpy", "pandas", "gguf", "safetensors", "h5py", "matplotlib", "seaborn",
            "papermill")  # fmt: skip


def utc_now(timespec: str = "seconds") -> str:
    """The current time in UTC, ISO 8601 to the second (``2026-11-30T12:00:00+00:00``; ``timespec``:
    ``"milliseconds"`` for a run's start and end, from which its duration is computed)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec=timespec)


_MODELS_READ: list[str] = []  # model specs opened or loaded in this process, in order


def note_model(spec) -> None:
    """Record that this process read the model ``spec`` (:func:`utils.weights.open_weights`, ``load_model``):
    a run records the models it read, and the index shows them (empty for a run that read none)."""
    _MODELS_READ.append(str(spec).strip())


def models_read(since: int = 0) -> list[str]:
    """The distinct model specs read by this process since position ``since`` of its record, in order."""
    return list(dict.fromkeys(_MODELS_READ[since:]))


def models_read_count() -> int:
    return len(_MODELS_READ)


def seconds_between(start, end) -> float | None:
    """Seconds from one ISO 8601 time to another (to the millisecond); None when either is missing or malformed."""
    try:
        return round((_dt.datetime.fromisoformat(end) - _dt.datetime.fromisoformat(start)).total_seconds(), 3)
    except (TypeError, ValueError):
        return None


def git_state(folder=None) -> dict:
    """The git commit of the checkout holding ``folder`` (default: this project) and whether its tree has
    uncommitted changes (tracked or untracked files; ignored files such as ``output/`` do not count).

    ``{"commit": None, "dirty": None}`` (unknown) outside a git checkout or without git; never raises."""
    import subprocess
    from pathlib import Path

    where = Path(folder) if folder is not None else Path(__file__).resolve().parents[1]

    def git(*args):
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=20)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        status = git("status", "--porcelain")
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of Python and the packages a result depends on, and whether a CUDA GPU was visible."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for n in PACKAGES + tuple(extra):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[n] = metadata.version(n)
    try:
        from utils.device import cuda_available, gpu_name
    except ImportError:  # pragma: no cover (no torch)
        return out
    out["cuda_available"] = str(cuda_available())
    if cuda_available():
        out["cuda_device"] = gpu_name(0)
    return out
