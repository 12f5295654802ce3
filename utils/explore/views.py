"""The four explorers: controls (ipywidgets) over one figure (ipympl) redrawn from a run's saved results.

Each explorer holds the run's tables and arrays in memory, so a change of control only redraws
panels of :mod:`utils.plots.panels` (a few milliseconds for the data, the rest matplotlib): nothing is
recomputed. :meth:`Explorer.select` sets controls from code (and tests); :attr:`Explorer.widget` is what
a notebook cell displays. Without ``ipympl`` (a plain Jupyter, not the ``lab`` extra) the same figure is
redrawn as an image in an ``Output`` widget.
"""

from __future__ import annotations

import time

import numpy as np

from ..plots import panels
from ..plots.core import heatmap, use_style
from ..spectral import effective_rank
from ..spectral.metrics import complex_mask
from .store import RunResults


def _figure(ncols: int, size=(4.6, 3.6)):
    """A figure the explorer redraws: an ipympl canvas (a widget) when available, else a plain figure."""
    from matplotlib.figure import Figure

    use_style()
    fig = Figure(figsize=(size[0] * ncols, size[1]), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    try:
        from ipympl.backend_nbagg import Canvas, FigureManager

        canvas = Canvas(fig)
        FigureManager(canvas, 0)
        canvas.header_visible = False
        canvas.toolbar_visible = False
    except ImportError:  # no interactive backend: redraw as a static image
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(fig)
    return fig, list(axes)


class Explorer:
    """Controls over one figure (module docstring); subclasses define ``_controls`` and ``draw``."""

    title = ""

    def __init__(self, results: RunResults, ncols: int):
        import ipywidgets as w

        self.results = results
        self.fig, self.axes = _figure(ncols)
        self.controls = self._controls()
        self.last_draw_s = float("nan")
        self.info = w.HTML()
        for c in self.controls.values():
            c.observe(lambda _: self.redraw(), names="value")
        self._static = w.Output() if not isinstance(self.fig.canvas, w.DOMWidget) else None
        self.redraw()

    def _controls(self) -> dict:
        raise NotImplementedError

    def draw(self) -> str:
        """Redraw the figure for the controls' values; returns an HTML note shown under it."""
        raise NotImplementedError

    def redraw(self) -> None:
        t = time.perf_counter()
        for ax in self.axes:
            ax.clear()
        self.info.value = self.draw()
        self.fig.canvas.draw_idle()
        self.last_draw_s = time.perf_counter() - t
        if self._static is not None:
            from IPython.display import Image, display

            self._static.clear_output(wait=True)
            with self._static:
                import io

                buf = io.BytesIO()
                self.fig.savefig(buf, format="png", dpi=90)
                display(Image(buf.getvalue()))

    def select(self, **values) -> "Explorer":
        """Set controls by name (one redraw per control, as a user's changes)."""
        for k, v in values.items():
            self.controls[k].value = v
        return self

    @property
    def widget(self):
        import ipywidgets as w

        head = w.HTML(f"<b>{self.title}</b> · <code>{self.results.name}</code>")
        view = self.fig.canvas if self._static is None else self._static
        return w.VBox([head, w.HBox(list(self.controls.values())), view, self.info])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


# ----------------------------------------------------------------------------------------------- 01
class WeightsExplorer(Explorer):
    """Notebook 01: pick a weight type and a layer (and an expert): the ESD with its Marchenko-Pastur fit,
    power-law fit and the null's ESD; the effective rank along depth with the chosen matrix marked."""

    title = "Weights: spectrum of one matrix, effective rank along depth"

    def __init__(self, results: RunResults):
        self.df = results.table("weight_ranks.csv")
        if "expert" not in self.df:
            self.df["expert"] = -1
        super().__init__(results, 2)

    def _controls(self):
        import ipywidgets as w

        per_layer = self.df[self.df.layer_idx >= 0]
        types = list(dict.fromkeys(per_layer.weight_type)) + sorted(
            set(self.df.weight_type) - set(per_layer.weight_type)
        )
        L = int(per_layer.layer_idx.max()) if len(per_layer) else 0
        c = {
            "weight_type": w.Dropdown(options=types, value=types[0], description="weight"),
            "layer": w.IntSlider(value=L // 2, min=0, max=L, description="layer", continuous_update=False),
        }
        n_exp = int(self.df.expert.max()) + 1
        if n_exp > 0:
            c["expert"] = w.IntSlider(value=0, min=0, max=n_exp - 1, description="expert", continuous_update=False)
        return c

    def row(self):
        wt, layer = self.controls["weight_type"].value, self.controls["layer"].value
        d = self.df[self.df.weight_type == wt]
        if (d.layer_idx >= 0).any():
            d = d[d.layer_idx == layer] if (d.layer_idx == layer).any() else d[d.layer_idx >= 0].iloc[:1]
        if (d.expert >= 0).any():
            e = self.controls["expert"].value
            d = d[d.expert == e] if (d.expert == e).any() else d.iloc[:1]
        return d.index[0], d.iloc[0]

    def draw(self) -> str:
        i, row = self.row()
        arr = self.results.arrays
        S, N = arr[f"S{i}"], arr[f"N{i}"] if f"N{i}" in arr else None
        panels.esd(self.axes[0], row, S, N)
        d = self.df[(self.df.weight_type == row.weight_type) & (self.df.layer_idx >= 0)]
        if len(d):
            g = d.groupby("layer_idx").eff_rank
            band = (g.min().to_numpy(), g.max().to_numpy()) if (d.expert >= 0).any() else None
            panels.depth(
                self.axes[1],
                g.mean().index,
                g.mean().to_numpy(),
                mark=int(row.layer_idx),
                ylabel="effective rank",
                title=f"{row.weight_type}: effective rank by layer",
                band=band,
            )
            if "null_eff_rank" in d:
                self.axes[1].plot(
                    g.mean().index,
                    d.groupby("layer_idx").null_eff_rank.mean(),
                    "--",
                    color="0.6",
                    label="permuted null",
                )
                self.axes[1].legend(fontsize=7)
        alpha = f"α = {row.alpha:.2f}" if np.isfinite(row.get("alpha", np.nan)) else "no power-law fit"
        return (
            f"{row['name']}: effective rank {row.eff_rank:.1f} of {min(row.rows, row.cols)}, {alpha}, "
            f"{int(row.get('n_spikes', 0) or 0)} spikes above the MP edge"
        )


# ----------------------------------------------------------------------------------------------- 02
class HeadsExplorer(Explorer):
    """Notebook 02: pick a layer and a head (or click the heatmap): its QK and OV singular values beside the
    null's, its QK eigenvalues in the complex plane, its strongest composition partners."""

    title = "Heads: one head's kernels, the heatmap to pick from"

    def __init__(self, results: RunResults):
        arr = results.arrays
        self.layers = [int(x) for x in arr["layers"]]
        self.circuits = [k[3:] for k in arr.files if k.startswith("sv_")]
        self.sv = {c: arr[f"sv_{c}"] for c in self.circuits}
        self.null = {c: arr[f"null_sv_{c}"] for c in self.circuits if f"null_sv_{c}" in arr.files}
        self.eig = {c: arr[f"eig_{c}"] for c in self.circuits if f"eig_{c}" in arr.files}
        self.pairs = results.table("composition_scores.csv") if results.has("composition_scores.csv") else None
        self.eff = effective_rank(self.sv["qk"])  # (L, h): the heatmap one clicks in
        super().__init__(results, 3)
        heatmap(self.eff, "QK effective rank (click a head)", "effective rank", ax=self.axes[0])
        self._mark = None
        self.fig.canvas.mpl_connect("button_press_event", self._click)
        self.redraw()

    def _controls(self):
        import ipywidgets as w

        L, h = self.sv["qk"].shape[:2]
        return {
            "layer": w.IntSlider(value=L - 1, min=0, max=L - 1, description="layer row", continuous_update=False),
            "head": w.IntSlider(value=0, min=0, max=h - 1, description="head", continuous_update=False),
        }

    def _click(self, event) -> None:
        if event.inaxes is self.axes[0] and event.xdata is not None and event.ydata is not None:
            self.select(layer=int(event.ydata), head=int(event.xdata))

    def redraw(self) -> None:  # the heatmap stays: only its marker and the other panels are redrawn
        for ax in self.axes[1:]:
            ax.clear()
        t = time.perf_counter()
        if hasattr(self, "_mark"):
            if self._mark is not None:
                self._mark.remove()
            from matplotlib.patches import Rectangle

            j, hd = self.controls["layer"].value, self.controls["head"].value
            self._mark = self.axes[0].add_patch(Rectangle((hd, j), 1, 1, fill=False, ec="red", lw=2))
        self.info.value = self.draw()
        self.fig.canvas.draw_idle()
        self.last_draw_s = time.perf_counter() - t

    def draw(self) -> str:
        j, hd = self.controls["layer"].value, self.controls["head"].value
        layer = self.layers[j]
        curves = {}
        for c in self.circuits:
            curves[c.upper()] = self.sv[c][j, hd]
            if c in self.null:
                curves[f"null {c.upper()}"] = self.null[c][j, hd]
        panels.spectra(self.axes[1], curves, title=f"layer {layer}, head {hd}: singular values")
        if "qk" in self.eig:
            e = self.eig["qk"][j, hd]
            panels.eigen_plane(self.axes[2], e, complex_mask(e), f"QK eigenvalues (layer {layer}, head {hd})")
        return self._partners(layer, hd)

    def _partners(self, layer: int, head: int, n: int = 5) -> str:
        if self.pairs is None:
            return "Composition scores were not computed in this run."
        p = self.pairs
        rows = []
        for c in ("q", "k", "v"):
            if c not in p:
                continue
            as_reader = p[(p.layer_b == layer) & (p.head_b == head)].nlargest(n, c)
            as_writer = p[(p.layer_a == layer) & (p.head_a == head)].nlargest(n, c)
            rd = ", ".join(f"L{r.layer_a}H{r.head_a} {getattr(r, c):.3f}" for r in as_reader.itertuples()) or "–"
            wr = ", ".join(f"L{r.layer_b}H{r.head_b} {getattr(r, c):.3f}" for r in as_writer.itertuples()) or "–"
            rows.append(f"<tr><td>{c.upper()}</td><td>{rd}</td><td>{wr}</td></tr>")
        null = ""
        if "q_null_mean" in p:
            means = ", ".join(f"{c.upper()} {p[f'{c}_null_mean'].iloc[0]:.3f}" for c in "qkv" if f"{c}_null_mean" in p)
            null = f" (null means: {means})"
        return (
            f"<b>Strongest composition partners</b>{null}<table><tr><th></th><th>reads from (earlier heads)"
            f"</th><th>is read by (later heads)</th></tr>{''.join(rows)}</table>"
        )


# ----------------------------------------------------------------------------------------------- 03
class RescaleExplorer(Explorer):
    """Notebook 03: pick an anchor and a head (and a layer): the head's spectrum in that layer beside the
    anchor layer's spectrum rescaled by the fitted scalar, and the residual of the fit along depth."""

    title = "Rescale: a head's spectra before and after the fitted rescale"

    def __init__(self, results: RunResults):
        arr = results.arrays
        self.sigma = arr["sigma"]
        self.anchors = [k[2:] for k in arr.files if k.startswith("T_")]
        self.T = {a: arr[f"T_{a}"] for a in self.anchors}
        self.resid = {a: arr[f"resid_{a}"] for a in self.anchors}
        self.anchor_layer = {a: int(arr[f"layer_{a}"]) for a in self.anchors}
        super().__init__(results, 2)

    def _controls(self):
        import ipywidgets as w

        L, H = self.sigma.shape[:2]
        default = self.results.params.get("anchor", self.anchors[0])
        return {
            "anchor": w.Dropdown(
                options=self.anchors,
                value=default if default in self.anchors else self.anchors[0],
                description="anchor",
            ),
            "head": w.IntSlider(value=0, min=0, max=H - 1, description="head", continuous_update=False),
            "layer": w.IntSlider(value=0, min=0, max=L - 1, description="layer", continuous_update=False),
        }

    def draw(self) -> str:
        a, hd, layer = (self.controls[k].value for k in ("anchor", "head", "layer"))
        aL = self.anchor_layer[a]
        T = self.T[a][layer, hd]
        panels.spectra(
            self.axes[0],
            {f"layer {layer} (before)": self.sigma[layer, hd], f"T·anchor L{aL} (after)": T * self.sigma[aL, hd]},
            title=f"head {hd}: σ of layer {layer} and the rescaled anchor",
        )
        panels.depth(
            self.axes[1],
            np.arange(self.sigma.shape[0]),
            self.resid[a][:, hd],
            mark=layer,
            ylabel="relative residual",
            title=f"head {hd}: residual of the scalar fit by layer",
        )
        return f"anchor {a} (layer {aL}); fitted scale T = {T:.4g}; residual {self.resid[a][layer, hd]:.3f}"


# ----------------------------------------------------------------------------------------------- 07
class DiffExplorer(Explorer):
    """Notebook 07: pick a matrix: the top singular values of W_A, W_B and ΔW, and the principal angles
    between their top-k singular subspaces (beside the angle unrelated subspaces would have)."""

    title = "Model diff: one matrix of A and B"

    def __init__(self, results: RunResults):
        self.df = results.table("weight_diff.csv")
        super().__init__(results, 2)

    def _controls(self):
        import ipywidgets as w

        labels = [
            (f"{r.weight_type} L{r.layer_idx}" + (f" E{r.expert}" if getattr(r, "expert", -1) >= 0 else ""), i)
            for i, r in enumerate(self.df.itertuples())
        ]
        return {"matrix": w.Dropdown(options=labels, value=0, description="matrix")}

    def draw(self) -> str:
        i = self.controls["matrix"].value
        arr, row = self.results.arrays, self.df.iloc[i]
        panels.spectra(
            self.axes[0],
            {"A": arr[f"a{i}"], "B": arr[f"b{i}"], "ΔW = B − A": arr[f"d{i}"]},
            title=f"{row.weight_type}, layer {row.layer_idx}: top singular values",
        )
        ang = np.asarray(arr[f"angles{i}"])
        self.axes[1].bar(np.arange(1, len(ang) + 1), ang, color="C0")
        chance = np.degrees(np.arccos(np.sqrt(row.overlap_null)))
        self.axes[1].axhline(chance, color="0.5", ls="--", lw=1, label="unrelated subspaces (typical)")
        self.axes[1].set(
            xlabel="principal angle index",
            ylabel="degrees",
            ylim=(0, 90),
            title="principal angles between the top-k subspaces",
        )
        self.axes[1].legend(fontsize=7)
        return (
            f"relative change {row.rel_change:.3g}, rank of ΔW {int(row['rank'])}, overlap {row.overlap:.3f} "
            f"(unrelated: {row.overlap_null:.3f})"
        )


VIEWS = {
    "01_weight_ranks": WeightsExplorer,
    "02_attention_kernels": HeadsExplorer,
    "03_sa_rescale": RescaleExplorer,
    "07_model_diff": DiffExplorer,
}
