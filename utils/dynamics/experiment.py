"""Notebook 05's recording step: train several seeds of the tiny GPT-2 with a :class:`SpectralRecorder`."""

from __future__ import annotations

import time
from pathlib import Path

from .recorder import SpectralRecorder, record_checkpoint_dir
from .store import merge_runs
from .tiny_gpt import TinyGPTConfig, encode_bytes, make_tiny_gpt, offline_text, train_tiny_gpt


def train_and_record(
    cfg: TinyGPTConfig, n_runs: int, seed: int, record_every: int, text_chars: int, out_dir: Path
) -> dict:
    """Train ``n_runs`` models (seeds ``seed``, ``seed + 1``, ...) on offline text, recording the
    spectra of every 2-D weight at step 0, every ``record_every`` steps and the last step into
    ``out_dir/run_seed<s>.h5``. Returns ``{"files", "rows" (per run), "text" (corpus info), "n_params"}``."""
    text, info = offline_text(text_chars)
    data = encode_bytes(text)
    files, rows, n_params = [], [], 0
    for r in range(n_runs):
        s = seed + r
        net = make_tiny_gpt(cfg, seed=s)
        path = Path(out_dir) / f"run_seed{s}.h5"
        t0 = time.perf_counter()
        with SpectralRecorder(
            path, net, config=cfg.as_dict(), seed=s, metadata={"text": info, "record_every": record_every}
        ) as rec:

            def on_step(step, loss, m, rec=rec):
                rec.log_loss(step, loss)
                if step % record_every == 0 or step == cfg.n_steps:
                    rec.record(step)

            out = train_tiny_gpt(net, data, cfg, seed=s, on_step=on_step)
        rows.append(
            {
                "run": r + 1,
                "seed": s,
                "checkpoints": rec.n_checkpoints,
                "final loss": out["final_loss"],
                "seconds": time.perf_counter() - t0,
            }
        )
        files.append(path)
        n_params = sum(q.numel() for q in net.parameters())
    return {"files": files, "rows": rows, "text": info, "n_params": n_params}


def record(
    run,
    cfg: TinyGPTConfig,
    merged_file: str,
    checkpoints_dir: str,
    n_runs: int,
    seed: int,
    record_every: int,
    text_chars: int,
) -> dict:
    """The recording step of notebook 05: plot an existing merged file, record a folder of checkpoints,
    or train ``n_runs`` seeds; per-run files are merged into ``merged_spectra.h5`` of the run folder.

    Returns ``{"merged": path, "run_files": [...], "source": sentence, "rows": per-run rows or []}``.
    """
    out = {"run_files": [], "rows": []}
    if merged_file:
        out.update(
            merged=Path(merged_file), source=f"Existing merged file `{merged_file}` (nothing trained in this run)."
        )
        return out
    if checkpoints_dir:
        with run.timer("record_checkpoints"):
            out["run_files"] = [record_checkpoint_dir(checkpoints_dir, run.path("run_checkpoints.h5"))]
        out["source"] = f"Checkpoints recorded from `{checkpoints_dir}`."
    else:
        with run.timer("train_and_record"):
            rec = train_and_record(cfg, n_runs, seed, record_every, text_chars, run.dir)
        out.update(
            run_files=rec["files"],
            rows=rec["rows"],
            source=(
                f"{n_runs} runs of a GPT-2 with {cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads, "
                f"context {cfg.block_size} bytes ({rec['n_params']:,} parameters), {cfg.n_steps} steps of batch "
                f"{cfg.batch_size}, trained on {rec['text']['n_chars']:,} characters of offline text "
                f"(sha256 {rec['text']['sha256'][:12]})."
            ),
        )
    out["merged"] = run.path("merged_spectra.h5")
    with run.timer("merge"):
        merge_runs(out["run_files"], out["merged"], overwrite=True)
    for f in out["run_files"] + [out["merged"]]:
        run.register(f.name)
    return out
