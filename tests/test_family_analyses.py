"""Every analysis on every family: the weight sweep with its nulls, exact head spectra in both kernel
conventions, composition scores, the model diff against the random twin; notebooks 01, 02, 03 and 07 end
to end on a family of each kind (mixture of experts, latent attention, fused storage, soft-cap)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import TINY_VOCAB, build_tiny_tokenizer, run_notebook_smoke
from family_cases import CASES, build_case

from utils import attention, diff
from utils.weight_ranks import expert_spread, rmt_sweep
from utils.weights import open_weights

CASE_IDS = [c for c in CASES if not c.endswith("-fused")]
_FOLDERS: dict = {}


def folder(case, tmp_path_factory):
    if case not in _FOLDERS:
        f = build_case(case, tmp_path_factory.mktemp(case), vocab_size=TINY_VOCAB)
        build_tiny_tokenizer(f)  # so that the model can be run (load_model, notebook 03)
        _FOLDERS[case] = f
    return _FOLDERS[case]


@pytest.mark.parametrize("case", CASE_IDS)
def test_every_analysis_runs_on_every_family(case, tmp_path_factory):
    src = open_weights(folder(case, tmp_path_factory))
    df, spectra, null_spectra = rmt_sweep(src, null=True, progress=False)
    assert len(df) == len(src.matrices()) and np.isfinite(df.eff_rank).all() and np.isfinite(df.null_eff_rank).all()
    if src.dims.n_experts:
        spread = expert_spread(df)
        assert len(spread) and (spread.experts == src.dims.n_experts).all()
    for kernel in attention.KERNELS:
        sw = attention.sweep_attention(src, circuits=attention.circuits_of(src), progress=False, kernel=kernel)
        for c in attention.circuits_of(src):
            assert np.isfinite(sw.sv[c]).all() and (sw.sv[c][..., 0] > 0).all(), (kernel, c)
    cs = attention.composition_scores(src, progress=False, kernel="folded")
    vals = np.concatenate([s[np.isfinite(s)] for s in cs.scores.values()])
    assert len(vals) and ((vals >= 0) & (vals <= 1 + 1e-12)).all()
    twin = open_weights(f"random:{src.name}@1")
    d = diff.diff_sweep(src, twin, progress=False)
    assert len(d) == len(src.matrices()) and (d.rel_change > 0).all()
    hd = diff.head_diff(src, twin, circuits=attention.circuits_of(src), progress=False, kernel="folded")
    assert len(hd) == src.dims.L * src.dims.h


@pytest.mark.slow
@pytest.mark.parametrize("case,kernel", [("mixtral", "raw"), ("deepseek_v3", "folded")])
def test_notebooks_01_02_07_on_a_mixture_of_experts_and_on_latent_attention(case, kernel, tmp_path, tmp_path_factory):
    """End to end on the two kinds of model the older notebooks never saw (the API test above runs every
    family through the same analyses): per-expert tables and figures, the decoupled rotary kernel."""
    model = str(folder(case, tmp_path_factory))
    r1 = run_notebook_smoke("01_weight_ranks", {"model": model, "n_boot": 0}, tmp_path)
    assert (r1 / "expert_spread.png").is_file() and (r1 / "weight_ranks.csv").is_file()
    r2 = run_notebook_smoke(
        "02_attention_kernels", {"model": model, "kernel": kernel, "top_k": 5, "composition": False}, tmp_path
    )
    assert f"Kernels are `{kernel}`" in (r2 / "report.md").read_text()
    if case == "deepseek_v3":
        assert (r2 / "qk_rope_head_spectrum.png").is_file()
        r7 = run_notebook_smoke(
            "07_model_diff", {"model": model, "model_b": f"random:{model}", "kernel": kernel}, tmp_path
        )
        assert (r7 / "head_diff.csv").is_file()


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("TSPECTRA_ALL_FAMILIES"), reason="outside the CI budget: `make families` runs it"
)
@pytest.mark.parametrize("case", CASE_IDS)
def test_notebooks_01_and_02_on_a_checkpoint_folder_of_every_family(case, tmp_path, tmp_path_factory):
    """Issue 20's acceptance, literally: notebooks 01 and 02 end to end on a checkpoint folder of each family
    (about 40 notebook runs, so `make families` runs it rather than `make test`)."""
    model = str(folder(case, tmp_path_factory))
    r1 = run_notebook_smoke("01_weight_ranks", {"model": model, "n_boot": 0}, tmp_path)
    n = len(open_weights(model).matrices())
    import pandas as pd

    assert len(pd.read_csv(r1 / "weight_ranks.csv")) == n
    r2 = run_notebook_smoke("02_attention_kernels", {"model": model, "top_k": 5, "composition": False}, tmp_path)
    assert "Kernels are `raw`" in (r2 / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["gpt_neox", "deepseek_v3", "gemma3_text"])
def test_notebook_03_extracts_geometry_from_every_kind_of_attention(case, tmp_path, tmp_path_factory):
    model = str(folder(case, tmp_path_factory))
    r3 = run_notebook_smoke(
        "03_sa_rescale", {"model": model, "kernel": "folded", "seq_len": 16, "n_seqs": 2, "n_boot": 50}, tmp_path
    )
    import json

    geo = json.loads((r3 / "geometry.json").read_text())
    assert geo["kernel"] == "folded" and geo["model"] == model and geo["family"] == open_weights(model).family


def test_averaging_experts_is_a_mean_and_a_flag_holds_only_if_it_holds_for_every_expert():
    import pandas as pd

    from utils.weight_ranks.tables import experts_averaged

    df = pd.DataFrame(
        {
            "name": ["model.layers.0.self_attn.q_proj.weight"]
            + [f"model.layers.0.mlp.experts.{e}.gate_proj.weight" for e in range(3)]
            + [f"model.layers.0.mlp.experts.gate_up_proj[{e}]" for e in range(2)],
            "layer_idx": [0] * 6,
            "weight_type": ["query", "gate", "gate", "gate", "up", "up"],
            "expert": [-1, 0, 1, 2, 0, 1],
            "eff_rank": [10.0, 1.0, 2.0, 6.0, 4.0, 8.0],
            "credible": [True, True, False, True, True, True],
        }
    )
    out = experts_averaged(df).set_index("weight_type")
    assert (
        out.loc["gate", "eff_rank"] == 3.0 and out.loc["up", "eff_rank"] == 6.0 and out.loc["query", "eff_rank"] == 10
    )
    assert not out.loc["gate", "credible"] and out.loc["up", "credible"] and out.loc["gate", "n_experts"] == 3
    assert out.loc["gate", "name"] == "model.layers.0.mlp.experts.*.gate_proj.weight"
    assert out.loc["up", "name"] == "model.layers.0.mlp.experts.gate_up_proj[*]"
