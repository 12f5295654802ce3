"""Record weight spectra during training (any PyTorch loop) or from saved checkpoints.

Usage inside a training loop::

    with SpectralRecorder("runs/seed0.h5", model, config=cfg_dict, seed=0) as rec:
        for step in range(1, n_steps + 1):
            loss = train_step(...)
            rec.log_loss(step, loss)            # as often as you like (top-level loss log)
            if step % 50 == 0:
                rec.record(step)                 # spectra of every 2-D weight at this step

At each :meth:`SpectralRecorder.record` the recorder stores, for every 2-D parameter
``(m, n)`` of the model (tied weights once, by ``named_parameters`` order):

* ``singular_values``: ``(min(m, n),)`` descending, computed with :func:`utils.spectral.svdvals`
  in float64 (stored as float32);
* ``eigenvalues`` (square weights only): ``(n,)`` complex, ``torch.linalg.eigvals`` in float64,
  sorted by descending magnitude (stored as complex64).

Spectra do not depend on the storage orientation (GPT-2's Conv1D keeps ``(in, out)``): the
singular values of W and W^T agree, and so do the eigenvalues.

The run file (layout in :mod:`utils.dynamics.store`) also holds the run metadata (config,
seed, package versions, anything passed in ``metadata``) and a model description (class,
parameter count, ``str(model)``, the HF config when there is one). It appears under its
final name only when the recorder is closed without error.

:func:`record_checkpoint_dir` records a directory of checkpoints saved elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch

from ..files import Transaction
from ..progress import progress_bar
from ..provenance import package_versions
from ..spectral import svdvals
from .store import EIG, SV, RunFileWriter

__all__ = [
    "SpectralRecorder",
    "weight_spectra",
    "two_d_weights",
    "record_checkpoint_dir",
    "find_checkpoints",
    "load_checkpoint_state",
]


def weight_spectra(W: torch.Tensor, eigenvalues: bool = True) -> dict[str, np.ndarray]:
    """``{"singular_values": (min(m,n),) float64 desc, "eigenvalues": (n,) complex128}`` of one
    2-D weight (eigenvalues only for a square one, sorted by descending magnitude).

    A weight with NaN/Inf entries gives all-NaN spectra (and a warning) instead of an error, so
    a diverging run still records and :func:`utils.dynamics.store.verify_spectral_file` flags it.
    """
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(W.shape)}")
    W = W.detach().to("cpu", torch.float64)
    m, n = W.shape
    out = {}
    finite = bool(torch.isfinite(W).all())
    if not finite:
        warnings.warn("weight contains NaN/Inf; its spectra are recorded as NaN", RuntimeWarning, stacklevel=2)
        out[SV] = np.full(min(m, n), np.nan)
    else:
        out[SV] = svdvals(W, device="cpu")
    if eigenvalues and m == n:
        if finite:
            ev = torch.linalg.eigvals(W).numpy()
            out[EIG] = ev[np.argsort(-np.abs(ev), kind="stable")]
        else:
            out[EIG] = np.full(n, np.nan + 0j)
    return out


def _strip_prefix(name: str) -> str:
    return name[len("_orig_mod.") :] if name.startswith("_orig_mod.") else name


def two_d_weights(source, include: Callable[[str], bool] | str | None = None) -> dict[str, torch.Tensor]:
    """The 2-D weights of a model (``named_parameters``, tied ones once) or of a state dict
    (tensors sharing storage once; a ``torch.compile`` ``_orig_mod.`` prefix removed).

    include: ``None`` (all), a regex searched in the name, or a predicate on the name.
    """
    if isinstance(include, str):
        rx = re.compile(include)
        keep = lambda n: bool(rx.search(n))  # noqa: E731
    else:
        keep = include or (lambda n: True)
    out: dict[str, torch.Tensor] = {}
    if isinstance(source, torch.nn.Module):
        items: Iterable = source.named_parameters()
    elif isinstance(source, Mapping):
        items = source.items()
    else:
        raise TypeError(f"expected an nn.Module or a state dict, got {type(source).__name__}")
    seen = set()
    for name, t in items:
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            continue
        name = _strip_prefix(name)
        key = (t.data_ptr(), tuple(t.shape), t.dtype) if t.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        if keep(name):
            out[name] = t
    return out


def describe_model(model) -> dict:
    """A JSON-able description of a model: class, parameter count, text, HF config if any."""
    info = {"class_name": type(model).__name__}
    if isinstance(model, torch.nn.Module):
        info["n_parameters"] = int(sum(p.numel() for p in model.parameters()))
        info["description"] = str(model)
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        with_types = {
            k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool, list, type(None)))
        }
        info["hf_config"] = with_types
    return info


class SpectralRecorder(Transaction):
    """Records spectra of a model's 2-D weights at chosen steps into one per-run HDF5 file.

    path: the run file to create (appears on :meth:`close`; an exception inside ``with`` discards it).
    model: the ``nn.Module`` to record (may be omitted when only :meth:`record_state_dict` is used).
    config / seed / metadata: stored under ``metadata/`` (config and other dicts as JSON);
        package versions are added automatically.
    model_description: stored under ``model/``; default :func:`describe_model` of ``model``.
    include: which weights (regex or predicate on the parameter name; default all 2-D ones).
    eigenvalues: also store eigenvalues of square weights (default True).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        model: torch.nn.Module | None = None,
        *,
        config: dict | None = None,
        seed: int | None = None,
        metadata: dict | None = None,
        model_description: dict | str | None = None,
        include: Callable[[str], bool] | str | None = None,
        eigenvalues: bool = True,
        sv_dtype="float32",
        overwrite: bool = True,
    ):

        self.model = model
        self.include = include
        self.eigenvalues = eigenvalues
        meta = {
            "config": config or {},
            "seed": seed,
            "versions": package_versions(),
            "recorder": "utils.recorder.SpectralRecorder",
            "analyses": [SV] + ([EIG] if eigenvalues else []),
            "loss": "as logged by the training loop (log_loss / record(loss=...))",
        }
        meta.update(metadata or {})
        if isinstance(model_description, str):
            model_info = {"description": model_description}
        elif model_description is not None:
            model_info = dict(model_description)
        elif model is not None:
            model_info = describe_model(model)
        else:
            model_info = {}
        self.writer = RunFileWriter(path, metadata=meta, model_info=model_info, sv_dtype=sv_dtype, overwrite=overwrite)
        self.path = Path(path)
        self._last_loss_step: int | None = None

    @property
    def n_checkpoints(self) -> int:
        return len(self.writer.checkpoint_steps)

    def log_loss(self, step: int, loss: float) -> None:
        """Append ``(step, loss)`` to the run's loss log (``batch_numbers`` / ``loss_values``)."""
        if isinstance(loss, torch.Tensor):
            loss = float(loss.detach())
        self.writer.log_loss(step, float(loss))
        self._last_loss_step = int(step)

    @torch.no_grad()
    def record(self, step: int, loss: float | None = None, model: torch.nn.Module | None = None) -> int:
        """Record the spectra of every (included) 2-D weight of ``model`` (default: the
        recorder's model) as checkpoint ``batch_<i>`` at training ``step``; returns ``i``.
        ``loss``, when given and not already logged for this step, goes into the loss log too."""
        model = model if model is not None else self.model
        if model is None:
            raise ValueError("no model: pass one to SpectralRecorder(...) or to record(model=...)")
        return self.record_state_dict(step, two_d_weights(model, self.include), loss=loss, _filtered=True)

    @torch.no_grad()
    def record_state_dict(
        self, step: int, state_dict: Mapping[str, torch.Tensor], loss: float | None = None, _filtered: bool = False
    ) -> int:
        """Like :meth:`record` for a state dict (the 2-D tensors in it)."""
        weights = state_dict if _filtered else two_d_weights(state_dict, self.include)
        if not weights:
            raise ValueError("no 2-D weights to record (check the model or the include filter)")
        spectra = {name: weight_spectra(W, self.eigenvalues) for name, W in weights.items()}
        shapes = {name: tuple(W.shape) for name, W in weights.items()}
        i = self.writer.write_checkpoint(step, spectra, shapes)
        if loss is not None and self._last_loss_step != int(step):
            self.log_loss(step, loss)
        return i

    def close(self) -> Path:
        """Finish the file and move it to its final name; returns the path."""
        if self.n_checkpoints == 0 and not self.writer.closed:
            self.writer.abort()
            raise ValueError(f"nothing was recorded for {self.path}: call record() at least once")
        return self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


