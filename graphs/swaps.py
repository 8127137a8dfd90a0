"""Pareto swaps and dissolutions: refine a partition where units are predicted better by other blocks' units, and
blocks' halves share more information with another block's.

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

Unit swaps cannot repair two blocks that each hold one nuisance pair of two sibling groups (a strong nuisance on
pairs, siblings close: family latents at coupling 0.8): a unit's ``R²`` is its nuisance partner's, the signal it
would gain from its own group's pair is a fraction of a percent of it, and sampling noise costs some unit as much.
The information two halves of a block share is what tells them apart: each pair's own nuisance cancels in the best
combination of its two units. So a block of 4 to :data:`MAX_CUT_UNITS` units is read as two *parts*, its weakest
cut (of its splits in two, the one whose parts share the least information: between a group's nuisance sub-groups,
or between two groups), and two adjacent blocks exchange parts of one size when the Gaussian mutual information between each
block's two parts, ``I(P; Q) = ½ (log det C_P + log det C_Q − log det C_{P∪Q})``, rises in both blocks and in sum
by more than :data:`SWAP_GAIN` of it (a Pareto part swap; sweeps after the unit swaps and dissolutions). Measured
on the partition alone (288 planted constructions of ``experiments.tmr_heldout``: branching 3-6, spin / family,
pairs / triples, coupling 0.6 / 0.8 / 0.9, nuisance strength 0-3): ARI >= 0.9 in 201 against 190 (seed 0; 76
partitions better, 1 worse, already failing: 0.38 -> 0.37) and 205 against 191 (seed 1; 62 better, 2 worse, both
failing: 0.33 -> 0.30, 0.28 -> 0.26). Parts cut at the block's most correlated pair instead: 195 and 194.

The Pareto test is per block, and MI is convex in the canonical correlation: with unequal loadings two strong pairs
of sibling groups share more than a strong and a weak pair of one group, and the test refuses the repair. A part
swap it refuses is made on the *tetrad* test instead (:mod:`graphs.tetrads`: in ``log ρ_a + log ρ_b``, each block's
parts' first canonical correlation, the loadings cancel, and two blocks each mixing two sibling groups lose to the
own-group arrangement by ``−2 log`` of the siblings' latent correlation). Measured (the same 288): 206 against 201
(seed 0; 27 better, none worse) and 210 against 205 (seed 1; 32 better, 2 worse, both failing: 0.296 -> 0.287,
0.464 -> 0.460); the tetrad test in place of the MI test: 205 (21 better, 24 worse, 21 of those family latents at
coupling 0.9, whose siblings' latent correlation 0.97 leaves the tetrad a margin, −2 log 0.97 = 0.06, within its
noise).

``R²`` has the same fault at the scale of units: it follows how well the block-mates read their latent (a lone unit
is predicted better by a sibling group's cleanly read triple than by its own triple whose nuisance follows the
signal). And the part swaps see only a block's weakest cut, which need not run between two mixed groups: where a
nuisance about as strong as the signal ties a triple split across two blocks, their 2 + 2 mixes stay. So in the unit
sweeps an exchange of one or two units that no Pareto swap makes is made on the tetrad test
(:func:`graphs.tetrads.tetrad_exchange`: each moved part against the rest of its old and of its new block). Measured
(the same 288, after the tetrad part swaps): 221 against 206 (seed 0; 60 better, 2 worse, both failing at coupling
0.9: family 0.588 -> 0.545, spin 0.825 -> 0.811) and 220 against 210 (seed 1; 58 better, 3 worse, all failing,
family at coupling 0.9); at nuisance strength 1, 27 of 48 against 18 and 22. A sweep searches a pair of blocks again
only once one of them has changed.

Every exchange keeps sizes; given ``block_size``, each sweep of part swaps is followed by a sweep of *departures*
(:mod:`graphs.departures`): a unit or part moves, or a small block merges, into an adjacent block past
``block_size`` when tetrads against staying say it reads that block's latent (planted groups of unequal sizes).
"""

from __future__ import annotations

import functools
import itertools
import logging

import numpy as np
import torch

