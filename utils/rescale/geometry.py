"""Per-head attention geometry of a model, as the JSON the SA-rescale analysis (seed 003) reads.

Schema (``SCHEMA``; the seed reads the first four keys, extra keys are allowed and ignored)::

    {
      "num_layers": L, "num_heads": H,
      "static":  [ {"layer": l, "metric_singvals_per_head": [[s_1 >= s_2 >= ...], ... H lists]}, ... L rows],
      "dynamic": [ {"layer": l, "mean_attention_entropy_per_head": [e_1, ..., e_H]}, ... L rows],
      "schema": "transformer-spectra/sa-geometry/1", "model": ..., "d_head": ..., "entropy_rule": ..., ...
    }

* static: singular values of the attention metric ``W_Q_h^T W_K_h`` of every layer and query
  head, from :func:`utils.attention.sweep_attention` (``(L, H, d_head)``). Lists may have
  different lengths (heads of different rank); the analysis zero-pads them at the end.
* dynamic: mean attention entropy in nats per head, :func:`attention_entropy` (rule in
  ``ENTROPY_RULE``).

:func:`validate_geometry` checks a JSON made elsewhere and raises :class:`GeometryError` naming
the first thing that is wrong.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..attention import sweep_attention
from ..files import atomic_write_json
from ..progress import progress_bar
from ..weights import load_model, open_weights

SCHEMA = "transformer-spectra/sa-geometry/1"
DEFAULT_TEXT = Path(__file__).resolve().parents[1] / "data" / "sample_passage.txt"
ENTROPY_RULE = (
    "For every sequence, layer and head: the Shannon entropy in nats, -sum_j p_j ln p_j, of each "
    "query position's attention distribution over the keys it may attend to (its causal prefix in a "
    "decoder, the whole sequence in an encoder), from the eager attention weights; averaged over the "
    "query positions i >= skip_first (0-based, counted after any special tokens the tokenizer adds), "
    "then averaged over sequences (all of equal length). The text is tokenized once without special "
    "tokens and cut into consecutive non-overlapping chunks of seq_len tokens, each wrapped with the "
    "special tokens the tokenizer adds to a single text (e.g. BOS for Llama-style tokenizers that add it, "
    "[CLS] ... [SEP] for BERT, nothing for GPT-2); a final partial chunk is dropped "
    "unless it is the only one."
)


class GeometryError(ValueError):
    """A geometry JSON that does not follow the schema the analysis reads."""


# ----------------------------------------------------------------------------- schema
def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_geometry(data: Any, where: str = "geometry JSON") -> None:
    """Raise :class:`GeometryError` naming the first problem, or return None when ``data`` is usable.

    Requires: positive integers ``num_layers`` and ``num_heads``; ``static`` and ``dynamic`` lists of
    ``num_layers`` objects; each ``static`` row's ``metric_singvals_per_head`` a list of
    ``num_heads`` non-empty lists of finite non-negative numbers; each ``dynamic`` row's
    ``mean_attention_entropy_per_head`` a list of ``num_heads`` finite numbers.
    """
    if not isinstance(data, dict):
        raise GeometryError(f"{where}: expected a JSON object at the top level, got {type(data).__name__}")
    for key in ("num_layers", "num_heads", "static", "dynamic"):
        if key not in data:
            raise GeometryError(f"{where}: missing key {key!r} (needs num_layers, num_heads, static, dynamic)")
    L, H = data["num_layers"], data["num_heads"]
    for key, v in (("num_layers", L), ("num_heads", H)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise GeometryError(f"{where}: {key} must be a positive integer, got {v!r}")
    for key in ("static", "dynamic"):
        if not isinstance(data[key], list) or len(data[key]) != L:
            n = len(data[key]) if isinstance(data[key], list) else type(data[key]).__name__
            raise GeometryError(f"{where}: {key} must be a list of num_layers={L} rows, got {n}")
    for l, row in enumerate(data["static"]):
        sv = row.get("metric_singvals_per_head") if isinstance(row, dict) else None
        if not isinstance(sv, list):
            raise GeometryError(f"{where}: static[{l}] has no list 'metric_singvals_per_head'")
        if len(sv) != H:
            raise GeometryError(f"{where}: static[{l}].metric_singvals_per_head has {len(sv)} heads, num_heads is {H}")
        for h, s in enumerate(sv):
            if not isinstance(s, list) or not s:
                raise GeometryError(
                    f"{where}: static[{l}].metric_singvals_per_head[{h}] must be a non-empty list of singular values"
                )
            for i, v in enumerate(s):
                if not _is_num(v) or v < 0:
                    raise GeometryError(
                        f"{where}: static[{l}].metric_singvals_per_head[{h}][{i}] = {v!r} "
                        "is not a finite non-negative number (singular values are >= 0)"
                    )
    for l, row in enumerate(data["dynamic"]):
        ent = row.get("mean_attention_entropy_per_head") if isinstance(row, dict) else None
        if not isinstance(ent, list):
            raise GeometryError(f"{where}: dynamic[{l}] has no list 'mean_attention_entropy_per_head'")
        if len(ent) != H:
            raise GeometryError(
                f"{where}: dynamic[{l}].mean_attention_entropy_per_head has {len(ent)} heads, num_heads is {H}"
            )
        for h, v in enumerate(ent):
            if not _is_num(v):
                raise GeometryError(
                    f"{where}: dynamic[{l}].mean_attention_entropy_per_head[{h}] = {v!r} is not a finite number"
                )


def load_geometry(path: str | os.PathLike) -> dict:
    """Read and validate a geometry JSON file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise GeometryError(
            f"geometry JSON {str(p)!r} does not exist: pass the path of a JSON file "
            "with num_layers, num_heads, static, dynamic (or leave geometry_json empty "
            "to extract it from the model)"
        )
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise GeometryError(f"geometry JSON {str(p)!r} is not valid JSON: {e}") from None
    validate_geometry(data, where=f"geometry JSON {p.name!r}")
    return data


