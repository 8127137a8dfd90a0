"""RG-flow diagnostics of one level: correlation length, locality preservation, sizes.

``correlation_length`` fits the decay of the mean |connected correlation| with hop distance,
``|C(r)| ≈ A exp(-r/ξ)``; ``locality_preservation`` measures how many of the coarse level's
strongest co-occurrence edges join blocks that touch at the level below.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from estimators.validation import check_positive_int, check_samples

__all__ = ["correlation_length", "graph_sizes", "locality_preservation"]


def _source_correlations(x: torch.Tensor, src: torch.Tensor, chunk_elements: int = 2**22):
    """``(|corr| [S, U] as numpy, std [U])``: Pearson correlations of the ``src`` units with every unit.

    Two passes over row chunks in float64 (mean, then deviations), so memory stays at one chunk and
    the ``[S, U]`` result whatever the number of samples.
    """
    n, u = x.shape
    rows = max(1, chunk_elements // u)
    mean = sum(x[a:a + rows].double().sum(0) for a in range(0, n, rows)) / n
    sq = torch.zeros(u, dtype=torch.float64)
    cross = torch.zeros(src.numel(), u, dtype=torch.float64)
    for a in range(0, n, rows):
        d = x[a:a + rows].double() - mean
        sq += (d * d).sum(0)
        cross += d[:, src].T @ d
    std = (sq / n).sqrt()
    safe = torch.where(std > 1e-12, std, torch.ones_like(std))
    corr = (cross / n / safe[src][:, None] / safe[None, :]).abs().numpy()
    return corr, std


def correlation_length(x, graph, max_hops: int | None = None, *, n_sources: int = 256, seed: int = 0,
                       noise_factor: float = 3.0, fit_max: int | None = None) -> dict:
    """Correlation length ξ (in hops of ``graph``) from the decay of |connected correlation|.

    For ``n_sources`` source nodes (all nodes when fewer; otherwise a seeded random choice, so the
    cost is ``O(n_sources · U)``, never ``U × U``) the Pearson correlations with every node are
    averaged in absolute value per hop distance r, giving ``C(r)``. Sampling noise adds a floor
    ``E|ρ̂| = sqrt(2 / (π N))`` for uncorrelated pairs; it is removed in quadrature,
    ``C'(r) = sqrt(C(r)² - floor²)``. The fit range is ``r = 1 .. r_max`` (r = 0 is the variance,
    not a correlation), ``r_max`` the last distance before ``C(r)`` first drops below
    ``noise_factor × floor``, and at most ``fit_max`` (default: half the largest distance seen — beyond
    it a finite or periodic graph's boundary and wrap-around images flatten ``C(r)``; on an L×L torus
    this is L/2); ``log C'(r) = log A - r/ξ`` is fitted by least squares over it.

    Parameters
    ----------
    x : Tensor of shape (n_samples, n_units)
    graph : ActivationGraph on the same units.
    max_hops : largest distance considered (default: no limit).
    n_sources, seed : number of source nodes and the seed choosing them.
    noise_factor : how far above the noise floor a point must lie to enter the fit.
    fit_max : the largest distance fitted (default ``max(2, largest distance // 2)``).

    Returns
    -------
    dict with ``xi`` (hops; finite), ``amplitude``, ``fit_range`` ([r_min, r_max]), ``r2`` (fit quality
    of the log-linear fit, 1 = perfect; None for a two-point fit, which is always exact), ``status``
    ("fit" with three or more points; "two_point"; "one_point" when only r = 1 is above the
    floor, ξ = -1/log C'(1) assuming A = 1; "below_noise" when nothing is, ξ is then the upper bound
    from the floor), ``r``/``c``/``counts`` (the curve), ``noise_floor``, ``n_sources``.
    """
    x = check_samples(x, name="x", min_samples=3, allow_constant=True)
    n, u = x.shape
    if graph.num_nodes != u:
        raise ValueError(f"x has {u} units but the graph has {graph.num_nodes} nodes; pass samples of the graph's units")
    n_sources = check_positive_int(n_sources, name="n_sources")
    if max_hops is not None:
        max_hops = check_positive_int(max_hops, name="max_hops")
    if u > n_sources:
        src = np.sort(np.random.default_rng(seed).choice(u, size=n_sources, replace=False))
    else:
        src = np.arange(u)
    corr, std = _source_correlations(x, torch.from_numpy(src))
    corr[std.numpy()[None, :].repeat(len(src), 0) <= 1e-12] = 0.0
    dist = graph.hop_distances(src.tolist(), max_hops=max_hops).numpy()
    r_max_seen = int(dist.max()) if dist.size else 0
    valid = dist >= 1
    counts = np.bincount(dist[valid], minlength=r_max_seen + 1)
    sums = np.bincount(dist[valid], weights=corr[valid], minlength=r_max_seen + 1)
    rs = np.nonzero(counts)[0]
    rs = rs[rs >= 1]
    curve = sums[rs] / counts[rs]
    floor = math.sqrt(2.0 / (math.pi * n))
    fit_max = max(2, r_max_seen // 2) if fit_max is None else check_positive_int(fit_max, name="fit_max")
    above = (curve > noise_factor * floor) & (rs <= fit_max)
    stop = int(np.argmin(above)) if not above.all() else len(above)
    fit_r, fit_c = rs[:stop], curve[:stop]
    corrected = np.sqrt(np.clip(fit_c**2 - floor**2, 1e-300, None))
    out = {"r": rs.tolist(), "c": curve.tolist(), "counts": counts[rs].tolist(), "noise_floor": floor,
           "n_sources": len(src), "noise_factor": noise_factor}
    if len(fit_r) >= 2:
        slope, intercept = np.polyfit(fit_r.astype(float), np.log(corrected), 1)
        pred = intercept + slope * fit_r
        resid = np.log(corrected) - pred
        total = np.log(corrected) - np.log(corrected).mean()
        # two points always fit exactly: R² then says nothing and is reported as None
        r2 = 1.0 - float((resid**2).sum() / max((total**2).sum(), 1e-300)) if len(fit_r) >= 3 else None
        xi = -1.0 / slope if slope < 0 else math.inf
        status = "fit" if len(fit_r) >= 3 else "two_point"
        if not math.isfinite(xi):  # no decay inside the fit range: bounded below by its extent
            xi, status = float(fit_r[-1]), "no_decay"
        out.update(xi=float(xi), amplitude=float(math.exp(intercept)), fit_range=[int(fit_r[0]), int(fit_r[-1])],
                   r2=r2, status=status)
    elif len(fit_r) == 1:
        c1 = float(min(corrected[0], 1.0 - 1e-9))
        out.update(xi=-1.0 / math.log(c1), amplitude=1.0, fit_range=[1, 1], r2=None, status="one_point")
    else:
        level = min(noise_factor * floor, 1.0 - 1e-9)
        out.update(xi=-1.0 / math.log(level), amplitude=1.0, fit_range=[0, 0], r2=0.0, status="below_noise")
    return out


def locality_preservation(next_graph, blocks, graph, top_fraction: float = 0.1, *, hidden: int = 1,
                          node_blocks=None) -> dict:
    """Fraction of the coarse level's strongest edges that join blocks touching at the level below.

    Node ``n`` of ``next_graph`` is component ``n % hidden`` of block ``n // hidden`` of ``blocks``
    (the partition of ``graph``), unless ``node_blocks`` (LongTensor ``[next_graph.num_nodes]``) gives
    each coarse node's block explicitly (e.g. when constant coarse units were left out).
    The strongest ``ceil(top_fraction · E)`` undirected edges of
    ``next_graph`` (by weight) are examined; an edge is *local* when its two blocks are the same
    block or are joined by at least one edge of ``graph``. 1 = perfectly local.

    Returns
    -------
    dict with ``locality`` (fraction in [0, 1]), ``chance`` (the fraction of all coarse node pairs
    that are local: what a graph ignorant of space would score), ``n_edges`` (edges examined),
    ``top_fraction``.
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction={top_fraction} must be in (0, 1]; e.g. 0.1")
    hidden = check_positive_int(hidden, name="hidden")
    b = torch.as_tensor(blocks, dtype=torch.long).reshape(-1)
    if b.numel() != graph.num_nodes:
        raise ValueError(f"blocks has {b.numel()} entries but the graph has {graph.num_nodes} nodes")
    n_blocks = int(b.max()) + 1
    if node_blocks is None:
        if next_graph.num_nodes != n_blocks * hidden:
            raise ValueError(f"next_graph has {next_graph.num_nodes} nodes but {n_blocks} blocks × hidden={hidden} "
                             f"= {n_blocks * hidden} were expected; pass node_blocks")
        node_blocks = torch.arange(next_graph.num_nodes) // hidden
    node_blocks = torch.as_tensor(node_blocks, dtype=torch.long).reshape(-1)
    if node_blocks.numel() != next_graph.num_nodes:
        raise ValueError(f"node_blocks has {node_blocks.numel()} entries for {next_graph.num_nodes} coarse nodes")
    src, dst = graph.edge_index
    cross = b[src] != b[dst]
    adj_keys = torch.unique(b[src][cross] * n_blocks + b[dst][cross])  # touching block pairs, both directions
    ei, w = next_graph.edge_index, next_graph.edge_weight
    upper = ei[0] < ei[1]
    a, c, w = ei[0, upper], ei[1, upper], w[upper]
    n_coarse = next_graph.num_nodes
    per_block = torch.bincount(node_blocks, minlength=n_blocks).double()
    same_pairs = float((per_block * (per_block - 1) / 2).sum())
    ka, kb = adj_keys // n_blocks, adj_keys % n_blocks
    adjacent_pairs = float((per_block[ka] * per_block[kb]).sum()) / 2  # adj_keys holds both directions
    total_pairs = n_coarse * (n_coarse - 1) / 2
    chance = (same_pairs + adjacent_pairs) / max(total_pairs, 1)
    if a.numel() == 0:
        return {"locality": float("nan"), "chance": chance, "n_edges": 0, "top_fraction": top_fraction}
    m = max(1, math.ceil(top_fraction * a.numel()))
    top = torch.argsort(w, descending=True, stable=True)[:m]
    ba, bc = node_blocks[a[top]], node_blocks[c[top]]
    local = (ba == bc) | torch.isin(ba * n_blocks + bc, adj_keys)
    return {"locality": float(local.float().mean()), "chance": float(chance), "n_edges": int(m),
            "top_fraction": top_fraction}


def graph_sizes(graph) -> dict:
    """``{"num_nodes", "num_edges"}`` with undirected edges counted once."""
    return {"num_nodes": int(graph.num_nodes), "num_edges": int(graph.num_edges) // 2}
