"""Compressor training under DDP (issue 22): two gloo processes launched by torchrun give the losses and
weights of one process with the same global batch, and a run stopped on two processes resumes on one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import torch
from conftest import REPO_ROOT

from utils.latent import ExperimentConfig
from utils.latent.compressor import KINDS
from utils.latent.distributed import Dist
from utils.latent.trainer import train_from_scratch

TINY = dict(
    data="synthetic",
    n_train_paragraphs=12,
    n_eval_paragraphs=4,
    hidden_layers="0,1",
    d_enc=16,
    salience_steps=2,
    recall_steps=1,
    qa_steps=2,
    train_batch_size=4,
    kd_topk=4,
    recall_per_context=1,
)
UNTIL = 2  # steps of each compressor in the first job


def _weights(folder) -> dict:
    return {k: torch.load(folder / f"{k}.pt", weights_only=True)["model"] for k in KINDS}


def _log(folder) -> dict:
    return {(r["kind"], r["step"]): r for r in map(json.loads, (folder / "train_log.jsonl").read_text().splitlines())}


def _close(a: dict, b: dict, tol: float) -> None:
    for k in KINDS:
        for name, v in a[k].items():
            if v.is_floating_point():
                torch.testing.assert_close(v, b[k][name], rtol=tol, atol=tol, msg=f"{k}.{name}")


def test_two_gloo_processes_train_like_one_and_resume_on_one(tiny_llama_dir, tmp_path):
    cfg = ExperimentConfig.from_params(dict(TINY, model=str(tiny_llama_dir)))
    one, two = tmp_path / "one", tmp_path / "two"
    # one process, the reference: a first job up to step 2 of each compressor, then a resumed job to the end
    train_from_scratch(cfg, one, Dist(), torch.device("cpu"), save_every=1, until=UNTIL)
    shutil.copytree(one / "ckpt_seed0", tmp_path / "one_at_2")
    train_from_scratch(replace(cfg, resume=True), one, Dist(), torch.device("cpu"), save_every=1)
    # the same first job on two gloo processes, launched the way a user launches it
    args = [f"--{k}={v}" for k, v in TINY.items()] + [f"--model={tiny_llama_dir}", f"--out={two}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "utils.latent.ddp",
    ]
    proc = subprocess.run(
        [*cmd, *args, "--save_every=1", f"--until_step={UNTIL}"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref, got = _log(one), _log(two)
    assert sorted(got) == sorted(k for k in ref if k[1] < UNTIL) and len(got) == 3 * UNTIL  # rank 0 logs, once
    for key, r in got.items():  # the same batch loss (summed over the processes' shares), step by step
        for part in ("loss", "ce", "kd", "salience", "grad_norm"):
            if part in r:
                assert abs(r[part] - ref[key][part]) <= 1e-5 * max(1.0, abs(ref[key][part])), (key, part)
    # the same weights after those steps (float rounding of the sums, carried through Adam)
    _close(_weights(two / "ckpt_seed0"), _weights(tmp_path / "one_at_2"), 1e-4)
    assert json.loads((two / "ckpt_seed0" / "config.json").read_text())["progress"] == {k: UNTIL for k in KINDS}
    # resumed on one process from the two-process checkpoint: the reference's remaining steps and final weights
    built = (two / "train_cache.pt").stat().st_mtime_ns
    train_from_scratch(replace(cfg, resume=True), two, Dist(), torch.device("cpu"), save_every=1)
    got = _log(two)
    assert sorted(got) == sorted(ref)
    for key in ref:
        assert abs(got[key]["loss"] - ref[key]["loss"]) <= 1e-4 * max(1.0, abs(ref[key]["loss"])), key
    _close(_weights(two / "ckpt_seed0"), _weights(one / "ckpt_seed0"), 1e-4)
    # the features were built once (by rank 0) and read back by the resumed job, not rebuilt
    assert (two / "train_cache.pt").stat().st_mtime_ns == built


def test_a_global_batch_smaller_than_the_processes_is_refused():
    import pytest

    with pytest.raises(ValueError, match="train_batch_size >= 4"):
        Dist(rank=1, world=4).share(2)
    assert [Dist(r, 3).share(8) for r in range(3)] == [slice(0, 2), slice(2, 5), slice(5, 8)]
