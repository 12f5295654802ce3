"""Benchmark: a `latent` training step under DDP (two gloo processes, torchrun) against one process, with the
same global batch, both through the project's command ``utils.latent.ddp``.

    .venv/bin/python bench/bench_latent_ddp.py [--model smollm2] [--steps 5] [--batch 8] [--processes 2]

One process runs first and builds the shared training features (``train_cache.pt``: hidden states and teacher
top-k of 16 training contexts of the shipped SQuAD sample); the DDP run reads the same file, so both time only
steps. The figure is the mean logged ``step_s`` of the QA steps of ``latent`` after the first (forward, backward,
gradient all-reduce, AdamW). One process uses every core (torch's threads); each DDP process gets
cores / processes threads (``OMP_NUM_THREADS``). On a 2-core CPU the ratio is expected below 1: the point of the
CPU run is that the losses agree and the command works; the speed-up is on GPUs (one process per GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, model: str, steps: int, batch: int, procs: int) -> list[dict]:
    args = [
        f"--out={out}",
        f"--model={model}",
        "--checkpoint=",
        "--max_train_contexts=16",
        "--salience_steps=0",
        "--recall_steps=0",
        f"--qa_steps={steps}",
        f"--train_batch_size={batch}",
    ]
    threads = max(1, (os.cpu_count() or 2) // procs)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TSPECTRA_HEADLESS": "1"}
    if procs == 1:
        cmd = [sys.executable, "-m", "utils.latent.ddp", *args]
    else:
        env["OMP_NUM_THREADS"] = str(threads)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
        cmd += ["-m", "utils.latent.ddp", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    return [r for r in log if r["kind"] == "latent"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--processes", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "ddp"
        single = run(one, a.model, a.steps, a.batch, 1)
        many.mkdir()
        shutil.copy(one / "train_cache.pt", many / "train_cache.pt")  # the DDP run reads the features, as built
        ddp = run(many, a.model, a.steps, a.batch, a.processes)
    t1 = sum(r["step_s"] for r in single[1:]) / max(len(single) - 1, 1)
    tn = sum(r["step_s"] for r in ddp[1:]) / max(len(ddp) - 1, 1)
    worst = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(single, ddp))
    print(
        f"model {a.model}, latent QA steps, global batch {a.batch}, {a.steps} steps (first one not timed), "
        f"{os.cpu_count()} CPU cores"
    )
    print(f"{'path':52s} {'s/step':>8s}")
    print(f"{'one process (all cores)':52s} {t1:8.2f}")
    print(f"{f'DDP, {a.processes} gloo processes (torchrun), same global batch':52s} {tn:8.2f}")
    print(
        f"DDP speed-up against one process: {t1 / tn:.2f}x; same losses step by step: largest relative "
        f"difference {worst:.1e}"
    )


if __name__ == "__main__":
    main()
