"""``compare.html``: one self-contained page of a run comparison (tables and embedded PNG figures).

Figures: every scalar invariant against level, one line per run; the histogram of matched |corr|
per level and pair; the GW coupling of each level (first pair) as a heat map, its rows ordered by
their best column, so that a sharp node-to-node matching shows as a diagonal.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np

from rsmi_nn.app.compare_invariants import SCALAR_INVARIANTS
from rsmi_nn.app.files import write_text

__all__ = ["write_compare_html"]

_CSS = """body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1150px;color:#222;
padding:0 1em}table{border-collapse:collapse;font-size:.9em;margin:.5em 0}th,td{border:1px solid #ccc;
padding:.25em .6em;text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}.note{color:#666;font-size:.9em}
img{max-width:100%}h2{border-bottom:1px solid #ddd}"""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _img(fig, alt: str) -> str:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool) or isinstance(v, int):
        return str(v)
    return f"{v:.{digits}g}" if isinstance(v, float) else html.escape(str(v))


def write_compare_html(path: Path, result: dict, couplings: dict) -> Path:
    """Write the comparison page for ``result`` (``compare_runs``'s dict) and its GW ``couplings``."""
    title = "rsmi-nn comparison: " + ", ".join(html.escape(r) for r in result["runs"])
    parts = [f"<h1>{title}</h1>", _pairs_section(result), _summary_table(result),
             "<h2>Invariants against level</h2>", _invariants_figure(result), _spread_table(result),
             "<h2>Variable matching</h2>", _matching_figure(result),
             "<h2>Gromov–Wasserstein couplings</h2>",
             f"<p class='note'>Recipe: {html.escape(str(result['gw']))}. Heat map: n·m × coupling (1 = uniform), "
             "rows ordered by their best column.</p>", _coupling_figure(result, couplings)]
    doc = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
           f"<title>{title}</title><style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    return write_text(path, doc)


def _pairs_section(result: dict) -> str:
    rows = "".join(f"<tr><td class='l'>{html.escape(p['a'])}</td><td class='l'>{html.escape(p['b'])}</td>"
                   f"<td class='l'>{html.escape(str(p['samples']['rule']))}</td>"
                   f"<td class='l'>{html.escape(p['samples']['note'])}</td></tr>" for p in result["pairs"])
    return ("<h2>Pairs and shared samples</h2><table><tr><th class='l'>run A</th><th class='l'>run B</th>"
            f"<th class='l'>rule</th><th class='l'>samples</th></tr>{rows}</table>")


def _summary_table(result: dict) -> str:
    key = f"fraction_above_{result['options']['threshold']:g}"
    rows = []
    for lv in result["levels"]:
        m = lv["matching"] or {}
        rows.append(f"<tr><td>{lv['level']}</td><td>{_fmt(m.get('mean_abs_corr'))}</td><td>{_fmt(m.get(key))}</td>"
                    f"<td>{_fmt(lv['gw_distance'])}</td></tr>")
    return ("<h2>Per level</h2><table><tr><th>level</th><th>mean matched |corr|</th>"
            f"<th>{html.escape(key)}</th><th>GW distance</th></tr>{''.join(rows)}</table>")


def _invariants_figure(result: dict) -> str:
    plt = _pyplot()
    cols = 3
    rows = math.ceil(len(SCALAR_INVARIANTS) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, SCALAR_INVARIANTS):
        for run in result["runs"]:
            pts = [(lv["level"], lv["invariants"][run].get(name)) for lv in result["levels"] if run in lv["invariants"]]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", label=run if len(run) < 40 else "…" + run[-38:])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("level")
        ax.set_xticks([lv["level"] for lv in result["levels"]])
    for ax in list(axes.flat)[len(SCALAR_INVARIANTS):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return _img(fig, "invariants against level")


def _spread_table(result: dict) -> str:
    head = "".join(f"<th>{html.escape(n)}</th>" for n in SCALAR_INVARIANTS)
    rows = []
    for lv in result["levels"]:
        cells = []
        for n in SCALAR_INVARIANTS:
            s = lv["spread"].get(n)
            cells.append("<td>–</td>" if s is None else
                         f"<td>{_fmt(s['relative_spread'], 2)}{' ✓' if s['within_5pct'] else ''}</td>")
        rows.append(f"<tr><td>{lv['level']}</td>{''.join(cells)}</tr>")
    return ("<p class='note'>Relative spread (max − min) / |mean| across runs; ✓ within 5 %.</p>"
            f"<table><tr><th>level</th>{head}</tr>{''.join(rows)}</table>")


def _matching_figure(result: dict) -> str:
    panels = [(lv["level"], p) for lv in result["levels"] for p in lv["pairs"] if p["matching"].get("defined")]
    if not panels:
        reasons = {p["samples"]["note"] for p in result["pairs"]}
        return "<p class='note'>" + " ".join(html.escape(r) for r in reasons) + "</p>"
    plt = _pyplot()
    panels = panels[:12]
    cols = min(4, len(panels))
    fig, axes = plt.subplots(math.ceil(len(panels) / cols), cols, figsize=(3 * cols, 2.4 * math.ceil(len(panels) / cols)),
                             squeeze=False)
    for ax, (level, p) in zip(axes.flat, panels):
        h = p["matching"]["histogram"]
        edges = np.asarray(h["edges"])
        ax.bar(edges[:-1], h["counts"], width=np.diff(edges), align="edge", color="#4a7ab5")
        ax.set_title(f"level {level}: mean {p['matching']['mean_abs_corr']:.3f}", fontsize=9)
        ax.set_xlabel("matched |corr|", fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return _img(fig, "histograms of matched |corr|")


def _coupling_figure(result: dict, couplings: dict) -> str:
    first = {}
    for (level, a, b), value in sorted(couplings.items()):
        first.setdefault(level, (a, b, value))
    if not first:
        return "<p class='note'>no level is shared by two runs</p>"
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(first), figsize=(4 * len(first), 3.6), squeeze=False)
    for ax, (level, (a, b, (coupling, _, _))) in zip(axes.flat, sorted(first.items())):
        n, m = coupling.shape
        rows = np.argsort(coupling.argmax(1), kind="stable")
        im = ax.imshow(coupling[rows] * n * m, aspect="auto", cmap="viridis")
        ax.set_title(f"level {level}: {result['runs'][a][-20:]} vs {result['runs'][b][-20:]}", fontsize=8)
        ax.set_xlabel("nodes of B")
        ax.set_ylabel("nodes of A (by best partner)")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _img(fig, "GW couplings")
