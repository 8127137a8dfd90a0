"""Balanced partition of a graph into connected blocks of about ``block_size`` nodes, kept whole at natural boundaries.

Multilevel heavy-edge agglomeration: clusters start as single nodes; each round,
every cluster proposes to the neighbouring cluster with the largest normalised
connection ``w(a, b) / (|a| |b|)`` among those it can merge with without passing
``block_size``, mutual proposals merge (a handshake matching, vectorised over all
clusters), and the cluster graph is contracted. A second phase continues *natural*
groups past ``block_size`` (to fewer than ``2 * block_size`` nodes): two clusters merge
there only if their connection is at least ``NATURAL_RATIO`` of the connection that
formed each of them (the same level of affinity) and the merged cluster's connection
to anything else is at most ``NATURAL_RATIO`` of it (a gap closes the group off); two
parts formed at a higher affinity than the one that joins them (a planted group of 5 cut
along its nuisance sub-groups, a triple and a pair) continue too where each is the other's
decisive partner (best connection elsewhere at most ``GROUP_GAP`` of theirs) and densely
linked (``GROUP_DENSITY`` of the node pairs across are edges: not two fragments of a lattice);
a cluster whose best partner is such a merge waits for it instead of pairing with a
weaker partner. Two single nodes do not pair across a gap either (``block_size >= 3``): a
lone node bound more tightly (by ``1 / NATURAL_RATIO``) to a cluster it cannot join waits
instead, and is absorbed at the end (see below). Planted groups of 5-7 with ``block_size=4``
are kept whole; on graphs without such gaps the blocks are those of the first phase. When no
pair fits any more, clusters smaller than ``block_size / 2`` are absorbed into their
best-connected neighbour. Given the edges' standard errors (``edge_stderr``), a natural merge
compares the two affinities within their noise (``CLOSING_Z`` standard errors on each side), and a cluster
closed off by a gap beyond its noise takes no more merges and is never absorbed, however
small: a binary tree's level-1 groups of two with ``block_size=4`` (the flow's level >= 1 partition closes a cluster
of at least half a block at any natural gap, a smaller one at a decisive gap, ``DECISIVE_GAP``, by default, and every
cluster at any natural gap with ``coarse_partition="loading-gaps"``).
Merges only follow edges, so every block is connected; blocks of a component smaller
than ``block_size`` (or an isolated node) stay whole and undersized.
Edge weights enter as ``max(w, 0)`` plus a tiny seeded jitter that breaks ties.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import torch

from estimators.validation import check_positive_int
from graphs.graph import ActivationGraph, check_affinities

__all__ = ["partition"]

log = logging.getLogger(__name__)

# a merge past block_size continues a natural group: affinity >= NATURAL_RATIO x the affinity that formed each part,
# and the union's affinity to anything else <= NATURAL_RATIO x the merge's. Planted trees have gaps of the parent-child
# coupling (0.6-0.8); 0.9 leaves room for sampling noise (~0.01 on a |corr| of 0.2 from 8 000 samples)
NATURAL_RATIO = 0.9
# with the affinities' standard errors (partition's edge_stderr), a cluster separated from everything else by more
# than a closing ratio (NATURAL_RATIO unless said) and CLOSING_Z standard errors on each side takes no more merges
CLOSING_Z = 2.0
# the flow's default level >= 1 partition closes clusters smaller than half a block off only at a decisive gap (its
# coarse_partition "loading"): best outside connection at most this fraction of the forming affinity, beyond the
# errors; clusters of at least half a block at NATURAL_RATIO. On the default MiniLM run's level 1 (1 321 variables,
# block_size 8): 172 blocks with no closing, 190 closing every cluster at this gap, 214 with half blocks at
# NATURAL_RATIO, 325 closing every cluster at NATURAL_RATIO; a binary planted tree's level-1 pairs (block_size 4)
# close at coupling 0.8 and 0.9 only by the half-block rule (gap c^2 = 0.64, 0.81; see docs/planted-hierarchy.md).
DECISIVE_GAP = 0.6
# a merge past block_size also continues a group at a lower affinity than formed its parts when the two parts are
# each other's decisive partners: neither has a connection elsewhere above this fraction of theirs. Sibling groups of a
# planted tree sit at ~c^2 of the within-group affinity (c the coupling: 0.64 at 0.8, 0.81 at 0.9); measured on 240
# held-out hierarchies (docs/planted-hierarchy.md)
GROUP_GAP = 0.75
# ... and densely linked: at least this fraction of the pairs of nodes across the two parts are edges of the graph (the
# planted groups' parts: ~1, the same blocks from 0 to 0.9 on all 240; two fragments of a lattice: a boundary, <= 0.5)
GROUP_DENSITY = 0.9


# _cluster_graph counts every pair of clusters in one array when there are at most this many pairs per edge, rather
# than sorting the edges' keys (np.unique)
DENSE_KEYS = 4


def _cluster_graph(src, dst, w, labels, num_clusters, var=None):
    """Sum edge weights between clusters: ``(a, b, weight, links, variance)``, one row per pair of clusters with an
    edge between them (a != b, each pair in both directions, sorted by ``a``), ``links`` the number of edges, and
    ``variance`` the summed ``var`` (per edge; None without)."""
    a, b = labels[src], labels[dst]
    cross = a != b
    key = a[cross] * num_clusters + b[cross]
    if num_clusters ** 2 <= DENSE_KEYS * max(key.size, 1):  # every pair's bin at once: no sort (same sums, same order)
        index, bins = key, num_clusters ** 2
        counts = np.bincount(index, minlength=bins)
        uniq = pick = np.flatnonzero(counts).astype(key.dtype, copy=False)  # the labels' dtype, as np.unique
        links = counts[uniq]
    else:
        uniq, index = np.unique(key, return_inverse=True)
        bins, pick = uniq.size, slice(None)
        links = np.bincount(index, minlength=bins)

    def summed(values):
        return np.bincount(index, weights=values, minlength=bins)[pick]

    variance = None if var is None else summed(var[cross])
    return uniq // num_clusters, uniq % num_clusters, summed(w[cross]), links, variance


class _Pairs(NamedTuple):
    """The candidate merges of one round: a row per ordered pair ``(a, b)`` of clusters joined by an edge."""

    a: np.ndarray  # [P] first cluster, sorted
    b: np.ndarray  # [P] second cluster
    score: np.ndarray  # [P] normalised connection w(a, b) / (|a| |b|)
    density: np.ndarray  # [P] fraction of the |a| |b| pairs of nodes across that are edges of the graph
    s_a: np.ndarray  # [P] best score of a to a cluster other than b (0 if none); s_b likewise: _elsewhere
    s_b: np.ndarray
    slack: np.ndarray  # [P] the noise a same-level test allows (_level_slack; 0 without standard errors)
    sizes: np.ndarray  # [C] nodes per cluster
    height: np.ndarray  # [C] the score of the merge that formed each cluster, inf for a single node


def _closed(a, score, score_se, height, height_se, ratio):
    """``[C]``: clusters closed off by a gap beyond their noise — even ``CLOSING_Z`` standard errors up, their best
    connection to any other cluster is at most ``ratio`` of the affinity that formed them, taken ``CLOSING_Z``
    standard errors down. Single nodes are never closed."""
    best = np.full(height.size, -np.inf)
    np.maximum.at(best, a, score + CLOSING_Z * score_se)
    return np.isfinite(height) & (best <= ratio * (height - CLOSING_Z * height_se))


def _level_slack(a, b, score_se, height, height_se):
    """``[pairs]``: how far a pair's score may sit below ``NATURAL_RATIO`` of the affinity that formed the
    tighter of its two clusters and still count as the same level — ``CLOSING_Z`` standard errors on each side
    (a weak pair of a planted group of 5, formed at 1.13 ± 0.11 by noise, kept the rest of its group at 0.97 out)."""
    formed = np.where(np.isinf(height), 0.0, height)
    tighter = np.where(formed[a] >= formed[b], a, b)
    return CLOSING_Z * (score_se + NATURAL_RATIO * height_se[tighter])


def _best_partner(a, b, score, num_clusters, value, ok):
    """For each cluster, the partner with the highest score among the candidate pairs (-1 if none), and
    ``value`` and ``ok`` of that pair (nan / False if none).

    ``a`` must be sorted (pairs grouped by their first cluster), as ``_cluster_graph`` returns them.
    """
    best = np.full(num_clusters, -1, dtype=np.int64)
    best_value, best_ok = np.full(num_clusters, np.nan), np.zeros(num_clusters, dtype=bool)
    if a.size == 0:
        return best, best_value, best_ok
    starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
    sizes = np.diff(np.r_[starts, a.size])
    is_max = np.flatnonzero(score == np.repeat(np.maximum.reduceat(score, starts), sizes))
    first = is_max[np.r_[True, a[is_max][1:] != a[is_max][:-1]]]
    best[a[first]] = b[first]
    best_value[a[first]], best_ok[a[first]] = value[first], ok[first]
    return best, best_value, best_ok


def _elsewhere(a, b, score, num_clusters):
    """For each pair row ``(a, b)``: ``(s_a, s_b)``, the best score of ``a`` to a cluster other than ``b`` and of
    ``b`` to one other than ``a`` (0 where there is none)."""
    first = np.full(num_clusters, 0.0)
    np.maximum.at(first, a, score)
    top = np.full(num_clusters, -1, dtype=np.int64)
    top[a[score == first[a]]] = b[score == first[a]]
    second = np.full(num_clusters, 0.0)
    np.maximum.at(second, a, np.where(b == top[a], 0.0, score))
    s_a = np.where(top[a] == b, second[a], first[a])
    s_b = np.where(top[b] == a, second[b], first[b])
    return s_a, s_b


def _no_lone_pair_across_a_gap(a, b, score, sizes, keep, num_clusters):
    """False for a pair of single nodes either of which is bound more tightly to a cluster it cannot merge with.

    ``keep`` marks the pairs that may merge; a lone node whose connection to an excluded partner exceeds the
    pair's ``score`` by more than ``1 / NATURAL_RATIO`` waits instead (the leftover of a planted group of 5 with
    ``block_size=4`` paired with another group's leftover at a third of the affinity; it is absorbed by its
    own group at the end — used only for ``block_size >= 3``, where a block of one is absorbed). Symmetric in
    the pair, so the strongest remaining pair is still a mutual best: each round merges it, or both wait.
    """
    blocked = np.zeros(num_clusters)
    np.maximum.at(blocked, a[~keep], score[~keep])
    lone = (sizes[a] == 1) & (sizes[b] == 1)
    return ~lone | (score >= NATURAL_RATIO * np.maximum(blocked[a], blocked[b]))


def _agglomerate(src, dst, w, labels, sizes, height, jitter, considered, allowed, lone_wait=False, noise=None):
    """Handshake agglomeration: each round, clusters that are each other's best partner merge.

    A cluster's best partner is taken among the pairs that ``considered(pairs: _Pairs) -> [P] bool`` marks. A
    cluster whose best partner is not ``allowed`` (the same) waits: it
    takes no further part in this phase. ``lone_wait``: two single nodes do not pair across a gap
    (:func:`_no_lone_pair_across_a_gap`). ``noise``: ``(edge variance [2E], height_se [C], closing ratio of clusters
    by size: sizes [C] -> ratio)`` — clusters closed off by a gap beyond their noise (:func:`_closed`) take no part.
    Returns ``(labels, sizes, height)`` once no allowed pair is left (and ``height_se`` with ``noise``).
    """
    num_clusters = sizes.size
    waiting = np.zeros(num_clusters, dtype=bool)
    var, height_se, ratio = noise if noise is not None else (None, None, None)
    while True:  # one contraction per round
        a, b, cw, links, cv = _cluster_graph(src, dst, w, labels, num_clusters, var)
        score = cw / (sizes[a] * sizes[b])
        slack = np.zeros(score.size)
        if noise is not None:
            score_se = np.sqrt(cv) / (sizes[a] * sizes[b])
            slack = _level_slack(a, b, score_se, height, height_se)
        pairs = _Pairs(a, b, score, links / (sizes[a] * sizes[b]), *_elsewhere(a, b, score, num_clusters), slack,
                       sizes, height)
        keep = considered(pairs) & ~waiting[a] & ~waiting[b]
        if noise is not None:
            closed = _closed(a, score, score_se, height, height_se, ratio(sizes))
            keep &= ~closed[a] & ~closed[b]
        if lone_wait:
            keep &= _no_lone_pair_across_a_gap(a, b, score, sizes, keep, num_clusters)
        ok = allowed(pairs)[keep]
        a, b, score = a[keep], b[keep], score[keep]
        if noise is not None:
            score_se = score_se[keep]
        if not ok.any():
            return (labels, sizes, height) if noise is None else (labels, sizes, height, height_se)
        u = jitter[:num_clusters]
        tie = score * (1.0 + 1e-7 * ((u[a] + u[b]) % 1.0))
        # merge only pairs that are each other's best partner among *all* candidates: a further handshake among
        # the still-free clusters (a maximal matching) paired leftovers across planted groups of 3, 5 or 6 units
        # (ARI 0.66-0.80 on experiments.tmr hierarchies, 1.0 with one handshake) for ~1.6x the contraction rounds
        best, best_score, best_ok = _best_partner(a, b, tie, num_clusters, score, ok)
        if noise is not None:
            best_se = _best_partner(a, b, tie, num_clusters, score_se, ok)[1]
        idx = np.nonzero(best >= 0)[0]
        waiting[idx[~best_ok[idx]]] = True
        idx = idx[best_ok[idx]]
        mutual = idx[best[best[idx]] == idx]
        merged = np.arange(num_clusters)
        merged[mutual] = np.minimum(mutual, best[mutual])
        new = np.unique(merged, return_inverse=True)[1]
        num_clusters = int(new.max()) + 1
        new_height = np.full(num_clusters, np.inf)
        np.minimum.at(new_height, new, height)
        new_height[new[mutual]] = best_score[mutual]
        if noise is not None:  # the standard error of the score that formed each cluster
            new_se = np.zeros(num_clusters)
            new_se[new] = height_se
            new_se[new[mutual]] = best_se[mutual]
            height_se = new_se
        new_waiting = np.zeros(num_clusters, dtype=bool)
        new_waiting[new[waiting]] = True
        labels, height, waiting = new[labels], new_height, new_waiting
        sizes = np.bincount(labels, minlength=num_clusters)


def _relabel(labels):
    """Renumber cluster labels 0..J-1 in order of each cluster's smallest node."""
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    new = np.empty(order.size, dtype=np.int64)
    new[order] = np.arange(order.size)
    lookup = np.full(labels.max() + 1, -1, dtype=np.int64)
    lookup[np.unique(labels)] = new
    return lookup[labels]


