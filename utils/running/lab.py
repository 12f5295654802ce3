"""``python -m utils.running.lab NOTEBOOK.py ...``: the paired notebooks ``make lab`` opens, made ready for Lab.

``jupytext --sync`` writes each notebook's paired ``.ipynb`` (the ``.py`` stays the source in git);
then each paired ``.ipynb`` gets the ``language_info`` of the project's kernel (ipykernel's, for this
Python). JupyterLab writes that metadata into a notebook as soon as its kernel starts; a notebook
without it (a ``.py`` holds only its kernelspec) would be marked modified the moment it is opened,
and a user asked to save a notebook they never edited. The ``.ipynb``'s modification time is kept, so
jupytext's check of which of the pair is newer sees no change.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def kernel_language_info() -> dict:
    """The ``language_info`` the project's kernel (ipykernel on this Python) reports when it starts."""
    from ipykernel.ipkernel import IPythonKernel

    return dict(IPythonKernel.language_info)


def sync(notebooks) -> list[Path]:
    """Sync every ``.py`` notebook with its paired ``.ipynb`` and give that the kernel's language info."""
    import nbformat
    from jupytext.cli import jupytext as jupytext_cli

    paths = [Path(p) for p in notebooks]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no notebook {', '.join(missing)}; give paths like notebooks/01_weight_ranks.py")
    jupytext_cli(["--sync", "--quiet", *map(str, paths)])
    info, done = kernel_language_info(), []
    for py in paths:
        ipynb = py.with_suffix(".ipynb")
        if not ipynb.is_file():
            continue
        nb = nbformat.read(ipynb, as_version=4)
        if nb.metadata.get("language_info") != info:
            stamp = ipynb.stat()
            nb.metadata["language_info"] = info
            tmp = ipynb.with_name(f".{ipynb.name}.tmp")
            nbformat.write(nb, str(tmp))
            os.replace(tmp, ipynb)
            os.utime(ipynb, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        done.append(ipynb)
    return done


if __name__ == "__main__":
    try:
        for p in sync(sys.argv[1:]):
            print(f"paired: {p}")
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
