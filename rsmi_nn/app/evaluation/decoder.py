"""The linear decoder from coarse variables back to the recorded units, fitted by ridge least squares.

``x̂ = mean_x + z @ W`` with ``z = (c - mean_c) / std_c`` the standardised codes ``[N, J]`` and
``W = (zᵀz + λ N I)⁻¹ zᵀ (x - mean_x)``: ridge regression with ``λ = ridge`` (default 1e-3) relative to
each standardised code's own sum of squares (``N``), so the regulariser is scale-free and the same for
every method. Fitted on the flow's own samples (the run's training rows), applied to held-out rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LinearDecoder", "explained_variance"]

DEFAULT_RIDGE = 1e-3


@dataclass
class LinearDecoder:
    """A fitted decoder; ``weight [J, U]`` acts on standardised codes (see the module docstring)."""

    weight: torch.Tensor
    x_mean: torch.Tensor
    code_mean: torch.Tensor
    code_std: torch.Tensor
    ridge: float

    @classmethod
    def fit(cls, codes: torch.Tensor, x: torch.Tensor, *, ridge: float = DEFAULT_RIDGE) -> LinearDecoder:
        """Least squares of ``x [N, U]`` on ``codes [N, J]`` (float64 normal equations, Cholesky)."""
        if codes.shape[0] != x.shape[0]:
            raise ValueError(f"codes have {codes.shape[0]} rows but x has {x.shape[0]}; pass the same samples")
        c = codes.double()
        mean, std = c.mean(0), c.std(0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        z = (c - mean) / std
        x_mean = x.float().mean(0)  # torch's cascade sum: float64-grade accuracy
        gram = z.T @ z
        gram.diagonal().add_(ridge * z.shape[0])
        rhs = (z.float().T @ (x.float() - x_mean)).double()
        weight = torch.cholesky_solve(rhs, torch.linalg.cholesky(gram))
        return cls(weight.float(), x_mean.float(), mean.float(), std.float(), ridge)

    def standardise(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes.float() - self.code_mean) / self.code_std

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``[n, U]`` reconstruction of the units from ``codes [n, J]``."""
        return self.x_mean + self.standardise(codes) @ self.weight

    def directions(self) -> torch.Tensor:
        """``[J, U]``: the change of x̂ per unit change of each (raw) code."""
        return self.weight / self.code_std[:, None]


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """``1 - Σ‖x - x̂‖² / Σ‖x - mean(x)‖²`` over rows and units (raw units)."""
    resid = (x.float() - x_hat.float()).pow(2).sum(dtype=torch.float64)
    total = (x.float() - x.float().mean(0)).pow(2).sum(dtype=torch.float64)
    return float(1 - resid / total)
