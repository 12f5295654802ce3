"""Model labels: what the user passed, shortened only as far as it stays unique among the runs shown.

A run's model is labelled by the spec recorded in its parameters (``run.json``), never by a name the
checkpoint carries about itself (a configuration's ``_name_or_path`` often names the base model it was
trained from). One rule for the index of runs, the sweeps' indexes and the comparison notebook:

* a spec is cut to its last path components, at least two (``Qwen/Qwen2.5-3B`` stays whole, a folder
  ``.../all-MiniLM-L6-v2/model`` is ``all-MiniLM-L6-v2/model``), and to more where two different specs
  shown together would otherwise share a label (``runs/a/final`` and ``runs/b/final``), up to the whole
  spec as given;
* ``random:<spec>`` and ``random:<spec>@<seed>`` keep their prefix and seed around the label of
  ``<spec>``, so a model and its untrained twin read alike (``x/llama`` and ``random:x/llama@2``);
* two different specs never share a label (specs that differ only in spelling, ``a/b`` and ``a/b/``,
  are told apart by their full text).
"""

from __future__ import annotations

import re
from typing import Iterable

RANDOM_PREFIX = "random:"  # the spelling of utils.weights.specs, whose model readers this module does not need
MIN_PARTS = 2


def split_spec(spec) -> tuple[str, str, str]:
    """``(prefix, base, seed)`` of a spec: ``random:x/y@3`` gives ``("random:", "x/y", "@3")``."""
    s = str(spec or "").strip()
    prefix = seed = ""
    if s.lower().startswith(RANDOM_PREFIX):
        prefix, s = RANDOM_PREFIX, s[len(RANDOM_PREFIX) :].strip()
        m = re.fullmatch(r"(.*)@([0-9]+)", s)
        if m:
            s, seed = m.group(1), f"@{m.group(2)}"
    return prefix, s, seed


def _parts(base: str) -> list[str]:
    return [p for p in re.split(r"[/\\]+", base) if p not in ("", ".")]


def model_labels(specs: Iterable) -> dict[str, str]:
    """Each distinct spec (as a string) mapped to its label among all of ``specs`` (module docstring)."""
    specs = [str(s or "").strip() for s in specs]
    bases = list(dict.fromkeys(split_spec(s)[1] for s in specs))
    depth = {b: MIN_PARTS for b in bases}

    def short(b: str) -> str:
        parts = _parts(b)
        return "/".join(parts[-depth[b] :]) if parts else b

    while True:
        groups: dict[str, list[str]] = {}
        for b in bases:
            groups.setdefault(short(b), []).append(b)
        grow = [b for g in groups.values() if len(g) > 1 for b in g if len(_parts(b)) > depth[b]]
        if not grow:
            break
        for b in grow:
            depth[b] += 1
    label = {b: short(b) for b in bases}
    clash = {lab for lab in label.values() if sum(v == lab for v in label.values()) > 1}
    label = {b: (b if label[b] in clash else label[b]) for b in bases}  # same parts, other spelling: as given
    out = {}
    for s in specs:
        prefix, base, seed = split_spec(s)
        out[s] = prefix + label[base] + seed if s else ""
    return out


def base_label(label: str) -> str:
    """The trained model a label names: ``random:X@seed`` -> ``X``; any other label as it is."""
    prefix, base, _ = split_spec(label)
    return base if prefix else label
