"""A level's graph for the dashboard: the quotient (block-level) graph with a layout, and each unit's neighbours.

The quotient graph has one node per block and an edge between two blocks weighted by the total weight of
the level's edges joining them. Blocks are coloured by a greedy colouring of the quotient
graph (largest first), so adjacent blocks never share a colour (24 distinct colours, repeating beyond). Only each
block's strongest quotient edges are drawn (the figure says how many), so a dense graph is not a hairball.
The zoom into one block (drawn by the page) uses each unit's strongest neighbours.
"""

from __future__ import annotations

import numpy as np

__all__ = ["level_graph", "quotient_graph"]


def quotient_graph(edge_index: np.ndarray, edge_weight: np.ndarray, blocks: np.ndarray):
    """``scipy.sparse.csr_matrix [B, B]``: summed weights of the edges between blocks (diagonal dropped).

    ``edge_index [2, E]``, ``edge_weight [E]``, ``blocks [U]`` (block of each unit, 0..B-1).
    """
    from scipy.sparse import coo_matrix

    num_blocks = int(blocks.max()) + 1 if blocks.size else 0
    a, b = blocks[edge_index[0]], blocks[edge_index[1]]
    keep = a != b
    q = coo_matrix((np.abs(edge_weight[keep]).astype(np.float64), (a[keep], b[keep])),
                   shape=(num_blocks, num_blocks)).tocsr()
    q.sum_duplicates()
    return ((q + q.T) / 2).tocsr()


def _strongest(csr, k: int) -> list[tuple[int, int, float]]:
    """The ``k`` strongest edges of each row of a symmetric matrix, as undirected ``(a, b, w)``, a < b."""
    kept: dict[tuple[int, int], float] = {}
    for a in range(csr.shape[0]):
        lo, hi = csr.indptr[a], csr.indptr[a + 1]
        cols, vals = csr.indices[lo:hi], csr.data[lo:hi]
        for i in np.argsort(-vals, kind="stable")[:k]:
            b = int(cols[i])
            kept[(min(a, b), max(a, b))] = float(vals[i])
    return [(a, b, w) for (a, b), w in sorted(kept.items())]


def _layout(num_blocks: int, edges: list[tuple[int, int, float]], seed: int, iterations: int = 100,
            pivots: int = 256) -> np.ndarray:
    """Fruchterman–Reingold layout of the drawn quotient edges, scaled to integers in [0, 1000].

    Seeded and vectorised; on more than ``pivots`` nodes the repulsion of each step comes from ``pivots`` nodes
    drawn at random (scaled up to all of them), so a step costs ``O(n · pivots)`` instead of ``O(n²)``.
    """
    n = num_blocks
    rng = np.random.default_rng(seed)
    pos = rng.random((n, 2)).astype(np.float32)
    if n > 1 and edges:
        a, b, w = (np.asarray(c) for c in zip(*edges))
        a, b, w = a.astype(np.int64), b.astype(np.int64), (w / w.max()).astype(np.float32)
        k, temp = 1.0 / np.sqrt(n), 0.1
        for _ in range(iterations):
            piv = rng.choice(n, pivots, replace=False) if n > pivots else np.arange(n)
            delta = pos[:, None, :] - pos[None, piv, :]
            d2 = np.maximum((delta**2).sum(-1), 1e-6)
            disp = (delta * (k * k / d2)[..., None]).sum(1) * (n / len(piv))
            d = pos[a] - pos[b]
            dist = np.maximum(np.sqrt((d**2).sum(-1)), 1e-6)
            f = (dist * w / k)[:, None] * d
            np.add.at(disp, a, -f)
            np.add.at(disp, b, f)
            length = np.maximum(np.sqrt((disp**2).sum(-1)), 1e-9)
            pos += disp * (np.minimum(length, temp) / length)[:, None]
            temp = max(temp * 0.96, 0.002)
    lo, hi = pos.min(0), pos.max(0)
    return np.round((pos - lo) / np.where(hi > lo, hi - lo, 1.0) * 1000).astype(int)


def _colouring(q) -> list[int]:
    import networkx as nx

    G = nx.Graph()
    G.add_nodes_from(range(q.shape[0]))
    c = q.tocoo()
    G.add_edges_from((int(a), int(b)) for a, b in zip(c.row, c.col) if a < b)
    colours = nx.greedy_color(G, strategy="largest_first")
    return [int(colours[i]) for i in range(q.shape[0])]


def _neighbours(edge_index: np.ndarray, edge_weight: np.ndarray, num_units: int, k: int) -> list[list[int]]:
    """Each unit's ``k`` strongest neighbours (by |weight|)."""
    order = np.lexsort((-np.abs(edge_weight), edge_index[0]))
    src, dst = edge_index[0][order], edge_index[1][order]
    starts = np.searchsorted(src, np.arange(num_units + 1))
    return [dst[starts[u] : min(starts[u] + k, starts[u + 1])].tolist() for u in range(num_units)]


def level_graph(run, index: int, *, seed: int = 0, edges_per_block: int = 3, neighbours: int = 6) -> dict:
    """The graph data of level ``index`` for the dashboard.

    Returns
    -------
    dict with ``blocks [U]`` (block of each unit), ``colour [B]``, ``xy [B][2]`` (layout, 0..1000), ``edges``
    (``[a, b, w]``: the ``edges_per_block`` strongest quotient edges of each block, ``w`` in 1..100 relative to
    the strongest), ``num_quotient_edges`` (all of them), ``nbrs [U][<=neighbours]`` (strongest neighbours of
    each unit) and ``cols`` (for a level above 0, the previous level's variable that each unit is; else null).
    """
    from rsmi_nn.run import _input_columns  # the one definition of which columns became this level's units

    level = run.levels[index]
    g = level.graph
    ei, ew = g.edge_index.numpy(), g.edge_weight.numpy()
    blocks = level.blocks.numpy()
    q = quotient_graph(ei, ew, blocks)
    drawn = _strongest(q, edges_per_block)
    top = max((w for _, _, w in drawn), default=1.0) or 1.0
    xy = _layout(q.shape[0], drawn, seed)
    cols = _input_columns(run.levels[index - 1], level).tolist() if index > 0 else None
    return {"blocks": blocks.tolist(), "colour": _colouring(q), "xy": xy.tolist(),
            "edges": [[a, b, max(1, int(round(100 * w / top)))] for a, b, w in drawn],
            "num_quotient_edges": int((q.nnz) // 2), "nbrs": _neighbours(ei, ew, g.num_nodes, neighbours),
            "cols": cols}
