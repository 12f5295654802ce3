""":func:`open_weights`: a :class:`~utils.weights.sources.WeightSource` for any model spec."""

from __future__ import annotations

import os

from ..provenance import note_model
from .families import family_of
from .layout import ModelDims, dims_of
from .random_init import open_random
from .sources import GGUFWeights, HFWeights, WeightSource
from .specs import BUNDLED_NAME, download_from_hub, is_bundled, resolve_model


def open_weights(spec: str | os.PathLike) -> WeightSource:
    """A :class:`WeightSource` for any model spec (see :mod:`utils.weights.specs`), named as the user gave it."""
    kind, where = resolve_model(spec)
    label = str(spec).strip()
    note_model(label)
    if kind == "random":
        return open_random(where, name=label)
    if kind == "gguf":
        src = GGUFWeights(where, name=label)
        if is_bundled(spec):
            src.display_name = BUNDLED_NAME
        return src
    if kind == "hub":
        return HFWeights(download_from_hub(where), name=label)
    return HFWeights(where, name=label)


def get_model_dims(obj) -> ModelDims:
    """Dimensions of a :class:`WeightSource`, a spec string, a transformers model or config."""
    if isinstance(obj, WeightSource):
        return obj.dims
    if isinstance(obj, (str, os.PathLike)):
        return open_weights(obj).dims
    cfg = getattr(obj, "config", obj)
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    return dims_of(family_of(getattr(cfg, "model_type", "?"), "model config"), cfg)
