"""Per-unit standardisation of an RSMI step's samples, row chunk by row chunk, in float64 moments and float32 copies."""

from __future__ import annotations

import torch

from estimators.device import Scratch, small_pages
from graphs.moments import ShiftedSums
from rsmi_nn.training import UnitMajor, pick_rows

__all__ = ["standardise", "standardised_chunks", "standardised_splits", "unit_moments"]


def unit_moments(x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit mean and std of ``x [N, U]`` (float64, ``ddof=1``; 1 for constant units), ``rows`` rows at a time."""
    sums = ShiftedSums(x.shape[1], device=x.device)
    for a in range(0, x.shape[0], rows):
        sums.update(x[a:a + rows])
    std = (sums.m2 / (x.shape[0] - 1)).sqrt()
    return sums.mean, torch.where(std > 1e-12, std, torch.ones_like(std))


def standardised_chunks(x: torch.Tensor, order: torch.Tensor | None, mean: torch.Tensor, std: torch.Tensor,
                         rows: int):
    """Yields ``(start, z_chunk)``: ``rows`` rows from ``start`` of the standardised ``x``, in ``order``, in float64
    (a view of one buffer reused by every chunk; the caller's ``copy_`` into float32 rounds as ``.float()`` does):
    the same bits as ``((chunk.double() - mean) / std).float()``. The rows in ``order`` are gathered into a reused
    buffer too (L = 64 Ising, 20 000 rows: 0.55 -> 0.31 s with the float64 buffer; see
    :class:`estimators.device.Scratch`)."""
    work, picked = Scratch(), Scratch()
    for a in range(0, x.shape[0], rows):
        chunk = x[a:a + rows] if order is None else pick_rows(x, order[a:a + rows], picked)
        yield a, work.take(tuple(chunk.shape), mean).copy_(chunk).sub_(mean).div_(std)


def standardise(x: torch.Tensor, order: torch.Tensor | None = None, chunk_elements: int = 2**18):
    """Per-unit mean and std (float64, ``ddof=1``; 1 for constant units) and the float32 standardised copy,
    its rows taken in ``order`` (``z[i]`` standardises ``x[order[i]]``; default: as they are).

    Row chunk by row chunk: the peak is the float32 result plus a chunk, where a whole-array
    float64 formula held ~7 float32 copies of ``x`` at once (1.9 GB on a 128×128 lattice's 4 096
    samples).
    """
    rows = max(1, chunk_elements // x.shape[1])
    mean, std = unit_moments(x, rows)
    z = small_pages(torch.empty(x.shape, dtype=torch.float32, device=x.device))  # written once, kept
    for a, part in standardised_chunks(x, order, mean, std, rows):
        z[a:a + part.shape[0]].copy_(part)
    return mean, std, z


def standardised_splits(x: torch.Tensor, order: torch.Tensor, n_train: int, n_val: int,
                         chunk_elements: int = 2**18):
    """``(mean, std, z_train [n_train, U], z_val, z_test)``: :func:`standardise` in split order, the held-out
    rows written unit-major (:class:`rsmi_nn.training.UnitMajor`, gathered from at every validation) rather
    than transposed at each use; one float32 copy of ``x`` in all, in small pages (written once and kept:
    :func:`estimators.device.small_pages`)."""
    (n, u), rows = x.shape, max(1, chunk_elements // x.shape[1])
    mean, std = unit_moments(x, rows)
    z_train = small_pages(torch.empty(n_train, u, dtype=torch.float32, device=x.device))
    held = small_pages(torch.empty(u + 1, n - n_train, dtype=torch.float32, device=x.device))
    held[-1] = 0.0
    for a, part in standardised_chunks(x, order, mean, std, rows):
        cut = min(max(n_train - a, 0), part.shape[0])  # the chunk's training rows come first
        z_train[a:a + cut].copy_(part[:cut])
        held[:u, a + cut - n_train:a + part.shape[0] - n_train].copy_(part[cut:].t())
    return mean, std, z_train, UnitMajor(held[:, :n_val]), UnitMajor(held[:, n_val:])
