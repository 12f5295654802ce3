"""Parameter sweeps: many notebook runs from one YAML file, on Dask, resumable.

* :mod:`.spec`: the sweep file format, read and checked (:func:`load_sweep`, :class:`SweepError`).
* :mod:`.execute`: :func:`run_sweep`, every run as a task on a Dask cluster (embedded
  ``LocalCluster`` by default, or an existing scheduler), through the headless runner.
* :mod:`.index`: the sweep's index of runs (CSV).
* ``python -m utils.sweep SWEEP.yaml`` (:mod:`.cli`): the command line.
"""

from .spec import RunSpec, Sweep, SweepError, load_sweep, parse_sweep

__all__ = ["RunSpec", "Sweep", "SweepError", "load_sweep", "parse_sweep"]
