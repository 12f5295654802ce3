"""Building the full ``transformers`` model and tokenizer, for analyses that run the model."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..provenance import note_model
from .random_init import build_random_model
from .sources import GGUFWeights, HFWeights
from .specs import download_from_hub, resolve_model


def load_model(
    spec: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    attn_implementation: str | None = None,
    device_map=None,
):
    """Build the ``transformers`` model and tokenizer for ``spec``; returns ``(model, tokenizer)``.

    Decoders load as ``AutoModelForCausalLM``; encoders (bert) as ``AutoModel`` (the family table's ``auto_class``).
    The model is in eval mode with gradients off; the tokenizer always has a pad token. GGUF files are
    dequantised by transformers (about 20 s for the bundled model on a 2-core CPU). A ``random:`` spec
    builds the architecture from its configuration with its own seeded initialiser, holding the same
    matrices as ``open_weights(spec)`` (:func:`utils.weights.random_init.build_random_model`).
    """
    import transformers  # heavy: imported when a model is loaded, not with utils.weights
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()
    kind, where = resolve_model(spec)
    note_model(spec)
    kw = {"dtype": dtype}
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    if device_map is not None:
        kw["device_map"] = device_map
    if kind == "random":
        if device_map is not None:
            raise ValueError("device_map is not supported for random: models; pass device instead")
        model, tok = build_random_model(where, dtype=dtype, attn_implementation=attn_implementation)
    elif kind == "gguf":
        src = GGUFWeights(where)  # validates the architecture with a clear message
        folder, fname = str(Path(where).parent), Path(where).name
        model = getattr(transformers, src.fam.auto_class).from_pretrained(folder, gguf_file=fname, **kw)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    else:
        folder = download_from_hub(where) if kind == "hub" else Path(where)
        src = HFWeights(folder)
        model = getattr(transformers, src.fam.auto_class).from_pretrained(str(folder), **kw)
        tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if device_map is None:
        model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok
