"""Big checkpoints on a small budget: fixture layout, the blocked Gram, streaming reads, resumable sweeps.

The large fixtures themselves are never written here (``make fixtures``, outside the repository);
the tests write a tiny sharded checkpoint with the same writer and layout code.
"""

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT, run_notebook_smoke
from helpers import slow_frobenius

from utils.spectral import gram_svdvals
from utils.spectral.core import gram
from utils.weight_ranks import weight_sweep
from utils.weights import open_weights
from utils.weights.fixtures import DEFAULT_FIXTURES, FIXTURES, fixture_dir, random_blocks, tensor_layout
from utils.weights.shards import write_checkpoint

TINY_QWEN = {
    **FIXTURES["qwen2.5-3b"],
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 200,
    "max_window_layers": 3,
    "bos_token_id": 0,
    "eos_token_id": 0,
}


@pytest.fixture(scope="module")
def tiny_sharded(tmp_path_factory):
    """A 3-layer qwen2 checkpoint in several shards with an index, written by the fixture writer."""
    folder = tmp_path_factory.mktemp("sharded") / "tiny-qwen2"
    layout = tensor_layout(TINY_QWEN)
    return write_checkpoint(folder, layout, random_blocks(3), config=TINY_QWEN, max_shard_bytes=40_000)


@pytest.mark.parametrize("name", DEFAULT_FIXTURES)
def test_fixture_layout_is_the_models(name):
    """Names and shapes against transformers' own model built from the same config (on the meta device)."""
    import transformers

    cfg = {k: v for k, v in FIXTURES[name].items() if k not in ("architectures", "transformers_version")}
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg))
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if cfg["tie_word_embeddings"]:
        want.pop("lm_head.weight")
    layout = tensor_layout(FIXTURES[name])
    assert {n: s for n, s, _ in layout} == want and {dt for *_, dt in layout} == {"BF16"}
    n_params = sum(math.prod(s) for _, s, _ in layout)
    assert n_params == {"llama-3.1-8b": 8_030_261_248, "qwen2.5-3b": 3_085_938_688}[name]  # the model cards
    assert fixture_dir(name).name == f"{name}-random"


def test_fixture_folder_is_an_ordinary_checkpoint(tiny_sharded):
    import transformers
    from safetensors.torch import load_file

    shards = sorted(tiny_sharded.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and (tiny_sharded / "model.safetensors.index.json").is_file()
    src = open_weights(tiny_sharded)
    assert src.family == "qwen2" and src.dims.L == 3 and len(src.matrices()) == 3 * 7 + 1  # tied head
    ref = {}
    for f in tiny_sharded.glob("*.safetensors"):
        ref.update(load_file(f))
    assert len(ref) == len(tensor_layout(TINY_QWEN))
    for name, t in ref.items():
        assert torch.equal(src.checkpoint.read(name), t), name
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_sharded)
    assert torch.equal(model.model.layers[2].mlp.down_proj.weight, ref["model.layers.2.mlp.down_proj.weight"])


@pytest.mark.parametrize("shape", [(300, 40), (40, 300)])
def test_blocked_gram_equals_the_dense_one(shape):
    W = torch.randn(shape).to(torch.bfloat16)
    A = W.double().numpy()
    dense = A.T @ A if shape[0] >= shape[1] else A @ A.T
    G = gram(W, block_bytes=40 * 8 * 7)  # blocks of 7 rows of the long side: 43 blocks
    np.testing.assert_allclose(G, dense, rtol=1e-12, atol=1e-12 * np.abs(dense).max())
    s = np.linalg.svd(A, compute_uv=False)
    np.testing.assert_allclose(gram_svdvals(W), s, rtol=1e-9)
    fast = gram_svdvals(W, dtype=torch.float32)
    assert np.abs(fast - s).max() < 1e-3 * s[0]  # the documented float32 bound, ~3.5e-4 sigma_max


def test_gram_names_the_matrix_with_nan():
    W = torch.randn(50, 20)
    W[7, 3] = float("nan")
    with pytest.raises(ValueError, match="weight 'x' holds 1 NaN/Inf values"):
        gram_svdvals(W, what="weight 'x'")


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc")
def test_reading_maps_nothing_of_the_shards(tiny_sharded):
    """Tensors are read into fresh buffers: no shard stays memory-mapped (mapped pages would count as resident)."""
    src = open_weights(tiny_sharded)
    for ref in src.matrices():
        src.load(ref)
    maps = open("/proc/self/maps").read()
    assert not [s for s in src.checkpoint.shards if str(s) in maps]


