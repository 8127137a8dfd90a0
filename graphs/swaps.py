"""Pareto swaps: exchange one or two units between adjacent blocks when no unit of either is predicted worse.

The partition's average linkage ranks pairs by raw |corr|. Where a nuisance shared by a pair of units is weak
enough to cancel part of their common signal (random signs), pair affinities spread widely and a strong unit of
a sibling group can outrank a weak unit of its own: two sibling groups' pairs then share blocks (issue 15, weak
nuisance: level-0 ARI 0.84). A block's units are better judged by how well their block-mates predict them,
``R²(u | block − u)`` (a regression over the mates removes the nuisance they share); swapping such mixed halves
raises it for every unit involved. So after the partition, for every pair of blocks joined by a graph edge, the
exchange of ``k = 1`` or ``2`` units each way that raises the two blocks' summed ``R²`` most is made when it raises
it by more than :data:`SWAP_GAIN` and lowers no unit's ``R²`` (a Pareto swap; sweeps until none is left). Sizes are
kept. Measured on the partition alone (44 planted constructions, ``experiments.tmr_heldout``'s generator): three
swaps in all, every one a repair (weak nuisance: spin c 0.8 and family c 0.6 0.84 -> 1.00, family c 0.8 0.57 ->
0.69), no other partition changed; without the Pareto condition the summed ``R²`` alone broke strongly coupled
trees (spin b6 pairs c 0.9 0.92 -> 0.56). Needs every pair's correlation: up to :data:`MAX_SWAP_NODES` units. The
exchanges searched per pair of blocks grow as ``(b + b(b-1)/2)²`` with their size ``b``: 100 at 4, 1 296 at 8 (the
2-core CPU: 0.8 s for 1 024 units in blocks of 4, 4.8 s for 4 096; 13 s for the tiny-lm config's 1 024 units in
blocks of 8), so the flow searches partitions of ``block_size <=`` :data:`MAX_SWAP_BLOCK_SIZE` only.
"""

from __future__ import annotations

import itertools
import logging

import torch

from graphs.graph import ActivationGraph
from graphs.moments import StreamingMoments

log = logging.getLogger(__name__)

__all__ = ["MAX_SWAP_BLOCK_SIZE", "MAX_SWAP_NODES", "SWAP_GAIN", "pareto_swaps", "unit_r2"]

MAX_SWAP_NODES = 4096  # the correlation matrix of every pair (as graphs.loadings.MAX_LOADING_NODES)
MAX_SWAP_BLOCK_SIZE = 4  # the largest block_size whose partitions the flow refines (see the module docstring)
SWAP_GAIN = 0.02  # relative rise of the two blocks' summed R² a swap must bring
_SWEEPS = 5


def unit_r2(corr: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """``R²`` of each member on the others, ``[..., m]``, for index sets ``members [..., m]`` into the correlation
    matrix ``corr [U, U]``: ``1 - 1 / (C⁻¹)_uu`` (0 for a block of one)."""
    if members.shape[-1] < 2:
        return torch.zeros(members.shape, dtype=corr.dtype)
    sub = corr[members.unsqueeze(-1), members.unsqueeze(-2)]
    eye = torch.eye(members.shape[-1], dtype=corr.dtype)
    inverse = torch.linalg.inv(sub + 1e-9 * eye)
    return 1.0 - 1.0 / inverse.diagonal(dim1=-2, dim2=-1)


def _best_swap(corr: torch.Tensor, a: list[int], b: list[int], gain: float):
    """The Pareto swap between blocks ``a`` and ``b`` with the largest summed gain above ``gain``, as the new
    ``(a, b)`` member lists; None when there is none."""
    old_a, old_b = unit_r2(corr, torch.tensor(a)), unit_r2(corr, torch.tensor(b))
    old = dict(zip(a + b, torch.cat([old_a, old_b]).tolist()))
    base = sum(old.values())
    best, best_gain = None, gain * max(base, 1e-12)
    for k in (1, 2):
        if k > min(len(a), len(b)):
            break
        out_a, out_b = list(itertools.combinations(a, k)), list(itertools.combinations(b, k))
        new_a = [[u for u in a if u not in sa] + list(sb) for sa in out_a for sb in out_b]
        new_b = [[u for u in b if u not in sb] + list(sa) for sa in out_a for sb in out_b]
        r_a, r_b = unit_r2(corr, torch.tensor(new_a)), unit_r2(corr, torch.tensor(new_b))
        before = torch.tensor([[old[u] for u in row_a + row_b] for row_a, row_b in zip(new_a, new_b)])
        after = torch.cat([r_a, r_b], dim=1)
        total = after.sum(1) - base
        ok = (after >= before).all(1) & (total > best_gain)
        if bool(ok.any()):
            i = int(torch.where(ok, total, -torch.inf).argmax())
            best, best_gain = (new_a[i], new_b[i]), float(total[i])
    return best


def pareto_swaps(x: torch.Tensor, blocks: torch.Tensor, graph: ActivationGraph, *, gain: float = SWAP_GAIN
                 ) -> torch.Tensor:
    """``blocks [U]`` (a partition of ``graph``'s nodes) after Pareto swaps judged on the samples ``x [n, U]`` (see
    the module docstring). Above :data:`MAX_SWAP_NODES` units the partition is returned as it is (logged)."""
    u = x.shape[1]
    if u != graph.num_nodes or blocks.shape != (u,):
        raise ValueError(f"x has {u} units, the graph {graph.num_nodes} nodes and blocks {tuple(blocks.shape)}; "
                         "they must describe the same units")
    if u > MAX_SWAP_NODES:
        log.info("%d units, more than %d: no Pareto swaps after the partition", u, MAX_SWAP_NODES)
        return blocks
    corr = StreamingMoments(u, gram=True, max_gram_units=MAX_SWAP_NODES).update(x).correlation().nan_to_num(0.0)
    out = blocks.clone()
    members = {int(j): torch.nonzero(out == j).flatten().tolist() for j in out.unique()}
    src, dst = graph.edge_index
    pairs = sorted({(min(i, j), max(i, j)) for i, j in zip(out[src].tolist(), out[dst].tolist()) if i != j})
    swaps = 0
    for _ in range(_SWEEPS):
        made = 0
        for ja, jb in pairs:
            swap = _best_swap(corr, members[ja], members[jb], gain)
            if swap is not None:
                members[ja], members[jb] = sorted(swap[0]), sorted(swap[1])
                out[swap[0]], out[swap[1]] = ja, jb
                made += 1
        swaps += made
        if not made:
            break
    if swaps:
        log.info("partition: %d Pareto swap(s) between adjacent blocks", swaps)
    return out
