# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (transformer-spectra)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 99 · Tiny: a test notebook that works for a while, writing a file per step
#
# The run-safety and sweep tests run it many times (start-up, kills, interrupts) where a real notebook
# would cost too much time; it has few cells, since papermill saves the notebook after each one.

# %%
import time
from pathlib import Path

from utils.progress import progress_bar
from utils.running import start_run

# %% tags=["parameters"]
run_name: str = "default"  # results go to output/<notebook>/<run_name>/
output_root: str = "output"  # results root; a relative path is taken from the project root
seconds: float = 0.0  # how long the run works, in all {0..}
steps: int = 1  # files written, one per step {1..}
label: str = ""  # any text (a grid axis for sweeps)
copy_from: str = ""  # a text file copied into the run as copy.txt; a relative path is taken from the project root
fail: bool = False  # raise in the last cell (a failed run)

# %%
run = start_run("99_tiny", globals())
if copy_from:
    run.save_text(Path(copy_from).read_text(), "copy.txt")
bar = progress_bar(range(steps), desc="tiny steps", unit="step")
for i in bar:
    bar.set_postfix_str(f"step_{i}", refresh=False)
    time.sleep(seconds / steps)
    run.save_text(f"step {i} of {label!r}", f"step_{i}.txt")
if fail:
    raise RuntimeError("the tiny notebook failed on purpose")
run.show(f"{steps} steps in {seconds} s")
run.finish()