def _records(path):
    return max(0, sum(1 for ln in path.read_text().splitlines() if ln.strip()) - 1)


def test_killed_sweep_resumes_to_the_uninterrupted_table(tiny_sharded, tmp_path, monkeypatch):
    """A real sweep process killed (SIGKILL) after some matrices; the resumed table equals an uninterrupted one."""
    cache = tmp_path / "sweep.jsonl"
    code = (
        f"import sys; sys.path.insert(0, {str(REPO_ROOT / 'tests')!r})\n"
        "from helpers import slow_frobenius\n"
        "from utils.weight_ranks import weight_sweep\n"
        "from utils.weights import open_weights\n"
        f"weight_sweep(open_weights({str(tiny_sharded)!r}), device='cpu', progress=False, "
        f"per_matrix=slow_frobenius, cache={str(cache)!r})\n"
    )
    env = {**os.environ, "TSPECTRA_TEST_HOOK_SLEEP": "0.25"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and (not cache.exists() or _records(cache) < 4):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_total = 3 * 7 + 1
    killed_at = _records(cache)
    assert 4 <= killed_at < n_total, f"the sweep was not killed midway ({killed_at} of {n_total} matrices)"

    src = open_weights(tiny_sharded)
    resumed = weight_sweep(src, device="cpu", progress=False, per_matrix=slow_frobenius, cache=cache)
    reference = weight_sweep(src, device="cpu", progress=False, per_matrix=slow_frobenius)
    assert resumed.attrs["reused"] >= killed_at - 1 and resumed.attrs["computed"] == n_total - resumed.attrs["reused"]
    pd.testing.assert_frame_equal(resumed, reference, check_exact=True)
    assert np.isinf(resumed["inf_col"]).all()  # a non-finite hook value survives the file
    np.testing.assert_allclose(resumed["frob_direct"], resumed["frobenius_norm"], rtol=1e-9)

    # finished: read back, nothing loaded or computed again
    monkeypatch.setattr(type(src), "load", lambda *a, **k: pytest.fail("a finished sweep loaded a matrix"))
    again = weight_sweep(src, device="cpu", progress=False, per_matrix=slow_frobenius, cache=cache)
    assert {k: again.attrs[k] for k in ("cache", "reused", "computed")} == {"cache": str(cache), "reused": n_total,
                                                                           "computed": 0}  # fmt: skip
    pd.testing.assert_frame_equal(again, reference, check_exact=True)


def test_cache_with_other_settings_is_refused_and_resume_false_starts_afresh(tiny_sharded, tmp_path):
    src = open_weights(tiny_sharded)
    folder = tmp_path / "cache"
    first = weight_sweep(src, device="cpu", progress=False, cache=folder)
    (path,) = folder.glob("*.jsonl")
    assert path.name.startswith("tiny-qwen2-") and first.attrs["computed"] == 22
    with pytest.raises(ValueError, match=r"differs in: precision.*resume=False"):
        weight_sweep(src, device="cpu", progress=False, precision="float32", cache=path)
    fast = weight_sweep(src, device="cpu", progress=False, precision="float32", cache=path, resume=False)
    assert fast.attrs["computed"] == 22 and _records(path) == 22
    np.testing.assert_allclose(fast["eff_rank"], first["eff_rank"], rtol=1e-4)
    # a folder cache keys the file by settings: float32 and float64 results live side by side
    weight_sweep(src, device="cpu", progress=False, precision="float32", cache=folder)
    assert len(list(folder.glob("*.jsonl"))) == 2


def test_notebook_01_takes_a_fixture_folder_and_resumes(tiny_sharded, tmp_path):
    run = run_notebook_smoke("01_weight_ranks", {"model": str(tiny_sharded), "layer_idx": 2}, tmp_path)
    df = pd.read_csv(run / "weight_ranks.csv")
    src = open_weights(tiny_sharded)
    W = src.load(next(r for r in src.matrices() if r.layer == 2 and r.weight_type == "W_up")).double().numpy()
    s = np.linalg.svd(W, compute_uv=False)
    p = s / s.sum()
    row = df[(df.layer_idx == 2) & (df.weight_type == "W_up")]
    assert row["eff_rank"].item() == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-9)
    assert "22 computed, 0 read back" in (run / "report.md").read_text()
    assert len(list((tmp_path / ".cache" / "weight_sweep").glob("tiny-qwen2-*.jsonl"))) == 1
    again = run_notebook_smoke("01_weight_ranks", {"model": str(tiny_sharded), "layer_idx": 2}, tmp_path, "again")
    assert "0 computed, 22 read back" in (again / "report.md").read_text()
    pd.testing.assert_frame_equal(pd.read_csv(again / "weight_ranks.csv"), df)


