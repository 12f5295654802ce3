"""Run folders that never lie (issue 14), each test written as the reproduction of what went wrong:
run names that escaped the output root, re-runs mixing old and new files, interrupts leaving
misleading files, untyped parameters, verdicts without a basis, racing merges."""

from __future__ import annotations

import json
import os
import random
import signal
import string
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, run_notebook_smoke

from utils.running.paths import BadRunName
from utils.running.runner import NotebookFailed, execute

CLI = [sys.executable, "-m", "utils.run_notebook"]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def repo_files() -> set[str]:
    return {str(p) for d in ("notebooks", "output") for p in (REPO_ROOT / d).rglob("*")}


# ----------------------------------------------------------------------------- 1. run names
@pytest.mark.parametrize("name", ["../../escaped", "..", ".", "/tmp/abs-run-name", "a/b", "x.failed", " "])
def test_cli_rejects_escaping_run_names_before_anything_is_created(tmp_path, name):
    sandbox = tmp_path / "sandbox"
    root = sandbox / "R"
    root.mkdir(parents=True)
    out = subprocess.run(
        CLI + ["01", "--run-name", name, "--output-root", str(root)], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert out.returncode == 2 and "is not allowed" in out.stderr, out.stderr
    assert files_under(sandbox) == {"R"} and not Path("/tmp/abs-run-name").exists()


def test_fuzzed_run_names_and_parameters_never_write_outside_the_output_root(tmp_path, tiny_llama_dir):
    """A few hundred random run names and parameter strings through the runner on a tiny model."""
    sandbox = tmp_path / "sandbox"
    root = sandbox / "root"
    root.mkdir(parents=True)
    before_repo = repo_files()
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + "._-=+/\\ ~$*?:'\"\n" + "é"
    kernels = 0
    for _ in range(300):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.3:
            name = rng.choice(["..", ".", "../x", "/abs", "a/../..", "~", "x/", ""]) + name
        params = {"model": str(tiny_llama_dir)}
        if rng.random() < 0.9:  # mostly broken parameter strings, rejected before a kernel starts
            params[rng.choice(["layer_idx", "include_embeddings", "device", "no_such"])] = rng.choice(
                ["1.5", "banana", "../..", "/etc", "true", "-1", "", "1e9", "cuda:7"]
            )
        if kernels >= 3:  # bound the test's time: past three real runs, every call gets a bad parameter
            params["layer_idx"] = "not an int"
        try:
            execute("01_weight_ranks", run_name=name, params=params, output_root=root)
            kernels += 1
        except NotebookFailed:
            kernels += 1
        except (ValueError, IndexError, FileNotFoundError):
            pass
    created = {p.resolve() for p in sandbox.rglob("*")}
    assert all(p == root.resolve() or root.resolve() in p.parents for p in created)
    assert repo_files() == before_repo
    assert not list(root.rglob(".*.staging-*")), "a staging folder was left behind"


# ----------------------------------------------------------------------------- 2. re-runs
def test_failed_rerun_keeps_the_last_complete_run_and_a_rerun_drops_stale_files(
    tiny_llama_dir, nan_llama_dir, tmp_path
):
    model = str(tiny_llama_dir)
    first = run_notebook_smoke("02_attention_kernels", {"model": model, "dense_check_max_d": 0}, tmp_path, "r")
    assert (first / "ov_head_spectrum.png").is_file()
    snapshot = {p.name: p.read_bytes() for p in first.iterdir()}
    with pytest.raises(NotebookFailed):  # a model that opens, with a NaN weight: it fails inside the notebook
        run_notebook_smoke("02_attention_kernels", {"model": str(nan_llama_dir), "head_idx": 3}, tmp_path, "r")
    assert {p.name: p.read_bytes() for p in first.iterdir()} == snapshot  # untouched
    failed = tmp_path / "02_attention_kernels" / "r.failed"
    rec = json.loads((failed / "run.json").read_text())
    assert rec["status"] == "failed" and rec["params"]["head_idx"] == 3 and "non-finite" in rec["error"]["evalue"]
    assert (failed / "02_attention_kernels.ipynb").is_file()
    # a successful re-run with parameters that produce fewer files replaces the folder whole
    again = run_notebook_smoke("02_attention_kernels", {"model": model, "include_ov": "false"}, tmp_path, "r")
    assert not (again / "ov_head_spectrum.png").exists() and (again / "qk_head_spectrum.png").is_file()
    rec = json.loads((again / "run.json").read_text())
    assert rec["status"] == "complete" and rec["params"]["include_ov"] is False
    assert rec["started_utc"] <= rec["ended_utc"]


def test_replace_lets_a_failed_run_take_the_place_of_the_complete_one(nan_llama_dir, tmp_path):
    from utils.running.record import Run

    Run("01_weight_ranks", "r", {}, tmp_path).finish()  # a complete run of that name
    with pytest.raises(NotebookFailed):
        execute("01_weight_ranks", "r", {"model": str(nan_llama_dir)}, tmp_path, replace=True)
    rec = json.loads((tmp_path / "01_weight_ranks" / "r" / "run.json").read_text())
    assert rec["status"] == "failed" and not (tmp_path / "01_weight_ranks" / "r.failed").exists()


# ----------------------------------------------------------------------------- 3. interrupts
def _stage(root: Path) -> Path | None:
    found = list(root.glob("05_spectral_dynamics/.r.staging-*"))
    return found[0] if found else None


def test_sigint_then_sigterm_mid_run_marks_interrupted_and_keeps_the_complete_run(tmp_path):
    from utils.running.record import Run

    root = tmp_path / "out"
    prev = Run("05_spectral_dynamics", "r", {"marker": 1}, root)
    prev.save_text("the last complete run", "keep.txt")
    prev.finish()
    proc = subprocess.Popen(
        CLI
        + [
            "05",
            "--run-name",
            "r",
            "--output-root",
            str(root),
            "-p",
            "n_steps",
            "200000",
            "-p",
            "n_layer",
            "1",
            "-p",
            "n_embd",
            "16",
            "-p",
            "n_head",
            "2",
            "-p",
            "block_size",
            "16",
            "-p",
            "batch_size",
            "2",
            "-p",
            "n_runs",
            "1",
            "-p",
            "record_every",
            "100000",
            "-p",
            "text_chars",
            "20000",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    kernel_pid, deadline = None, time.time() + 120
    while time.time() < deadline and kernel_pid is None:  # wait for the kernel to start the notebook
        stage = _stage(root)
        try:
            rec = json.loads((stage / "run.json").read_text()) if stage else {}
            kernel_pid = rec.get("pid") if rec.get("timings_s") is not None else None
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    assert kernel_pid, "the notebook never started"
    time.sleep(3.0)  # inside the training loop
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    nb = root / "05_spectral_dynamics"
    assert (nb / "r" / "keep.txt").read_text() == "the last complete run"
    assert json.loads((nb / "r" / "run.json").read_text())["status"] == "complete"
    inter = nb / "r.interrupted"
    rec = json.loads((inter / "run.json").read_text())
    assert rec["status"] == "interrupted" and rec["signal"] == "SIGINT" and rec["ended_utc"]
    # issue 21, item 14: its duration agrees with its start and end
    span = (datetime.fromisoformat(rec["ended_utc"]) - datetime.fromisoformat(rec["started_utc"])).total_seconds()
    assert rec["duration_s"] == pytest.approx(span, abs=1.0)
    notebook = json.loads((inter / "05_spectral_dynamics.ipynb").read_text())
    assert "Run interrupted by SIGINT" in "".join(notebook["cells"][0]["source"])
    assert notebook["metadata"]["transformer_spectra"]["status"] == "interrupted"
    assert not [p for p in nb.rglob("*") if p.name.startswith(".")], "temp or staging files left behind"
    from utils.running.runner import process_alive

    assert not process_alive(kernel_pid), "the kernel is still running"


# ----------------------------------------------------------------------------- 4. typed parameters
def test_cli_parameters_are_converted_to_their_declared_type(tiny_llama_dir, tmp_path):
    out = subprocess.run(
        CLI
        + [
            "02",
            "--run-name",
            "t",
            "--output-root",
            str(tmp_path),
            "-p",
            "model",
            str(tiny_llama_dir),
            "-p",
            "include_ov",
            "false",
            "-p",
            "dense_check_max_d",
            "0",
            "-p",
            "top_k",
            "3",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert out.returncode == 0, out.stderr
    run = tmp_path / "02_attention_kernels" / "t"
    params = json.loads((run / "run.json").read_text())["params"]
    assert params["include_ov"] is False and params["dense_check_max_d"] == 0 and params["top_k"] == 3
    assert not (run / "ov_head_spectrum.png").exists()
    assert "Dense comparison skipped" in (run / "report.md").read_text()


@pytest.mark.parametrize(
    "args,msg",
    [
        (["-p", "include_ov", "banana"], "include_ov must be a bool"),
        (["-p", "device", "banana"], "device='banana' is not a device"),
        (["-p", "device", "cuda"], "no CUDA GPU is visible"),
        (["-p", "top_k", "2.5"], "top_k must be an integer"),
    ],
)
def test_bad_parameter_values_fail_before_anything_is_created(tmp_path, args, msg):
    out = subprocess.run(
        CLI + ["02", "--run-name", "t", "--output-root", str(tmp_path)] + args,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert out.returncode == 2 and msg in out.stderr and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- 5. verdicts
def test_rescale_verdicts_need_a_basis():
    from utils.rescale.analysis import analyze

    rng = np.random.default_rng(0)
    one = analyze(rng.random((1, 3, 4)), rng.random((1, 3)), "last", n_boot=20)
    assert one.verdict.startswith("NOT DETERMINED") and one.verdict_key == "not_determined"
    assert "not determined" in one.stability
    two = analyze(rng.random((2, 3, 4)), rng.random((2, 3)), "last", n_boot=20)
    assert two.verdict_key == "not_determined" and "only 1 layer(s) besides the anchor" in two.verdict
    zero = analyze(np.zeros((4, 3, 4)), rng.random((4, 3)), "last", n_boot=20)
    assert zero.verdict_key == "not_determined" and "every spectrum is zero" in zero.verdict
    assert np.isnan(zero.corr_T_entropy)
    sig, ent = rng.random((5, 3, 4)), rng.random((5, 3))
    ref = analyze(sig, ent, "best", n_boot=20)
    big = analyze(sig * 1e308, ent, "best", n_boot=20)  # no overflow, no LinAlgError
    np.testing.assert_allclose(big.resid, ref.resid, rtol=1e-12)
    np.testing.assert_allclose(big.T, ref.T, rtol=1e-12)
    assert big.verdict == ref.verdict and big.verdict_key != "not_determined"
    with pytest.raises(ValueError, match="sigma holds 1 NaN/Inf"):
        analyze(np.where(np.arange(60).reshape(5, 3, 4) == 7, np.nan, sig), ent, "last")


def test_notebook_03_on_a_one_layer_geometry_says_not_determined(tmp_path):
    from utils.rescale.geometry import make_geometry, save_geometry

    geo = make_geometry(np.random.default_rng(1).random((1, 2, 3)), [[1.0, 2.0]])
    p = save_geometry(geo, tmp_path / "g.json")
    run = run_notebook_smoke("03_sa_rescale", {"geometry_json": str(p), "n_boot": 10, "rank_k_max": 0}, tmp_path)
    report = (run / "report.md").read_text()
    assert "**Verdict:** NOT DETERMINED" in report and "HYPOTHESIS SUPPORTED" not in report


# ----------------------------------------------------------------------------- 7. merges
def test_concurrent_merges_to_one_new_output_exactly_one_wins(tmp_path):
    from utils.dynamics.store import RunFileWriter

    runs = []
    for r in range(2):
        with RunFileWriter(tmp_path / f"run{r}.h5") as w:
            for step in range(3):
                w.write_checkpoint(step, {"a": {"singular_values": np.arange(4.0) + r}}, {"a": (4, 5)})
        runs.append(str(tmp_path / f"run{r}.h5"))
    out = tmp_path / "merged.h5"
    cmd = [sys.executable, "-m", "utils.dynamics.store", "merge", str(out), *runs]
    procs = [
        subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    results = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    assert sorted(rc for rc, _, _ in results) == [0, 2, 2]
    for rc, so, se in results:
        if rc == 2:
            assert se.startswith("error:") and "overwrite" in se and "error" not in so
    assert out.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    missing = subprocess.run(
        [sys.executable, "-m", "utils.dynamics.store", "merge", str(tmp_path / "no" / "m.h5"), *runs],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "output folder" in missing.stderr and not (tmp_path / "no").exists()


def test_run_name_rule_is_documented_and_enforced_by_start_run(tmp_path):
    from utils.running.record import Run

    for bad in ("..", "a/b", "/abs"):
        with pytest.raises(BadRunName):
            Run("01_weight_ranks", bad, {}, tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert os.path.basename(str(Run("01_weight_ranks", "ok_name-1=a+b", {}, tmp_path).final_dir)) == "ok_name-1=a+b"


def test_notebook_01_on_a_two_layer_model_says_the_phases_are_not_determined(tmp_path):
    import transformers as tf

    folder = tmp_path / "two"
    cfg = tf.LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=64,
    )
    tf.LlamaForCausalLM(cfg).save_pretrained(folder)
    run = run_notebook_smoke("01_weight_ranks", {"model": str(folder)}, tmp_path)
    report = (run / "report.md").read_text()
    assert "Not determined: the phase analysis needs at least 3 layers; this model has 2." in report
    assert "U-SHAPE |" not in report and json.loads((run / "run.json").read_text())["status"] == "complete"