def partition(graph: ActivationGraph, block_size: int, seed: int = 0,
              edge_stderr: torch.Tensor | None = None, closing_ratio: float = NATURAL_RATIO,
              half_block_ratio: float | None = None) -> torch.Tensor:
    """Cut ``graph`` into connected blocks of about ``block_size`` nodes, keeping heavy edges inside.

    Parameters
    ----------
    graph : ActivationGraph
    block_size : int, 1 <= block_size <= num_nodes
        Target block size. Blocks pass it only to keep a natural group whole (fewer than
        2 × block_size nodes, see the module docstring), or when undersized leftovers are
        absorbed into a neighbour (typically up to 1.5 × block_size; a neighbour that absorbs many,
        such as a hub with many weakly linked leaves, grows further: the absorption has no cap).
    seed : int
        Seed of the tie-breaking jitter (same seed, same blocks).
    edge_stderr : Tensor ``[num_edges]``, optional
        The standard error of each edge weight (aligned with ``graph.edge_index``). Given, a natural merge past
        ``block_size`` needs its affinity at ``NATURAL_RATIO`` of the one that formed its parts only within
        ``CLOSING_Z`` standard errors on each side, and a cluster closed off by a
        gap beyond its noise takes no more merges, though smaller than ``block_size``, and is never absorbed: its
        best connection to any other cluster, ``CLOSING_Z`` standard errors up, is at most ``closing_ratio`` of the
        affinity that formed it, ``CLOSING_Z`` standard errors down (a binary tree's level-1 pairs with
        ``block_size=4``).
    closing_ratio : float in (0, 1], default ``NATURAL_RATIO``
        The gap that closes a cluster off when ``edge_stderr`` is given (:data:`DECISIVE_GAP` for the flow's
        default).
    half_block_ratio : float in (0, 1], optional
        The gap that closes a cluster of at least half a block (``ceil(block_size / 2)`` nodes) instead, when it is
        the shallower of the two (the flow's default: ``NATURAL_RATIO``; a group that fills half a block stays whole
        at the same gap that continues one past ``block_size``, smaller fragments only at a decisive gap).

    Returns
    -------
    LongTensor of shape (num_nodes,): block ids ``0..J-1``, numbered by each block's smallest node.
    See :func:`graphs.partition_quality.partition_report` for the size spread and the edge weight kept inside blocks.
    """
    if not isinstance(graph, ActivationGraph):
        raise ValueError(f"graph must be an ActivationGraph, got {type(graph).__name__}")
    n = graph.num_nodes
    if n == 0:
        raise ValueError("graph has no nodes; nothing to partition")
    block_size = check_positive_int(block_size, name="block_size", minimum=1)
    if block_size > n:
        raise ValueError(f"block_size={block_size} exceeds the graph's num_nodes={n}; choose block_size <= {n}")
    seed = check_positive_int(seed, name="seed", minimum=0)
    for name, value in (("closing_ratio", closing_ratio), ("half_block_ratio", half_block_ratio)):
        if value is not None and not 0.0 < value <= 1.0:
            raise ValueError(f"{name} must lie in (0, 1], got {value}")
    check_affinities(graph)
    labels = np.arange(n, dtype=np.int64)
    if block_size == 1:
        return torch.from_numpy(labels)
    ei = graph.edge_index.numpy()
    upper = ei[0] < ei[1]
    src, dst = ei[0, upper], ei[1, upper]
    w = np.clip(graph.edge_weight.numpy()[upper].astype(np.float64), 0.0, None)
    w = w + 1e-9 * (w.max() if w.size else 1.0) + 1e-12
    var = None
    if edge_stderr is not None:
        se = torch.as_tensor(edge_stderr, dtype=torch.float64)
        if se.shape != (graph.num_edges,) or not bool(torch.isfinite(se).all()) or bool((se < 0).any()):
            raise ValueError(f"edge_stderr must hold one finite, non-negative value per edge ({graph.num_edges}), got "
                             f"shape {tuple(se.shape)}")
        var = np.square(se.numpy()[upper])
        var = np.concatenate([var, var])
    rng = np.random.default_rng(seed)
    jitter = rng.random(n)
    src, dst, w = np.concatenate([src, dst]), np.concatenate([dst, src]), np.concatenate([w, w])
    sizes, height = np.ones(n, dtype=np.int64), np.full(n, np.inf)

    def fits(p: _Pairs):
        return p.sizes[p.a] + p.sizes[p.b] <= block_size

    def natural(p: _Pairs):
        """Past block_size: one group — at the affinity that formed both clusters (within ``slack``, the noise), or
        each the other's decisive, dense partner — closed off by a gap (the union's best connection elsewhere, at most
        ``(|a| s_a + |b| s_b) / (|a| + |b|)``, below ``NATURAL_RATIO`` of the merge's)."""
        a, b, score, sizes = p.a, p.b, p.score, p.sizes
        formed = np.where(np.isinf(p.height), 0.0, p.height)
        level = np.maximum(formed[a], formed[b])
        same_level = score + p.slack >= NATURAL_RATIO * level
        # a group of 5 cut along its nuisance sub-groups (a triple and a pair, each formed at the nuisance's affinity)
        decisive = (p.density >= GROUP_DENSITY) & (np.maximum(p.s_a, p.s_b) + p.slack <= GROUP_GAP * score)
        outside = (sizes[a] * p.s_a + sizes[b] * p.s_b) / (sizes[a] + sizes[b])
        return ((sizes[a] + sizes[b] < 2 * block_size) & (level > 0) & (same_level | decisive)
                & (outside <= NATURAL_RATIO * score))

    # a cluster whose best partner is a natural merge past block_size waits for it (phase 2) rather than
    # pairing with a weaker partner: the leftovers of two groups of 5 (block_size 4) paired across groups
    # a lone node that waits is absorbed at the end only where blocks of one are undersized (block_size >= 3)
    half_block = (block_size + 1) // 2

    def ratio(sizes):  # the closing gap of each cluster: a deeper one below half a block
        if half_block_ratio is None:
            return closing_ratio
        return np.where(sizes >= half_block, max(closing_ratio, half_block_ratio), closing_ratio)

    noise = None if var is None else (var, np.zeros(n), ratio)
    out = _agglomerate(src, dst, w, labels, sizes, height, jitter, lambda p: fits(p) | natural(p), fits,
                       lone_wait=block_size >= 3, noise=noise)
    noise = None if var is None else (var, out[3], ratio)
    out = _agglomerate(src, dst, w, *out[:3], jitter, natural, natural, noise=noise)
    labels, sizes, height = out[:3]
    whole = None
    if var is not None:  # a cluster closed off by a gap stays as it is
        a, b, cw, _, cv = _cluster_graph(src, dst, w, labels, sizes.size, var)
        norm = sizes[a] * sizes[b]
        whole = _closed(a, cw / norm, np.sqrt(cv) / norm, height, out[3], ratio(sizes))
    labels = _absorb_small(src, dst, w, labels, sizes, max(1, half_block), whole)
    return torch.from_numpy(_relabel(labels))


