"""Scale-free affinities for partitioning coarse variables: ``|corr(i, j)| / (r_i r_j)`` over every pair.

A coarse variable reads its group's latent with a loading ``r_i`` (its |corr| with it); in a one-factor picture
``|corr(i, j)| = r_i r_j ρ(g_i, g_j)``, so dividing by the loadings leaves ``ρ``: 1 inside a group, the groups'
own correlation across. Raw |corr| instead ranks two strong variables of *different* groups above a weak variable
and its own group (issue 15: branching-3 trees at coupling 0.85, level-1 ARI 0.44). Each loading comes from triads:
``|c_ij| |c_ik| / |c_jk|`` is ``r_i²`` when ``j`` or ``k`` shares ``i``'s group and at most ``r_i²`` otherwise (in a
tree ``|c_ij| |c_ik| <= |c_jk|``, the triangle inequality of ``-log |c|``), so ``r_i²`` is the largest, over ``i``'s
:data:`PARTNERS` strongest partners ``j``, of the median over its :data:`OTHERS` strongest partners ``k`` — robust
where one group reads its latent far better than the rest and a weak variable's two strongest partners both lie in
that group (a triad of the two strongest alone then read r² 0.08–0.09 for 0.23–0.30: docs/planted-hierarchy.md, "The
issue's own generator at other settings").

Every pair, not a top-k graph: in a top-k graph two weak members of one group miss each other's lists, and the
missing edges count as 0 in the partition's average linkage (measured: a group of 5 split at level 1). So a block
is connected in this graph but not always in the top-k graph its regions are then built on (the default MiniLM run's
level 1: 24 of 172 blocks in two or more pieces there; regions measure hops from every member, so they still form).
"""

from __future__ import annotations

import logging

import torch

from graphs.graph import ActivationGraph
from graphs.moments import StreamingMoments

log = logging.getLogger(__name__)

__all__ = ["MAX_LOADING_NODES", "OTHERS", "PARTNERS", "loading_graph", "triad_loadings"]

# every pair: 8.4 M edges at this size; with the partition on them 29 s and 3.5 GB peak (2-core CPU, 2 000 rows)
MAX_LOADING_NODES = 4096


# a loading is read through each of a variable's PARTNERS strongest partners j, as the median over its OTHERS strongest
# partners k of |c_ij| |c_ik| / |c_jk|, and is the largest of those
PARTNERS, OTHERS = 8, 32


def triad_loadings(corr: torch.Tensor) -> torch.Tensor:
    """Loadings ``[U]`` in ``(0, 1]`` from an absolute correlation matrix ``[U, U]`` (diagonal ignored; U >= 3)."""
    u = corr.shape[0]
    top = corr.clone().fill_diagonal_(-1.0).topk(min(OTHERS, u - 1), dim=1)  # each variable's strongest partners
    k, c_ik = top.indices, top.values  # [U, M]
    j, c_ij = k[:, :PARTNERS], c_ik[:, :PARTNERS]  # [U, m]
    triads = c_ij.unsqueeze(2) * c_ik.unsqueeze(1) / corr[j.unsqueeze(2), k.unsqueeze(1)].clamp_min(1e-12)
    triads = triads.masked_fill(j.unsqueeze(2) == k.unsqueeze(1), float("nan"))  # [U, m, M]; k = j is no triad
    r2 = triads.nanmedian(dim=2).values.nan_to_num(0.0).amax(dim=1)
    return r2.clamp(1e-6, 1.0).sqrt()


def loading_graph(x: torch.Tensor, names: list[str], fallback: ActivationGraph | None = None, *,
                  with_stderr: bool = False):
    """The complete graph of ``|corr| / (r_i r_j)`` of the samples ``x [n, U]`` (U >= 3 non-constant columns).
    Above :data:`MAX_LOADING_NODES` variables: ``fallback`` (logged), or an error when there is none.
    ``with_stderr``: ``(graph, edge_stderr [num_edges])``, each weight's standard error from its correlation's,
    ``(1 - c²) / √n`` (the loadings' own error left out); None for the fallback."""
    u = x.shape[1]
    if u < 3:
        raise ValueError(f"loading affinities need at least 3 variables (two partners each), got {u}")
    if u > MAX_LOADING_NODES and fallback is not None:
        log.info("%d variables, more than %d: partitioned on the top-k |corr| graph", u, MAX_LOADING_NODES)
        return (fallback, None) if with_stderr else fallback
    if u > MAX_LOADING_NODES:
        raise ValueError(f"{u} variables: loading affinities take every pair, at most {MAX_LOADING_NODES}; "
                         "partition the top-k |corr| graph instead (coarse_partition='corr')")
    moments = StreamingMoments(u, gram=True, max_gram_units=MAX_LOADING_NODES).update(x)
    corr = moments.correlation().abs().nan_to_num(0.0)  # a constant column correlates with nothing
    r = triad_loadings(corr)
    src, dst = torch.triu_indices(u, u, 1)
    weight = corr[src, dst] / (r[src] * r[dst])
    graph = ActivationGraph(names, torch.stack([src, dst]), weight.float(), metadata={"metric": "loading"})
    if not with_stderr:
        return graph
    c = corr[graph.edge_index[0], graph.edge_index[1]]
    relative = (1 - c.square()).clamp_min(0.0) / (c.clamp_min(1e-6) * x.shape[0] ** 0.5)  # |corr| may round past 1
    return graph, (graph.edge_weight.double() * relative).float()
