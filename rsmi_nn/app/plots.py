"""Figures of a run, as PNG bytes: flow diagnostics against level, graph drawings, image sprites.

matplotlib with the non-interactive Agg backend (imported inside the functions, so importing
``rsmi_nn`` stays cheap). Every function returns PNG bytes; the report embeds them as base64
and also writes them under ``run_dir/plots/``.
"""

from __future__ import annotations

import io
import math

import numpy as np

__all__ = ["flow_figure", "graph_figure", "image_grid_png", "lattice_weights_png", "spring_components", "to_picture"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig, dpi: int = 110) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _num(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v


def flow_figure(flow: list[dict]) -> bytes:
    """Three panels against level: correlation length ξ (own hops and level-0 hops), locality, MI."""
    plt = _pyplot()
    levels = [int(r.get("level", i)) for i, r in enumerate(flow)]
    xi = [_num(r.get("correlation_length")) for r in flow]
    xi0 = [_num(r.get("correlation_length_level0")) for r in flow]
    loc = [_num(r.get("locality")) for r in flow]
    mi = [_num(r.get("mi_mean")) for r in flow]
    ceil = [_num(r.get("mi_ceiling")) for r in flow]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    ax = axes[0]
    ax.plot(levels, xi, "o-", label="ξ (own hops)")
    ax.plot(levels, xi0, "s--", label="ξ (level-0 hops)")
    ax.set_title("correlation length")
    ax.set_ylabel("ξ [graph hops]")
    ax.legend(fontsize=8)
    chance = [_num(r.get("locality_chance")) for r in flow]
    ax = axes[1]
    ax.plot(levels, loc, "o-", color="tab:green", label="learned blocks")
    if any(math.isfinite(c) for c in chance):
        ax.plot(levels, chance, "x:", color="tab:gray", label="chance level")
        ax.legend(fontsize=8)
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("locality preservation")
    ax.set_ylabel("local share of strongest edges [0–1]")
    ax = axes[2]
    per_block = [[_num(b) for b in (r.get("mi_per_block") or [])] for r in flow]
    stderr = [[_num(b) for b in (r.get("mi_stderr_per_block") or [])] for r in flow]
    shown = [v for vals in per_block for v in vals if math.isfinite(v)] + [m for m in mi if math.isfinite(m)]
    for lv, vals in zip(levels, per_block):
        if vals:
            jitter = np.random.default_rng(lv).uniform(-0.12, 0.12, len(vals))
            ax.scatter(np.full(len(vals), lv) + jitter, vals, s=6, alpha=0.35, color="tab:gray",
                       label="per block" if lv == levels[0] else None)
    sem = [math.sqrt(sum(s * s for s in se if math.isfinite(s))) / len(se) if se else math.nan for se in stderr]
    ax.errorbar(levels, mi, yerr=[s if math.isfinite(s) else 0.0 for s in sem], fmt="o-", color="tab:red",
                capsize=3, label="mean I(H;E) ± s.e.")
    if shown:  # scaled to the data: the bound's ceiling is stated, not drawn as the axis
        lo, hi = min(0.0, min(shown)), max(shown)
        ax.set_ylim(lo - 0.05 * (hi - lo or 1.0), hi + 0.08 * (hi - lo or 1.0))
    finite_ceil = [c for c in ceil if math.isfinite(c)]
    title = "MI retained (held-out)"
    if finite_ceil:
        title += f"\nceiling of the bound: {max(finite_ceil):.2g} nats (off the axis)"
    ax.set_title(title)
    ax.set_ylabel("I(H;E) [nats]")
    ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("level")
        ax.set_xticks(levels)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _neighbouring_blocks(graph, blocks: np.ndarray, max_nodes: int, seed: int) -> list[int]:
    """Whole blocks in breadth-first order over block adjacency from a seeded random block, up to
    ``max_nodes`` nodes in all, so the drawing shows one connected neighbourhood."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order

    num_blocks = int(blocks.max()) + 1
    sizes = np.bincount(blocks, minlength=num_blocks)
    ei = graph.edge_index.numpy()
    bs, bd = blocks[ei[0]], blocks[ei[1]]
    adj = coo_matrix((np.ones(bs.size), (bs, bd)), shape=(num_blocks, num_blocks)).tocsr()
    start = int(np.random.default_rng(seed).integers(num_blocks))
    order = list(breadth_first_order(adj, start, directed=False, return_predecessors=False))
    seen = set(order)
    order += [b for b in np.random.default_rng(seed).permutation(num_blocks).tolist() if b not in seen]
    chosen, total = [], 0
    for b in order:
        if total + sizes[b] > max_nodes and chosen:
            break
        chosen.append(int(b))
        total += int(sizes[b])
    return chosen


def spring_components(G, *, seed: int = 0) -> dict:
    """Positions of ``G``'s nodes: its largest connected component by a seeded spring layout, in ``[-1, 1]²``, and
    every other component laid out alone, shrunk into a cell of a grid in the band below it. A spring layout of the
    whole graph pushes components apart without bound: one node the drawn blocks left without an edge squeezed the
    default run's level-1 drawing into a corner."""
    import networkx as nx

    parts = sorted(nx.connected_components(G), key=lambda c: (-len(c), min(c)))
    if not parts:
        return {}

    def spring(nodes) -> dict:
        if len(nodes) == 1:
            return {next(iter(nodes)): np.zeros(2)}
        return nx.spring_layout(G.subgraph(nodes), seed=seed, weight="weight", iterations=60)

    pos = spring(parts[0])
    rest = parts[1:]
    cols = max(4, math.ceil(math.sqrt(2 * len(rest))))
    cell = 2.0 / cols
    for i, part in enumerate(rest):
        row, col = divmod(i, cols)
        centre = np.array([-1.0 + cell * (col + 0.5), -1.1 - cell * (row + 0.5)])
        small = spring(part)
        pos.update({v: centre + 0.35 * cell * np.asarray(xy) for v, xy in small.items()})
    return pos


def graph_figure(graph, blocks, *, seed: int = 0, max_nodes: int = 400, title: str = "") -> tuple[bytes, str]:
    """Draw ``graph`` with nodes coloured by block (spring layout, seeded).

    Graphs with more than ``max_nodes`` nodes are drawn on the induced subgraph of whole blocks
    chosen by a seeded draw; the returned note says so (``""`` when the whole graph is drawn).
    """
    import networkx as nx

    plt = _pyplot()
    blocks = np.asarray(blocks, dtype=np.int64)
    n = graph.num_nodes
    note = ""
    nodes = np.arange(n)
    if n > max_nodes:
        chosen = _neighbouring_blocks(graph, blocks, max_nodes, seed)
        nodes = np.flatnonzero(np.isin(blocks, chosen))
        note = (f"drawn: {len(nodes)} of {n} nodes ({len(chosen)} of {int(blocks.max()) + 1} neighbouring blocks "
                "around a seeded random block)")
    G = graph.to_networkx().subgraph(nodes.tolist()).copy()
    G.graph.clear()
    lat = (graph.metadata or {}).get("lattice")
    if lat and n <= max_nodes and int(lat.get("L", 0)) ** 2 == n:
        L = int(lat["L"])
        pos = {i: (i % L, -(i // L)) for i in G.nodes}
    else:
        pos = spring_components(G, seed=seed)
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    cmap = plt.get_cmap("tab20")
    colors = [cmap((2 * int(blocks[i])) % 20 + (int(blocks[i]) // 10) % 2) for i in G.nodes]
    weights = np.asarray([d.get("weight", 1.0) for _, _, d in G.edges(data=True)], dtype=float)
    widths = 0.3 + 1.5 * weights / weights.max() if weights.size and weights.max() > 0 else 0.5
    nx.draw_networkx_edges(G, pos, ax=ax, width=widths, alpha=0.25)
    nx.draw_networkx_nodes(G, pos, ax=ax, node_color=colors, node_size=max(8, 2400 // max(len(G), 1)),
                           linewidths=0)
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=9)
    ax.set_axis_off()
    return _png(fig), note


def _normalise(a: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] between the 2nd and 98th percentile (robust to a few extreme pixels; constant → 0)."""
    lo, hi = (float(v) for v in np.percentile(a, [2.0, 98.0]))
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(a)


def to_picture(x: np.ndarray, *, max_channels: int = 8) -> np.ndarray | None:
    """An input as a contrast-normalised picture in [0, 1]: ``[H, W]`` (grey, 1 = high) or ``[H, W, 3]`` (RGB).

    Accepts a flat square ``[H·H]``, ``[H, W]``, ``[1, H, W]``, ``[3, H, W]`` (RGB, normalised over all channels)
    or ``[C, H, W]`` with other ``C`` (the first ``max_channels`` channels side by side, each normalised on its
    own, one pixel of gap). Returns ``None`` for anything else (a vector that is not a square, 4-d arrays).
    """
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 1:
        side = round(a.size**0.5)
        if side * side != a.size or a.size < 4:
            return None
        a = a.reshape(side, side)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        return _normalise(a)
    if a.ndim != 3:
        return None
    if a.shape[0] == 3:
        return np.moveaxis(_normalise(a), 0, -1)
    chans = [_normalise(c) for c in a[:max_channels]]
    gap = np.full((a.shape[1], 1), np.nan, dtype=np.float32)
    tiles = [t for c in chans for t in (c, gap)][:-1]
    return np.nan_to_num(np.concatenate(tiles, axis=1), nan=0.0)


def image_grid_png(rows: list[list[np.ndarray]], *, zoom: int = 4, gap: int = 1) -> bytes:
    """A mosaic of small images (one row per coarse variable), as PNG bytes.

    Each image goes through :func:`to_picture` (any ``C×H×W``, each scaled on its own) and is enlarged
    ``zoom`` times (nearest neighbour); grey pictures are drawn dark = high (ink on paper). One mosaic is written
    with ``imsave`` (no axes), which stays fast for hundreds of images.
    """
    import matplotlib.image

    _pyplot()
    pics = [[p for p in (to_picture(img) for img in r) if p is not None] for r in rows]
    pics = [r for r in pics if r] or [[np.zeros((1, 1), dtype=np.float32)]]
    h = max(p.shape[0] for r in pics for p in r)
    w = max(p.shape[1] for r in pics for p in r)
    ncols = max(len(r) for r in pics)
    cell_h, cell_w = h * zoom + gap, w * zoom + gap
    canvas = np.ones((len(pics) * cell_h + gap, ncols * cell_w + gap, 3), dtype=np.float32)
    for i, row in enumerate(pics):
        for j, p in enumerate(row):
            rgb = p if p.ndim == 3 else np.repeat((1.0 - p)[..., None], 3, axis=2)
            big = np.kron(rgb, np.ones((zoom, zoom, 1), dtype=np.float32))
            y, x = gap + i * cell_h, gap + j * cell_w
            canvas[y : y + big.shape[0], x : x + big.shape[1]] = big
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, canvas, format="png")
    return buf.getvalue()


def lattice_weights_png(weights: np.ndarray, *, zoom: int = 10) -> bytes:
    """An ``L x L`` map of one coarse variable's weights on the level-0 lattice (red +, blue −)."""
    import matplotlib.image

    _pyplot()
    w = np.asarray(weights, dtype=np.float32)
    vmax = float(np.abs(w).max()) or 1.0
    big = np.kron(w, np.ones((zoom, zoom), dtype=np.float32))
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, big, cmap="RdBu_r", vmin=-vmax, vmax=vmax, format="png")
    return buf.getvalue()
