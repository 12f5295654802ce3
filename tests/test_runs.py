"""Run folders: atomic writes, the run record, permissions."""
import json
import os
import stat

import numpy as np
import pandas as pd
import pytest

from utils.runs import atomic_path, atomic_write_text, start_run, to_jsonable


def test_run_records_params_timings_files(tmp_path):
    run = start_run("99_demo", "r1", params={"model": "x", "k": 3}, output_root=tmp_path)
    with run.timer("step"):
        pass
    run.save_csv(pd.DataFrame({"a": [1, 2]}), "t.csv")
    run.save_json({"x": np.float32(1.5), "nan": float("nan"), "arr": np.arange(3)}, "m.json")
    (run.dir / "direct.bin").write_bytes(b"1")
    run.register("direct.bin")
    run.write_report("# Title\n\nbody")
    rec = json.loads((tmp_path / "99_demo" / "r1" / "run.json").read_text())
    assert rec["params"] == {"model": "x", "k": 3} and "step" in rec["timings_s"]
    assert rec["files"] == ["t.csv", "m.json", "direct.bin", "report.md"]
    assert json.loads((run.dir / "m.json").read_text()) == {"x": 1.5, "nan": None, "arr": [0, 1, 2]}
    report = (run.dir / "report.md").read_text()
    assert report.startswith("# Title") and "## Run record" in report and "| k | `3` |" in report
    mode = stat.S_IMODE(os.stat(run.dir / "t.csv").st_mode)
    assert mode & stat.S_IRGRP, "results must be readable by others as usual, not 0600"
    with pytest.raises(FileNotFoundError):
        run.register("missing.h5")


def test_atomic_writes_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    atomic_write_text(target, "done")
    assert target.read_text() == "done" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_bad_run_name_rejected(tmp_path):
    with pytest.raises(ValueError, match="plain folder name"):
        start_run("99_demo", "../escape", params={}, output_root=tmp_path)


def test_to_jsonable_handles_torch_and_inf():
    import torch

    assert to_jsonable({"t": torch.tensor([1.0, 2.0]), "i": float("inf")}) == {"t": [1.0, 2.0], "i": "inf"}
