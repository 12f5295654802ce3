"""Pairing the matrices of two models; clear refusals for mismatched architectures and missing tensors."""

from __future__ import annotations

import re

from ..weights import MatrixRef


class ArchitectureMismatch(ValueError):
    """Two models whose weights cannot be matched one to one."""


class IncompleteCheckpoint(ValueError):
    """A checkpoint that lacks a tensor its configuration promises (a layer missing)."""


DIM_NAMES = {
    "L": "layers (L)",
    "d": "width (d)",
    "d_ff": "MLP width (d_ff)",
    "h": "query heads (h)",
    "n_kv": "KV heads (n_kv)",
    "d_head": "head width (d_head)",
    "V": "vocabulary (V)",
}


def _stored_name(ref: MatrixRef) -> str:
    return re.sub(r"\[[a-z]+\]$", "", ref.name)  # GPT-2's q / k / v live in the fused tensor


def missing_matrices(src) -> list[MatrixRef]:
    """The matrices ``src.matrices()`` promises whose tensor is not in the checkpoint (empty when complete)."""
    names = getattr(src, "tensor_names", None)
    if names is None:
        return []
    have = set(names())
    return [r for r in src.matrices() if _stored_name(r) not in have]


def check_complete(src) -> None:
    """``IncompleteCheckpoint`` naming the first missing tensor, before any sweep starts."""
    miss = missing_matrices(src)
    if miss:
        r = miss[0]
        where = f"layer {r.layer}" if r.layer >= 0 else "the model level"
        raise IncompleteCheckpoint(
            f"{src.name}: {len(miss)} weight matrices are missing, first {r.weight_type} of {where} "
            f"(tensor {_stored_name(r)!r}); the checkpoint does not match its configuration "
            f"({src.dims.L} layers): re-download or re-export it"
        )


def match_models(a, b) -> list[tuple[MatrixRef, MatrixRef]]:
    """Pairs ``(ref_a, ref_b)`` of the same role and layer; ``ArchitectureMismatch`` naming the first difference."""
    fa, fb = getattr(a, "family", None), getattr(b, "family", None)
    if fa != fb:
        raise ArchitectureMismatch(f"architectures differ: family {fa!r} in A ({a.name}) and {fb!r} in B ({b.name})")
    for k, label in DIM_NAMES.items():
        va, vb = getattr(a.dims, k), getattr(b.dims, k)
        if va != vb:
            raise ArchitectureMismatch(
                f"architectures differ: {label} is {va} in A ({a.name}) and {vb} in B ({b.name}); "
                "a diff needs two checkpoints of one architecture"
            )
    for src in (a, b):
        check_complete(src)
    ra = {(r.layer, r.weight_type): r for r in a.matrices()}
    rb = {(r.layer, r.weight_type): r for r in b.matrices()}
    for key in list(ra) + [k for k in rb if k not in ra]:
        if key not in ra or key not in rb:
            side = "B" if key in ra else "A"
            raise ArchitectureMismatch(
                f"architectures differ: {key[1]} of layer {key[0]} exists only in the other model, not in {side}"
            )
        if ra[key].shape != rb[key].shape:
            raise ArchitectureMismatch(
                f"architectures differ: {key[1]} of layer {key[0]} has shape {ra[key].shape} in A "
                f"and {rb[key].shape} in B"
            )
    return [(ra[k], rb[k]) for k in ra]
