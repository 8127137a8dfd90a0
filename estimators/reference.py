"""Reference values of mutual information: Gaussian closed forms and the KSG kNN estimator.

These are the yardsticks the neural estimators and the RSMI engine are tested against.
All computations are in float64; results are Python floats in nats.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from estimators.validation import (
    as_tensor,
    check_paired,
    check_positive_int,
    check_samples,
)

__all__ = ["canonical_correlations", "cca_mi", "gaussian_mi", "ksg_mi"]


def _check_cov(cov, x_idx, y_idx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = as_tensor(cov, name="cov", dtype=torch.float64).cpu().numpy()
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"cov must be a square matrix, got shape {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("cov contains NaN/Inf values; pass a finite covariance matrix")
    scale = max(1.0, float(np.abs(c).max()))
    if not np.allclose(c, c.T, atol=1e-8 * scale, rtol=0):
        raise ValueError("cov is not symmetric; pass a covariance matrix (e.g. (c + c.T) / 2)")
    n = c.shape[0]
    idx = []
    for name, ix in (("x_idx", x_idx), ("y_idx", y_idx)):
        a = np.atleast_1d(np.asarray(ix.cpu() if isinstance(ix, torch.Tensor) else ix))
        if a.size == 0 or a.dtype.kind not in "iu":
            raise ValueError(f"{name} must be a non-empty sequence of integer indices, got {ix!r}")
        if a.min() < -n or a.max() >= n:
            raise ValueError(f"{name} has indices outside [0, {n}) for a {n}x{n} cov: {a.tolist()}")
        a = a % n
        if len(set(a.tolist())) != a.size:
            raise ValueError(f"{name} repeats an index: {a.tolist()}; each variable may appear once")
        idx.append(a)
    if set(idx[0].tolist()) & set(idx[1].tolist()):
        raise ValueError(f"x_idx and y_idx overlap at {sorted(set(idx[0].tolist()) & set(idx[1].tolist()))}; "
                         "X and Y must be disjoint sets of variables")
    return c, idx[0], idx[1]


def _logdet(m: np.ndarray, name: str) -> float:
    """log det of a positive-definite ``m`` from its Cholesky factor (a negative-definite matrix has a positive
    determinant too, so the sign of ``slogdet`` cannot tell)."""
    try:
        chol = np.linalg.cholesky(m)
    except np.linalg.LinAlgError:
        raise ValueError(f"the covariance of {name} is not positive definite; drop constant or duplicate "
                         "variables, or pass a covariance matrix") from None
    return float(2.0 * np.log(np.diag(chol)).sum())


def gaussian_mi(cov, x_idx: Sequence[int], y_idx: Sequence[int]) -> float:
    """Exact MI of jointly Gaussian X and Y, in nats.

    ``I(X;Y) = 1/2 [log det S_XX + log det S_YY - log det S_(X,Y)]`` computed with
    ``slogdet`` in float64.

    Parameters
    ----------
    cov : array-like of shape (n, n), the covariance of all variables.
    x_idx, y_idx : disjoint index sequences selecting X and Y.

    Examples
    --------
    >>> round(gaussian_mi([[1.0, 0.6], [0.6, 1.0]], [0], [1]), 6)  # -1/2 log(1 - 0.36)
    0.223144
    """
    c, xi, yi = _check_cov(cov, x_idx, y_idx)
    xy = np.concatenate([xi, yi])
    value = 0.5 * (_logdet(c[np.ix_(xi, xi)], "X") + _logdet(c[np.ix_(yi, yi)], "Y")
                   - _logdet(c[np.ix_(xy, xy)], "(X, Y)"))
    return max(value, 0.0) if value > -1e-12 else value


def canonical_correlations(cov, x_idx: Sequence[int], y_idx: Sequence[int]) -> np.ndarray:
    """Canonical correlations between X and Y, descending, float64 array of length ``min(dx, dy)``.

    The singular values of ``L_X^{-1} S_XY L_Y^{-T}`` (``L`` the Cholesky factors of
    ``S_XX``, ``S_YY``); ``rho_1`` is the largest correlation any linear ``w.X`` reaches
    with any linear ``v.Y`` (Hotelling 1936).
    """
    c, xi, yi = _check_cov(cov, x_idx, y_idx)
    try:
        lx = np.linalg.cholesky(c[np.ix_(xi, xi)])
        ly = np.linalg.cholesky(c[np.ix_(yi, yi)])
    except np.linalg.LinAlgError as err:
        raise ValueError("the covariance of X or Y is not positive definite; drop constant or duplicate variables") from err
    m = np.linalg.solve(lx, c[np.ix_(xi, yi)])
    m = np.linalg.solve(ly, m.T).T
    rho = np.linalg.svd(m, compute_uv=False)
    return np.clip(np.sort(rho)[::-1], 0.0, 1.0)


def cca_mi(cov, x_idx: Sequence[int], y_idx: Sequence[int], dim: int = 1) -> float:
    """MI in nats reached by the best ``dim``-dimensional linear projection ``H = W X`` with Y.

    For jointly Gaussian variables ``max_W I(WX; Y) = -1/2 sum_{i<=dim} log(1 - rho_i^2)``
    over the top ``dim`` canonical correlations; with ``dim >= min(dx, dy)`` it equals
    :func:`gaussian_mi`. This is the optimum a linear RSMI filter can approach.
    """
    dim = check_positive_int(dim, name="dim")
    rho = canonical_correlations(cov, x_idx, y_idx)[:dim]
    if rho.size and rho[0] >= 1.0:
        raise ValueError("X and Y are perfectly correlated (canonical correlation 1): the MI is infinite")
    return float(-0.5 * np.log1p(-(rho ** 2)).sum())


def _as_samples(v, name: str, min_samples: int) -> np.ndarray:
    t = as_tensor(v, name=name, dtype=torch.float64)
    if t.ndim == 1:
        t = t.reshape(-1, 1)
    t = check_samples(t, name=name, ndim=2, min_samples=min_samples, dtype=torch.float64)
    return t.cpu().numpy()


def ksg_mi(x, y, k: int = 3, *, seed: int = 0) -> float:
    """Kraskov-Stogbauer-Grassberger kNN estimate of I(X;Y) in nats (estimator 1).

    ``I = psi(k) + psi(N) - < psi(n_x + 1) + psi(n_y + 1) >``, where ``eps_i`` is the
    max-norm distance from sample i to its k-th neighbour in the joint space and
    ``n_x(i)``, ``n_y(i)`` count the other samples strictly within ``eps_i`` in each marginal
    (Kraskov et al., Phys. Rev. E 69, 066138, 2004). Columns are scaled to unit variance and
    a 1e-10 jitter (seeded) breaks ties, as in scikit-learn. Neighbour searches use
    ``scipy.spatial.cKDTree`` (vectorised, O(N log N)). Not clipped at zero: values near 0
    scatter on both sides.

    Parameters
    ----------
    x, y : array-like or Tensor of shape (n_samples, d) or (n_samples,).
    k : number of neighbours (3 is Kraskov's recommendation: low bias, moderate variance).
    """
    from scipy.spatial import cKDTree
    from scipy.special import digamma

    k = check_positive_int(k, name="k")
    xs = _as_samples(x, "x", k + 1)
    ys = _as_samples(y, "y", k + 1)
    check_paired(torch.from_numpy(xs), torch.from_numpy(ys))
    n = xs.shape[0]
    rng = np.random.default_rng(seed)

    def prepare(v: np.ndarray) -> np.ndarray:
        v = v / v.std(axis=0)
        return v + 1e-10 * np.maximum(1.0, np.abs(v).mean(axis=0)) * rng.standard_normal(v.shape)

    xs, ys = prepare(xs), prepare(ys)
    joint = np.hstack([xs, ys])
    dist, _ = cKDTree(joint).query(joint, k=k + 1, p=np.inf)
    radius = np.nextafter(dist[:, k], 0.0)  # strictly closer than the k-th joint neighbour
    nx = cKDTree(xs).query_ball_point(xs, radius, p=np.inf, return_length=True) - 1
    ny = cKDTree(ys).query_ball_point(ys, radius, p=np.inf, return_length=True) - 1
    return float(digamma(k) + digamma(n) - np.mean(digamma(nx + 1) + digamma(ny + 1)))
