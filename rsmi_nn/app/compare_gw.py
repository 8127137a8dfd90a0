"""Gromov–Wasserstein distance between two level graphs, with POT (``ot.gromov``).

A level graph is read as a metric-measure space: its nodes with the uniform measure and the
hop-distance matrix, normalised so that the largest distance is 1. Two graphs of any sizes are
then compared by

    GW(C1, C2, p, q) = min_T Σ_{i,j,k,l} (C1[i,k] - C2[j,l])² T[i,j] T[k,l],   T ∈ Π(p, q),

(``ot.gromov.gromov_wasserstein2`` with ``loss_fun="square_loss"``): 0 for isomorphic graphs,
and the optimal coupling ``T [n, m]`` is a soft matching of their nodes. The recipe, which a
reader can repeat with POT on the saved graphs (``levels/NNN/graph``):

1. ``D = graph.hop_distances()`` (breadth-first hops); unreachable pairs get the largest finite
   distance + 1; ``C = D / D.max()``. A graph of more than ``max_nodes`` nodes is replaced by a
   seeded uniform subset of ``max_nodes`` of them (``numpy.random.default_rng(seed).choice``,
   sorted), with their distances in the whole graph: a Monte-Carlo estimate of the same space.
2. ``p = ot.unif(n)``, ``q = ot.unif(m)``; exact GW by POT's conditional gradient from the
   product coupling (its default), or entropic GW (``ot.gromov.entropic_gromov_wasserstein``,
   ``epsilon``) when asked; a round-off negative is reported as 0. GW is not convex: the solver
   finds a local optimum, and the same matrices in another memory order can lead it to another
   one, so the matrices are C-ordered float64, as ``scipy.sparse.csgraph.shortest_path`` returns them.

Cost: every conditional-gradient iteration forms the tensor product ``C1 T C2ᵀ`` in
``O(n² m + n m²)`` and solves one exact transport of size ``n × m`` (network simplex, roughly
cubic); the entropic variant replaces the latter by Sinkhorn iterations but keeps the former.
Measured on the 2-core CPU (random geometric graphs, k = 8, under contention): exact 0.09 / 0.5 /
10 / 61 s at n = m = 250 / 500 / 1 000 / 2 000 (the last with POT warning it hit its iteration
cap), entropic (ε = 0.01) 1.2 / 6 / 18 / 196 s and biased upwards (0.011 against 0.0018 at
n = 1 000). So the exact solver is the default up to ``max_nodes = 1000`` and larger graphs are
subsampled, never solved whole.
"""

from __future__ import annotations

import numpy as np

from rsmi_nn.app.compare_options import GW_SOLVERS

__all__ = ["GW_SOLVERS", "block_coupling", "distance_matrix", "gromov_wasserstein"]


def distance_matrix(graph, *, max_nodes: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The normalised hop-distance matrix of ``graph`` (or of a seeded subset of its nodes).

    Parameters
    ----------
    graph : graphs.ActivationGraph with ``n`` nodes.
    max_nodes : graphs with more nodes are subsampled uniformly (seeded) to this many.
    seed : seed of the subsample.

    Returns
    -------
    ``(C, nodes)``: ``C`` float64 of shape (m, m), symmetric, zero diagonal, max 1 (all zeros for a
    single node); ``nodes`` int64 of shape (m,), the graph's node ids of its rows, sorted.
    """
    n = graph.num_nodes
    if n == 0:
        raise ValueError("the graph has no nodes; a level graph needs at least one node")
    if max_nodes < 2:
        raise ValueError(f"max_nodes={max_nodes} must be at least 2")
    nodes = np.arange(n) if n <= max_nodes else np.sort(np.random.default_rng(seed).choice(n, max_nodes, replace=False))
    dist = graph.hop_distances(nodes.tolist()).numpy()[:, nodes].astype(np.float64)
    finite = dist >= 0
    if not finite.all():
        dist[~finite] = dist[finite].max() + 1.0
    top = dist.max()
    # C-ordered float64, as a reader's own matrix would be: POT's non-convex solver follows rounding, and the
    # same values in Fortran order led it to another local optimum (0.0517 against 0.0496 on a digits level)
    return np.ascontiguousarray(dist / top if top > 0 else dist), nodes


def gromov_wasserstein(c1: np.ndarray, c2: np.ndarray, *, solver: str = "exact", epsilon: float = 0.01) -> dict:
    """GW distance and coupling between two distance matrices with uniform weights (POT).

    Parameters
    ----------
    c1 : array of shape (n, n); c2 : array of shape (m, m). Symmetric, non-negative.
    solver : ``"exact"`` (``ot.gromov.gromov_wasserstein``, conditional gradient) or ``"entropic"``
        (``ot.gromov.entropic_gromov_wasserstein`` with regularisation ``epsilon``).

    Returns
    -------
    dict with ``distance`` (float, ≥ 0, the square-loss GW value; exactly 0 when ``c1`` equals ``c2``),
    ``coupling`` (array (n, m), rows sum to 1/n, columns to 1/m), ``solver``, ``n``, ``m``.
    """
    import ot

    c1, c2 = np.asarray(c1, dtype=np.float64), np.asarray(c2, dtype=np.float64)
    for name, c in (("c1", c1), ("c2", c2)):
        if c.ndim != 2 or c.shape[0] != c.shape[1] or not np.isfinite(c).all():
            raise ValueError(f"{name} must be a finite square distance matrix, got shape {c.shape}")
    if solver not in GW_SOLVERS:
        raise ValueError(f"solver={solver!r} is not a GW solver; choose one of {', '.join(GW_SOLVERS)}")
    n, m = len(c1), len(c2)
    p, q = ot.unif(n), ot.unif(m)
    if c1.shape == c2.shape and np.array_equal(c1, c2):  # the identity coupling is optimal: GW = 0 exactly
        return {"distance": 0.0, "coupling": np.eye(n) / n, "solver": solver, "n": n, "m": m}
    if solver == "exact":
        coupling, log = ot.gromov.gromov_wasserstein(c1, c2, p, q, loss_fun="square_loss", log=True)
    else:
        coupling, log = ot.gromov.entropic_gromov_wasserstein(c1, c2, p, q, loss_fun="square_loss",
                                                              epsilon=epsilon, log=True)
    return {"distance": max(float(log["gw_dist"]), 0.0), "coupling": np.asarray(coupling), "solver": solver,
            "n": n, "m": m}


def block_coupling(coupling: np.ndarray, blocks_a: np.ndarray, blocks_b: np.ndarray) -> np.ndarray:
    """Aggregate a node coupling ``[n, m]`` into a block coupling ``[J_a, J_b]`` (sums over each block's nodes).

    ``blocks_a [n]`` / ``blocks_b [m]`` are the block ids of the coupled nodes; the result sums to 1.
    """
    ja, jb = int(blocks_a.max()) + 1, int(blocks_b.max()) + 1
    out = np.zeros((ja, jb))
    np.add.at(out, (blocks_a[:, None], blocks_b[None, :]), coupling)
    return out
