"""Pareto swaps and dissolutions: refine a partition where units are predicted better by other blocks' units.

Swaps exchange one or two units between adjacent blocks when no unit of either is predicted worse.

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
2-core CPU: 0.8 s for 1 024 units in blocks of 4, 4.8 s for 4 096 — 3.6-4.3 s and 14-16 s on planted trees at
coupling 0.9, whose blocks have more neighbours; 13 s for the tiny-lm config's 1 024 units in blocks of 8), so the
flow searches partitions of ``block_size <=`` :data:`MAX_SWAP_BLOCK_SIZE` only.

Swaps keep sizes, so they cannot undo a block of *leftovers*: at strong coupling (0.9) with nuisance triples
orthogonal to the signal, each group of 4 is a triple and one unit of pure signal, and the lone units of sibling
groups bind to one another more tightly than to their own triples (every link to a triple member carries its
nuisance): they form blocks of their own while their triples stay at 3 (issue 15, ``sample_tmr`` with branching
4-5, level-0 ARI 0.78-0.90). Given ``block_size``, a block is therefore also *dissolved* when each of its members,
placed in the block with room (fewer than ``block_size`` members) adjacent to it in the graph that predicts it
best, is predicted better there than in its block, no member of a receiving block worse, and the blocks' summed
``R²`` rises by more than :data:`SWAP_GAIN` (a Pareto dissolution; blocks of the lowest mean ``R²`` tried first).
Members are placed one at a time, weakest first and, separately, strongest first: at coupling 0.95 a unit under a
private nuisance is predicted no better by its own group's pair than by its sibling's pure unit, and better only
once its group's pure unit has joined the pair (``sample_tmr`` with contrast triples, level-0 ARI 0.64-0.90 ->
1.00); nor need the pair be its graph neighbour, hence the blocks adjacent to the *block*. No block grows past
``block_size``, so the gain of merging (adding predictors never lowers ``R²``) cannot run away.
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


def _placement(corr: torch.Tensor, order: list[int], old: dict, members: dict, near: set, block_size: int):
    """Each unit of ``order`` in turn placed into the block of ``near`` with room (counting the units placed before
    it) whose members predict it best, as ``{block: placed units}``; None as soon as a unit is predicted no better
    there than its ``old`` ``R²``."""
    added: dict[int, list[int]] = {}
    for u in order:
        room = [t for t in sorted(near) if len(members[t]) + len(added.get(t, ())) < block_size]
        r2 = [float(unit_r2(corr, torch.tensor([u] + members[t] + added.get(t, [])))[0]) for t in room]
        if not r2 or max(r2) <= old[u]:
            return None
        added.setdefault(room[max(range(len(r2)), key=r2.__getitem__)], []).append(u)
    return added


def _dissolution_gain(corr: torch.Tensor, added: dict, old: dict, members: dict) -> float | None:
    """Relative rise of the summed ``R²`` of the blocks involved (the dissolved one and the receivers) when
    ``added`` is made; None when a placed unit ends no better predicted than its ``old`` ``R²`` or a member of a
    receiving block ends worse (not Pareto)."""
    before, after = sum(old.values()), 0.0
    for t, extra in added.items():
        prev, new = unit_r2(corr, torch.tensor(members[t])), unit_r2(corr, torch.tensor(members[t] + extra))
        k = len(members[t])
        if bool((new[:k] < prev - 1e-9).any()) or any(new[k + i] <= old[u] for i, u in enumerate(extra)):
            return None
        before, after = before + float(prev.sum()), after + float(new.sum())
    return (after - before) / max(before, 1e-12)


def _best_dissolution(corr: torch.Tensor, s: int, members: dict, near: set, block_size: int, gain: float):
    """Block ``s``'s members placed into adjacent blocks with room (``{block: new member list}``) where each is
    predicted better than in ``s``, no member of a receiving block worse, and the summed ``R²`` of the blocks
    involved rises by more than ``gain`` (relative to it); None when there is no such placement. ``near``: the blocks
    other than ``s`` holding a graph neighbour of one of its members. Members are placed one at a time, each where
    it is predicted best, weakest first and strongest first (a weak unit may be predicted better only once a
    stronger unit of its group has joined it): the Pareto placement of the larger gain."""
    old = dict(zip(members[s], unit_r2(corr, torch.tensor(members[s])).tolist()))
    weakest_first = sorted(members[s], key=old.get)
    orders = (weakest_first, weakest_first[::-1]) if len(weakest_first) > 1 else (weakest_first,)
    best, best_rise = None, gain
    for order in orders:
        added = _placement(corr, order, old, members, near, block_size)
        rise = None if added is None else _dissolution_gain(corr, added, old, members)
        if rise is not None and rise > best_rise:
            best, best_rise = added, rise
    return None if best is None else {t: members[t] + extra for t, extra in best.items()}


def _swap_sweep(corr: torch.Tensor, members: dict, out: torch.Tensor, graph: ActivationGraph, gain: float) -> int:
    """One pass of Pareto swaps over every pair of blocks joined by an edge; returns how many were made."""
    src, dst = graph.edge_index
    pairs = sorted({(min(i, j), max(i, j)) for i, j in zip(out[src].tolist(), out[dst].tolist()) if i != j})
    made = 0
    for ja, jb in pairs:
        swap = _best_swap(corr, members[ja], members[jb], gain)
        if swap is not None:
            members[ja], members[jb] = sorted(swap[0]), sorted(swap[1])
            out[swap[0]], out[swap[1]] = ja, jb
            made += 1
    return made


def _dissolve_sweep(corr: torch.Tensor, members: dict, out: torch.Tensor, neighbours: tuple[torch.Tensor, ...],
                    block_size: int, gain: float) -> int:
    """One pass of dissolutions (:func:`_best_dissolution`), blocks of the lowest mean ``R²`` first; returns how
    many blocks were dissolved."""
    mean_r2 = {j: float(unit_r2(corr, torch.tensor(m)).mean()) for j, m in members.items()}
    gone = 0
    for s in sorted(members, key=mean_r2.get):
        near = set(out[torch.cat([neighbours[u] for u in members[s]])].tolist()) - {s}
        placed = _best_dissolution(corr, s, members, near, block_size, gain)
        if placed is None:
            continue
        for t, new in placed.items():
            members[t] = sorted(new)
            out[new] = t
        del members[s]
        gone += 1
    return gone


def pareto_swaps(x: torch.Tensor, blocks: torch.Tensor, graph: ActivationGraph, *, gain: float = SWAP_GAIN,
                 block_size: int | None = None) -> torch.Tensor:
    """``blocks [U]`` (a partition of ``graph``'s nodes) after Pareto swaps judged on the samples ``x [n, U]`` and,
    given ``block_size``, Pareto dissolutions into blocks of fewer members (see the module docstring); labels
    ``0..J-1``. Above :data:`MAX_SWAP_NODES` units the partition is returned as it is (logged)."""
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
    neighbours = graph.edge_index[1].split(graph.degree().tolist())  # each node's, as graph.neighbors gives them
    swaps = gone = 0
    for _ in range(_SWEEPS):
        made = _swap_sweep(corr, members, out, graph, gain)
        dissolved = _dissolve_sweep(corr, members, out, neighbours, block_size, gain) if block_size else 0
        swaps, gone = swaps + made, gone + dissolved
        if not made and not dissolved:
            break
    if swaps or gone:
        log.info("partition: %d Pareto swap(s) between adjacent blocks, %d block(s) dissolved", swaps, gone)
    return torch.unique(out, return_inverse=True)[1] if gone else out
