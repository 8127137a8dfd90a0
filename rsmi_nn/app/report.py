"""One self-contained HTML report of a run: the flow table, diagnostics, graph drawings, and cards.

``write_report(run_dir)`` reads the run with :func:`rsmi_nn.load_run` (exporting it first when
needed), draws the figures with :mod:`rsmi_nn.app.plots`, writes them as PNG files under
``run_dir/plots/`` and embeds the same images as base64 ``data:`` URIs in ``run_dir/report.html``:
no external CSS, scripts, fonts or images, so the file opens anywhere, offline.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from pathlib import Path

import numpy as np

from graphs.atomic import atomic_write_bytes as write_bytes
from rsmi_nn.app import plots
from rsmi_nn.app.config import read_run_config
from rsmi_nn.app.export import export_run, is_exported
from rsmi_nn.app.files import write_text
from rsmi_nn.run import load_run

__all__ = ["write_report"]

log = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1150px;
color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}
.note{color:#666;font-size:.9em}.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ccc;border-radius:6px;padding:.6em;width:340px;font-size:.85em;background:#fcfcfc}
.card h3{margin:.1em 0 .4em;font-size:1em}.card ol{margin:.2em 0;padding-left:1.4em}
.ex{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;white-space:pre-wrap;margin:.2em 0}
mark{background:#ffe27a}img{max-width:100%}.mono{font-family:ui-monospace,Menlo,Consolas,monospace}
"""


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


def _example_html(ex: dict) -> str:
    if "text" in ex:
        marked = _mark_text(str(ex["text"]), ex.get("token"))
        return f'<div class="ex">{marked} <span class="note">({_fmt(ex.get("value"))})</span></div>'
    return ""


def _examples_block(variable_examples: list[dict]) -> str:
    if not variable_examples:
        return ""
    if "input" in variable_examples[0]:
        arrs = []
        for ex in variable_examples:
            a = np.asarray(ex["input"], dtype=np.float32)
            if a.ndim == 1:
                side = round(a.size**0.5)
                if side * side != a.size:
                    return ""
                a = a.reshape(side, side)
            if a.ndim != 2:
                return ""
            arrs.append(a)
        return "<div>top inputs:</div>" + _img(plots.image_grid_png([arrs], zoom=5), "top inputs")
    items = "".join(_example_html(ex) for ex in variable_examples)
    return f"<div>top inputs:</div>{items}" if items else ""


