"""The HTML index of runs and the runs' HTML reports, parsed (no browser): links resolve, images are
embedded PNG data, nothing is fetched from elsewhere."""

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from utils.provenance import note_model  # noqa: E402
from utils.running.index import collect_runs, write_index_html  # noqa: E402
from utils.running.record import Run  # noqa: E402


class Refs(HTMLParser):
    """Every reference a page makes: links, images, scripts, stylesheets; and its text."""

    def __init__(self):
        super().__init__()
        self.links, self.images, self.external, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag == "img":
            self.images.append(a.get("src", ""))
        if (tag in ("script", "iframe") and a.get("src")) or (tag == "link" and a.get("rel") == "stylesheet"):
            self.external.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> Refs:
    r = Refs()
    r.feed(path.read_text())
    return r


def _run(root, run_name, params, group=None, figure=False):
    run = Run("01_weight_ranks", run_name, params, root, group=group)
    if params.get("model"):
        note_model(params["model"])  # as open_weights does: the run read this model
    if figure:
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        run.show(fig, "line.png", caption="One line falling.")
    run.show("measured: 42")
    run.finish()
    return run.final_dir


def test_index_links_every_run_and_reports_embed_their_figures(tmp_path):
    a = _run(tmp_path, "default", {"model": "smollm2", "layer_idx": -1}, figure=True)
    b = _run(tmp_path, "model=random-smollm2", {"model": "random:smollm2", "layer_idx": 3}, group="sw", figure=True)
    failed = tmp_path / "01_weight_ranks" / "sw" / "bad.failed"  # as the runner keeps a failed run
    failed.mkdir(parents=True)
    import nbformat

    tb = ["\x1b[31mIndexError\x1b[0m: layer index 7 is out of range"]
    out = nbformat.v4.new_output("error", ename="IndexError", evalue="layer index 7 is out of range", traceback=tb)
    cell = nbformat.v4.new_code_cell("spectra(layer_idx)", outputs=[out], execution_count=3)
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), failed / "01_weight_ranks.ipynb")
    (tmp_path / "01_weight_ranks" / "sw" / "cut.failed").mkdir()  # a notebook cut off by a kill: no page
    (tmp_path / "01_weight_ranks" / "sw" / "cut.failed" / "01_weight_ranks.ipynb").write_text("{")
    err = {"ename": "IndexError", "evalue": "layer index 7 is out of range"}
    rec = {"notebook": "01_weight_ranks", "status": "failed", "params": {}, "error": err, "started_utc": "2026-01-01"}
    (tmp_path / "01_weight_ranks" / "sw" / "cut.failed" / "run.json").write_text(json.dumps(rec))
    (failed / "run.json").write_text(json.dumps(rec))
    (tmp_path / "01_weight_ranks" / ".x.staging-123").mkdir()  # a staging folder is not a run
    page = write_index_html(tmp_path)
    assert page == tmp_path / "index.html"
    assert [(r["sweep"], r["run"], r["status"]) for r in collect_runs(tmp_path)] == [  # newest first
        ("sw", "model=random-smollm2", "complete"),
        ("", "default", "complete"),
        ("sw", "bad.failed", "failed"),
        ("sw", "cut.failed", "failed"),
    ]
    idx = parse(page)
    assert not idx.external and not idx.images  # one page: its script is inline
    targets = [(page.parent / h).resolve() for h in idx.links]
    cut = tmp_path / "01_weight_ranks" / "sw" / "cut.failed"
    assert targets == [
        *(b / "report.html", b / "run.json"),
        *(a / "report.html", a / "run.json"),
        *(failed / "01_weight_ranks.html", failed / "run.json"),  # the notebook as HTML, never its JSON
        cut / "run.json",
    ]
    nb_page = (failed / "01_weight_ranks.html").read_text()
    assert "IndexError" in nb_page and "layer index 7 is out of range" in nb_page
    assert not parse(failed / "01_weight_ranks.html").external, "the notebook page fetches a script from elsewhere"
    assert all(not h.startswith(("/", "http", "file:")) for h in idx.links)  # relative: the folder can move
    text = " ".join(idx.text)
    assert "layer_idx=3" in text and "layer_idx=-1" not in text  # only parameters that differ from defaults
    assert "random:smollm2" in text and "layer index 7 is out of range" in text and "4 runs" in text
    for run in (a, b):
        rep = parse(run / "report.html")
        assert not rep.external and len(rep.images) == 1
        assert all(not h.startswith(("http", "file:")) for h in rep.links)
        src = rep.images[0]
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == (run / "line.png").read_bytes()
        assert "One line falling." in " ".join(rep.text)
    rec = json.loads((b / "run.json").read_text())
    assert rec["group"] == "sw" and b == tmp_path / "01_weight_ranks" / "sw" / "model=random-smollm2"


