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


def utc_now() -> str:
    """The current time in UTC, ISO 8601 to the second (``2026-11-30T12:00:00+00:00``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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
