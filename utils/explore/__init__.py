"""Interactive explorers over a run's results, in JupyterLab: look at another head, layer or matrix without
re-running anything.

* ``explore.here(run)``: the last line of notebooks 01, 02, 03 and 07. In JupyterLab it shows the explorer
  of the run just finished; in a headless run (the runner, papermill, ``make run``) it does nothing: the
  report and ``report.html`` keep the static figures.
* ``explore.open(path)``: from any notebook, on a run folder (``output/02_attention_kernels/default``) or on
  a sweep's folder (a menu of its runs).

The choice: **ipywidgets** for the controls and **ipympl** (``%matplotlib widget``'s backend, in the
``lab`` extra) for the figures, so the panels are the project's own matplotlib / seaborn panels
(:mod:`utils.plots.panels`) redrawn in place, clicks on a heatmap included, with no second plotting
library. The explorers (:mod:`.views`) read the tables and arrays a run saved (:mod:`.store`) and never
recompute: a change of control redraws within a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path

from ..progress import headless
from .store import (
    ARRAYS,
    ExplorerDataMissing,
    RunResults,
    save_arrays,
    save_diff_spectra,
    save_head_spectra,
    save_rescale_fits,
    save_weight_spectra,
)
from .views import VIEWS, DiffExplorer, Explorer, HeadsExplorer, RescaleExplorer, WeightsExplorer


def open(path):  # noqa: A001 - the verb a user expects
    """The explorer of a run folder, or of a sweep folder (a menu of its runs that the explorer follows)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ExplorerDataMissing(f"{p} does not exist: pass output/<notebook>/<run> or a sweep's folder")
    if (p / "run.json").is_file():
        res = RunResults(p)
        if res.notebook not in VIEWS:
            raise ValueError(f"no explorer for {res.notebook} runs; explorers exist for {', '.join(VIEWS)}")
        return VIEWS[res.notebook](res)
    runs = sorted(d for d in p.glob("*") if _finished(d) and RunResults(d).notebook in VIEWS)
    if not runs:
        raise ExplorerDataMissing(
            f"{p} holds no finished run of {', '.join(VIEWS)}: pass output/<notebook>/<run> or a sweep's folder"
        )
    return SweepExplorer(runs)


def _finished(d: Path) -> bool:
    """A complete run's folder (not a kept ``<key>.failed`` / ``.interrupted`` attempt)."""
    import json

    try:
        return json.loads((d / "run.json").read_text()).get("status") == "complete"
    except (OSError, ValueError):
        return False


def here(run):
    """The explorer of ``run`` (a finished :class:`~utils.running.Run`) in JupyterLab; None when headless. Says
    first where the run's results went (its folder and HTML report), so the notebook's last cell does."""
    final = Path(getattr(run, "final_dir", run))
    print(f"results: {final}/\nreport:  {final / 'report.html'}")
    if headless():
        return None
    try:
        return open(getattr(run, "final_dir", run))
    except ImportError as e:  # ipywidgets missing: explorers are part of the lab extra
        print(f"explorer unavailable ({e}); `make lab` installs it")
        return None


class SweepExplorer:
    """A menu of a sweep's runs above the explorer of the chosen one."""

    def __init__(self, runs):
        import ipywidgets as w

        self.runs = list(runs)
        self.menu = w.Dropdown(options=[(d.name, i) for i, d in enumerate(self.runs)], value=0, description="run")
        self.box = w.VBox([self.menu, w.HTML()])
        self.current = None
        self.menu.observe(lambda _: self._show(), names="value")
        self._show()

    def _show(self) -> None:
        self.current = open(self.runs[self.menu.value])
        self.box.children = [self.menu, self.current.widget]

    @property
    def widget(self):
        return self.box

    def _ipython_display_(self):
        from IPython.display import display

        display(self.box)


__all__ = [
    "ARRAYS",
    "DiffExplorer",
    "Explorer",
    "ExplorerDataMissing",
    "HeadsExplorer",
    "RescaleExplorer",
    "RunResults",
    "SweepExplorer",
    "WeightsExplorer",
    "here",
    "open",
    "save_arrays",
    "save_diff_spectra",
    "save_head_spectra",
    "save_rescale_fits",
    "save_weight_spectra",
]