from graphs.departures import Reads, absorb_leftovers, adjacent_blocks, departure_sweep
from graphs.graph import ActivationGraph
from graphs.moments import StreamingMoments
from graphs.tetrads import canonical_corrs, first_canonical_corr, tetrad_exchange, tetrad_rises

log = logging.getLogger(__name__)

__all__ = ["MAX_CUT_UNITS", "MAX_SWAP_BLOCK_SIZE", "MAX_SWAP_NODES", "SWAP_GAIN", "cross_part_mi", "pareto_swaps",
           "unit_r2"]

MAX_SWAP_NODES = 4096  # the correlation matrix of every pair (as graphs.loadings.MAX_LOADING_NODES)
MAX_SWAP_BLOCK_SIZE = 4  # the largest block_size whose partitions the flow refines (see the module docstring)
SWAP_GAIN = 0.02  # relative rise of the two blocks' summed R² a swap must bring
# the largest block read as two parts (its 2^(b-1) - 1 splits searched: 127 at 8): past the flow's blocks of up to
# 2 * MAX_SWAP_BLOCK_SIZE - 1 units (natural merges), larger ones take no part swaps
MAX_CUT_UNITS = 8
_PART_UNITS = 4  # the smallest block a part swap reads as two parts (departures read blocks of 2 and 3 too)
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


def _unit_exchange(corr: torch.Tensor, a: list[int], b: list[int], gain: float, rows: int):
    """The Pareto swap of units between blocks ``a`` and ``b`` (:func:`_best_swap`) or else the exchange of one or two
    units that passes the tetrad test (:func:`graphs.tetrads.tetrad_exchange`; ``rows``: the samples behind
    ``corr``), as the new ``(a, b)`` member lists; None when there is neither."""
    return _best_swap(corr, a, b, gain) or tetrad_exchange(corr, a, b, rows)


def _logdets(corr: torch.Tensor, sets: list[list[int]]) -> list[float]:
    """``log det`` of the correlation matrix of each index set (all of one size), in float64: one batched call."""
    idx = torch.tensor(sets)
    sub = corr[idx.unsqueeze(-1), idx.unsqueeze(-2)].double()
    return torch.linalg.slogdet(sub + 1e-9 * torch.eye(idx.shape[1], dtype=sub.dtype))[1].tolist()


def cross_part_mi(corr: torch.Tensor, p: list[int], q: list[int]) -> float:
    """Gaussian mutual information (nats) between the units ``p`` and ``q`` (disjoint) of the correlation matrix
    ``corr [U, U]``: ``½ (log det C_p + log det C_q − log det C_{p∪q})``, in float64."""
    return 0.5 * (_logdets(corr, [p])[0] + _logdets(corr, [q])[0] - _logdets(corr, [p + q])[0])


