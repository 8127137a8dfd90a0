"""The separation-of-scales bound: the largest output change from a perturbation a level discards.

A level's coarse variables read the level-0 units through the composed linear map ``A = M_lᵀ
[J, U0]`` (:meth:`rsmi_nn.Run.feature_map_sparse`; exact for linear filters, the linear part of
binarised or MLP ones). The *kept* directions are the row space of ``A``; the *discarded* ones its
null space — a perturbation there leaves every coarse variable unchanged. For each held-out input
every activation row (an input, or a token) gets a perturbation ``δ`` of the natural residual norm
``ρ`` (the mean ``‖x − x̂‖`` of the level's rsmi reconstruction over the held-out rows), confined to
one subspace, and all recorded modules are spliced with ``x + δ`` at once. Projected gradient
ascent on each input's output change (KL for classifiers and LMs, 1 − cosine for encoders):
normalised gradient steps, projection onto the subspace, rescaling of every row to ``ρ``; several
random starts; the best value seen per input is kept (every start's random initial point
included), then averaged over inputs. ``random`` is the mean change under random directions of the
whole space of the same norm; ``random_discarded`` the same inside the discarded subspace.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["Subspace", "worst_case"]


class Subspace:
    """Orthogonal projections onto the row space of a sparse ``A [J, U]`` (kept) and its complement."""

    def __init__(self, a_sparse):
        from scipy.linalg import cho_factor

        self.a = a_sparse.tocsr().astype(np.float64)
        gram = (self.a @ self.a.T).toarray()
        gram[np.diag_indices_from(gram)] += 1e-10 * max(float(np.diag(gram).mean()), 1e-30)
        self.factor = cho_factor(gram)

    def kept(self, d: torch.Tensor) -> torch.Tensor:
        """``Aᵀ (A Aᵀ)⁻¹ A d`` row by row, for ``d [n, U]``."""
        from scipy.linalg import cho_solve

        coef = cho_solve(self.factor, self.a @ d.detach().cpu().double().numpy().T)  # [J, n]
        return torch.from_numpy(np.asarray(self.a.T @ coef).T).to(d)

    def discarded(self, d: torch.Tensor) -> torch.Tensor:
        return d - self.kept(d)


def _rows_to_norm(d: torch.Tensor, rho: float) -> torch.Tensor:
    return d * (rho / d.norm(dim=1, keepdim=True).clamp_min(1e-30))


def _ascend(spliced, kind, batch, clean_items, x, project, rho, *, starts, steps, lr, gen) -> torch.Tensor:
    """Per-input maximum over starts and steps of the output change; ``[batch.size]``."""
    best = torch.zeros(batch.size, dtype=torch.float64)
    for _ in range(starts):
        d = _rows_to_norm(project(torch.randn(x.shape, generator=gen, dtype=x.dtype)), rho)
        for step in range(steps + 1):
            d = d.detach().requires_grad_(step < steps)
            with torch.set_grad_enabled(step < steps):
                out = spliced.run_batch(batch, x + d)
                change = kind.input_change(clean_items, out, batch)
            best = torch.maximum(best, change.detach().double().cpu())
            if step == steps:
                break
            (g,) = torch.autograd.grad(change.sum(), d)
            g = project(g.detach())
            rate = lr * (1 - step / steps) + 0.05
            d = _rows_to_norm(project(d.detach() + rate * _rows_to_norm(g, rho)), rho)
    return best


def _random(spliced, kind, batch, clean_items, x, project, rho, *, draws, gen) -> torch.Tensor:
    total = torch.zeros(batch.size, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(draws):
            d = _rows_to_norm(project(torch.randn(x.shape, generator=gen, dtype=x.dtype)), rho)
            total += kind.input_change(clean_items, spliced.run_batch(batch, x + d), batch).double().cpu()
    return total / draws


def worst_case(spliced, kind, x: torch.Tensor, clean: list[torch.Tensor], subspace: Subspace, rho: float, *,
               starts: int = 4, steps: int = 20, lr: float = 0.5, seed: int = 0) -> dict:
    """The worst-case and random output changes at perturbation norm ``rho`` (see the module docstring).

    Parameters
    ----------
    spliced : :class:`~rsmi_nn.app.evaluation.model.SplicedModel` on the inputs to use.
    kind : its :class:`~rsmi_nn.app.evaluation.metrics.OutputKind`.
    x : ``[spliced.num_rows, U0]`` clean activations; ``clean``: the clean outputs per batch.
    subspace : the level's :class:`Subspace`.
    starts, steps, lr : random starts, ascent steps per start, first step size (in units of ``rho``).

    Returns
    -------
    dict: ``discarded``, ``kept``, ``random``, ``random_discarded`` (mean over inputs of the output
    change), ``ratio`` (discarded / kept), ``norm`` (``rho``), and the settings.
    """
    gen = torch.Generator().manual_seed(seed)
    sums = {"discarded": 0.0, "kept": 0.0, "random": 0.0, "random_discarded": 0.0}
    n = 0
    for batch, clean_items in zip(spliced.batches, clean, strict=True):
        rows = x[batch.start:batch.stop]
        opts = {"starts": starts, "steps": steps, "lr": lr, "gen": gen}
        sums["discarded"] += float(_ascend(spliced, kind, batch, clean_items, rows, subspace.discarded, rho,
                                           **opts).sum())
        sums["kept"] += float(_ascend(spliced, kind, batch, clean_items, rows, subspace.kept, rho, **opts).sum())
        sums["random"] += float(_random(spliced, kind, batch, clean_items, rows, lambda d: d, rho, draws=starts,
                                        gen=gen).sum())
        sums["random_discarded"] += float(_random(spliced, kind, batch, clean_items, rows, subspace.discarded, rho,
                                                  draws=starts, gen=gen).sum())
        n += batch.size
    out = {k: v / max(n, 1) for k, v in sums.items()}
    out["ratio"] = out["discarded"] / out["kept"] if out["kept"] > 0 else float("nan")
    out.update(norm=float(rho), starts=starts, steps=steps, inputs=n)
    return out
