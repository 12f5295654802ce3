"""The HTML index of runs and the runs' HTML reports, parsed (no browser): links resolve, images are
embedded PNG data, nothing is fetched from elsewhere."""

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

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
        if tag in ("script", "iframe") or (tag == "link" and a.get("rel") == "stylesheet"):
            self.external.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> Refs:
    r = Refs()
    r.feed(path.read_text())
    return r


def _run(root, run_name, params, group=None, figure=False):
    run = Run("01_weight_ranks", run_name, params, root, group=group)
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
    (failed / "01_weight_ranks.ipynb").write_text("{}")
    err = {"ename": "IndexError", "evalue": "layer index 7 is out of range"}
    rec = {"notebook": "01_weight_ranks", "status": "failed", "params": {}, "error": err, "started_utc": "2026-01-01"}
    (failed / "run.json").write_text(json.dumps(rec))
    (tmp_path / "01_weight_ranks" / ".x.staging-123").mkdir()  # a staging folder is not a run
    page = write_index_html(tmp_path)
    assert page == tmp_path / "index.html"
    assert [(r["sweep"], r["run"], r["status"]) for r in collect_runs(tmp_path)] == [
        ("", "default", "complete"),
        ("sw", "bad.failed", "failed"),
        ("sw", "model=random-smollm2", "complete"),
    ]
    idx = parse(page)
    assert not idx.external and not idx.images
    targets = [(page.parent / h).resolve() for h in idx.links]
    assert targets == [a / "report.html", failed / "01_weight_ranks.ipynb", b / "report.html"]
    assert all(not h.startswith(("/", "http", "file:")) for h in idx.links)  # relative: the folder can move
    text = " ".join(idx.text)
    assert "layer_idx=3" in text and "layer_idx=-1" not in text  # only parameters that differ from defaults
    assert "random:smollm2" in text and "layer index 7 is out of range" in text and "3 runs" in text
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
