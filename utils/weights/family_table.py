"""The README's family table, generated from the family tables and the conformance tests' results.

``make families`` runs ``tests/test_families.py`` with ``TSPECTRA_CONFORMANCE`` set (each passed check is
appended to a JSON-lines file), then ``python -m utils.weights.family_table RESULTS.jsonl RESULTS.json
README.md`` collects them into ``docs/conformance.json`` and rewrites the table between the README's markers.
A test checks that the README's table is the rendering of the recorded results.
"""

from __future__ import annotations

import json
from pathlib import Path

from .families import FAMILIES, Family

#: the checks of tests/test_families.py, in the order the table names them
CHECKS = ("logits", "OV", "MLP", "coverage", "GGUF")
TABLE_BEGIN, TABLE_END = "<!-- family-table: begin -->", "<!-- family-table: end (make families) -->"


def _default(f: Family, key: str | None):
    """The value of configuration key ``key`` in transformers' default configuration of the family."""
    if not key:
        return None
    from transformers import AutoConfig

    return getattr(AutoConfig.for_model(f.model_types[0]), key, None)


def specials(f: Family) -> str:
    """What a family's attention and MLP do beyond the plain case, read from its table and transformers'
    default configuration of it (for the README)."""
    a, m, out = f.attention, f.mlp, []
    if a.mla:
        out.append("multi-head latent attention (latent q / kv, decoupled rotary part)")
    if "qkv" in f.hf:
        out.append(
            {
                "concat": "fused qkv",
                "per_head": "fused qkv, per-head interleaved",
                "falcon": "fused qkv (multi-query / grouped / per-head)",
            }[a.qkv_layout]
        )
    if f.conv1d:
        out.append("Conv1D storage (in, out)")
    if f.biases:
        out.append({"optional": "optional attention biases", "q/k/v": "q/k/v biases", "all": "biases"}[f.biases])
    if a.qk_norm:
        out.append("QK-norm " + ("per head" if a.qk_norm == "head" else "over all heads"))
    if a.norm_offset:
        out.append("norm gain 1 + w")
    if a.norm is None:
        out.append("no input norm (" + ("post-norm block" if f.causal else "post-LN encoder") + ")")
    if a.post_norm:
        out.append("post-attention norm")
    if a.scale != "head_dim":
        out.append(
            {
                "query_pre_attn_scalar": "scale 1/√query_pre_attn_scalar",
                "mla": "scale with YaRN mscale²",
                "gpt2": "scale 1/√d_head (÷ layer + 1 optionally)",
            }[a.scale]
        )
    if a.softcap:
        out.append("logit soft-cap" if _default(f, a.softcap) else "optional logit soft-cap")
    if (
        f.head_dim
        and not a.mla
        and _default(f, f.head_dim)
        not in (None, _default(f, "hidden_size") // max(_default(f, "num_attention_heads") or 1, 1))
    ):
        out.append("head_dim ≠ d/h")
    if a.rotary and a.rotary[0] in ("rotary_pct", "partial_rotary_factor", "rotary_dim"):
        out.append("partial rotary")
    if a.alibi:
        out.append("optional ALiBi")
    if a.parallel:
        out.append("parallel attention / MLP")
    if "gate_up" in f.hf:
        out.append("fused gate_up")
    if m.moe:
        shared = ", shared experts" if m.d_shared else ""
        out.append(f"mixture of experts{shared} (per-expert and fused 3-D tensors)")
    if f.tied_default:
        out.append("tied embeddings")
    return "; ".join(out) or "the plain case (as llama)"


def family_table(results: dict) -> str:
    """The README's family table (markdown) from the conformance results ``{"cases": {case: {"family": ...,
    "checks": [...]}}, "transformers": version}`` that ``make families`` records from the test suite."""
    by_family: dict[str, dict[str, set]] = {}
    for case, r in results.get("cases", {}).items():
        by_family.setdefault(r["family"], {})[case] = set(r["checks"])
    lines = [
        "| family | model types | examples | files | what the attention / MLP does beyond the plain case | "
        "conformance against transformers " + str(results.get("transformers", "?")) + " |",
        "|---|---|---|---|---|---|",
    ]
    for f in FAMILIES.values():
        files = "safetensors" + (f", GGUF ({', '.join(f.gguf_archs or ('llama',))})" if f.gguf else "")
        cases = by_family.get(f.name, {})
        if cases:
            done = []
            for case, checks in sorted(cases.items()):
                missing = [c for c in CHECKS if c not in checks and not (c == "GGUF" and "GGUF" not in checks)]
                done.append(
                    f"{case}: "
                    + ", ".join(c for c in CHECKS if c in checks)
                    + (f" (missing: {', '.join(missing)})" if missing else "")
                )
            conf = "<br>".join(done)
        else:
            conf = "**not checked**"
        lines.append(f"| {f.name} | {', '.join(f.model_types)} | {f.examples} | {files} | {specials(f)} | {conf} |")
    return "\n".join(lines)


def update_readme(readme, results_path) -> bool:
    """Rewrite the family table between the README's markers from a results file; True when it changed."""
    readme, results = Path(readme), json.loads(Path(results_path).read_text())
    text = readme.read_text()
    a, b = text.index(TABLE_BEGIN) + len(TABLE_BEGIN), text.index(TABLE_END)
    new = text[:a] + "\n" + family_table(results) + "\n" + text[b:]
    if new != text:
        readme.write_text(new)
    return new != text


def collect_results(jsonl_path, out_path) -> dict:
    """The conformance results file from the test suite's per-check records (one JSON line each)."""
    import transformers

    cases: dict[str, dict] = {}
    for line in Path(jsonl_path).read_text().splitlines():
        r = json.loads(line)
        c = cases.setdefault(r["case"], {"family": r["family"], "checks": []})
        if r["check"] not in c["checks"]:
            c["checks"].append(r["check"])
    for c in cases.values():
        c["checks"] = [k for k in CHECKS if k in c["checks"]]
    results = {"transformers": transformers.__version__, "cases": dict(sorted(cases.items()))}
    Path(out_path).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":  # python -m utils.weights.family_table RESULTS.jsonl RESULTS.json README.md
    import sys

    collect_results(sys.argv[1], sys.argv[2])
    print("README family table", "updated" if update_readme(sys.argv[3], sys.argv[2]) else "unchanged")