def test_index_labels_models_as_given_and_never_alike(tmp_path):
    """Issue 21, item 5: the index labels each run's model by the spec it recorded, shortened only as far as it
    stays unique among the runs listed; the full spec is kept in the cell's title."""
    _run(tmp_path, "a", {"model": "/w/runs/a/final"})
    _run(tmp_path, "b", {"model": "/w/runs/b/final"})
    _run(tmp_path, "c", {"model": "/w/x/model"})
    assert {r["run"]: r["label"] for r in collect_runs(tmp_path)} == {"a": "a/final", "b": "b/final", "c": "x/model"}
    page = write_index_html(tmp_path).read_text()
    assert "<code title='/w/runs/a/final'>a/final</code>" in page and ">b/final</code>" in page


def test_a_report_has_contents_a_link_back_to_the_index_linked_files_and_the_git_state(tmp_path):
    """Issue 23: report.html opens with a link to the index and a table of contents; its files section links
    each file; run.json and the report say which commit computed it and whether the tree had changes."""
    import re
    import subprocess

    from conftest import REPO_ROOT

    from utils.provenance import git_state

    run = _run(tmp_path, "default", {"model": "smollm2"}, figure=True)
    rep = parse(run / "report.html")
    page = (run / "report.html").read_text()
    targets = {(run / h).resolve() for h in rep.links if not h.startswith("#")}
    assert {tmp_path / "index.html", run / "line.png", run / "run.json"} <= targets
    assert rep.links[0] == "../../index.html"  # the first link of the page
    anchors = [h[1:] for h in rep.links if h.startswith("#")]
    assert {"run-record", "files", "parameters"} <= set(anchors)
    assert all(f'id="{a}"' in page for a in anchors), "a contents entry points nowhere"
    # the git state, against git itself
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    porcelain = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
    rec = json.loads((run / "run.json").read_text())
    assert rec["git"] == {"commit": head, "dirty": bool(porcelain.strip())}
    state = "with uncommitted changes" if porcelain.strip() else "no uncommitted changes"
    assert re.search(rf"git commit <code>{head[:12]}</code> \({state}\)", page)
    assert git_state(tmp_path) == {"commit": None, "dirty": None}  # outside a checkout: unknown, no crash


def test_the_model_column_shows_the_models_a_run_read_and_nothing_for_none(tmp_path):
    """Issue 23: the model a run read, not the default of a parameter it never used."""
    quiet = Run("03_sa_rescale", "from-geometry", {"model": "smollm2", "geometry_json": "g.json"}, tmp_path)
    quiet.finish()  # a run that loaded no model (its geometry came from a file)
    two = Run("07_model_diff", "ab", {"model": "a", "model_b": "b"}, tmp_path)
    note_model("/w/a")
    note_model("/w/b")
    note_model("/w/a")  # read twice, listed once
    two.finish()
    runs = {r["run"]: r for r in collect_runs(tmp_path)}
    assert runs["from-geometry"]["model"] == "" and runs["ab"]["model"] == "/w/a, /w/b"
    assert json.loads((quiet.final_dir / "run.json").read_text())["models"] == []
    assert "<code title='/w/a, /w/b'>w/a, w/b</code>" in write_index_html(tmp_path).read_text()  # each labelled
