"""The relevance spectrum of each block, and ``hidden="auto"``: as many components as carry information.

For every block the RSMI step is trained with ``h = 1 … max_hidden`` components (each ``h`` one batched
step over all blocks); the held-out ``I(H_{1..h}; E)`` against ``h`` is the block's *relevance spectrum*.
Its ceiling is an independent estimate of ``I(V; E)``: the Gaussian plug-in
``½ [log det Σ_V + log det Σ_E − log det Σ_{V∪E}]`` from the standardised samples (exact for Gaussian
data; for other data the information a linear-Gaussian model of the block sees). A block's number of
relevant components is the smallest ``h`` whose MI comes within ``tolerance · ceiling`` (or two standard
errors, whichever is larger) of the best the spectrum reaches, capped by the ceiling.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from rsmi_nn.filters import uniform_blocks
from rsmi_nn.options import StepOptions

__all__ = ["AUTO_MAX_HIDDEN", "AUTO_TOLERANCE", "auto_coarse_grain", "choose_hidden", "gaussian_ceiling"]

log = logging.getLogger(__name__)

AUTO_MAX_HIDDEN = 4  # largest h tried by hidden="auto" (capped by the largest block)
AUTO_TOLERANCE = 0.05  # a component is relevant when it adds more than this fraction of the ceiling


@torch.no_grad()
def gaussian_ceiling(z: torch.Tensor, regions, *, chunk: int = 64) -> torch.Tensor:
    """Gaussian plug-in ``I(V_j; E_j)`` in nats of every block (float64 ``[J]``) from standardised samples ``z [N, U]``.

    Padded entries are replaced by independent unit-variance coordinates, which add nothing to any log-det.
    """
    vis, vm = regions.visible, regions.visible_mask
    env, em = regions.environment, regions.environment_mask
    idx = torch.cat([vis, env], 1).clamp_min(0)
    mask = torch.cat([vm, em], 1)
    nv = vis.shape[1]
    out = torch.empty(idx.shape[0], dtype=torch.float64)
    for a in range(0, idx.shape[0], chunk):
        ids, m = idx[a:a + chunk], mask[a:a + chunk].double()
        cols = z[:, ids.reshape(-1)].double().reshape(z.shape[0], *ids.shape).permute(1, 0, 2)  # [c, N, d]
        cols = (cols - cols.mean(1, keepdim=True)) * m[:, None]
        cov = cols.transpose(1, 2) @ cols / (z.shape[0] - 1)
        cov = cov + torch.diag_embed(1.0 - m)  # padding: unit variance, uncorrelated
        out[a:a + chunk] = 0.5 * (torch.logdet(cov[:, :nv, :nv]) + torch.logdet(cov[:, nv:, nv:]) - torch.logdet(cov))
    return out.clamp_min(0.0)


def choose_hidden(spectrum: torch.Tensor, stderr: torch.Tensor, ceiling: torch.Tensor,
                  tolerance: float = AUTO_TOLERANCE) -> torch.Tensor:
    """Components per block (LongTensor ``[J]``) from a spectrum ``[J, k]`` (column ``h-1``: MI with ``h`` components).

    The smallest ``h`` with ``MI_h >= min(best, ceiling) - max(tolerance · ceiling, 2 · s.e. of the best)``.
    """
    best, at = spectrum.max(1)
    se = stderr.gather(1, at[:, None]).squeeze(1)
    target = torch.minimum(best, ceiling.to(spectrum)) - torch.maximum(tolerance * ceiling.to(spectrum), 2 * se)
    return (spectrum >= target[:, None]).int().argmax(1) + 1


def auto_coarse_grain(x, regions, options: StepOptions, *, seed: int = 0, device="auto", progress: bool = False,
                      allow_constant: bool = False, max_hidden: int = AUTO_MAX_HIDDEN, bound=None):
    """``coarse_grain(..., hidden="auto")``: one step per ``h``, each block keeps the ``h`` where its spectrum saturates.

    Returns a :class:`~rsmi_nn.coarse_graining.CoarseGrainResult` with ``hidden = max_j h_j``, filters
    ``[J, max_visible, hidden]`` whose columns ``h_j …`` are zero for block ``j`` (its coarse variables there
    are constant 0), ``hidden_per_block [J]``, and in ``info``: ``relevance_spectrum [J, k]`` (held-out MI,
    nats), ``relevance_stderr [J, k]``, ``mi_ceiling_gaussian [J]`` (the plug-in ``I(V;E)``).
    """
    from rsmi_nn.coarse_graining import coarse_grain
    from rsmi_nn.standardising import standardise

    if options.filter != "linear":
        raise ValueError("hidden='auto' needs filter='linear' (per-block widths are zero-padded linear filters); "
                         "pass an integer hidden with filter='mlp'")
    if options.shared:
        raise ValueError("hidden='auto' picks h block by block; it cannot be combined with shared=True")
    k = max(1, min(max_hidden, int(regions.visible_mask.sum(1).max())))
    custom = {} if bound is None else {"bound": bound}  # an estimators.Bound instance
    results = [coarse_grain(x, regions, options.replace(hidden=h), seed=seed, device=device, progress=progress,
                            allow_constant=allow_constant, **custom) for h in range(1, k + 1)]
    spectrum = torch.stack([r.mi.double() for r in results], 1)
    stderr = torch.stack([r.mi_stderr.double() for r in results], 1)
    _, _, z = standardise(x)
    ceiling = gaussian_ceiling(z, regions)
    per_block = torch.minimum(choose_hidden(spectrum, stderr, ceiling), regions.visible_mask.sum(1))
    h_max = int(per_block.max())
    j = torch.arange(regions.num_blocks)
    filters = torch.zeros(regions.num_blocks, results[0].filters.shape[1], h_max)
    for h in range(1, h_max + 1):
        rows = j[per_block == h]
        filters[rows, :, :h] = results[h - 1].filters[rows]
    pick = (per_block - 1)[:, None]
    chosen = {name: torch.stack([getattr(r, name) for r in results], 1).gather(1, pick).squeeze(1)
              for name in ("mi", "mi_stderr", "mi_validation")}
    one = per_block == 1  # their filters are the h = 1 step's, snapped there if binarised and near uniform
    snapped = uniform_blocks(filters[one][..., :1], regions.visible_mask[one]) if results[0].info["uniform_blocks"] else 0
    info = {**results[h_max - 1].info, "relevance_spectrum": spectrum, "relevance_stderr": stderr,
            "mi_ceiling_gaussian": ceiling, "steps_run": max(r.info["steps_run"] for r in results),
            "collapsed_blocks": sorted({b for r in results for b in r.info["collapsed_blocks"]}),
            "uniform_blocks": snapped}
    log.info("hidden='auto': components per block %s (spectrum h = 1..%d)",
             torch.bincount(per_block, minlength=k + 1)[1:].tolist(), k)
    return replace(results[h_max - 1], filters=filters, hidden=h_max, hidden_per_block=per_block, info=info,
                   **chosen)