def save_geometry(data: dict, path: str | os.PathLike) -> Path:
    """Validate and write a geometry JSON atomically."""
    validate_geometry(data)
    return atomic_write_json(path, data, indent=None)


def collect_spectra(data: dict) -> np.ndarray:
    """``sigma (L, H, K)`` float64, K = the longest list; shorter lists zero-padded at the end (as the seed)."""
    L, H = data["num_layers"], data["num_heads"]
    K = max(len(s) for row in data["static"] for s in row["metric_singvals_per_head"])
    sigma = np.zeros((L, H, K), dtype=np.float64)
    for l, row in enumerate(data["static"]):
        for h, s in enumerate(row["metric_singvals_per_head"]):
            sigma[l, h, : len(s)] = s
    return sigma


def collect_entropy(data: dict) -> np.ndarray:
    """``entropy (L, H)`` float64 from the ``dynamic`` rows."""
    return np.array([row["mean_attention_entropy_per_head"] for row in data["dynamic"]], dtype=np.float64)


def make_geometry(sigma, entropy, **extra) -> dict:
    """Build the schema from ``sigma (L, H, K)`` (or a list of L lists of H ragged lists) and
    ``entropy (L, H)``; ``extra`` keys are added at the top level."""
    ent = np.asarray(entropy, dtype=np.float64)
    L, H = ent.shape
    static = [
        {"layer": l, "metric_singvals_per_head": [np.asarray(s, dtype=np.float64).tolist() for s in sigma[l]]}
        for l in range(L)
    ]
    dynamic = [{"layer": l, "mean_attention_entropy_per_head": ent[l].tolist()} for l in range(L)]
    data = {"schema": SCHEMA, "num_layers": int(L), "num_heads": int(H), "static": static, "dynamic": dynamic}
    data.update(extra)
    validate_geometry(data, where="constructed geometry")
    return data


# ----------------------------------------------------------------------------- dynamic part
def read_text(text_path: str | os.PathLike | None = None) -> str:
    """The text sample: ``text_path`` or the passage shipped in ``utils/data``."""
    p = Path(text_path).expanduser() if text_path else DEFAULT_TEXT
    if not p.is_file():
        raise FileNotFoundError(
            f"text file {str(p)!r} does not exist: pass the path of a UTF-8 text file "
            "(or leave text_path empty for the shipped passage)"
        )
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"text file {str(p)!r} is empty: pass a text of at least a few hundred words")
    return text


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The token ids the tokenizer adds before and after a single text (``add_special_tokens=True``)."""
    probe = "The quick brown fox."
    with_sp = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    n = len(plain)
    for i in range(len(with_sp) - n + 1):
        if with_sp[i : i + n] == plain:
            return with_sp[:i], with_sp[i + n :]
    return [], []


def token_chunks(tokenizer, text: str, seq_len: int, n_seqs: int) -> list[list[int]]:
    """Cut ``text`` into up to ``n_seqs`` consecutive chunks of ``seq_len`` tokens, each wrapped with the
    special tokens the tokenizer adds to one text (:func:`special_affixes`). A final partial chunk is
    used only when it is the only one."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    if n_seqs < 1:
        raise ValueError(f"n_seqs must be >= 1, got {n_seqs}")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    n_full = len(ids) // seq_len
    if n_full == 0:
        raw = [ids]
    else:
        raw = [ids[i * seq_len : (i + 1) * seq_len] for i in range(min(n_full, n_seqs))]
    pre, post = special_affixes(tokenizer)
    return [pre + c + post for c in raw]


def entropy_from_attentions(attn, skip_first: int = 0):
    """Mean entropy (nats) over query positions ``>= skip_first`` of attention weights.

    ``attn``: torch tensor ``(B, H, T, T)`` whose rows are probability distributions (zeros for
    masked keys). Returns ``(B, H)`` float64 torch tensor.
    """
    import torch

    p = attn.double()
    ent = -torch.special.xlogy(p, p).sum(-1)  # (B, H, T), 0 * log 0 = 0
    T = ent.shape[-1]
    if skip_first >= T:
        raise ValueError(f"skip_first={skip_first} leaves no query position in sequences of {T} tokens")
    return ent[..., skip_first:].mean(-1)


