"""The project's figures: one implementation of each, shared by every notebook.

Statistical figures go through seaborn (heatmaps, bars, distributions) with seaborn's ``whitegrid``
theme, set once by :func:`use_style`. Every function returns the matplotlib figure, to pass to
:meth:`utils.running.Run.show`; none shows or saves it itself.

* :mod:`.core`: grids, heatmaps, eigenvalue panels, curves and bars used across notebooks 01-05;
* :mod:`.diagnostics`: random-matrix diagnostics, null models, model diffs, head circuits (01, 02, 07);
* :mod:`.compare`: figures comparing several runs (06);
* :mod:`.latent`: latent compression (04);
* :mod:`.panels`: single panels drawn into a given axis, shared by the figures and the explorers.

Figures specific to one area live in that area's module (``plots.diagnostics.esd(...)``); the
shared ones are re-exported here (``plots.heatmap(...)``).
"""

from . import compare, diagnostics, latent, panels
from .core import (
    bars_with_intervals,
    block_grid,
    by_layer,
    cumulative_energy,
    eigen_panels,
    grid,
    grouped_bars,
    heatmap,
    lines,
    loss_curves,
    metric_vs_step,
    per_weight_curves,
    scatter_by_layer,
    shapes_across_layers,
    spectra_first_last,
    top_values_vs_step,
    use_style,
    variance_explained,
)

__all__ = [
    "compare",
    "diagnostics",
    "latent",
    "panels",
    "bars_with_intervals",
    "block_grid",
    "by_layer",
    "cumulative_energy",
    "eigen_panels",
    "grid",
    "grouped_bars",
    "heatmap",
    "lines",
    "loss_curves",
    "metric_vs_step",
    "per_weight_curves",
    "scatter_by_layer",
    "shapes_across_layers",
    "spectra_first_last",
    "top_values_vs_step",
    "use_style",
    "variance_explained",
]
