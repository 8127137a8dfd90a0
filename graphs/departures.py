"""Departures: a part of a block leaves for another block past ``block_size``, judged on tetrads of canonical correlations.

Swaps keep sizes (:mod:`graphs.swaps`), so a planted group larger than ``block_size`` stays cut (a group of 6 with
``block_size=4``: a block of 4 and a pair beside a sibling's pair) and a smaller one keeps a stray (issue 15, groups
of sizes drawn per group). After each sweep of part swaps, a part ``P`` of a block ``D`` — one unit, or a part of
``D``'s weakest cut — moves to an adjacent block ``A`` (``|A| + |P| < 2 block_size``, the bound of a natural group)
when for each of the :data:`REFERENCES` other adjacent blocks ``R`` that ``P`` reads best (``Q = D − P``)

    log ρ(P, A) + log ρ(Q, R) − log ρ(P, Q) − log ρ(A, R) > TETRAD_Z standard errors.

With one latent per group every set's readout cancels (:mod:`graphs.tetrads`) and the sum is ``log r(P, A) + log
r(Q, R) − log r(P, Q) − log r(A, R)`` in the latents' correlations: ``−log r(Q, A) > 0`` for a stray of ``A``'s
group against a reference as far from both, ``log r(Q, A) < 0`` for a part of ``Q``'s own group. A reference that
shares a nuisance with ``Q`` or ``A`` inflates its term: the move must pass against every one. And ``A``'s weakest
cut must relate alike to ``Q`` and the references (``log ρ(A₁, S) − log ρ(A₂, S)`` within ``TETRAD_Z`` standard
errors over all of them): a block whose cut separates a stray from the rest draws the stray's group-mates (``P``
itself is left out: its nuisance partner may sit on one side of the cut).

A whole block smaller than ``block_size`` (no ``Q``) merges into the adjacent block ``A`` whose triad ``log ρ(A₁,
P) + log ρ(A₂, P) − log ρ(A₁, A₂)`` (``2 log r(A, P)`` plus ``P``'s own readout) beats the runner-up ``R``'s by
``TETRAD_Z`` standard errors, when the tetrads ``log ρ(A₁, P) + log ρ(A₂, R) − log ρ(A₁, A₂) − log ρ(P, R)`` (and
with ``A₁``, ``A₂`` exchanged) are not below ``−TETRAD_Z`` standard errors (``log r(A, P)`` against a reference as
far from both: a fragment of ``A``'s group, not a complete small group beside a sibling) and ``A`` is homogeneous.
After the sweeps a block of two or more units that departures left at half a block merges on its triad and the
home's homogeneity without the same-latent tetrads (a fragment: they misread it when its home's halves carry nuisances
it shares), and one left under half a block (a
unit whose block-mates all left has no rest to weigh a move against) joins the adjacent block it reads best
(:func:`absorb_leftovers`), as the partition absorbs its small leftovers. Measured in docs/planted-hierarchy.md
("Departures past ``block_size``", "Half blocks left behind").
"""

from __future__ import annotations

import math

import numpy as np
import torch

from graphs.tetrads import TETRAD_Z, canonical_corrs, log_rho

__all__ = ["REFERENCES", "Reads", "absorb_leftovers", "adjacent_blocks", "departure_sweep"]

REFERENCES = 3  # the blocks a move is tested against (those the moving part reads best besides its new block)


class Reads:
    """``log ρ`` between sets of units (each first canonical correlation computed once) and each block's weakest
    cut (``cut``: a member list -> its two parts, or None), for ``corr [U, U]`` measured on ``rows`` rows."""

    def __init__(self, corr: torch.Tensor, rows: int, cut):
        self.corr, self.rows, self.cut = corr, rows, cut
        self._rho: dict[tuple, float] = {}

    def __call__(self, pairs: list[tuple[list[int], list[int]]]) -> tuple[np.ndarray, np.ndarray]:
        """``(log ρ [k], standard error [k])`` of ``k`` pairs of disjoint sets (:func:`graphs.tetrads.log_rho`)."""
        keys = [tuple(sorted((tuple(p), tuple(q)))) for p, q in pairs]
        todo = list(dict.fromkeys(k for k in keys if k not in self._rho))
        for key, rho in zip(todo, canonical_corrs(self.corr, [(list(p), list(q)) for p, q in todo])):
            self._rho[key] = rho
        return log_rho(np.array([self._rho[k] for k in keys]), self.rows)


