"""The linear decoder from coarse variables back to the recorded units, fitted by ridge least squares.

``x̂ = mean_x + z @ W`` with ``z = (c - mean_c) / std_c`` the standardised codes ``[N, J]`` and
``W = (zᵀz + λ N I)⁻¹ zᵀ (x - mean_x)``: ridge regression with ``λ = ridge`` (default 1e-3) relative to
each standardised code's own sum of squares (``N``), so the regulariser is scale-free and the same for
every method. Fitted on the flow's own samples (the run's training rows), applied to held-out rows.

The products are associated for speed, not changed: ``W = [(zᵀz + λNI)⁻¹ zᵀ] (x - mean_x)`` (the float64
solve has ``N`` right-hand sides, the one large product is float32), and :func:`reconstruct` forms
``x̂_test = mean_x + [z_test (zᵀz + λNI)⁻¹ zᵀ] (x - mean_x)`` without ``W`` when that is cheaper (many
codes, few held-out rows). The centred targets :class:`Targets` are made once and shared by every fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LinearDecoder", "Targets", "explained_variance", "reconstruct"]

DEFAULT_RIDGE = 1e-3


@dataclass
class Targets:
    """The samples a decoder reconstructs: ``mean [U]`` and ``centred = x - mean`` ``[N, U]``, float32."""

    mean: torch.Tensor
    centred: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor) -> Targets:
        x = x.float()
        mean = x.mean(0)  # torch's cascade sum: float64-grade accuracy
        return cls(mean, x - mean)


def _targets(x) -> Targets:
    return x if isinstance(x, Targets) else Targets.of(x)


def _ridge_system(codes: torch.Tensor, num_rows: int, ridge: float):
    """Standardised codes ``z [N, J]`` (float64), their mean and std, and the Cholesky factor of ``zᵀz + λ N I``."""
    if codes.shape[0] != num_rows:
        raise ValueError(f"codes have {codes.shape[0]} rows but x has {num_rows}; pass the same samples")
    c = codes.double()
    mean, std = c.mean(0), c.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    z = (c - mean) / std
    gram = z.T @ z
    gram.diagonal().add_(ridge * z.shape[0])
    return z, mean, std, torch.linalg.cholesky(gram)


@dataclass
class LinearDecoder:
    """A fitted decoder; ``weight [J, U]`` acts on standardised codes (see the module docstring)."""

    weight: torch.Tensor
    x_mean: torch.Tensor
    code_mean: torch.Tensor
    code_std: torch.Tensor
    ridge: float

    @classmethod
    def fit(cls, codes: torch.Tensor, x, *, ridge: float = DEFAULT_RIDGE) -> LinearDecoder:
        """Least squares of ``x [N, U]`` (a tensor or its :class:`Targets`) on ``codes [N, J]``."""
        t = _targets(x)
        z, mean, std, factor = _ridge_system(codes, t.centred.shape[0], ridge)
        weight = torch.cholesky_solve(z.T, factor).float() @ t.centred
        return cls(weight, t.mean, mean.float(), std.float(), ridge)

    def standardise(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes.float() - self.code_mean) / self.code_std

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``[n, U]`` reconstruction of the units from ``codes [n, J]``."""
        return self.x_mean + self.standardise(codes) @ self.weight

    def directions(self) -> torch.Tensor:
        """``[J, U]``: the change of x̂ per unit change of each (raw) code."""
        return self.weight / self.code_std[:, None]


def reconstruct(codes: torch.Tensor, x, codes_test: torch.Tensor, *, ridge: float = DEFAULT_RIDGE) -> torch.Tensor:
    """``LinearDecoder.fit(codes, x, ridge=ridge).decode(codes_test)`` ``[n, U]``, by the cheaper association."""
    t = _targets(x)
    (num, j), n, u = codes.shape, codes_test.shape[0], t.centred.shape[1]
    if j * num * u <= n * num * (j + u):
        return LinearDecoder.fit(codes, t, ridge=ridge).decode(codes_test)
    z, mean, std, factor = _ridge_system(codes, num, ridge)
    a = torch.cholesky_solve(((codes_test.double() - mean) / std).T, factor).T   # [n, J]: z_test (zᵀz + λNI)⁻¹
    return t.mean + (a.float() @ z.float().T) @ t.centred


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor, total: float | None = None) -> float:
    """``1 - Σ‖x - x̂‖² / Σ‖x - mean(x)‖²`` over rows and units (raw units); ``total``: the denominator, if known."""
    resid = (x.float() - x_hat.float()).pow(2).sum(dtype=torch.float64)
    if total is None:
        total = (x.float() - x.float().mean(0)).pow(2).sum(dtype=torch.float64)
    return float(1 - resid / total)
