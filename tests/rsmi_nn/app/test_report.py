"""The report is one valid, self-contained HTML file (every image a data: URI) plus PNG plots."""

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
    assert "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
    assert p.urls, "the report should embed images"
    for tag, attr, url in p.urls:
        assert url.startswith("data:"), f"<{tag} {attr}={url[:60]!r}> is not embedded"
    assert "url(" not in html_text and "@import" not in html_text
    # the flow: one figure of diagnostics + one graph drawing per level (+ nothing external)
    assert p.tags.count("img") >= 3
    text = " ".join(p.text)
    assert "Flow summary" in text and "Coarse variables" in text


def test_report_tables_cards_and_plots(report):
    root, path = report
    html_text = path.read_text(encoding="utf-8")
    p = _Collector()
    p.feed(html_text)
    # header row + one row per level in the flow table
    assert p.tags.count("tr") >= 3
    # max_cards=3 over 2 levels caps cards per level at 1; the note says what was left out
    assert html_text.count("class='card'") == 2
    assert "showing the 1 variables with the highest MI of 4" in html_text
    for name in ("flow.png", "graph_level_000.png", "graph_level_001.png"):
        data = (root / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert (root / "feature_maps" / "index.json").is_file()  # exported on the way


def test_report_on_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "absent")


def test_text_examples_mark_the_token_and_escape_the_rest():
    from rsmi_nn.app.report import _mark_text

    assert _mark_text("a <b> [[cat]] sat", "cat") == "a &lt;b&gt; <mark>cat</mark> sat"
    # a literal "[[...]]" earlier in the text is not mistaken for the marker
    assert _mark_text("x[[1]] then [[tok]]", "tok") == "x[[1]] then <mark>tok</mark>"
    assert _mark_text("no marker & more") == "no marker &amp; more"
