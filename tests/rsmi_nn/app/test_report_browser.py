"""The report used as a reader would, in the distribution's headless Chromium (skipped, with the reason, where
Chromium or websocket-client is missing; ``bash tasks.sh test`` installs Chromium when it can)."""

import json

import pytest
import torch

from rsmi_nn import write_report
from tests.rsmi_nn.app.headless import Browser, find_chromium
from tests.rsmi_nn.app.test_export import _tiny_text_store
from tests.rsmi_nn.fake_run import make_fake_run

pytest.importorskip("websocket", reason="websocket-client is not installed (pip install -e '.[dev]')")
if find_chromium() is None:
    pytest.skip("no Chromium on this machine (apt-get install chromium; tasks.sh does it as root)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    root, store, _ = _tiny_text_store(tmp)
    make_fake_run(root, x=store.to_tensor())
    path = write_report(root, max_cards=2)
    with Browser() as b:
        b.open(path)
        yield b, root


def _type(b, text: str) -> None:
    b.eval(f"(() => {{ const s = document.getElementById('search'); s.value = {json.dumps(text)};"
           " s.dispatchEvent(new Event('input')); })()")


def test_loads_without_errors_or_requests(page):
    b, _ = page
    assert b.errors() == []
    urls = b.requests()
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls
    assert b.eval("document.querySelectorAll('#cards .card').length") == 2  # one page of max_cards
    assert b.eval("document.getElementById('count').textContent").startswith("8 of 8 variables")
    assert b.eval("document.querySelectorAll('#graph-main circle').length") == 4  # level 0's blocks
    assert b.eval("document.querySelectorAll('#cards svg.hist rect').length") > 0


def test_search_filters_the_cards(page):
    b, root = page
    focus = {}  # (level, variable) -> the tokens its top and bottom examples mark
    for level in (0, 1):
        ex = json.loads((root / "examples" / f"level_{level:03d}.json").read_text())
        for v, (top, low) in enumerate(zip(ex["variables"], ex["bottom"])):
            focus[level, v] = [it["token"].lower() for it in top + low]
    words = sorted({t for ts in focus.values() for t in ts if len(t) >= 3 and t.isalpha() and t not in
                    "encoder.layer.intermediate"})
    counts = {w: sum(any(w in t for t in ts) for ts in focus.values()) for w in words}
    word = min(words, key=lambda w: (abs(counts[w] - 4), w))  # one that some variables have, not all
    assert 0 < counts[word] < 8
    _type(b, word)
    assert b.eval("document.getElementById('count').textContent").startswith(f"{counts[word]} of 8 variables")
    shown = b.eval("[...document.querySelectorAll('#cards .card')].map(c => c.textContent.toLowerCase())")
    assert shown and all(word in t for t in shown)
    _type(b, "no-such-token-anywhere")
    assert b.eval("document.getElementById('count').textContent").startswith("0 of 8")
    _type(b, "")


def test_links_lead_to_parent_and_children(page):
    b, root = page
    side0 = json.loads((root / "feature_maps" / "level_000.json").read_text())
    b.eval("location.hash = '#v0-2'")
    assert b.eval("document.querySelector('#focus .card h3').textContent").startswith("level 0 · variable 2")
    parent = side0["variables"][2]["parents"][0]
    b.eval(f"document.querySelector('#v0-2 a[href=\"#v1-{parent}\"]').click()")
    assert b.eval("location.hash") == f"#v1-{parent}"
    assert b.eval(f"document.getElementById('v1-{parent}') !== null")
    side1 = json.loads((root / "feature_maps" / "level_001.json").read_text())
    children = side1["variables"][parent]["children"]
    assert 2 in children
    child = children[-1]
    b.eval(f"document.querySelector('#v1-{parent} a[href=\"#v0-{child}\"]').click()")
    assert b.eval("document.querySelector('#focus .card h3').textContent").startswith(f"level 0 · variable {child}")
    # the block link zooms the graph view into that block's units and their neighbours
    b.eval("location.hash = '#b0-1'")
    assert b.eval("document.querySelector('#graph-zoom b').textContent") == "level 0, block 1"
    assert b.eval("document.querySelectorAll('#graph-zoom circle').length") >= int((torch.tensor(side0['blocks']) == 1).sum())
    assert b.errors() == []