def _homogeneous(reads: Reads, home: list[int], others: list[list[int]]) -> bool:
    """Whether ``home``'s two parts (its weakest cut) relate alike to every set of ``others``: ``log ρ(A₁, S) − log
    ρ(A₂, S)`` within ``TETRAD_Z`` standard errors from set to set (True for a block without a cut)."""
    cut = reads.cut(home)
    if cut is None:
        return True
    log, se = reads([(cut[0], s) for s in others] + [(cut[1], s) for s in others])
    k = len(others)
    diff, var = log[:k] - log[k:], se[:k] ** 2 + se[k:] ** 2
    if np.isnan(diff).any():
        return False
    hi, lo = int(np.argmax(diff)), int(np.argmin(diff))
    return bool(diff[hi] - diff[lo] <= TETRAD_Z * math.sqrt(var[hi] + var[lo]))


def _move(reads: Reads, part: list[int], rest: list[int], near: dict, room: int):
    """``(margin, block)``: the adjacent block (of ``near``, ``{block: members}``) that ``part`` moves to from beside
    ``rest``, of the largest margin of its worst tetrad above ``TETRAD_Z`` standard errors (module docstring); None
    when none passes. ``room``: the size a receiving block must stay under. All tetrads in one batched call."""
    blocks = list(near)
    if len(blocks) < 2:
        return None
    read = dict(zip(blocks, reads([(part, near[t]) for t in blocks])[0]))
    refs = {a: sorted((t for t in blocks if t != a), key=lambda t: -read[t])
            for a in blocks if len(near[a]) + len(part) < room}
    tests = [(a, r) for a in refs for r in refs[a][:REFERENCES]]
    if not tests:
        return None
    log, se = reads([pq for a, r in tests
                     for pq in ((part, near[a]), (rest, near[r]), (part, rest), (near[a], near[r]))])
    log, se = log.reshape(-1, 4), se.reshape(-1, 4)
    margins = log @ np.array([1.0, 1.0, -1.0, -1.0]) - TETRAD_Z * np.sqrt((se * se).sum(1))
    worst: dict[int, float] = {}
    for (a, _), m in zip(tests, np.nan_to_num(margins, nan=-np.inf).tolist()):  # a NaN tetrad fails
        worst[a] = min(worst.get(a, math.inf), m)
    for a in sorted(worst, key=lambda t: -worst[t]):
        if worst[a] <= 0:
            break
        if _homogeneous(reads, near[a], [rest] + [near[t] for t in refs[a]]):
            return worst[a], a
    return None


def _triad(reads: Reads, home: list[int], part: list[int]):
    """``(log ρ(A₁, P) + log ρ(A₂, P) − log ρ(A₁, A₂), its terms' standard errors, (A₁, A₂))`` for ``home``'s weakest
    cut; None without a cut or a correlation."""
    cut = reads.cut(home)
    if cut is None:
        return None
    log, se = reads([(cut[0], part), (cut[1], part), (cut[0], cut[1])])
    return None if np.isnan(log).any() else (log[0] + log[1] - log[2], se, cut)


def _merge(reads: Reads, block: list[int], near: dict, room: int, same_latent: bool = True):
    """The adjacent block that the whole ``block`` merges into and the margin of its triad over the runner-up's
    (module docstring); None when there is none. ``same_latent=False`` skips the tetrads that tell a complete small
    group from a fragment (for half blocks that departures left behind: fragments)."""
    triads = {t: tr for t in near if (tr := _triad(reads, near[t], block)) is not None}
    if len(triads) < 2:
        return None
    a, runner = sorted(triads, key=lambda t: -triads[t][0])[:2]
    if len(near[a]) + len(block) >= room:
        return None
    (t_a, se_a, (a1, a2)), (t_r, se_r, _) = triads[a], triads[runner]
    margin = t_a - t_r - TETRAD_Z * math.sqrt((se_a ** 2).sum() + (se_r ** 2).sum())
    if margin <= 0:
        return None
    ref = near[runner]
    for one, two in ((a1, a2), (a2, a1)) if same_latent else ():  # P reads A's latent, not a sibling's: not below 0
        log, se = reads([(one, block), (two, ref), (a1, a2), (block, ref)])
        if not log[0] + log[1] - log[2] - log[3] >= -TETRAD_Z * math.sqrt((se * se).sum()):  # NaN fails too
            return None
    others = [near[t] for t in near if t != a]
    return (margin, a) if _homogeneous(reads, near[a], others) else None


