"""The explorers: opened on finished runs of notebooks 01, 02, 03 and 07 (and on a sweep's folder), each
control redraws the figure from the saved results, without recomputing; headless they stay out of the way."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import run_notebook_smoke

from utils import explore


def _png(ex) -> bytes:
    buf = io.BytesIO()
    ex.fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


@pytest.fixture(scope="module")
def runs(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("explore")
    m = str(tiny_llama_dir)
    return {
        "01": run_notebook_smoke("01_weight_ranks", {"model": m, "n_boot": 0}, root),
        "02": run_notebook_smoke("02_attention_kernels", {"model": m, "top_k": 5}, root),
        "03": run_notebook_smoke(
            "03_sa_rescale", {"model": m, "seq_len": 16, "n_seqs": 2, "n_boot": 20, "rank_k_max": 0}, root
        ),
        "07": run_notebook_smoke("07_model_diff", {"model": m, "model_b": f"random:{m}", "heads": False}, root),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "nb,changes",
    [
        ("01", [{"layer": 0}, {"weight_type": "W_down"}, {"layer": 2}]),
        ("02", [{"head": 3}, {"layer": 0}]),
        ("03", [{"head": 2}, {"layer": 1}, {"anchor": "middle"}]),
        ("07", [{"matrix": 5}, {"matrix": 9}]),
    ],
)
def test_every_control_redraws_from_the_saved_results(runs, nb, changes, monkeypatch):
    import utils.attention
    import utils.weight_ranks

    def recompute(*a, **k):  # an explorer never recomputes
        raise AssertionError("an explorer recomputed a result")

    for mod, name in (
        (utils.weight_ranks, "weight_sweep"),
        (utils.attention, "layer_kernels"),
        (utils.attention, "sweep_attention"),
    ):
        monkeypatch.setattr(mod, name, recompute)
    ex = explore.open(runs[nb])
    assert ex.widget is not None and ex.info.value
    before = _png(ex)
    for change in changes:
        info = ex.info.value
        ex.select(**change)
        after = _png(ex)
        assert after != before, f"{nb}: the figure did not change for {change}"
        assert ex.info.value != info or nb == "03"
        before = after
        assert np.isfinite(ex.last_draw_s)


@pytest.mark.slow
def test_heads_explorer_follows_a_click_on_the_heatmap(runs):
    from types import SimpleNamespace

    ex = explore.open(runs["02"])
    ex._click(SimpleNamespace(inaxes=ex.axes[0], xdata=2.4, ydata=1.7))
    assert (ex.controls["layer"].value, ex.controls["head"].value) == (1, 2)
    assert "L1" in ex.info.value or "composition" in ex.info.value.lower()


@pytest.mark.slow
def test_a_sweep_folder_opens_as_a_menu_of_its_complete_runs(runs, tmp_path):
    import json
    import shutil

    sweep = tmp_path / "sweep"
    for name in ("a=1", "a=2", "a=0.failed"):
        shutil.copytree(runs["01"], sweep / name)
    rec = json.loads((sweep / "a=0.failed" / "run.json").read_text())
    (sweep / "a=0.failed" / "run.json").write_text(json.dumps({**rec, "status": "failed"}))  # a kept failed attempt
    ex = explore.open(sweep)
    assert isinstance(ex, explore.SweepExplorer) and len(ex.runs) == 2
    first = ex.current
    ex.menu.value = 1
    assert ex.current is not first and ex.current.results.dir.name == "a=2"


def test_headless_runs_show_nothing_and_missing_data_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TSPECTRA_HEADLESS", "1")
    assert explore.here(tmp_path) is None
    assert f"report:  {tmp_path / 'report.html'}" in capsys.readouterr().out  # the last cell says where results went
    (tmp_path / "run.json").write_text('{"notebook": "02_attention_kernels", "params": {}}')
    with pytest.raises(explore.ExplorerDataMissing, match="made before this explorer existed"):
        explore.open(tmp_path)
    with pytest.raises(explore.ExplorerDataMissing, match="does not exist"):
        explore.open(tmp_path / "nope")
