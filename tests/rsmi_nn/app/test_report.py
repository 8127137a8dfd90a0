"""The report is one valid, self-contained HTML file (every image a data: URI, script and style inline) plus PNG plots."""

import json
import re
from html.parser import HTMLParser
from typing import ClassVar

import pytest

from rsmi_nn import write_report
from tests.rsmi_nn.fake_run import make_fake_run


class _Collector(HTMLParser):
    """Collects tags, URL-bearing attributes, and checks that every opened element is closed."""

    VOID: ClassVar[set[str]] = {"img", "meta", "br", "hr", "link", "input", "source", "wbr", "col", "area", "base", "embed"}

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[tuple[str, str, str]] = []
        self.stack: list[str] = []
        self.text: list[str] = []
        self.mismatched: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "action", "poster") and value is not None:
                self.urls.append((tag, name, value))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.mismatched.append(tag)
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture
def report(tmp_path):
    root = tmp_path / "run"
    make_fake_run(root)
    path = write_report(root, max_cards=3)
    return root, path


def test_report_is_self_contained_html(report):
    root, path = report
    assert path == root / "report.html"
    html_text = path.read_text(encoding="utf-8")
    assert html_text.startswith("<!DOCTYPE html>")
    p = _Collector()
    p.feed(html_text)
    p.close()
    assert not p.mismatched and not p.stack, (p.mismatched, p.stack)
    assert "link" not in p.tags and "iframe" not in p.tags
    assert p.tags.count("script") == 2  # the dashboard's data (JSON) and its code, both inline
    assert not re.search(r"<script[^>]*\ssrc=", html_text)
    assert "fetch(" not in html_text and "XMLHttpRequest" not in html_text and "http://" not in html_text
    assert p.urls, "the report should embed images"
    for tag, attr, url in p.urls:
        assert url.startswith("data:"), f"<{tag} {attr}={url[:60]!r}> is not embedded"
    assert "url(" not in html_text and "@import" not in html_text
    assert p.tags.count("img") >= 1  # the flow figure; graphs and cards are drawn by the page from its data
    text = " ".join(p.text)
    assert "Flow summary" in text and "Coarse variables" in text and "How to read this flow" in text


def _data(html_text: str) -> dict:
    m = re.search(r"<script type='application/json' id='rsmi-data'>(.*?)</script>", html_text, re.S)
    return json.loads(m.group(1))


