"""Flow invariants of one level of a run, the quantities compared across seeds and model sizes.

For level ``l`` (its coarse variables ``H_l [N, J_l·h]``, its blocks, its input graph):

- ``xi_level0_hops``: the correlation length of ``H_l`` *measured* in level-0 hops. Two blocks are
  as far apart as the mean level-0 hop distance between their units (:meth:`Run.unit_blocks`);
  the mean |corr| of pairs of coarse variables of different blocks, binned by that distance
  (rounded to the nearest hop), is fitted as ``A·exp(-r/ξ)`` exactly as
  :func:`rsmi_nn.observables.correlation_length` fits its curve (the sampling-noise floor
  ``sqrt(2/(πN))`` removed in quadrature, points down to 3× the floor, at most half the largest
  distance). Source blocks: ``n_sources`` of them (seeded), against every block.
- ``xi_ratio``: ξ of the level's input over ξ of its output, each in its own graph's hops
  (``flow.json``'s ``correlation_length / correlation_length_out``): the scale factor of the step.
- ``locality`` (and ``locality_chance``) from ``flow.json``.
- ``mi_mean``, ``mi_median``, ``mi_cv`` (std / mean), ``mi_quantiles``: the per-block held-out I(H;E).
- ``participation_ratio`` ``(Σλ)² / Σλ²`` of the eigenvalues λ of the correlation matrix of the
  non-constant coarse variables, ``participation_ratio_fraction`` = that / their number, and the
  leading ``spectrum`` (λ / number of variables, largest first).
- ``degree_mean``, ``degree_cv``, ``degree_histogram``: the level's input graph's degrees.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["SCALAR_INVARIANTS", "fit_decay", "level_invariants", "measured_correlation_length",
           "participation_ratio", "relative_spread"]

#: the scalar invariants compared across runs (``relative_spread``)
SCALAR_INVARIANTS = ("xi_level0_hops", "xi_ratio", "locality", "mi_mean", "mi_cv", "participation_ratio",
                     "participation_ratio_fraction", "degree_mean", "degree_cv")


def level_invariants(run, level: int, *, n_sources: int = 256, seed: int = 0, spectrum_size: int = 32) -> dict:
    """The invariants of ``run``'s level ``level`` (see the module docstring); a JSON-able dict."""
    lv = run.levels[level]
    rec = lv.metrics
    coarse = lv.coarse_samples()
    xi = measured_correlation_length(coarse, run.unit_blocks(level), run.levels[0].graph, hidden=lv.hidden,
                                     n_sources=n_sources, seed=seed)
    pr = participation_ratio(coarse)
    mi = np.asarray(rec.get("mi_per_block") or lv.mi.tolist(), dtype=np.float64)
    deg = lv.graph.degree().numpy()
    xi_in, xi_out = rec.get("correlation_length"), rec.get("correlation_length_out")
    return {
        "xi_level0_hops": xi["xi"],
        "xi_ratio": float(xi_in) / float(xi_out) if xi_in is not None and xi_out else None,
        "xi_own_hops_in": xi_in, "xi_own_hops_out": xi_out,
        "locality": rec.get("locality"), "locality_chance": rec.get("locality_chance"),
        "mi_mean": float(mi.mean()), "mi_median": float(np.median(mi)),
        "mi_cv": float(mi.std() / mi.mean()) if mi.mean() > 0 else None,
        "mi_quantiles": {f"q{q}": float(np.quantile(mi, q / 100)) for q in (10, 25, 50, 75, 90)},
        "participation_ratio": pr["participation_ratio"],
        "participation_ratio_fraction": pr["fraction"],
        "spectrum": pr["spectrum"][:spectrum_size],
        "degree_mean": float(deg.mean()), "degree_cv": float(deg.std() / deg.mean()) if deg.mean() > 0 else None,
        "degree_histogram": np.bincount(deg).tolist(),
        "num_units": lv.num_units, "num_blocks": lv.num_blocks, "num_coarse": lv.num_coarse,
        "xi_level0_fit": {k: xi[k] for k in ("status", "fit_range", "r2", "r", "c", "noise_floor", "n_sources")},
    }