def _absorb_small(src, dst, w, labels, sizes, min_size, whole=None):
    """Merge every cluster smaller than ``min_size`` nodes (and not marked ``whole``) into its best-connected
    neighbouring cluster.

    Smallest clusters first; a cluster joins the neighbour (a set of clusters merged so far)
    with the largest ``weight / nodes``. Returns each node's set representative.
    """
    from scipy.cluster.hierarchy import DisjointSet

    num_clusters = sizes.size
    small = np.nonzero((sizes < min_size) & (True if whole is None else ~whole))[0]
    if small.size == 0:
        return labels
    a, b, cw, _, _ = _cluster_graph(src, dst, w, labels, num_clusters)
    order = np.argsort(a, kind="stable")
    a, b, cw = a[order], b[order], cw[order]
    ptr = np.searchsorted(a, np.arange(num_clusters + 1))
    merged = DisjointSet(range(num_clusters))
    nodes = sizes.astype(np.int64).copy()  # nodes in each set, kept at its representative
    for c in small[np.argsort(sizes[small], kind="stable")].tolist():
        root = merged[c]
        if nodes[root] >= min_size:
            continue
        nbrs = np.array([merged[x] for x in b[ptr[c] : ptr[c + 1]].tolist()], dtype=np.int64)
        keep = nbrs != root
        if not keep.any():
            continue  # an isolated small component stays a block of its own
        nbrs, weights = nbrs[keep], cw[ptr[c] : ptr[c + 1]][keep]
        target = int(nbrs[np.argmax(weights / nodes[nbrs])])
        total = nodes[root] + nodes[target]
        merged.merge(root, target)
        nodes[merged[root]] = total
    roots = np.array([merged[x] for x in range(num_clusters)], dtype=np.int64)
    return roots[labels]