def test_report_tables_cards_and_plots(report):
    root, path = report
    html_text = path.read_text(encoding="utf-8")
    p = _Collector()
    p.feed(html_text)
    # header row + one row per level in the flow table
    assert p.tags.count("tr") >= 3
    # every variable of every level is in the page's data (max_cards is the page size, not a cap)
    data = _data(html_text)
    assert data["page_size"] == 3
    assert [len(lv["mi"]) for lv in data["levels"]] == [4, 4]
    side = json.loads((root / "feature_maps" / "level_000.json").read_text())
    assert data["levels"][0]["parents"] == [v["parents"] for v in side["variables"]]
    up = json.loads((root / "feature_maps" / "level_001.json").read_text())
    assert data["levels"][1]["children"] == [v["children"] for v in up["variables"]]
    for lv in data["levels"]:
        g = lv["graph"]
        assert len(g["xy"]) == lv["num_blocks"] == len(g["colour"])
        for a, b, _ in g["edges"]:  # adjacent blocks never share a colour
            assert g["colour"][a] != g["colour"][b]
    for name in ("flow.png", "graph_level_000.png", "graph_level_001.png"):
        png = (root / "plots" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (root / "feature_maps" / "index.json").is_file()  # exported on the way


def test_output_effects_are_read_when_evaluated(report):
    from rsmi_nn.app.report_data import read_effects

    root, _ = report
    assert read_effects(root) == {}
    (root / "evaluation.json").write_text(json.dumps(
        {"methods": {"rsmi": {"levels": [{"level": 0, "variable_effect": [0.1, 0.2, None, 0.4]},
                                          {"level": 1, "variable_effect": [1, 2, 3, 4]}]}}}))
    effects = read_effects(root)
    assert effects[1] == [1.0, 2.0, 3.0, 4.0] and effects[0][3] == 0.4
    path = write_report(root, max_cards=3)
    data = _data(path.read_text(encoding="utf-8"))
    assert data["has_effect"] and data["levels"][1]["effect"] == [1.0, 2.0, 3.0, 4.0]
    assert "output effect, largest first" in path.read_text(encoding="utf-8")


def test_pictures_of_any_shape():
    import numpy as np

    from rsmi_nn.app.plots import image_grid_png, to_picture

    rng = np.random.default_rng(0)
    assert to_picture(rng.normal(size=64)).shape == (8, 8)
    assert to_picture(rng.normal(size=(1, 8, 8))).shape == (8, 8)
    rgb = to_picture(rng.normal(size=(3, 5, 7)))
    assert rgb.shape == (5, 7, 3) and rgb.min() >= 0 and rgb.max() == 1
    assert to_picture(rng.normal(size=(4, 6, 6))).shape == (6, 6 * 4 + 3)  # channels side by side
    assert to_picture(rng.normal(size=10)) is None and to_picture(rng.normal(size=(2, 2, 2, 2))) is None
    x = np.zeros((8, 8))
    x[2:6, 3] = 16.0  # a stroke: full contrast whatever the scale
    pic = to_picture(x)
    assert pic[3, 3] == 1.0 and pic[0, 0] == 0.0
    assert image_grid_png([[rng.normal(size=(3, 8, 8))] * 2, [rng.normal(size=(1, 8, 8))]])[:4] == b"\x89PNG"


def test_flags_name_uninformative_figures():
    from rsmi_nn.app.report import _flags

    class _Run:
        flow = [{"level": 0, "locality": 0.30, "locality_chance": 0.29, "correlation_fit": {"status": "two_point"},
                 "num_nodes": 54, "num_edges": 2 * 1300}]

    flags = " ".join(_flags(_Run()))
    assert "equals its chance level" in flags and "two-point" in flags and "near-complete" in flags
    assert "One level only" in flags


def test_report_on_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "absent")


def test_text_examples_mark_the_token_and_escape_the_rest():
    from rsmi_nn.app.report import _mark_text

    assert _mark_text("a <b> [[cat]] sat", "cat") == "a &lt;b&gt; <mark>cat</mark> sat"
    # a literal "[[...]]" earlier in the text is not mistaken for the marker
    assert _mark_text("x[[1]] then [[tok]]", "tok") == "x[[1]] then <mark>tok</mark>"
    assert _mark_text("no marker & more") == "no marker &amp; more"


def test_graph_drawings_keep_small_components_close():
    """A node the drawn blocks leave without an edge (or a small fragment) sits in a band under the main component,
    not wherever a whole-graph spring layout pushes it (it had squeezed the default run's level-1 drawing)."""
    import networkx as nx
    import numpy as np

    from rsmi_nn.app.plots import spring_components

    G = nx.complete_graph(30)
    G.add_node(99)  # isolated
    G.add_edges_from([(100, 101), (101, 102)])  # a small fragment
    pos = spring_components(G, seed=0)
    assert set(pos) == set(G.nodes)
    main = np.array([pos[v] for v in range(30)])
    assert np.abs(main).max() <= 1.0 + 1e-6 and np.abs(main).max() > 0.9  # the main component fills [-1, 1]²
    rest = np.array([pos[v] for v in (99, 100, 101, 102)])
    assert (rest[:, 1] < main[:, 1].min()).all() and (rest[:, 1] > -2.0).all() and (np.abs(rest[:, 0]) <= 1).all()
    assert np.linalg.norm(rest[1] - rest[3]) > 0  # a fragment keeps its own shape
    assert spring_components(nx.Graph()) == {}