def write_report(run_dir: str | Path, *, max_cards: int = 48, top_units: int = 10, max_draw_nodes: int = 400,
                 seed: int = 0) -> Path:
    """Write ``run_dir/report.html`` (self-contained) and the same figures under ``run_dir/plots/``.

    Parameters
    ----------
    run_dir : a finished run directory (``flow.json`` + ``levels/``); exported first if needed.
    max_cards : the most coarse-variable cards shown (highest MI first; a note says how many were left out).
    top_units : level-0 units listed per card.
    max_draw_nodes : larger graphs are drawn on a seeded subset of whole blocks (the figure says so).
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
    parts = [f"<h1>{title}</h1>", _summary_line(run, root), *_flow_section(run, root / "plots"),
             *_graphs_section(run, root / "plots", seed, max_draw_nodes), *_cards_section(run, max_cards, top_units),
             *_provenance_section(run, root)]
    doc = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
           f"<title>{title}</title><style>{_CSS}</style></head><body>\n" + "\n".join(parts)
           + "\n</body></html>\n")
    out = write_text(root / "report.html", doc)
    log.info("report written to %s", out)
    return out


def _summary_line(run, root: Path) -> str:
    what = [f"{run.num_units} level-0 units", f"{len(run.levels)} level(s)"]
    src = read_run_config(root).get("source", {})
    if src.get("name"):
        what.insert(0, f"source <span class='mono'>{html.escape(str(src['name']))}</span>")
    return f"<p class='note'>{', '.join(what)}; directory <span class='mono'>{html.escape(str(root))}</span></p>"


def _flow_section(run, plot_dir: Path) -> list[str]:
    png = plots.flow_figure(run.flow)
    write_bytes(plot_dir / "flow.png", png)
    return ["<h2>Flow summary</h2>", _flow_table(run.flow), _img(png, "correlation length, locality and MI against level"),
            "<p class='note'>ξ: decay length of |connected correlation| with graph distance. Locality: "
            "fraction of the next level's strongest co-occurrence edges joining blocks adjacent at this "
            "level. MI: held-out I(H<sub>j</sub>;E<sub>j</sub>) per block (grey dots) and mean (red).</p>"]


def _graphs_section(run, plot_dir: Path, seed: int, max_draw_nodes: int) -> list[str]:
    parts = ["<h2>Graphs by level (nodes coloured by block)</h2><div class='cards'>"]
    for level in run.levels:
        png, note = plots.graph_figure(level.graph, level.blocks.numpy(), seed=seed, max_nodes=max_draw_nodes,
                                       title=f"level {level.index}: {level.num_units} units, {level.num_blocks} blocks")
        write_bytes(plot_dir / f"graph_level_{level.index:03d}.png", png)
        parts.append(f"<div>{_img(png, f'graph of level {level.index}')}"
                     + (f"<div class='note'>{html.escape(note)}</div>" if note else "") + "</div>")
    return [*parts, "</div>"]


def _cards_section(run, max_cards: int, top_units: int) -> list[str]:
    parts = ["<h2>Coarse variables</h2>"]
    lattice = (run.levels[0].graph.metadata or {}).get("lattice") if run.levels else None
    side = int(lattice["L"]) if lattice and int(lattice["L"]) ** 2 == run.num_units else None
    cards_per_level = max(1, max_cards // max(len(run.levels), 1))
    for level in run.levels:
        var_mi = level.variable_mi().numpy()
        order = np.argsort(-np.nan_to_num(var_mi, nan=-np.inf), kind="stable")
        shown = order[:cards_per_level]
        examples = run.examples(level.index)
        parts.append(f"<h3>Level {level.index} — {level.num_coarse} coarse variable(s)</h3>")
        if len(order) > len(shown):
            parts.append(f"<p class='note'>showing the {len(shown)} variables with the highest MI of "
                         f"{len(order)}; all are in <span class='mono'>feature_maps/level_{level.index:03d}.json"
                         "</span>.</p>")
        cards = [_card(run, level, v, float(var_mi[v]), top_units, side, examples) for v in shown.tolist()]
        parts.append("<div class='cards'>" + "".join(cards) + "</div>")
    return parts


def _card(run, level, v: int, mi: float, top_units: int, side: int | None, examples: dict | None) -> str:
    """One coarse variable: its block, MI, top level-0 units, lattice weights or top inputs."""
    top = run.top_units(level.index, v, top_units)
    units = "".join(f"<li><span class='mono'>{html.escape(n)}</span> {_fmt(w)}</li>" for n, w in top)
    block = v // level.hidden
    members = int((level.blocks == block).sum())
    card = [f"<div class='card'><h3>level {level.index} · variable {v} (block {block}"
            + (f", component {v % level.hidden}" if level.hidden > 1 else "") + ")</h3>",
            f"<div>I(H;E) = {_fmt(mi)} nats · block of {members} unit(s)</div>",
            f"<div>top level-0 units (composed weight):</div><ol>{units}</ol>"]
    if side is not None:
        w = run.feature_map_sparse(level.index)[:, v].toarray().reshape(side, side)
        card.append("<div>weights on the level-0 lattice (red +, blue −):</div>"
                    + _img(plots.lattice_weights_png(w, zoom=max(2, 160 // side)), "lattice weights"))
    if examples is not None and v < len(examples.get("variables", [])):
        card.append(_examples_block(examples["variables"][v]))
    return "".join(card) + "</div>"


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
