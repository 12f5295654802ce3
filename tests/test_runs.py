"""Run folders: staging, the run record, atomic writes, JSONL, permissions."""

import json
import os
import stat

import numpy as np
import pandas as pd
import pytest

from utils.files import append_jsonl, atomic_path, atomic_write_text, read_jsonl, to_jsonable
from utils.running.paths import BadRunName
from utils.running.record import Run


def test_run_stages_then_records_params_timings_files(tmp_path):
    run = Run("99_demo", "r1", {"model": "x", "k": 3}, tmp_path)
    final = tmp_path / "99_demo" / "r1"
    assert run.dir != final and run.dir.name.startswith(".r1.staging-") and not final.exists()
    with run.timer("step"):
        pass
    run.save_csv(pd.DataFrame({"a": [1, 2]}), "t.csv")
    run.save_json({"x": np.float32(1.5), "nan": float("nan"), "arr": np.arange(3)}, "m.json")
    (run.dir / "direct.bin").write_bytes(b"1")
    run.register("direct.bin")
    run.show("# Title\n\nbody")
    run.finish()
    assert run.dir == run.final_dir == final
    assert [p.name for p in (tmp_path / "99_demo").iterdir()] == ["r1"]  # the staging folder is gone
    rec = json.loads((final / "run.json").read_text())
    assert rec["params"] == {"model": "x", "k": 3} and "step" in rec["timings_s"] and rec["status"] == "complete"
    assert rec["files"] == ["t.csv", "m.json", "direct.bin", "report.md", "report.html"]
    assert rec["started_utc"] and rec["ended_utc"]
    assert json.loads((final / "m.json").read_text()) == {"x": 1.5, "nan": None, "arr": [0, 1, 2]}
    report = (final / "report.md").read_text()
    assert report.startswith("# Title") and "## Run record" in report and "| k | `3` |" in report
    assert stat.S_IMODE(os.stat(final / "t.csv").st_mode) & stat.S_IRGRP, "results must be readable as usual"
    html = (final / "report.html").read_text()
    assert "<h1>Title</h1>" in html and "<table>" in html
    with pytest.raises(FileNotFoundError):
        run.register("missing.h5")
    with pytest.raises(RuntimeError, match="already complete"):  # the last cell re-run in Lab
        run.finish()
    assert [p.name for p in (tmp_path / "99_demo").iterdir()] == ["r1"] and (final / "report.html").is_file()


def test_a_new_run_replaces_the_old_folder_whole(tmp_path):
    a = Run("99_demo", "same", {}, tmp_path)
    a.save_text("old", "only_in_first.txt")
    a.finish()
    b = Run("99_demo", "same", {}, tmp_path)
    b.save_text("new", "second.txt")
    b.finish()
    names = {p.name for p in (tmp_path / "99_demo" / "same").iterdir()}
    assert "second.txt" in names and "only_in_first.txt" not in names


def test_a_failed_attempt_keeps_what_an_earlier_failed_attempt_had(tmp_path):
    """A second failed attempt (say, one that failed before copying the first one's checkpoints to resume)
    does not lose the first one's files: what it lacks is kept, what it has is its own."""
    a = Run("99_demo", "same", {}, tmp_path)
    a.save_text("trained for an hour", "ckpt.txt")
    a.save_text("first", "log.txt")
    assert a.stop("failed", {"ename": "E", "evalue": "first"}).name == "same.failed"
    b = Run("99_demo", "same", {}, tmp_path)
    b.save_text("second", "log.txt")
    kept = b.stop("failed", {"ename": "E", "evalue": "second"})
    assert (kept / "ckpt.txt").read_text() == "trained for an hour" and (kept / "log.txt").read_text() == "second"
    assert json.loads((kept / "run.json").read_text())["error"]["evalue"] == "second"
    assert sorted(p.name for p in (tmp_path / "99_demo").iterdir()) == ["same.failed"]


def test_atomic_writes_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    atomic_write_text(target, "done")
    assert target.read_text() == "done" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_jsonl_append_and_torn_last_line(tmp_path):
    p = tmp_path / "log.jsonl"
    for i in range(3):
        append_jsonl(p, {"step": i, "v": np.float64(i / 2)})
    with open(p, "a") as f:  # a process killed mid-write
        f.write('{"step": 3, "v"')
    assert [r["step"] for r in read_jsonl(p)] == [0, 1, 2]
    read_jsonl(p, repair=True)
    append_jsonl(p, {"step": 3})
    assert [r["step"] for r in read_jsonl(p)] == [0, 1, 2, 3]
    with open(p, "a") as f:  # killed again, and this time the next append comes without a repair first
        f.write('{"step": 4, "v"')
    append_jsonl(p, {"step": 4})
    assert [r["step"] for r in read_jsonl(p)] == [0, 1, 2, 3, 4]
    q = tmp_path / "only_torn.jsonl"
    q.write_text('{"ste')  # a fragment and nothing else
    append_jsonl(q, {"step": 0})
    assert read_jsonl(q) == [{"step": 0}]
    p.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_jsonl(p)


@pytest.mark.parametrize("name", ["../escape", "..", ".", "/abs", "a/b", "", "with space", "x.failed", "-lead"])
def test_bad_run_name_rejected_before_anything_is_created(tmp_path, name):
    with pytest.raises(BadRunName, match="is not allowed"):
        Run("99_demo", name, {}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_to_jsonable_handles_torch_and_inf():
    import torch

    assert to_jsonable({"t": torch.tensor([1.0, 2.0]), "i": float("inf")}) == {"t": [1.0, 2.0], "i": "inf"}