def measured_correlation_length(coarse, unit_blocks, graph0, *, hidden: int = 1, n_sources: int = 256,
                                seed: int = 0, noise_factor: float = 3.0) -> dict:
    """ξ of coarse variables in level-0 hops, from the mean level-0 distance between their blocks' units.

    Parameters
    ----------
    coarse : Tensor of shape (n_samples, J·hidden); variable ``j·hidden + c`` belongs to block ``j``.
    unit_blocks : LongTensor of shape (U_0,), the block of every level-0 unit (-1: none).
    graph0 : the level-0 ActivationGraph (U_0 nodes).
    n_sources, seed : at most ``n_sources`` source blocks (a seeded choice), each against every block.

    Returns
    -------
    dict as :func:`fit_decay` plus ``n_sources`` (blocks used).
    """
    blocks = torch.as_tensor(unit_blocks, dtype=torch.long).numpy()
    n_blocks = coarse.shape[1] // hidden
    if len(blocks) != graph0.num_nodes:
        raise ValueError(f"unit_blocks has {len(blocks)} entries but the level-0 graph has {graph0.num_nodes} nodes")
    if coarse.shape[1] != n_blocks * hidden or blocks.max(initial=-1) >= n_blocks:
        raise ValueError(f"{coarse.shape[1]} coarse variables do not fit {blocks.max() + 1} blocks × hidden={hidden}")
    rng = np.random.default_rng(seed)
    present = np.unique(blocks[blocks >= 0])
    src = np.sort(rng.choice(present, size=min(n_sources, len(present)), replace=False))
    dist = _block_distances(graph0, blocks, src, n_blocks)  # [S, J], NaN where unreachable or empty
    z = coarse.double()
    z = z - z.mean(0)
    norm = torch.linalg.vector_norm(z, dim=0)
    z = (z / torch.where(norm > 1e-12, norm, torch.ones_like(norm))).numpy()
    vars_src = (src[:, None] * hidden + np.arange(hidden)[None, :]).reshape(-1)
    corr = np.abs(z[:, vars_src].T @ z).reshape(len(src), hidden, n_blocks, hidden)
    live = (norm > 1e-12).numpy().reshape(n_blocks, hidden)
    d = np.broadcast_to(dist[:, None, :, None], corr.shape)
    ok = np.isfinite(d) & live[src][:, :, None, None] & live[None, None, :, :]
    ok &= (src[:, None, None, None] != np.arange(n_blocks)[None, None, :, None])
    r = np.floor(d[ok] + 0.5).astype(np.int64)
    counts = np.bincount(r)
    sums = np.bincount(r, weights=corr[ok])
    rs = np.nonzero(counts)[0]
    out = fit_decay(rs, sums[rs] / counts[rs], coarse.shape[0], noise_factor=noise_factor)
    out["n_sources"] = int(len(src))
    return out


