"""Evaluate a bound on a whole held-out set, in row chunks, with a standard error.

A held-out set of M rows defines one ``M x M`` score matrix per problem; using all of it
(rather than averaging small batches) gives InfoNCE the largest possible ceiling
``log M`` and the smallest finite-batch bias, and gives the other bounds ``M(M-1)``
negative pairs. The matrix is never held whole: rows are scored in chunks against all
columns and reduced to per-row statistics, from which each bound recombines itself exactly
(:meth:`estimators.bounds.Bound.from_row_statistics`; ``heldout_bound`` equals
``get_bound(name).estimate(critic(x, y))`` on the full matrix).

The standard error is a batch-means estimate: the rows are cut into ``n_groups`` disjoint
groups, the bound is evaluated on each group's rows (against all columns), and
``stderr = std(group values) / sqrt(n_groups)``.
"""

from __future__ import annotations

import math

import torch

from estimators.bounds import Bound, get_bound

__all__ = ["bound_with_stderr", "heldout_bound", "row_statistics"]

# Elements of one scores chunk: 8 MiB of float32. With 32 MiB chunks (glibc's largest dynamic mmap
# threshold) the held-out pass of a 4 096-block RSMI level peaked 3-13 GiB above its working set, varying
# from run to run (L = 128 Ising flow: 4.5-14 GiB); 8 MiB: 2.2 GiB; 2 MiB: 1.9 GiB but the default run's
# flow 35 % slower (one row per chunk: the critic runs on tiny batches). Measured on this 2-core CPU.
SCORE_BUDGET = 1 << 21


@torch.no_grad()
def row_statistics(critic, x, y: torch.Tensor, x_mask=None, y_mask=None, *,
                   clip: float | None = None, budget: int = SCORE_BUDGET) -> dict[str, torch.Tensor]:
    """Per-row reductions of the held-out score matrix ``f[p, i, j] = f_p(x_i, y_j)``.

    ``x`` is a ``[P, M, x_dim]`` tensor, or a callable ``x(start, stop) -> [P, stop - start, x_dim]``
    that builds a chunk's rows on the fly (RSMI gathers every block's environment rows that
    way, so the ``[P, M, x_dim]`` tensor is never formed).

    Returns ``[P, M]`` tensors: ``diag`` (``f_ii``), ``lse`` (``logsumexp_j f_ij``),
    ``lse_off`` (``logsumexp_{j != i} f_ij``) and, when ``clip`` is given,
    ``lse_off_clip`` (same over ``f`` clamped to ``[-clip, clip]``).
    """
    p, m = y.shape[0], y.shape[1]
    x_rows = x if callable(x) else (lambda start, stop: x[:, start:stop])
    if hasattr(critic, "embed_x"):  # separable: embed the columns once
        ey = critic.embed_y(y, y_mask).transpose(1, 2)

        def score_rows(start: int, stop: int) -> torch.Tensor:
            return torch.bmm(critic.embed_x(x_rows(start, stop), x_mask), ey)

        per_pair = 1
    else:
        def score_rows(start: int, stop: int) -> torch.Tensor:
            return critic(x_rows(start, stop), y, x_mask, y_mask)

        per_pair = getattr(critic, "hidden", 1)  # a concat critic holds [P, rows, M, hidden]
    chunk = max(1, min(m, budget // per_pair // max(1, p * m)))
    out = {"diag": [], "lse": [], "lse_off": []}
    if clip is not None:
        out["lse_off_clip"] = []
    for start in range(0, m, chunk):
        stop = min(m, start + chunk)
        s = score_rows(start, stop)
        rows = torch.arange(stop - start, device=s.device)
        cols = rows + start
        out["diag"].append(s[:, rows, cols])
        out["lse"].append(torch.logsumexp(s, dim=2))
        s[:, rows, cols] = -math.inf
        out["lse_off"].append(torch.logsumexp(s, dim=2))
        if clip is not None:
            c = s.clamp(-clip, clip)
            c[:, rows, cols] = -math.inf
            out["lse_off_clip"].append(torch.logsumexp(c, dim=2))
    return {k: torch.cat(v, dim=1) for k, v in out.items()}


def heldout_bound(critic, x, y: torch.Tensor, bound: str | Bound = "infonce", x_mask=None,
                  y_mask=None, *, n_groups: int = 10, budget: int = SCORE_BUDGET) -> tuple[torch.Tensor, torch.Tensor]:
    """Bound on all M held-out rows and its batch-means standard error, both ``[P]`` nats.

    Parameters
    ----------
    critic : a critic from :mod:`estimators.critics` (or any module with the same call).
    x, y : Tensor of shape (P, M, x_dim), (P, M, y_dim), already preprocessed like the training data;
        ``x`` may instead be a row-range callable (see :func:`row_statistics`).
    bound : a name or :class:`Bound`; only its estimate is used (no training state).
    n_groups : number of disjoint row groups for the standard error.
    """
    bound = get_bound(bound)
    m = y.shape[1]
    if m < 2:
        raise ValueError(f"the held-out set has {m} rows; at least 2 are needed")
    if not callable(x) and tuple(x.shape[:2]) != tuple(y.shape[:2]):
        raise ValueError(f"x has shape {tuple(x.shape)} but y has shape {tuple(y.shape)}; "
                         "both must be [P, M, d] with the same P and M")
    stats = row_statistics(critic, x, y, x_mask, y_mask, clip=bound.clip, budget=budget)
    return bound_with_stderr(bound, stats, n_groups=n_groups)


def bound_with_stderr(bound: Bound, stats: dict[str, torch.Tensor], *, n_groups: int = 10):
    """The bound from row statistics over all M rows, and its batch-means standard error (``[P]`` each)."""
    m = stats["diag"].shape[1]
    value = bound.from_row_statistics(stats, m)
    g = max(2, min(n_groups, m // 2))
    groups = torch.tensor_split(torch.arange(m, device=stats["diag"].device), g)
    per_group = torch.stack([bound.from_row_statistics({k: v[:, idx] for k, v in stats.items()}, m) for idx in groups],
                            dim=1)
    return value, per_group.std(dim=1) / math.sqrt(g)
