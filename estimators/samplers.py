"""Correlated Gaussian samples whose mutual information is known exactly.

``X`` and ``Y`` have ``d`` standard-normal coordinates; pair ``k`` has correlation
``rho[k]`` and pairs are independent, so ``I(X;Y) = -1/2 sum_k log(1 - rho_k^2)`` nats.
An optional random rotation of each side (``rotate=True``) hides the pairing from the
critic without changing the MI (MI is invariant under invertible maps of X and of Y).
Tests and benchmarks assert estimates against these truths (bmi's "samplers know their MI").
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["gaussian_pairs", "gaussian_pairs_cov", "pairs_mi", "rho_for_mi"]


def rho_for_mi(mi: float, dim: int = 1) -> float:
    """The per-pair correlation giving total MI ``mi`` nats over ``dim`` equal pairs."""
    if mi < 0 or dim < 1:
        raise ValueError(f"need mi >= 0 and dim >= 1, got mi={mi}, dim={dim}")
    return math.sqrt(1.0 - math.exp(-2.0 * mi / dim))


def pairs_mi(rho) -> np.ndarray | float:
    """Exact MI in nats of independent pairs with correlations ``rho`` (last axis summed)."""
    r = np.asarray(rho, dtype=np.float64)
    out = -0.5 * np.log1p(-(r ** 2)).sum(axis=-1)
    return float(out) if out.ndim == 0 else out


def gaussian_pairs_cov(rho) -> np.ndarray:
    """Joint covariance ``[2d, 2d]`` (float64) of ``(X, Y)`` for per-pair correlations ``rho [d]``."""
    r = np.atleast_1d(np.asarray(rho, dtype=np.float64))
    d = r.shape[0]
    cov = np.eye(2 * d)
    cov[np.arange(d), d + np.arange(d)] = r
    cov[d + np.arange(d), np.arange(d)] = r
    return cov


def _random_orthogonal(p: int, d: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(p, d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)


def gaussian_pairs(n_samples: int, rho, *, seed: int = 0, rotate: bool = False,
                   dtype: torch.dtype = torch.float32):
    """Draw paired Gaussian samples of known MI.

    Parameters
    ----------
    n_samples : N.
    rho : float, sequence of shape (d,) or array of shape (P, d): per-pair correlations in (-1, 1).
    seed : seed of the draw. rotate : apply an independent random rotation to X and to Y
        (per problem), so the information is spread over all coordinates.

    Returns
    -------
    x, y : Tensor of shape (N, d), or (P, N, d) when ``rho`` is 2-D.
    mi : float, or float64 Tensor of shape (P,): the exact MI in nats.
    """
    r = torch.as_tensor(np.asarray(rho, dtype=np.float64))
    batched = r.ndim == 2
    r = r.reshape(1, -1) if r.ndim < 2 else r
    if bool((r.abs() >= 1).any()):
        raise ValueError(f"correlations must lie in (-1, 1), got max |rho|={float(r.abs().max())}")
    p, d = r.shape
    gen = torch.Generator().manual_seed(int(seed))
    z1 = torch.randn(p, n_samples, d, generator=gen, dtype=torch.float64)
    z2 = torch.randn(p, n_samples, d, generator=gen, dtype=torch.float64)
    rr = r.unsqueeze(1)
    x, y = z1, rr * z1 + torch.sqrt(1 - rr ** 2) * z2
    if rotate and d > 1:
        x = x @ _random_orthogonal(p, d, gen)
        y = y @ _random_orthogonal(p, d, gen)
    mi = -0.5 * torch.log1p(-(r ** 2)).sum(dim=1)
    x, y = x.to(dtype), y.to(dtype)
    if batched:
        return x, y, mi
    return x[0], y[0], float(mi[0])