def _block_distances(graph0, blocks: np.ndarray, src: np.ndarray, n_blocks: int) -> np.ndarray:
    """Mean level-0 hop distance ``[len(src), n_blocks]`` between the units of each source block and each block."""
    from scipy.sparse import csr_matrix

    in_block = blocks >= 0
    units = np.flatnonzero(in_block & np.isin(blocks, src))
    hops = graph0.hop_distances(units.tolist()).numpy().astype(np.float64)  # [S_units, U0], -1 unreachable
    member = csr_matrix((np.ones(in_block.sum()), (np.flatnonzero(in_block), blocks[in_block])),
                        shape=(len(blocks), n_blocks))
    unreachable = (hops < 0).astype(np.float64) @ member
    total = np.clip(hops, 0, None) @ member  # [S_units, J]: summed distance to each block's units
    row_block = np.searchsorted(src, blocks[units])
    sums = np.zeros((len(src), n_blocks))
    bad = np.zeros((len(src), n_blocks))
    np.add.at(sums, row_block, np.asarray(total))
    np.add.at(bad, row_block, np.asarray(unreachable))
    sizes = np.bincount(blocks[in_block], minlength=n_blocks).astype(np.float64)
    pairs = np.bincount(row_block, minlength=len(src))[:, None] * sizes[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / pairs
    mean[(bad > 0) | (pairs == 0)] = np.nan
    return mean


def fit_decay(r, c, n_samples: int, *, noise_factor: float = 3.0, fit_max: int | None = None) -> dict:
    """Fit ``c(r) ≈ A exp(-r/ξ)`` for distances ``r ≥ 1`` above the sampling-noise floor.

    The convention of :func:`rsmi_nn.observables.correlation_length`: floor ``sqrt(2/(πN))`` removed in
    quadrature; fitted from the first distance to the last before the curve first drops below
    ``noise_factor × floor``, and at most ``fit_max`` (default half the largest distance).

    Returns
    -------
    dict with ``xi`` (float), ``status`` ("fit", "two_point", "one_point", "no_decay", "below_noise"),
    ``fit_range``, ``r2`` (None unless three or more points), ``r``, ``c``, ``noise_floor``.
    """
    r, c = np.asarray(r, dtype=np.int64), np.asarray(c, dtype=np.float64)
    keep = r >= 1
    r, c = r[keep], c[keep]
    floor = math.sqrt(2.0 / (math.pi * n_samples))
    fit_max = max(2, int(r.max(initial=0)) // 2) if fit_max is None else fit_max
    above = (c > noise_factor * floor) & (r <= fit_max)
    stop = int(np.argmin(above)) if not above.all() else len(above)
    fr, fc = r[:stop], np.sqrt(np.clip(c[:stop] ** 2 - floor**2, 1e-300, None))
    out = {"r": r.tolist(), "c": c.tolist(), "noise_floor": floor, "r2": None}
    if len(fr) >= 2:
        slope, intercept = np.polyfit(fr.astype(float), np.log(fc), 1)
        if len(fr) >= 3:
            resid = np.log(fc) - (intercept + slope * fr)
            total = np.log(fc) - np.log(fc).mean()
            out["r2"] = 1.0 - float((resid**2).sum() / max((total**2).sum(), 1e-300))
        if slope < 0:
            out.update(xi=-1.0 / slope, status="fit" if len(fr) >= 3 else "two_point")
        else:
            out.update(xi=float(fr[-1]), status="no_decay")
        out["fit_range"] = [int(fr[0]), int(fr[-1])]
    elif len(fr) == 1:
        c1 = float(min(fc[0], 1.0 - 1e-9))
        out.update(xi=-1.0 / math.log(c1) * float(fr[0]), status="one_point", fit_range=[int(fr[0])] * 2)
    else:
        out.update(xi=-1.0 / math.log(min(noise_factor * floor, 1.0 - 1e-9)), status="below_noise", fit_range=[0, 0])
    out["xi"] = float(out["xi"])
    return out


def participation_ratio(coarse) -> dict:
    """``(Σλ)²/Σλ²`` of the correlation matrix of the non-constant columns of ``coarse [N, J]``.

    Returns ``{"participation_ratio", "fraction" (over the number of variables), "spectrum" (λ / number,
    descending), "n_variables"}``; 1 when every variable is the same direction, J when all are uncorrelated.
    """
    x = torch.as_tensor(coarse).double()
    z = x - x.mean(0)
    norm = torch.linalg.vector_norm(z, dim=0)
    z = z[:, norm > 1e-12] / norm[norm > 1e-12]
    n = z.shape[1]
    if n == 0:
        return {"participation_ratio": None, "fraction": None, "spectrum": [], "n_variables": 0}
    lam = torch.linalg.eigvalsh(z.T @ z).flip(0).clamp_min(0).numpy()
    pr = float(lam.sum() ** 2 / (lam**2).sum())
    return {"participation_ratio": pr, "fraction": pr / n, "spectrum": (lam / n).tolist(), "n_variables": int(n)}


def relative_spread(values) -> dict | None:
    """Mean, std and relative spread ``(max - min) / |mean|`` of one invariant across runs (None values dropped).

    ``within_5pct``: the spread is at most 5 % of the mean — the founding notes' test of an invariant.
    """
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) < 2:
        return None
    mean = float(v.mean())
    spread = float((v.max() - v.min()) / abs(mean)) if mean != 0 else math.inf
    return {"mean": mean, "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
            "relative_spread": spread, "within_5pct": bool(spread <= 0.05), "n": int(len(v))}
