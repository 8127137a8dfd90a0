"""Canonical correlations between parts of blocks, and the tetrad test: loadings cancel in a product.

With one latent per planted group, the first canonical correlation between two sets of units factorises,
``ρ(P, Q) = r_P r_Q ρ(z_P, z_Q)`` (``r``: how well the best combination of a set's units reads its latent), as long
as nothing else (a nuisance) is shared between ``P`` and ``Q``. An exchange between blocks ``a`` and ``b`` that moves
part ``P`` of ``a`` and part ``Q`` of ``b`` (of one size) replaces ``ρ(P, a − P) ρ(Q, b − Q)`` by
``ρ(P, b − Q) ρ(Q, a − P)``: the same four sets appear on both sides, so every ``r`` cancels and the log of the
ratio is ``−2 log ρ(z_a, z_b) > 0`` when ``P`` belongs with ``b`` and ``Q`` with ``a``, ``0`` when the two groups
are one, and negative when the exchange mixes them. A sum of log correlations judges where the summed mutual
information (convex in ``ρ``) or a unit's ``R²`` would follow the loadings: two strongly loaded pairs of sibling
groups share more than a strongly and a weakly loaded pair of one group. A nuisance shared across the cut inflates
its ``ρ``: a sub-group kept together scores higher, one reunited across blocks too. The exchange is made when the
sum rises by more than :data:`TETRAD_Z` standard errors (``(1 − ρ²) / (ρ √n)`` per term, four terms in
quadrature; ``ρ`` floored at ``1 / √n``). :mod:`graphs.swaps` applies it to a block's two halves (its weakest cut)
and, after the Pareto unit swaps refuse, to single units and pairs (:func:`tetrad_exchange`).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

__all__ = ["TETRAD_Z", "canonical_corrs", "first_canonical_corr", "log_rho", "tetrad_exchange", "tetrad_rises"]

TETRAD_Z = 2.0  # standard errors of the summed log ρ an exchange must raise it by
_PART_SIZES = (1, 2)  # the parts :func:`tetrad_exchange` moves (as graphs.swaps' Pareto unit swaps)


def first_canonical_corr(corr: torch.Tensor, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
    """The first canonical correlation between the units ``p`` and ``q`` (disjoint) of each pair ``(p, q)`` of
    ``corr [U, U]`` (every ``p`` of one size, every ``q`` of one size), in float64: one batched call. NaN for a pair
    with a part that is not positive definite (beyond a 1e-9 ridge) or a value that is not finite: never judged."""
    if not pairs:
        return []
    p, q = torch.tensor([pq[0] for pq in pairs]), torch.tensor([pq[1] for pq in pairs])
    c = corr.double()

    def factor(idx):
        eye = torch.eye(idx.shape[1], dtype=c.dtype)
        chol, info = torch.linalg.cholesky_ex(c[idx.unsqueeze(-1), idx.unsqueeze(-2)] + 1e-9 * eye)
        bad = (info != 0) | ~torch.isfinite(chol).all(-1).all(-1)
        return torch.where(bad[:, None, None], eye, chol), bad  # a failed factor replaced, its pair masked below

    (lp, bad_p), (lq, bad_q) = factor(p), factor(q)
    m = torch.linalg.solve_triangular(lp, c[p.unsqueeze(-1), q.unsqueeze(-2)], upper=False)  # Lp⁻¹ Cpq
    m = torch.linalg.solve_triangular(lq, m.mT, upper=False).mT  # Lp⁻¹ Cpq Lq⁻ᵀ: its singular values
    bad = bad_p | bad_q | ~torch.isfinite(m).all(-1).all(-1)
    rho = torch.linalg.svdvals(m.masked_fill(bad[:, None, None], 0.0))[:, 0]
    return rho.masked_fill(bad, float("nan")).tolist()


def canonical_corrs(corr: torch.Tensor, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
    """:func:`first_canonical_corr` of pairs of any sizes: one batched call per pair of sizes (each pair ordered
    smaller part first)."""
    pairs = [tuple(sorted(pq, key=len)) for pq in pairs]
    shapes: dict[tuple[int, int], list[int]] = {}
    for i, (p, q) in enumerate(pairs):
        shapes.setdefault((len(p), len(q)), []).append(i)
    out = [math.nan] * len(pairs)
    for rows in shapes.values():
        for i, rho in zip(rows, first_canonical_corr(corr, [pairs[i] for i in rows])):
            out[i] = rho
    return out


def log_rho(rho, rows: int):
    """``log ρ`` of correlations (a float or an array) measured on ``rows`` rows and their standard errors
    ``(1 − ρ²) / (ρ √rows)``, with ``ρ`` floored at its own standard error near 0, ``1 / √rows`` (below it ``log ρ``
    says nothing); NaN stays NaN."""
    rho = np.maximum(np.asarray(rho, dtype=np.float64), 1 / math.sqrt(rows))  # np.maximum keeps NaN
    return np.log(rho), (1 - rho * rho) / (rho * math.sqrt(rows))


def tetrad_rises(old: np.ndarray, new: np.ndarray, rows: int) -> np.ndarray:
    """How far ``log ρ`` summed over each row of ``new [M, 2]`` correlations rises above the same row of ``old [M,
    2]``, ``[M]``, where by more than :data:`TETRAD_Z` standard errors (:func:`log_rho`'s, in quadrature); NaN where
    it does not or a ``ρ`` is NaN."""
    log, se = log_rho(np.concatenate([old, new], axis=1), rows)
    rise = log[:, 2:].sum(1) - log[:, :2].sum(1)
    with np.errstate(invalid="ignore"):
        return np.where(rise > TETRAD_Z * np.sqrt((se * se).sum(1)), rise, np.nan)


def tetrad_exchange(corr: torch.Tensor, a: list[int], b: list[int], rows: int):
    """The exchange of one or two units each way between blocks ``a`` and ``b`` (each keeping a unit) with the
    largest rise on the tetrad test (module docstring), as the new ``(a, b)`` member lists; None when none passes.
    ``corr [U, U]``: the units' correlations, measured on ``rows`` rows. Each correlation computed once, in one
    batched call per pair of sizes."""
    moves, seen, index = [], set(), {}
    for k in _PART_SIZES:
        if k >= min(len(a), len(b)):
            break
        for p, q in itertools.product(itertools.combinations(a, k), itertools.combinations(b, k)):
            rest_a, rest_b = tuple(u for u in a if u not in p), tuple(u for u in b if u not in q)
            key = frozenset((tuple(sorted(rest_a + q)), tuple(sorted(rest_b + p))))
            if key not in seen:  # moving the complements makes the same two blocks
                seen.add(key)
                terms = ((p, rest_a), (q, rest_b), (p, rest_b), (q, rest_a))  # old, old, new, new
                terms = [min(t, t[::-1]) for t in terms]  # ρ(P, Q) = ρ(Q, P): one key
                moves.append((p, rest_a, q, rest_b, [index.setdefault(t, len(index)) for t in terms]))
    if not moves:
        return None
    rho = np.array(canonical_corrs(corr, [(list(p), list(r)) for p, r in index]))
    at = rho[np.array([m[4] for m in moves])]
    rises = tetrad_rises(at[:, :2], at[:, 2:], rows)
    if np.isnan(rises).all():
        return None
    p, rest_a, q, rest_b, _ = moves[int(np.nanargmax(rises))]
    return list(rest_a + q), list(rest_b + p)