def test_notebook_02_takes_a_fixture_folder(tiny_sharded, tmp_path):
    run = run_notebook_smoke("02_attention_kernels", {"model": str(tiny_sharded), "layer_idx": 1}, tmp_path)
    heads = pd.read_csv(run / "attention_heads.csv")
    src = open_weights(tiny_sharded)
    Wq, Wk = src.layer_weight(1, "q").double().numpy(), src.layer_weight(1, "k").double().numpy()
    A = Wq[16:32].T @ Wk[0:16]  # head 1 reads KV head 0 (4 heads, 2 KV heads, d_head 16)
    s = np.linalg.svd(A, compute_uv=False)[:16]
    p = s / s.sum()
    row = heads[(heads["layer"] == 1) & (heads["head"] == 1)]
    assert row["eff_rank"].item() == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-9)


def test_bench_scale_skips_without_fixtures_and_names_the_command(tmp_path):
    env = {**os.environ, "TSPECTRA_FIXTURES": str(tmp_path / "none")}
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "bench_scale.py")], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0 and "skipped" in out.stdout and "make fixtures" in out.stdout
    assert not (tmp_path / "none").exists()  # nothing written


def test_progress_shows_matrices_done_current_tensor_and_eta(tiny_sharded, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TSPECTRA_HEADLESS", "1")
    cache = tmp_path / "c.jsonl"
    src = open_weights(tiny_sharded)
    weight_sweep(src, device="cpu", include_model_level=False, cache=cache)  # 21 of the 22 matrices
    weight_sweep(src, device="cpu", cache=cache)  # resumes: the embedding only
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("  0%|") and out[0].endswith("| 00:00<? | 0/21 matrices, now -")
    assert out[1].startswith("100%|") and out[1].endswith("<00:00 | 21/21 matrices, now -")
    assert "21/22 matrices, now -" in out[2] and "22/22 matrices" in out[-1]


def test_the_sweep_cache_never_mixes_up_two_models_of_one_name(tmp_path):
    """Issue 21, item 1: two config-only folders A/tinyl and B/tinyl with the same shapes, initializer_range
    0.02 and 0.2; random: of each through the same cache folder. The cache key covers the whole configuration,
    the seed and the resolved path, so the second is computed afresh, with its own (10x) spectral norms."""
    import json

    from utils.weight_ranks import weight_sweep

    cfg = {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 64,
    }
    for sub, r in (("A", 0.02), ("B", 0.2)):
        (tmp_path / sub / "tinyl").mkdir(parents=True)
        (tmp_path / sub / "tinyl" / "config.json").write_text(json.dumps({**cfg, "initializer_range": r}))
    cache = tmp_path / "cache"
    a = weight_sweep(open_weights(f"random:{tmp_path / 'A' / 'tinyl'}"), cache=cache, progress=False)
    b = weight_sweep(open_weights(f"random:{tmp_path / 'B' / 'tinyl'}"), cache=cache, progress=False)
    assert a.attrs["computed"] == len(a) and b.attrs["computed"] == len(b) and b.attrs["reused"] == 0
    ratio = b.spectral_norm.to_numpy() / a.spectral_norm.to_numpy()
    assert ratio.min() > 5  # B's own weights, not A's read back
    again = weight_sweep(open_weights(f"random:{tmp_path / 'B' / 'tinyl'}"), cache=cache, progress=False)
    assert again.attrs["reused"] == len(b) and np.array_equal(again.spectral_norm, b.spectral_norm)
    # the same folder with its configuration changed in place is another model too
    (tmp_path / "A" / "tinyl" / "config.json").write_text(json.dumps({**cfg, "initializer_range": 0.5}))
    c = weight_sweep(open_weights(f"random:{tmp_path / 'A' / 'tinyl'}"), cache=cache, progress=False)
    assert c.attrs["computed"] == len(c)
