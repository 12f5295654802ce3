"""Pairing the matrices of two models; clear refusals for mismatched architectures and missing tensors."""

from __future__ import annotations

from ..weights import MatrixRef


class ArchitectureMismatch(ValueError):
    """Two models whose weights cannot be matched one to one."""


DIM_NAMES = {
    "L": "layers (L)",
    "d": "width (d)",
    "d_ff": "MLP width (d_ff)",
    "h": "query heads (h)",
    "n_kv": "KV heads (n_kv)",
    "d_head": "head width (d_head)",
    "V": "vocabulary (V)",
    "d_v": "value width (d_v)",
    "n_experts": "experts (n_experts)",
    "d_expert": "expert width (d_expert)",
    "d_shared": "shared-expert width (d_shared)",
    "q_rank": "query latent rank (q_rank)",
    "kv_rank": "key/value latent rank (kv_rank)",
    "d_rope": "rotary head width (d_rope)",
}


def missing_matrices(src) -> list[MatrixRef]:
    """The matrices ``src`` promises whose tensor is not in its checkpoint (empty when complete)."""
    return src.missing() if hasattr(src, "missing") else []


def _key(r: MatrixRef) -> tuple:
    return (r.layer, r.weight_type, r.expert)


def _what(key: tuple) -> str:
    layer, wt, e = key
    return f"{wt}{'' if e < 0 else f' of expert {e}'} of layer {layer}"


def match_models(a, b) -> list[tuple[MatrixRef, MatrixRef]]:
    """Pairs ``(ref_a, ref_b)`` of the same role, layer and expert; ``ArchitectureMismatch`` naming the first
    difference, ``IncompleteCheckpoint`` for a missing tensor."""
    fa, fb = getattr(a, "family", None), getattr(b, "family", None)
    if fa != fb:
        raise ArchitectureMismatch(f"architectures differ: family {fa!r} in A ({a.name}) and {fb!r} in B ({b.name})")
    for k, label in DIM_NAMES.items():
        va, vb = getattr(a.dims, k, 0), getattr(b.dims, k, 0)
        if va != vb:
            raise ArchitectureMismatch(
                f"architectures differ: {label} is {va} in A ({a.name}) and {vb} in B ({b.name}); "
                "a diff needs two checkpoints of one architecture"
            )
    for src in (a, b):
        if hasattr(src, "check_complete"):
            src.check_complete()
    ra = {_key(r): r for r in a.matrices()}
    rb = {_key(r): r for r in b.matrices()}
    for key in list(ra) + [k for k in rb if k not in ra]:
        if key not in ra or key not in rb:
            side = "B" if key in ra else "A"
            raise ArchitectureMismatch(
                f"architectures differ: {_what(key)} exists only in the other model, not in {side}"
            )
        if ra[key].shape != rb[key].shape:
            raise ArchitectureMismatch(
                f"architectures differ: {_what(key)} has shape {ra[key].shape} in A and {rb[key].shape} in B"
            )
    return [(ra[k], rb[k]) for k in ra]
