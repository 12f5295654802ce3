"""Loading models and streaming their weights.

* :mod:`.specs`: what a model spec names (bundled SmolLM2, a ``.gguf`` file, a checkpoint folder, a hub id,
  ``random:<model>``).
* :mod:`.families`: every supported architecture as a table (tensor names in safetensors and GGUF, fused
  layouts, experts, what the attention does beyond ``softmax(q·k/sqrt(d_head))``): the one place a family
  is described.
* :mod:`.layout`: a family's table read against one store's tensor names; :class:`ModelDims`.
* :mod:`.gguf`: a small fast GGUF reader and dequantiser; :mod:`.shards`: safetensors read and written.
* :mod:`.sources`: :class:`WeightSource` (one tensor at a time) for checkpoint folders and GGUF files;
  :mod:`.random_init`: the same architecture freshly initialised; :mod:`.open`: :func:`open_weights`.
* :mod:`.load`: :func:`load_model`, the full ``transformers`` model for analyses that run it.
"""

from .families import FAMILIES, UnsupportedArchitecture
from .layout import ModelDims
from .load import load_model
from .open import get_model_dims, open_weights
from .sources import IncompleteCheckpoint, MatrixRef, WeightSource
from .specs import BUNDLED_MODEL, ModelNotFound, bundled_gguf_path, resolve_model

__all__ = [
    "BUNDLED_MODEL",
    "FAMILIES",
    "IncompleteCheckpoint",
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
