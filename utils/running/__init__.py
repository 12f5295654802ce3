"""Running notebooks and reporting their results.

* :mod:`.paths`: the project root, the output root rule, run names and folders.
* :mod:`.params`: the parameters cell, typed values and the rules declared beside them.
* :mod:`.context`: :class:`RunContext`, one run decided and checked once, handed to the kernel whole.
* :mod:`.claim`: a name's lock (one owner at a time), run / sweep name clashes, staging folders.
* :mod:`.record`: :func:`start_run` and :class:`Run` (staged folder, results, ``run.json``).
* :mod:`.report`: the report assembled from a notebook's own cells, HTML.
* :mod:`.labels`: model labels, unique among the runs shown.
* :mod:`.signals`: SIGINT / SIGTERM noted, never raised, by the command lines.
* :mod:`.runner`: ``python -m utils.run_notebook``, the headless runner with staged runs.
"""

from .params import ParameterError
from .paths import BadRunName, output_root
from .record import Run, start_run
from .report import df_to_md, fmt, md_table

__all__ = ["BadRunName", "ParameterError", "Run", "df_to_md", "fmt", "md_table", "output_root", "start_run"]
