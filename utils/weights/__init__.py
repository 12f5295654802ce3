"""Loading models and streaming their weights.

* :mod:`.specs`: what a model spec names (bundled SmolLM2, a ``.gguf`` file, a checkpoint folder, a hub id).
* :mod:`.arch`: architecture families and how their tensor names map to roles q k v o gate up down.
* :mod:`.gguf`: a small fast GGUF reader and dequantiser.
* :mod:`.sources`: :func:`open_weights`, one tensor at a time, and the model's dimensions.
* :mod:`.load`: :func:`load_model`, the full ``transformers`` model for analyses that run it.
"""

from .arch import UnsupportedArchitecture
from .load import load_model
from .sources import MatrixRef, ModelDims, WeightSource, get_model_dims, open_weights
from .specs import BUNDLED_MODEL, ModelNotFound, bundled_gguf_path, resolve_model

__all__ = [
    "BUNDLED_MODEL",
    "MatrixRef",
    "ModelDims",
    "ModelNotFound",
    "UnsupportedArchitecture",
    "WeightSource",
    "bundled_gguf_path",
    "get_model_dims",
    "load_model",
    "open_weights",
    "resolve_model",
]
