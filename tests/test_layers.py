"""The floors of ``utils`` (issue 21): no sideways imports between analyses, figures and the runner, and no
project import hidden inside a function unless an import cost justifies it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO_ROOT

UTILS = REPO_ROOT / "utils"

# (importer package, imported package): the sideways imports issue 21 names, none of which may come back
FORBIDDEN = [
    ("plots", "weight_ranks"),
    ("plots", "attention"),
    ("compare", "rescale"),
    ("attention", "running"),
    ("dynamics", "running"),
]
# packages whose function-level imports are someone else's (issue 21 leaves them to their owners)
NOT_HERE = ("weights", "latent")
# function-level project imports kept on purpose: an import cost (torch, transformers, the model readers)
# that a caller without that need should not pay
LAZY_OK = {
    ("running/params.py", "utils.device"),  # torch, for the device rule: the runner needs it only for a run
    ("running/params.py", "utils.weights"),  # torch and the model readers, for a {layer of model} rule
    ("running/record.py", "utils.device"),  # torch, for start_run in the kernel; not for the runner or a sweep
    ("provenance.py", "utils.device"),  # torch, for the GPU line of a run record: the runner starts without it
    ("sweep/execute.py", "utils.device"),  # torch, for the local GPU count: the sweep driver starts without it
    ("weight_ranks/rmt.py", "utils.diff.match"),  # the lead moves check_complete into utils.weights
}


def _imports(path: Path):
    """(module imported, inside a function?) for every import of a project module in ``path``."""
    tree = ast.parse(path.read_text())
    pkg = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
    out = []

    def visit(node, in_func):
        for child in ast.iter_child_nodes(node):
            f = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - child.level + 1]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                if mod.startswith("utils"):
                    out.append((mod, f))
            elif isinstance(child, ast.Import):
                out.extend((a.name, f) for a in child.names if a.name.startswith("utils"))
            visit(child, f)

    visit(tree, False)
    return out


FILES = sorted(p for p in UTILS.rglob("*.py"))


@pytest.mark.parametrize("importer,imported", FORBIDDEN)
def test_no_sideways_imports(importer, imported):
    bad = [
        f"{p.relative_to(UTILS)} imports {mod}"
        for p in (UTILS / importer).rglob("*.py")
        for mod, _ in _imports(p)
        if mod == f"utils.{imported}" or mod.startswith(f"utils.{imported}.")
    ]
    assert not bad, bad


def test_project_imports_are_at_the_top_of_their_module():
    hidden = []
    for p in FILES:
        rel = str(p.relative_to(UTILS))
        if rel.split("/")[0] in NOT_HERE:
            continue
        for mod, in_func in _imports(p):
            if in_func and not any(rel == f and mod.startswith(m) for f, m in LAZY_OK):
                hidden.append(f"{rel}: {mod}")
    assert not hidden, "project imports inside functions: " + ", ".join(hidden)


def test_the_runner_and_the_sweep_driver_do_not_import_torch():
    """What the lazy imports above buy: the command lines start without torch (a second or two per run)."""
    import subprocess
    import sys

    code = "import sys, utils.running.runner, utils.sweep.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "False", out.stderr


def test_figures_order_weight_types_as_the_sweep_does(tiny_llama_dir, tmp_path):
    """plots no longer asks weight_ranks for the order of weight types: the order read from the sweep's
    own table equals the one weight_ranks.tables defines."""
    from utils.plots.diagnostics import _types
    from utils.weight_ranks import weight_sweep
    from utils.weight_ranks.tables import weight_types
    from utils.weights import open_weights

    df = weight_sweep(open_weights(str(tiny_llama_dir)), cache=tmp_path, resume=False)
    assert _types(df) == weight_types(df) and len(_types(df)) > 7
    per_layer = df[df.layer_idx >= 0]
    assert _types(per_layer) == weight_types(per_layer)
