"""One-to-one matching of two sets of variables measured on the same samples, by |correlation|.

The canonicity score of SAE-stability studies: correlate every variable of A with every variable
of B on the same N samples, find the one-to-one assignment that maximises the summed |corr|
(``scipy.optimize.linear_sum_assignment``, the Hungarian algorithm, ``O(J³)``), and report the
matched |corr| — its mean, its distribution, and the fraction of variables whose partner
correlates above 0.9. With ``J_a != J_b`` the ``min(J_a, J_b)`` best pairs are matched.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["correlation_matrix", "match_variables"]

_ROUND = 12  # summary figures are rounded to 1e-12, so that identical variables read exactly 1.0


def _standardised(x, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(z, constant)``: columns centred and scaled to unit norm (float64); constant columns are zero."""
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n_samples, n_variables), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or Inf; compare finite coarse samples")
    z = x.astype(np.float64) - x.mean(0, dtype=np.float64)
    norm = np.linalg.norm(z, axis=0)
    constant = norm <= 1e-12 * max(1.0, float(np.abs(x).max(initial=0.0))) * np.sqrt(len(x))
    z /= np.where(constant, 1.0, norm)
    z[:, constant] = 0.0
    return z, constant


def correlation_matrix(a, b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pearson correlations between the columns of ``a [N, J_a]`` and ``b [N, J_b]``.

    Returns ``(corr [J_a, J_b] float64, constant_a [J_a] bool, constant_b [J_b] bool)``; a constant
    variable correlates 0 with everything.
    """
    if len(a) != len(b):
        raise ValueError(f"a has {len(a)} samples but b has {len(b)}; correlate variables on the same samples")
    if len(a) < 3:
        raise ValueError(f"{len(a)} samples are too few to correlate variables; pass at least 3")
    za, ca = _standardised(a, "a")
    zb, cb = _standardised(b, "b")
    return np.clip(za.T @ zb, -1.0, 1.0), ca, cb


def match_variables(a, b, *, threshold: float = 0.9, bins: int = 20) -> dict:
    """Optimal one-to-one matching of the variables of ``a`` and ``b`` by |correlation|.

    Parameters
    ----------
    a : array or Tensor of shape (n_samples, J_a); b : of shape (n_samples, J_b), the same samples.
    threshold : a matched pair counts as reproduced when its |corr| exceeds this.
    bins : bins of the histogram of matched |corr| over [0, 1].

    Returns
    -------
    dict with ``mean_abs_corr`` and ``median_abs_corr`` of the matched pairs, ``fraction_above_0.9``
    (the key names ``threshold``), ``n_matched = min(J_a, J_b)``, ``n_a``, ``n_b``,
    ``constant_a``/``constant_b`` (variables without variance), ``mean_best_abs_corr_a`` / ``_b``
    (each variable's best partner, not one-to-one), ``histogram`` (``edges``, ``counts``) and
    ``pairs`` (``a``, ``b``, ``abs_corr``: the matched variables, best first).
    """
    corr, ca, cb = correlation_matrix(a, b)
    absc = np.abs(corr)
    rows, cols = _assign(absc)
    matched = absc[rows, cols]
    order = np.argsort(-matched, kind="stable")
    counts, edges = np.histogram(matched, bins=bins, range=(0.0, 1.0))
    return {
        "mean_abs_corr": round(float(matched.mean()), _ROUND),
        "median_abs_corr": round(float(np.median(matched)), _ROUND),
        f"fraction_above_{threshold:g}": float((matched > threshold).mean()),
        "threshold": threshold,
        "n_matched": int(len(matched)), "n_a": int(absc.shape[0]), "n_b": int(absc.shape[1]),
        "constant_a": int(ca.sum()), "constant_b": int(cb.sum()),
        "mean_best_abs_corr_a": round(float(absc.max(1).mean()), _ROUND),
        "mean_best_abs_corr_b": round(float(absc.max(0).mean()), _ROUND),
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "pairs": {"a": rows[order].tolist(), "b": cols[order].tolist(),
                  "abs_corr": [round(float(v), 6) for v in matched[order]]},
    }


def _assign(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the maximum-weight one-to-one assignment of ``score [J_a, J_b]``."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(score, maximize=True)
    return np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
