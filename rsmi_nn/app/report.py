"""One self-contained HTML report of a run: how to read it, the flow, the graph view and a dashboard of variables.

``write_report(run_dir)`` reads the run with :func:`rsmi_nn.load_run` (exporting it first when needed),
draws the flow figure with :mod:`rsmi_nn.app.plots` (also written as PNG files under ``run_dir/plots/``), and
writes ``run_dir/report.html``: every coarse variable of every level as a card (search, filters, sort, pages;
links to its block, parent and children), the quotient graph of each level with a zoom into one block, built
in the browser by ``report_assets/dashboard.js`` from the JSON of :mod:`rsmi_nn.app.report_data` embedded in
the page. Images are ``data:`` URIs, CSS and script are inline: no request leaves the page, so it opens
anywhere, offline, from a file.

Sections are functions returning HTML strings; :func:`write_report` lists them in order (other modules'
sections, such as the evaluation's, are inserted there).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from pathlib import Path

from graphs.atomic import atomic_write_bytes as write_bytes
from rsmi_nn.app import plots
from rsmi_nn.app.config import read_run_config
from rsmi_nn.app.evaluation.report_section import report_section as evaluation_section
from rsmi_nn.app.export import export_run, is_exported
from rsmi_nn.app.files import to_jsonable, write_text
from rsmi_nn.app.report_data import dashboard_data
from rsmi_nn.run import load_run

__all__ = ["write_report"]

log = logging.getLogger(__name__)

_ASSETS = Path(__file__).with_name("report_assets")


def _asset(name: str) -> str:
    return (_ASSETS / name).read_text(encoding="utf-8")


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    if not math.isfinite(v):
        return "–" if math.isnan(v) else ("∞" if v > 0 else "−∞")
    return f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def _flow_table(flow: list[dict]) -> str:
    cols = [("level", "level"), ("num_nodes", "units"), ("num_blocks", "blocks"), ("num_edges", "edges"),
            ("correlation_length", "ξ (own hops)"), ("correlation_length_level0", "ξ (level-0 hops)"),
            ("locality", "locality"), ("locality_chance", "locality (chance)"), ("mi_mean", "mean I(H;E) [nats]"),
            ("mi_ceiling", "bound ceiling"),
            ("bound", "bound"), ("hidden", "h")]
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in cols)
    rows = []
    for r in flow:
        rows.append("<tr>" + "".join(f"<td>{_fmt(r.get(k))}</td>" for k, _ in cols) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _mark_text(text: str, token: str | None = None) -> str:
    """Escape ``text`` and turn its ``[[token]]`` marker (the store's convention) into ``<mark>``."""
    needle = f"[[{token}]]" if token is not None else None
    i = text.find(needle) if needle else -1
    if i < 0:
        start = text.find("[[")
        end = text.find("]]", start + 2) if start >= 0 else -1
        if start < 0 or end < 0:
            return html.escape(text)
        i, needle = start, text[start : end + 2]
    inner = needle[2:-2]
    return (html.escape(text[:i]) + "<mark>" + html.escape(inner) + "</mark>"
            + html.escape(text[i + len(needle) :]))


def write_report(run_dir: str | Path, *, max_cards: int = 24, top_units: int = 10, max_draw_nodes: int = 400,
                 seed: int = 0) -> Path:
    """Write ``run_dir/report.html`` (self-contained) and the figures under ``run_dir/plots/``.

    Parameters
    ----------
    run_dir : a finished run directory (``flow.json`` + ``levels/``); exported first if needed.
    max_cards : coarse-variable cards per page of the dashboard (every variable is reachable by paging,
        search and links).
    top_units : level-0 units listed per card.
    max_draw_nodes : ``plots/graph_level_NNN.png`` draws larger graphs on a seeded subset of whole blocks.
    seed : seed of the graph layouts.

    Returns
    -------
    Path of ``report.html``.
    """
    root = Path(run_dir)
    if not is_exported(root):
        export_run(root)
    run = load_run(root)
    title = f"rsmi-nn run: {html.escape(root.resolve().name)}"
    data = dashboard_data(run, root, top_units=top_units, seed=seed)
    data["page_size"] = int(max_cards)
    parts = [f"<h1>{title}</h1>", _summary_line(run, root), _how_to_read(run),
             *_flow_section(run, root / "plots"), *_graphs_section(run, root / "plots", seed, max_draw_nodes)]
    parts += [evaluation_section(root, root / "plots")]  # "Does the model notice?" ("" without evaluation.json)
    parts += [*_variables_section(run, data), *_provenance_section(run, root)]
    payload = json.dumps(to_jsonable(data), separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    doc = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
           f"<title>{title}</title><style>{_asset('dashboard.css')}</style></head><body>\n" + "\n".join(parts)
           + f"\n<script type='application/json' id='rsmi-data'>{payload}</script>"
           + f"\n<script>{_asset('dashboard.js')}</script>\n</body></html>\n")
    out = write_text(root / "report.html", doc)
    log.info("report written to %s (%.1f MB)", out, len(doc.encode("utf-8")) / 1e6)
    return out


def _summary_line(run, root: Path) -> str:
    what = [f"{run.num_units} level-0 units", f"{len(run.levels)} level(s)"]
    src = read_run_config(root).get("source", {})
    if src.get("name"):
        what.insert(0, f"source <span class='mono'>{html.escape(str(src['name']))}</span>")
    return f"<p class='note'>{', '.join(what)}; directory <span class='mono'>{html.escape(str(root))}</span></p>"


def _how_to_read(run) -> str:
    """One paragraph at the top: what a level, a block, a coarse variable and the three diagnostics are."""
    sizes = " → ".join(f"{lv.num_units:,}".replace(",", " ") for lv in run.levels)
    sizes += f" → {run.levels[-1].num_coarse:,}".replace(",", " ")
    return (
        "<div class='how'><b>How to read this flow.</b> Each <i>level</i> partitions its units into connected "
        f"<i>blocks</i> of its activation graph and learns one coarse variable per block (here {sizes} units "
        "from level to level): the linear summary H of the block that keeps the most mutual information "
        "I(H;E) with the block's <i>environment</i> beyond a buffer, so short-range detail is discarded and what "
        "the block shares with the rest of the network is kept. The coarse variables are the next level's units. "
        "Read the flow table left to right: the <i>correlation length</i> ξ (how far, in graph hops, units stay "
        "correlated) should grow when counted in level-0 hops; <i>locality</i> (the share of the coarse graph's "
        "strongest edges that join blocks adjacent one level below) near 1 and well above its chance level means "
        "the coarse-graining kept the network's geometry; <i>MI</i> says how much each variable knows about its "
        "surroundings, in nats, against the estimator's ceiling. Then browse the variables: search a token or a "
        "unit, open a card, follow its parent up and its children down.</div>")


def _flags(run) -> list[str]:
    """Where a figure or number is not informative, one sentence each."""
    out = []
    if len(run.flow) == 1:
        out.append("One level only: the flow figure shows single points, not a trend.")
    for r in run.flow:
        lv = r.get("level")
        loc, chance = _num(r.get("locality")), _num(r.get("locality_chance"))
        if math.isfinite(loc) and math.isfinite(chance) and abs(loc - chance) <= max(0.05, 0.1 * chance):
            out.append(f"Level {lv}: locality {loc:.2f} equals its chance level {chance:.2f} — it says nothing "
                       "about whether the blocks kept the geometry.")
        elif not math.isfinite(loc):
            out.append(f"Level {lv}: no locality (no level above it to compare with, or too few edges).")
        status = (r.get("correlation_fit") or {}).get("status")
        if status and status != "fit":
            out.append(f"Level {lv}: ξ is a {str(status).replace('_', '-')} estimate, not a fit over a range of "
                       "distances — read it as a rough scale.")
        mi, se = r.get("mi_per_block") or [], r.get("mi_stderr_per_block") or []
        if mi and se and len(mi) == len(se) and all(abs(_num(m)) <= 2 * _num(s) for m, s in zip(mi, se)):
            out.append(f"Level {lv}: every block's MI is within two standard errors of 0.")
        n, e = _num(r.get("num_nodes")), _num(r.get("num_edges"))
        if n > 2 and e / 2 > 0.5 * n * (n - 1) / 2:
            out.append(f"Level {lv}: its graph is near-complete ({e / 2:.0f} of {n * (n - 1) / 2:.0f} possible edges); "
                       "a drawing of it shows little structure, the quotient graph below shows more.")
    return out


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _flow_section(run, plot_dir: Path) -> list[str]:
    png = plots.flow_figure(run.flow)
    write_bytes(plot_dir / "flow.png", png)
    flags = _flags(run)
    box = ("<ul class='flags'>" + "".join(f"<li>{html.escape(f)}</li>" for f in flags) + "</ul>") if flags else ""
    return ["<h2 id='flow'>Flow summary</h2>", _flow_table(run.flow), box,
            _img(png, "correlation length, locality and MI against level"),
            "<p class='note'>ξ: decay length of |connected correlation| with graph distance, in hops. Locality: "
            "fraction of the next level's strongest co-occurrence edges joining blocks adjacent at this level "
            "(grey: the same for random blocks). MI: held-out I(H<sub>j</sub>;E<sub>j</sub>) per block (grey dots), "
            "mean (red) with its standard error; the axis is scaled to the values, the bound's ceiling is stated "
            "in the panel's title.</p>"]


def _graphs_section(run, plot_dir: Path, seed: int, max_draw_nodes: int) -> list[str]:
    for level in run.levels:  # the unit-level drawings stay files (plots/); the page draws the quotient graph
        png, _ = plots.graph_figure(level.graph, level.blocks.numpy(), seed=seed, max_nodes=max_draw_nodes,
                                    title=f"level {level.index}: {level.num_units} units, {level.num_blocks} blocks")
        write_bytes(plot_dir / f"graph_level_{level.index:03d}.png", png)
    return ["<h2 id='graphs'>Graphs by level: blocks and their neighbours</h2>",
            "<div id='graph-tabs' class='tabs'></div><p id='graph-note' class='note'></p>",
            "<div class='graphwrap'><div id='graph-main'></div><div id='graph-zoom'></div></div>"]


def _variables_section(run, data: dict) -> list[str]:
    levels = "".join(f"<option value='{lv.index}'>level {lv.index} ({lv.num_coarse})</option>" for lv in run.levels)
    effect = ("<option value='effect'>output effect, largest first</option>" if data.get("has_effect") else "")
    total = sum(lv.num_coarse for lv in run.levels)
    return [
        "<h2 id='variables'>Coarse variables</h2>",
        f"<p class='note'>All {total} coarse variables of the {len(run.levels)} level(s). Each card: MI with its "
        "standard error (and the output effect when <span class='mono'>evaluation.json</span> exists), the histogram "
        "of the variable over every sample, its top and bottom examples (every token shaded by the variable's value: "
        "orange positive, blue negative, relative to the variable's largest |value|; the marked token's value "
        "leads the line; hover a token for its own value), its top level-0 units with their composed weights, and "
        "links to its block, its parent (the next level's variable its block became part of) and its children.</p>",
        "<div class='controls'><input type='search' id='search' placeholder='search top tokens or units, e.g. they' "
        "aria-label='search'><label>level <select id='level'><option value='all'>all</option>" + levels + "</select></label>"
        "<label>sort <select id='sort'><option value='mi'>MI, largest first</option>"
        "<option value='mi-asc'>MI, smallest first</option>" + effect + "<option value='index'>level, index</option>"
        "</select></label><label>MI ≥ <input type='number' id='min-mi' step='0.05' style='width:5em'></label>"
        "<span class='pager'><button type='button' id='prev'>◀</button> <button type='button' id='next'>▶</button>"
        "</span> <span id='count' class='note'></span></div>",
        "<div id='focus'></div><div id='cards' class='cards'></div>",
    ]


def _provenance_section(run, root: Path) -> list[str]:
    def pre(text: str) -> str:
        return f"<pre class='mono'>{html.escape(text)}</pre>"

    parts = ["<h2>Configuration</h2>"]
    if (root / "config.toml").is_file():
        parts.append(pre((root / "config.toml").read_text(encoding="utf-8")))
    elif run.config:
        parts.append(pre(json.dumps(run.config, indent=2)))
    if (root / "versions.json").is_file():
        parts.append(pre((root / "versions.json").read_text(encoding="utf-8")))
    if (root / "timings.json").is_file():
        parts += ["<h3>Timings</h3>", pre((root / "timings.json").read_text(encoding="utf-8"))]
    return parts