# ----------------------------------------------------------------------------------------------
# checkpoints saved elsewhere
# ----------------------------------------------------------------------------------------------
_CKPT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _last_int(s: str) -> int | None:
    m = re.findall(r"\d+", s)
    return int(m[-1]) if m else None


def find_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` sorted by step for the checkpoints in ``ckpt_dir``.

    Recognised: sub-folders holding ``model.safetensors`` or ``pytorch_model.bin`` (e.g. the HF
    Trainer's ``checkpoint-500/``), and files ``*.safetensors``, ``*.pt``, ``*.pth``, ``*.bin``,
    ``*.ckpt``. The step is the last integer in the folder or file name (a ``.pt`` dict's
    ``step``/``iter_num`` entry takes precedence when loaded). Names without a number are numbered
    after the others in name order.
    """
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"checkpoint directory {d} does not exist")
    found = []
    for p in sorted(d.iterdir()):
        if p.is_dir() and any((p / w).is_file() for w in _HF_WEIGHTS):
            found.append(p)
        elif p.is_file() and p.suffix in _CKPT_SUFFIXES and not p.name.startswith("."):
            found.append(p)
    if not found:
        raise FileNotFoundError(
            f"no checkpoints in {d}: expected sub-folders with model.safetensors "
            f"or pytorch_model.bin, or files ending in {', '.join(_CKPT_SUFFIXES)}"
        )
    numbered = [(_last_int(p.stem if p.is_file() else p.name), p) for p in found]
    with_n = sorted((n, p) for n, p in numbered if n is not None)
    top = with_n[-1][0] if with_n else -1
    without = [(top + 1 + j, p) for j, (n, p) in enumerate((n, p) for n, p in numbered if n is None)]
    return with_n + without


def load_checkpoint_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Load one checkpoint: ``(state_dict, extra)`` where ``extra`` may hold ``step`` and ``loss``.

    Handles a HF checkpoint folder (``trainer_state.json`` gives the loss), a ``.safetensors``
    file, and ``torch.save`` files holding a state dict or a dict with a ``model`` /
    ``state_dict`` / ``model_state_dict`` entry (nanoGPT's ``iter_num`` / ``best_val_loss`` read).
    """
    p = Path(path)
    extra: dict = {}
    if p.is_dir():
        ts = p / "trainer_state.json"
        if ts.is_file():
            with open(ts) as fh:
                state = json.load(fh)
            extra["step"] = state.get("global_step")
            losses = [h for h in state.get("log_history", []) if "loss" in h]
            if losses:
                extra["loss"] = float(losses[-1]["loss"])
        wf = next(p / w for w in _HF_WEIGHTS if (p / w).is_file())
        return load_checkpoint_state(wf)[0], extra
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p)), extra
    obj = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping):
        for k in ("model", "state_dict", "model_state_dict"):
            if k in obj and isinstance(obj[k], Mapping):
                for sk, ek in (
                    ("step", "step"),
                    ("iter_num", "step"),
                    ("global_step", "step"),
                    ("loss", "loss"),
                    ("train_loss", "loss"),
                    ("val_loss", "loss"),
                    ("best_val_loss", "loss"),
                ):
                    if sk in obj and ek not in extra and np.isscalar(_scalar(obj[sk])):
                        extra[ek] = _scalar(obj[sk])
                return dict(obj[k]), extra
        return dict(obj), extra
    raise ValueError(f"{p} does not hold a state dict (got {type(obj).__name__})")


def _scalar(v):
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    return v


def record_checkpoint_dir(
    ckpt_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    include: Callable[[str], bool] | str | None = None,
    eigenvalues: bool = True,
    metadata: dict | None = None,
    model_description: dict | str | None = None,
    progress: bool = True,
) -> Path:
    """Record the spectra of every checkpoint in ``ckpt_dir`` (see :func:`find_checkpoints`)
    into one per-run file ``out_path``, in step order; losses found in the checkpoints go into
    the loss log. A ``config.json`` in the folder (or in the first checkpoint folder) is stored
    as the run config."""
    ckpts = find_checkpoints(ckpt_dir)
    d = Path(ckpt_dir)
    config = {}
    for c in (d / "config.json", ckpts[0][1] / "config.json" if ckpts[0][1].is_dir() else None):
        if c is not None and c.is_file():
            with open(c) as fh:
                config = json.load(fh)
            break
    meta = {
        "source": "checkpoint directory",
        "checkpoint_dir": str(d.resolve()),
        "checkpoints": [p.name for _, p in ckpts],
    }
    meta.update(metadata or {})
    if model_description is None:
        model_description = {
            "class_name": config.get("architectures", ["unknown"])[0]
            if isinstance(config.get("architectures"), list)
            else "unknown",
            "hf_config": config,
        }
    rec = SpectralRecorder(
        out_path,
        None,
        config=config,
        metadata=meta,
        model_description=model_description,
        include=include,
        eigenvalues=eigenvalues,
    )
    it = progress_bar(ckpts, desc="checkpoints", leave=False, disable=not progress)
    try:
        for step, p in it:
            sd, extra = load_checkpoint_state(p)
            step = int(extra.get("step") or step)
            rec.record_state_dict(step, sd, loss=extra.get("loss"))
    except BaseException:
        rec.abort()
        raise
    return rec.close()
