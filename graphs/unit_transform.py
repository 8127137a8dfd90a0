"""The units' transform of a co-occurrence graph (:mod:`graphs.cooccurrence`): each kept unit standardised for
correlations, ``z = (x - mean) / (std √N)``, or fired for PMI, ``1[x > threshold]``; and co-firing counts made PMI."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from graphs.moments import ShiftedSums

__all__ = ["UnitTransform", "pmi_inplace", "transform_resident"]


def _thresholds(threshold, mean: torch.Tensor, num_units: int, kept: torch.Tensor) -> torch.Tensor:
    """Per-kept-unit firing thresholds (float64): the given ones, or each unit's ``mean``."""
    if threshold is None:
        return mean[kept]
    thr = torch.as_tensor(np.asarray(threshold) if not isinstance(threshold, torch.Tensor) else threshold,
                          dtype=torch.float64).reshape(-1).to(mean.device)
    if thr.numel() == 1:
        return thr.expand(kept.numel()).clone()
    if thr.numel() != num_units:
        raise ValueError(f"threshold must be a number or have {num_units} entries (one per unit), "
                         f"got {thr.numel()}")
    if not bool(torch.isfinite(thr).all()):
        raise ValueError("threshold contains NaN/Inf; pass finite per-unit thresholds")
    return thr[kept]


@dataclass
class UnitTransform:
    """Map float64 values of the kept units to float32: standardised (``scale``) or fired (PMI, no scale).

    ``centre [uk]`` is in the input's units: each unit's mean (correlations) or firing threshold (PMI).
    """

    kept: torch.Tensor
    all_kept: bool
    centre: torch.Tensor
    scale: torch.Tensor | None

    @classmethod
    def fit(cls, metric: str, sums: ShiftedSums, offset: torch.Tensor, kept: torch.Tensor, threshold):
        mean = sums.mean + offset
        if metric == "pmi":
            return cls(kept, kept.numel() == sums.mean.numel(), _thresholds(threshold, mean, mean.numel(), kept), None)
        return cls(kept, kept.numel() == sums.mean.numel(), mean[kept], sums.m2[kept].rsqrt())

    def select(self, values: torch.Tensor) -> torch.Tensor:
        """The kept columns of ``values [b, U]``."""
        return values if self.all_kept else values[:, self.kept]

    def __call__(self, values: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """float64 ``values [b, uk]`` (overwritten), ``centre`` expressed in their units -> float32."""
        if self.scale is None:
            return (values > centre).float()
        return values.sub_(centre).mul_(self.scale).float()


def transform_resident(z: torch.Tensor, transform: UnitTransform, offset: torch.Tensor, counts: torch.Tensor,
                       chunk_rows: int) -> torch.Tensor:
    """Transform ``z [N, U]`` in place, compacting it to the kept units ``[N, uk]`` (row i moves to i·uk <= i·U).

    Adds the firings per unit to ``counts`` for PMI.
    """
    n, uk = z.shape[0], transform.kept.numel()
    flat, centre_z = z.view(-1), transform.centre - offset[transform.kept]
    for a in range(0, n, chunk_rows):
        b = min(a + chunk_rows, n)
        vals = z[a:b].double()  # a copy: writing over these rows afterwards is safe
        t = transform(transform.select(vals), centre_z)
        flat[a * uk : b * uk].view(b - a, uk).copy_(t)
        if transform.scale is None:
            counts += t.sum(0, dtype=torch.float64)
    return flat[: n * uk].view(n, uk)


def pmi_inplace(band: torch.Tensor, counts: torch.Tensor, r0: int, n: int) -> None:
    """Turn co-firing counts into PMI; rows/columns of units that never or always fire become -inf."""
    c = counts.float()
    band.mul_(float(n)).div_(c[r0 : r0 + band.shape[0], None]).div_(c[None, r0:]).log_()
    degenerate = (counts <= 0) | (counts >= n)
    if bool(degenerate.any()):
        band[degenerate[r0 : r0 + band.shape[0]]] = -torch.inf
        band[:, degenerate[r0:]] = -torch.inf
    band.nan_to_num_(nan=-torch.inf)