def attention_entropy(
    model,
    tokenizer,
    text: str,
    seq_len: int = 128,
    n_seqs: int = 16,
    skip_first: int = 1,
    batch_size: int = 4,
    progress: bool = True,
) -> dict:
    """Per-head mean attention entropy of ``model`` over chunks of ``text`` (rule: ``ENTROPY_RULE``).

    Returns ``{"entropy": (L, H) ndarray, "per_sequence": (n, L, H) ndarray, "n_seqs": n,
    "tokens_per_seq": T, "uniform_entropy": mean over the averaged positions of ln(#keys),
    "causal": whether the weights are causal}``. The
    model must expose attention weights (``attn_implementation="eager"``).
    """
    import torch

    chunks = token_chunks(tokenizer, text, seq_len, n_seqs)
    T = len(chunks[0])
    maxpos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if maxpos is not None and T > maxpos:
        raise ValueError(f"sequences of {T} tokens exceed the model's {maxpos} positions: lower seq_len")
    if skip_first >= T:
        raise ValueError(f"skip_first={skip_first} leaves no query position in sequences of {T} tokens")
    per_seq = []
    dev = next(model.parameters()).device
    causal = None
    for i in progress_bar(range(0, len(chunks), batch_size), desc="attention entropy", disable=not progress):
        ids = torch.tensor(chunks[i : i + batch_size], dtype=torch.long, device=dev)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True)
        atts = out.attentions
        if atts is None or any(a is None for a in atts):
            raise RuntimeError("the model returned no attention weights: load it with attn_implementation='eager'")
        if causal is None:  # a decoder's weights vanish above the diagonal; an encoder's do not
            causal = bool((torch.triu(atts[0][0, 0], diagonal=1).abs().max() == 0).item())
        per_seq.append(torch.stack([entropy_from_attentions(a, skip_first) for a in atts], 1).cpu())  # (B, L, H)
    per_seq = torch.cat(per_seq).numpy()
    n_keys = np.arange(1, T + 1) if causal else np.full(T, T)
    return {
        "entropy": per_seq.mean(0),
        "per_sequence": per_seq,
        "n_seqs": int(per_seq.shape[0]),
        "tokens_per_seq": int(T),
        "uniform_entropy": float(np.log(n_keys[skip_first:]).mean()),
        "causal": causal,
    }


def split_half_reliability(per_sequence: np.ndarray) -> float:
    """Pearson correlation, over all (layer, head), of the mean entropy on even vs odd sequences
    (NaN with fewer than 2 sequences): how stable the per-head averages are."""
    if per_sequence.shape[0] < 2:
        return float("nan")
    a = per_sequence[0::2].mean(0).ravel()
    b = per_sequence[1::2].mean(0).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.corrcoef(a, b)[0, 1])


# ----------------------------------------------------------------------------- both
def extract_geometry(
    spec: str,
    text_path: str | None = None,
    seq_len: int = 128,
    n_seqs: int = 16,
    skip_first: int = 1,
    batch_size: int = 4,
    progress: bool = True,
    kernel: str = "raw",
) -> dict:
    """Static and dynamic geometry of the model ``spec`` as a schema dict (validated); the static part from
    the QK kernels in the ``kernel`` convention (``raw`` or ``folded``, :mod:`utils.attention.forms`).

    Extra keys: ``model``, ``family``, ``d_head``, ``num_kv_heads``, ``entropy_rule``, ``text``,
    ``seq_len``, ``tokens_per_seq``, ``n_seqs``, ``skip_first``, ``uniform_entropy``,
    ``entropy_split_half_corr``.
    """
    text = read_text(text_path)
    src = open_weights(spec)
    # static part: exact singular values of every head's W_Q_h^T W_K_h, (L, H, d_head)
    sigma = sweep_attention(src, ("qk",), eigenvalues=False, progress=progress, kernel=kernel).sv["qk"]
    model, tok = load_model(spec, attn_implementation="eager")
    dyn = attention_entropy(model, tok, text, seq_len, n_seqs, skip_first, batch_size, progress)
    if dyn["entropy"].shape != sigma.shape[:2]:
        raise RuntimeError(
            f"static geometry has (layers, heads) = {sigma.shape[:2]} but the model's "
            f"attention weights give {dyn['entropy'].shape}"
        )
    return make_geometry(
        sigma,
        dyn["entropy"],
        model=src.name,
        family=src.family,
        kernel=kernel,
        d_head=int(src.dims.d_head),
        num_kv_heads=int(src.dims.n_kv),
        entropy_rule=ENTROPY_RULE,
        text=str(Path(text_path).expanduser()) if text_path else f"utils/data/{DEFAULT_TEXT.name}",
        seq_len=int(seq_len),
        tokens_per_seq=dyn["tokens_per_seq"],
        n_seqs=dyn["n_seqs"],
        skip_first=int(skip_first),
        causal=dyn["causal"],
        uniform_entropy=dyn["uniform_entropy"],
        entropy_split_half_corr=split_half_reliability(dyn["per_sequence"]),
    )
