"""Scores of coarse variables against a planted hierarchy (:mod:`experiments.tmr`).

For one level of one method:

- ``ari``: adjusted Rand index of the blocks (as unions of level-0 units) against the planted groups of
  the same level; a unit in no block counts as a block of its own.
- ``corr``: for every block, the |corr| of its coarse variable (the best linear combination of its ``h``
  components when ``h > 1``) with the latent of the planted group holding most of its units, over that
  group's ceiling (the best |corr| any linear function of the group's own units reaches). Methods
  without blocks (global PCA, SAE) are scored per planted group by their best-matching single latent.
- ``reads_latent``: the fraction of blocks whose variable correlates more with its latent than with any
  nuisance variable.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["ari", "level_scores", "multiple_corr", "score_method"]


def ari(blocks: torch.Tensor, groups: torch.Tensor) -> float:
    """Adjusted Rand index of a unit → block assignment (-1: no block) against the planted groups."""
    from sklearn.metrics import adjusted_rand_score

    b = np.asarray(blocks, dtype=np.int64).copy()
    loose = b < 0
    b[loose] = b.max(initial=0) + 1 + np.arange(int(loose.sum()))
    return float(adjusted_rand_score(np.asarray(groups), b))


def _standardised(a: torch.Tensor) -> torch.Tensor:
    a = a.double()
    a = a - a.mean(0)
    return a / a.norm(dim=0).clamp_min(1e-12)


def multiple_corr(h: torch.Tensor, z: torch.Tensor) -> float:
    """The |corr| of the best linear combination of the columns of ``h [N, c]`` with ``z [N]``."""
    hs, zs = _standardised(h.reshape(h.shape[0], -1)), _standardised(z.reshape(-1, 1))
    coef = torch.linalg.lstsq(hs, zs).solution
    return float((hs @ coef).norm().clamp(max=1.0))


def level_scores(coarse: torch.Tensor, unit_blocks: torch.Tensor | None, hidden: int, sample, level: int,
                 rows: slice | None = None) -> dict:
    """Scores of one level's coarse variables ``[N, J·hidden]`` (column ``j·hidden + c``) on the sample's rows.

    ``unit_blocks [U]``: each level-0 unit's block at this level (None for a method without blocks).
    ``rows`` picks the sample rows that ``coarse`` was computed on (default: all).
    """
    rows = rows if rows is not None else slice(None)
    z = sample.latents[level][rows]
    nu = _standardised(sample.nuisance_samples[rows])
    groups = sample.groups[level]
    ceiling = sample.ceiling[level]
    if unit_blocks is None:
        c = (_standardised(coarse).T @ _standardised(z)).abs()  # [latents, groups]
        best = c.max(0).values.numpy()
        return {"ari": None, "corr": (best / ceiling).tolist(), "corr_raw": best.tolist(),
                "corr_mean": float(np.mean(best / ceiling)), "corr_min": float(np.min(best / ceiling)),
                "reads_latent": None, "num_latents": int(coarse.shape[1])}
    num_blocks = coarse.shape[1] // hidden
    ratios, raw, reads, majority = [], [], [], []
    for j in range(num_blocks):
        members = groups[unit_blocks == j]
        if members.numel() == 0:
            continue
        g = int(torch.mode(members).values)
        h = coarse[:, j * hidden:(j + 1) * hidden]
        r = multiple_corr(h, z[:, g])
        nuis = float((_standardised(h).T @ nu).abs().max()) if nu.shape[1] else 0.0
        ratios.append(r / ceiling[g])
        raw.append(r)
        reads.append(r > nuis)
        majority.append(g)
    ratios = np.asarray(ratios)
    return {"ari": ari(unit_blocks, groups), "corr": ratios.tolist(), "corr_raw": raw, "group_of_block": majority,
            "corr_mean": float(ratios.mean()), "corr_min": float(ratios.min()), "reads_latent": float(np.mean(reads)),
            "num_latents": int(coarse.shape[1])}


def score_method(method: str, x_fit: torch.Tensor, x_test: torch.Tensor, sample, test_rows: slice,
                 unit_blocks: list[torch.Tensor], hidden: list[int], *, seed: int = 0, sae_steps: int = 2000) -> list[dict]:
    """A baseline of :mod:`rsmi_nn.baselines` scored level by level with RSMI's blocks and latent counts.

    ``unit_blocks[l]`` and ``hidden[l]`` are the RSMI flow's level-``l`` blocks (unions of level-0 units) and
    components per block; the baseline gets the same blocks (block methods) or the same number of latents.
    """
    from rsmi_nn.baselines import fit_baseline

    out = []
    for level, (blocks, h) in enumerate(zip(unit_blocks, hidden)):
        num_blocks = int(blocks.max()) + 1
        if method == "block-mean" and h != 1:
            h = 1
        enc = fit_baseline(method, x_fit, blocks if method.startswith("block") else None, num_blocks * h,
                           seed=seed, sae_steps=sae_steps)
        coarse = enc.encode(x_test)
        per_block = blocks if method.startswith("block") else None
        out.append(level_scores(coarse, per_block, h, sample, level, test_rows))
    return out