def _departure(reads: Reads, members: dict, out: torch.Tensor, neighbours, j: int, block_size: int):
    """The part of block ``j`` that departs and the block it joins, ``(part, block)``, of the largest margin; None
    when nothing departs. Parts: each unit, the parts of the block's weakest cut, and the whole block when it is
    smaller than ``block_size``."""
    block = members[j]
    parts = [list(block)] if len(block) < block_size else []
    if len(block) >= 2:
        cut = reads.cut(block)
        parts += [[u] for u in block] + [p for p in (cut or ()) if 1 < len(p) < len(block)]
    best = None
    for part in parts:
        rest = [u for u in block if u not in part]
        near = {t: members[t] for t in adjacent_blocks(out, neighbours, part, j)}
        found = _move(reads, part, rest, near, 2 * block_size) if rest else _merge(reads, part, near, 2 * block_size)
        if found is not None and (best is None or found[0] > best[0]):
            best = (found[0], part, found[1])
    return None if best is None else best[1:]


def departure_sweep(reads: Reads, members: dict, out: torch.Tensor, neighbours: tuple[torch.Tensor, ...],
                    block_size: int, left: set | None = None) -> int:
    """One pass of departures over the blocks (``members``: ``{block: sorted member list}``, ``out [U]``: each
    unit's block, both updated; ``neighbours``: each unit's graph neighbours); returns how many parts moved. A block
    left empty is deleted from ``members``; one left with half a block or less is added to ``left``."""
    moved = 0
    for j in sorted(members):
        if j not in members:
            continue
        found = _departure(reads, members, out, neighbours, j, block_size)
        if found is None:
            continue
        part, a = found
        _transfer(members, out, part, j, a)
        if left is not None and j in members and len(members[j]) <= block_size // 2:
            left.add(j)
        moved += 1
    return moved


def absorb_leftovers(reads: Reads, members: dict, out: torch.Tensor, neighbours: tuple[torch.Tensor, ...],
                     block_size: int, left: set) -> int:
    """Blocks of ``left`` that departures left behind join an adjacent block that stays under ``2 * block_size``; returns
    how many joined. First a block of exactly half a block (``block_size`` even, >= 4) merges where its triad is decisive
    (:func:`_merge` without the same-latent tetrads: its block-mates left for their own group, so it is a fragment of
    another, and halves of its home that carry a nuisance it shares can read it below a sibling); then a block still
    smaller than half a block (a block of one has no rest to weigh a move against) joins the block it reads best
    (first canonical correlation), as the partition absorbs its small leftovers."""
    joined = 0
    for j in sorted(left):
        if j not in members or 2 * len(members[j]) != block_size or len(members[j]) < 2:
            continue
        near = {t: members[t] for t in adjacent_blocks(out, neighbours, members[j], j)}
        found = _merge(reads, members[j], near, 2 * block_size, same_latent=False)
        if found is not None:
            _transfer(members, out, members[j], j, found[1])
            joined += 1
    for j in sorted(left):
        if j not in members or len(members[j]) >= (block_size + 1) // 2:
            continue
        near = [t for t in adjacent_blocks(out, neighbours, members[j], j)
                if len(members[t]) + len(members[j]) < 2 * block_size]
        if not near:
            continue
        log = reads([(members[j], members[t]) for t in near])[0]
        if not np.isnan(log).all():
            _transfer(members, out, members[j], j, near[int(np.nanargmax(log))])
            joined += 1
    return joined


def adjacent_blocks(out: torch.Tensor, neighbours, units: list[int], own: int) -> list[int]:
    """The labels (sorted) of the blocks other than ``own`` that a unit of ``units`` neighbours in the graph (``out
    [U]``: each unit's block; ``neighbours``: each unit's graph neighbours)."""
    return sorted(set(out[torch.cat([neighbours[u] for u in units])].tolist()) - {own})


def _transfer(members: dict, out: torch.Tensor, units: list[int], j: int, a: int) -> None:
    """``units`` of block ``j`` join block ``a`` (``members`` and ``out`` updated; ``j`` deleted once empty)."""
    members[j] = [u for u in members[j] if u not in units]
    members[a] = sorted(members[a] + list(units))
    out[units] = a
    if not members[j]:
        del members[j]
