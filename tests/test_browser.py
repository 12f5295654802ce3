"""A real-browser check of the notebooks and explorers in JupyterLab and of an HTML report (issues 15, 23).

Skipped unless Chromium and the Python packages playwright and jupyterlab are installed; to enable:
``apt-get install chromium`` and ``.venv/bin/pip install -e '.[lab,browser]'``. Set
``TSPECTRA_SCREENSHOTS=<folder>`` to keep the screenshots. The browser is Debian's
(``/usr/bin/chromium``), driven headless by playwright; nothing is downloaded.

What it does: copies ``notebooks/`` to a temp folder, starts JupyterLab there on a free localhost port
with a token and the project's settings override (``lab/overrides.json``: ``.py`` files open as
notebooks), opens ``01_weight_ranks.py``, runs all cells on a tiny model, checks that every figure
renders, saves, and checks that the ``.py`` on disk did not change; then opens the run's
``report.html`` and checks that its images load. Issue 23: an explorer redraws when a control moves;
Lab lists each notebook once and opening one does not mark it modified; ``output/index.html`` sorts,
filters and searches at 1000 px, opens a failed run's notebook as HTML with its error, and a report
links back to it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)"),
    pytest.mark.slow,
]
pw = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytest.importorskip("jupyterlab", reason="JupyterLab is not installed (pip install -e '.[lab]')")

CHROME_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shot(page, name: str) -> None:
    folder = os.environ.get("TSPECTRA_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=False)


@pytest.fixture
def lab(tmp_path, tiny_llama_dir):
    root = tmp_path / "lab"
    shutil.copytree(REPO_ROOT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns("*.ipynb"))
    settings = tmp_path / "app-settings"
    settings.mkdir()
    shutil.copy(REPO_ROOT / "lab" / "overrides.json", settings / "overrides.json")
    # the tiny model instead of the bundled one, as a user would edit the parameters cell
    nb = root / "notebooks" / "01_weight_ranks.py"
    nb.write_text(nb.read_text().replace('model: str = "smollm2"', f'model: str = "{tiny_llama_dir}"', 1))
    port, token = _free_port(), "tspectra-test-token"
    env = dict(
        os.environ,
        TSPECTRA_OUTPUT=str(tmp_path / "out"),
        JUPYTER_CONFIG_DIR=str(tmp_path / "jcfg"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "user-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"),
    )
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.app_settings_dir={settings}",
        f"--config={REPO_ROOT / 'lab' / 'jupyter_server_config.json'}",  # as `make lab`: paired .ipynb hidden
        "--ServerApp.disable_check_xsrf=False",
        "--allow-root",
    ]
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("JupyterLab did not start: " + (tmp_path / "lab.log").read_text()[-2000:])
    yield {"url": f"http://127.0.0.1:{port}", "token": token, "root": root, "out": tmp_path / "out", "nb": nb}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_notebook_runs_in_jupyterlab_figures_render_and_the_py_is_unchanged(lab):
    before = lab["nb"].read_bytes()
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{lab['url']}/lab/tree/notebooks/01_weight_ranks.py?token={lab['token']}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)  # opened as a notebook, not as text
        kernel = page.get_by_text("Python 3 (transformer-spectra) | Idle")  # the project kernel, connected
        kernel.wait_for(timeout=120_000)
        _shot(page, "lab-opened.png")
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_text("Run All Cells", exact=True).click()
        try:
            page.wait_for_selector("text=report.html", timeout=300_000)  # the last cell names the HTML report
        finally:
            _shot(page, "lab-after-run.png")
        kernel.wait_for(timeout=60_000)
        images = page.locator(".jp-OutputArea-output img")
        n = images.count()
        widths = [images.nth(i).evaluate("img => img.naturalWidth") for i in range(n)]
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count()
        page.keyboard.press("Control+s")
        time.sleep(3)
        _shot(page, "lab-saved.png")
        browser.close()
    assert n >= 4 and all(w > 0 for w in widths), f"{n} figures, natural widths {widths}"
    assert errors == 0, "a cell wrote to stderr"
    assert lab["nb"].read_bytes() == before, "saving in Lab rewrote the .py"
    paired = lab["root"] / "notebooks" / "01_weight_ranks.ipynb"
    assert paired.is_file() and "jupytext" in json.loads(paired.read_text())["metadata"]
    stray = [p for p in lab["root"].rglob("*.py") if p.parent.name not in ("notebooks", ".ipynb_checkpoints")]
    assert not stray, f"a .py appeared elsewhere: {stray}"
    # issue 23: a Run All in Lab with run_name left at "default" has its own place, never make run's
    out = lab["out"] / "01_weight_ranks" / "lab"
    assert json.loads((out / "run.json").read_text())["status"] == "complete" and (out / "report.html").is_file()
    assert not (lab["out"] / "01_weight_ranks" / "default").exists()
    assert (lab["out"] / "index.html").is_file(), "a run from Lab did not refresh the index"


def test_html_report_images_load_in_a_browser(tmp_path, tiny_llama_dir):
    from utils.running.runner import execute

    run = execute("01_weight_ranks", "html", {"model": str(tiny_llama_dir)}, tmp_path)
    html = (run / "report.html").read_text()
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', html)) >= 4
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.goto((run / "report.html").as_uri())
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : -1)")
        _shot(page, "report-html.png")
        browser.close()
    assert len(widths) >= 4 and all(w > 0 for w in widths), widths


def test_explorer_of_notebook_02_redraws_in_jupyterlab_when_a_control_moves(lab, tiny_llama_dir):
    """Issue 23: a finished run of notebook 02, opened in Lab with ``explore.open``: moving the head slider
    redraws the ipympl figure (the canvas's pixels change), from the saved results."""
    from utils.running.runner import execute

    run = execute("02_attention_kernels", "explore", {"model": str(tiny_llama_dir), "top_k": 5}, lab["out"])
    cell = f"from utils import explore\nexplore.open({str(run)!r})"
    nb = {
        "cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": cell}],
        "metadata": {
            "kernelspec": {"display_name": "Python 3 (transformer-spectra)", "language": "python", "name": "python3"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (lab["root"] / "scratch.ipynb").write_text(json.dumps(nb))
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(f"{lab['url']}/lab/tree/scratch.ipynb?token={lab['token']}")
        page.get_by_text("Python 3 (transformer-spectra) | Idle").wait_for(timeout=120_000)
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_text("Run All Cells", exact=True).click()
        canvas = page.locator(".jupyter-matplotlib-canvas-div canvas:visible").first
        try:
            canvas.wait_for(timeout=120_000)
        finally:
            _shot(page, "explorer-opened.png")
        time.sleep(3)  # the first frame
        _shot(page, "explorer-before.png")
        before = canvas.evaluate("c => c.toDataURL()")
        handles = page.locator(".widget-slider .noUi-handle")
        head = handles.nth(1)  # the sliders: layer, head
        head.focus()
        for _ in range(2):
            page.keyboard.press("ArrowRight")
        time.sleep(1)
        page.get_by_text("Python 3 (transformer-spectra) | Idle").wait_for(timeout=60_000)  # both redraws done
        deadline, after = time.time() + 30, before
        while time.time() < deadline and after == before:
            time.sleep(1)
            after = canvas.evaluate("c => c.toDataURL()")
        _shot(page, "explorer-after.png")
        label = page.locator(".widget-readout").nth(1).inner_text()
        browser.close()
    assert label.strip() == "2", f"the head slider reads {label!r}"
    assert after != before, "the explorer's figure did not change when the head slider moved"


def test_lab_lists_each_notebook_once_and_opening_one_does_not_mark_it_modified(lab):
    """Issue 23: with `make lab`'s settings the file browser shows ``01_weight_ranks.py`` and hides its paired
    ``.ipynb``; a notebook just opened (kernel started, nothing edited) is not marked modified."""
    from utils.running.lab import sync

    folder = lab["root"] / "notebooks"
    sync(sorted(folder.glob("[0-9][0-9]_*.py")))  # the paired notebooks, as `make lab` writes them (make sync)
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{lab['url']}/lab/tree/notebooks?token={lab['token']}")
        page.wait_for_selector(".jp-DirListing-item", timeout=90_000)
        time.sleep(2)
        names = page.locator(".jp-DirListing-itemName").all_inner_texts()
        _shot(page, "lab-file-browser.png")
        page.goto(f"{lab['url']}/lab/tree/notebooks/02_attention_kernels.py?token={lab['token']}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
        page.get_by_text("Python 3 (transformer-spectra) | Idle").wait_for(timeout=120_000)
        time.sleep(5)  # whatever would mark it modified (metadata, a kernel change) has happened
        _shot(page, "lab-opened-02.png")
        tab = page.locator("li.lm-TabBar-tab", has_text="02_attention_kernels.py")
        dirty = "jp-mod-dirty" in (tab.first.get_attribute("class") or "")
        browser.close()
    stems = [n.strip().rsplit(".", 1)[0] for n in names if n.strip()[:2].isdigit()]
    assert "01_weight_ranks.py" in [n.strip() for n in names]
    assert len(stems) == len(set(stems)), f"a notebook is listed twice: {names}"
    assert not dirty, "opening the notebook marked it modified"


def test_index_sorts_filters_and_links_to_a_failed_runs_notebook_and_reports_link_back(tmp_path):
    """Issue 23: output/index.html in a browser at 1000 px: newest first, a click on a header sorts, the
    selects and the search box filter; a failed run's notebook opens as HTML with its error; a report links
    back to the index."""
    from utils.provenance import note_model
    from utils.running.index import write_index_html
    from utils.running.record import Run
    from utils.running.runner import NotebookFailed, execute

    root = tmp_path / "out"
    for name, params, group in [
        ("default", {"model": "smollm2", "layer_idx": -1}, None),
        ("l3", {"model": "smollm2", "layer_idx": 3}, None),
        ("model=random-smollm2", {"model": "random:smollm2", "layer_idx": 1}, "sw"),
    ]:
        run = Run("01_weight_ranks", name, params, root, group=group)
        note_model(params["model"])
        time.sleep(0.3 if name == "l3" else 0.01)  # durations that differ
        run.show(f"run {name}")
        run.finish()
    with pytest.raises(NotebookFailed):
        execute(str(REPO_ROOT / "tests" / "notebooks" / "99_tiny.py"), "boom", {"fail": True}, str(root))
    index = write_index_html(root)
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        page.goto(index.as_uri())
        rows = page.locator("#runs tbody tr:visible")

        def column(i):
            return [rows.nth(k).locator("td").nth(i).inner_text().strip() for k in range(rows.count())]

        started = column(0)
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        _shot(page, "index-1000px.png")
        page.locator("#runs th", has_text="duration").click()
        durations_up = [rows.nth(k).locator("td").nth(7).get_attribute("data-sort") for k in range(rows.count())]
        page.locator("#runs th", has_text="run").first.click()
        runs_up = column(3)
        page.locator("#runs th", has_text="run").first.click()
        runs_down = column(3)
        _shot(page, "index-sorted-by-run.png")
        page.select_option("#f-notebook", "99_tiny")
        only_tiny = column(1)
        page.select_option("#f-notebook", "")
        page.select_option("#f-model", "random:smollm2")
        only_random = column(3)
        page.select_option("#f-model", "")
        page.select_option("#f-sweep", "sw")
        only_sweep = column(3)
        page.select_option("#f-sweep", "")
        page.select_option("#f-status", "failed")
        only_failed = column(3)
        _shot(page, "index-filtered-failed.png")
        page.select_option("#f-status", "")
        page.fill("#search", "layer_idx=3")
        searched = column(3)
        page.fill("#search", "")
        page.locator("#runs tr", has_text="boom.failed").get_by_role("link", name="notebook").click()
        page.wait_for_load_state()
        nb_text = page.locator("body").inner_text()
        _shot(page, "failed-notebook.png")
        page.get_by_text("the tiny notebook failed on purpose").last.scroll_into_view_if_needed()
        _shot(page, "failed-notebook-error.png")
        page.goto((root / "01_weight_ranks" / "l3" / "report.html").as_uri())
        _shot(page, "report-top.png")
        page.get_by_role("link", name="all runs (index)").click()
        page.wait_for_load_state()
        back = page.url, page.title()
        browser.close()
    assert started == sorted(started, reverse=True) and len(started) == 4, started  # newest first
    assert overflow <= 0, f"the index is {overflow} px wider than a 1000 px window"
    assert [float(d) for d in durations_up] == sorted(float(d) for d in durations_up)
    assert runs_up == sorted(runs_up, key=str.lower) and runs_down == runs_up[::-1]
    assert only_tiny == ["99_tiny"] and only_random == ["model=random-smollm2"] and only_sweep == only_random
    assert only_failed == ["boom.failed"] and searched == ["l3"]
    assert "RuntimeError" in nb_text and "the tiny notebook failed on purpose" in nb_text
    assert not nb_text.lstrip().startswith("{"), "the notebook opened as raw JSON"
    assert back[0] == index.as_uri() and back[1] == "transformer-spectra runs"