class _Halves:
    """Each block of ``smallest`` (4 unless said) to :data:`MAX_CUT_UNITS` units as two parts, its weakest cut (the
    split whose parts share the least information: between a group's nuisance sub-groups, or between two groups),
    with each part's ``log det``, the mutual information between them (:func:`cross_part_mi`) and their first
    canonical correlation, kept per member list (a swept pair of blocks reads each block's again and again); ``rows``:
    the number of samples behind ``corr`` (the tetrad test's standard errors)."""

    def __init__(self, corr: torch.Tensor, rows: int, smallest: int = _PART_UNITS):
        self.corr, self.rows, self.smallest = corr, rows, smallest
        self._known: dict[tuple[int, ...], tuple | None] = {}

    def __call__(self, block: list[int]) -> tuple[list[list[int]], tuple[float, float], float, float] | None:
        """``(parts, (log det of each part), MI between the parts, their first canonical correlation)``; None for a
        block of fewer than ``smallest`` units or more than :data:`MAX_CUT_UNITS`."""
        key = tuple(block)
        if key not in self._known:
            self._known[key] = self._read(block) if self.smallest <= len(block) <= MAX_CUT_UNITS else None
        return self._known[key]

    def _read(self, block: list[int]):
        """The block's weakest cut: of its splits into two parts, the one whose parts share the least information."""
        whole = _logdets(self.corr, [block])[0]
        best = None
        for size in range(1, len(block) // 2 + 1):
            firsts = [list(p) for p in itertools.combinations(block, size)
                      if 2 * size < len(block) or block[0] in p]  # an even split counted once
            seconds = [[u for u in block if u not in p] for p in firsts]
            for p, q, lp, lq in zip(firsts, seconds, _logdets(self.corr, firsts), _logdets(self.corr, seconds)):
                mi = 0.5 * (lp + lq - whole)
                if best is None or mi < best[2]:
                    best = ([p, q], (lp, lq), mi)
        return (*best, first_canonical_corr(self.corr, [tuple(best[0])])[0])

    def best_swap(self, corr: torch.Tensor, a: list[int], b: list[int], gain: float):
        """The part swap between blocks ``a`` and ``b`` that passes the Pareto test on mutual information (the
        largest rise above ``gain`` of it) or else the tetrad test (see the module docstring), as the new ``(a, b)``
        member lists; None when there is none (a block of fewer than 4 units has no parts to swap)."""
        if min(len(a), len(b)) < _PART_UNITS:
            return None
        read_a, read_b = self(a), self(b)
        if read_a is None or read_b is None:
            return None
        moves = [(ia, ib) for ia in range(2) for ib in range(2) if len(read_a[0][ia]) == len(read_b[0][ib])]
        if not moves:
            return None
        # a keeps part 1 - ia and takes b's part ib, b the other way round
        new = [(read_a[0][1 - ia], read_b[0][ib], read_b[0][1 - ib], read_a[0][ia]) for ia, ib in moves]
        return self._mi_swap(new, read_a, read_b, moves, gain) or self._tetrad_swap(new, read_a, read_b)

    def _mi_swap(self, new, read_a, read_b, moves, gain):
        """The exchange of ``new`` (``(a's kept part, its taken part, b's kept, b's taken)`` per move) that raises
        the MI between each block's parts in both blocks and in sum by more than ``gain`` of it, most; or None."""
        (_, ld_a, old_a, _), (_, ld_b, old_b, _) = read_a, read_b
        union_a = _logdets(self.corr, [keep_a + take_a for keep_a, take_a, _, _ in new])
        union_b = _logdets(self.corr, [keep_b + take_b for _, _, keep_b, take_b in new])
        best, best_rise = None, gain * max(old_a + old_b, 1e-12)
        for (ia, ib), (keep_a, take_a, keep_b, take_b), ua, ub in zip(moves, new, union_a, union_b):
            new_a = 0.5 * (ld_a[1 - ia] + ld_b[ib] - ua)
            new_b = 0.5 * (ld_b[1 - ib] + ld_a[ia] - ub)
            rise = new_a + new_b - old_a - old_b
            if new_a > old_a and new_b > old_b and rise > best_rise:
                best, best_rise = (keep_a + take_a, keep_b + take_b), rise
        return best

    def _tetrad_swap(self, new, read_a, read_b):
        """The exchange of ``new`` that raises ``log ρ_a + log ρ_b`` (each block's parts' first canonical
        correlation) most on the tetrad test (:func:`graphs.tetrads.tetrad_rises`); or None."""
        distinct = {}  # moves (0, 0) and (1, 1), or (0, 1) and (1, 0), make one partition: read it once
        for keep_a, take_a, keep_b, take_b in new:
            blocks = frozenset((tuple(sorted(keep_a + take_a)), tuple(sorted(keep_b + take_b))))
            distinct.setdefault(blocks, (keep_a, take_a, keep_b, take_b))
        moves = list(distinct.values())
        rho = canonical_corrs(self.corr, [pq for k_a, t_a, k_b, t_b in moves for pq in ((k_a, t_a), (k_b, t_b))])
        old = np.array([[read_a[3], read_b[3]]] * len(moves))
        rises = tetrad_rises(old, np.array(rho).reshape(len(moves), 2), self.rows)
        if np.isnan(rises).all():
            return None
        keep_a, take_a, keep_b, take_b = moves[int(np.nanargmax(rises))]
        return keep_a + take_a, keep_b + take_b


def _placement(corr: torch.Tensor, order: list[int], old: dict, members: dict, near: list[int], block_size: int):
    """Each unit of ``order`` in turn placed into the block of ``near`` with room (counting the units placed before
    it) whose members predict it best, as ``{block: placed units}``; None as soon as a unit is predicted no better
    there than its ``old`` ``R²``."""
    added: dict[int, list[int]] = {}
    for u in order:
        room = [t for t in near if len(members[t]) + len(added.get(t, ())) < block_size]
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


def _best_dissolution(corr: torch.Tensor, s: int, members: dict, near: list[int], block_size: int, gain: float):
    """Block ``s``'s members placed into adjacent blocks with room (``{block: new member list}``) where each is
    predicted better than in ``s``, no member of a receiving block worse, and the summed ``R²`` of the blocks
    involved rises by more than ``gain`` (relative to it); None when there is no such placement. ``near``: the blocks
    other than ``s`` holding a graph neighbour of one of its members, in label order. Members are placed one at a time, each where
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


def _swap_sweep(corr: torch.Tensor, members: dict, out: torch.Tensor, graph: ActivationGraph, gain: float,
                best=_best_swap, settled: set | None = None) -> int:
    """One pass of Pareto swaps (``best``: of units, or :meth:`_Halves.best_swap`) over every pair of blocks joined
    by an edge; returns how many were made. ``settled``: the pairs of member lists already searched in vain (``best``
    depends on nothing else), skipped and added to."""
    src, dst = graph.edge_index
    pairs = sorted({(min(i, j), max(i, j)) for i, j in zip(out[src].tolist(), out[dst].tolist()) if i != j})
    settled = set() if settled is None else settled
    made = 0
    for ja, jb in pairs:
        key = (tuple(members[ja]), tuple(members[jb]))
        if key in settled:
            continue
        swap = best(corr, members[ja], members[jb], gain)
        if swap is None:
            settled.add(key)
        else:
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
        placed = _best_dissolution(corr, s, members, adjacent_blocks(out, neighbours, members[s], s), block_size, gain)
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
    """``blocks [U]`` (a partition of ``graph``'s nodes) after swaps of units (Pareto, or on the tetrad test) judged on
    the samples ``x [n, U]``, given ``block_size`` Pareto dissolutions into blocks of fewer members, then part swaps
    and, given ``block_size``, departures past it (see the module docstring); labels ``0..J-1``. Above
    :data:`MAX_SWAP_NODES` units the partition is returned as it is (logged)."""
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
    swaps = gone = part_swaps = 0
    units, settled = functools.partial(_unit_exchange, rows=x.shape[0]), set()
    for _ in range(_SWEEPS):
        made = _swap_sweep(corr, members, out, graph, gain, units, settled)
        dissolved = _dissolve_sweep(corr, members, out, neighbours, block_size, gain) if block_size else 0
        swaps, gone = swaps + made, gone + dissolved
        if not made and not dissolved:
            break
    # one reading of each block's weakest cut for the part swaps (4 units and more) and the departures (2 and more)
    halves, settled, departed, left = _Halves(corr, x.shape[0], smallest=2), set(), 0, set()
    reads = Reads(corr, x.shape[0], lambda block: None if (read := halves(block)) is None else read[0])
    for _ in range(_SWEEPS):
        made = _swap_sweep(corr, members, out, graph, gain, halves.best_swap, settled)
        moved = departure_sweep(reads, members, out, neighbours, block_size, left) if block_size else 0
        part_swaps, departed = part_swaps + made, departed + moved
        if not made and not moved:
            break
    departed += absorb_leftovers(reads, members, out, neighbours, block_size, left) if left else 0
    if swaps or gone or part_swaps or departed:
        log.info("partition: %d swap(s) of units and %d of parts between adjacent blocks, %d block(s) "
                 "dissolved, %d part(s) departed", swaps, part_swaps, gone, departed)
    return torch.unique(out, return_inverse=True)[1] if gone or departed else out
