"""A real-browser check of the notebooks and explorers in JupyterLab and of an HTML report (issues 15, 23).

Skipped unless Chromium and the Python packages playwright and jupyterlab are installed; to enable:
``apt-get install chromium`` and ``.venv/bin/pip install -e '.[lab,browser]'``. Set
``TSPECTRA_SCREENSHOTS=<folder>`` to keep the screenshots. The browser is Debian's
(``/usr/bin/chromium``), driven headless by playwright; nothing is downloaded.

What it does: copies ``notebooks/`` to a temp folder, starts JupyterLab there on a free localhost port
with a token and the project's settings override (``lab/overrides.json``: ``.py`` files open as
notebooks), opens ``01_weight_ranks.py``, runs all cells on a tiny model, checks that every figure
renders, saves, and checks that the ``.py`` on disk did not change; then opens the run's
``report.html`` and checks that its images load.
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
            page.wait_for_selector("text=report: ", timeout=300_000)  # the last cell prints the report path
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
    out = lab["out"] / "01_weight_ranks" / "default"
    assert json.loads((out / "run.json").read_text())["status"] == "complete" and (out / "report.html").is_file()


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
