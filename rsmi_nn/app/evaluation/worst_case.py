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
    """Orthogonal projections onto the row space of a sparse ``A [J, U]`` (kept) and its complement.

    float64 throughout, in torch (a sparse ``A``, a Cholesky factor of ``A Aᵀ``): the search's inner loop
    stays in torch's thread pool, which NumPy's BLAS would contend with.
    """

    def __init__(self, a_sparse):
        a = a_sparse.tocsr().astype(np.float64)
        gram = (a @ a.T).toarray()
        gram[np.diag_indices_from(gram)] += 1e-10 * max(float(np.diag(gram).mean()), 1e-30)
        self.a = _torch_sparse(a)
        self.a_t = _torch_sparse(a.T)
        self.factor = torch.linalg.cholesky(torch.from_numpy(gram))

    def kept(self, d: torch.Tensor) -> torch.Tensor:
        """``Aᵀ (A Aᵀ)⁻¹ A d`` row by row, for ``d [n, U]``."""
        coef = torch.cholesky_solve(self.a @ d.detach().cpu().double().T, self.factor)  # [J, n]
        return (self.a_t @ coef).T.to(d)

    def discarded(self, d: torch.Tensor) -> torch.Tensor:
        return d - self.kept(d)


def _torch_sparse(m) -> torch.Tensor:
    """A SciPy sparse matrix as a float64 torch sparse (COO) tensor."""
    m = m.tocoo()
    index = torch.from_numpy(np.vstack([m.row, m.col]).astype(np.int64))
    return torch.sparse_coo_tensor(index, torch.from_numpy(m.data), size=m.shape, dtype=torch.float64,
                                   check_invariants=True).coalesce()


def _rows_to_norm(d: torch.Tensor, rho: float) -> torch.Tensor:
    return d * (rho / d.norm(dim=-1, keepdim=True).clamp_min(1e-30))


class _Copies:
    """``batch`` stacked ``k`` times (:func:`~rsmi_nn.app.evaluation.model.repeat_batch`) to run ``k`` perturbations
    ``d [k, rows, U]`` of its rows ``x`` in one pass; ``change(d)`` is ``[k, batch.size]``."""

    def __init__(self, spliced, kind, batch, clean_items, x, k: int):
        from rsmi_nn.app.evaluation.model import repeat_batch

        self.spliced, self.kind, self.x, self.k, self.size = spliced, kind, x, k, batch.size
        self.big = repeat_batch(batch, k)
        self.ref = clean_items.repeat(k, *([1] * (clean_items.ndim - 1)))

    def change(self, d: torch.Tensor) -> torch.Tensor:
        out = self.spliced.run_batch(self.big, (self.x + d).reshape(-1, self.x.shape[1]))
        return self.kind.input_change(self.ref, out, self.big).view(self.k, self.size)


def _ascend(copies: _Copies, d: torch.Tensor, project, rho, *, steps, lr) -> torch.Tensor:
    """Per-input maximum over steps of the output change from each start ``d [k, rows, U]``; ``[k, batch.size]``."""
    best = torch.zeros(copies.k, copies.size, dtype=torch.float64)
    d = _rows_to_norm(project(d), rho)
    for step in range(steps + 1):
        d = d.detach().requires_grad_(step < steps)
        with torch.set_grad_enabled(step < steps):
            change = copies.change(d)
        best = torch.maximum(best, change.detach().double().cpu())
        if step == steps:
            break
        (g,) = torch.autograd.grad(change.sum(), d)
        g = project(g.detach())
        rate = lr * (1 - step / steps) + 0.05
        d = _rows_to_norm(project(d.detach() + rate * _rows_to_norm(g, rho)), rho)
    return best


def _search_batch(spliced, kind, batch, clean_items, x, subspace: Subspace, rho, *, starts, steps, lr, gen,
                  max_rows: int) -> dict[str, torch.Tensor]:
    """Per-input sums over one batch: ``discarded``/``kept`` (best over starts), ``random``/``random_discarded``
    (mean over draws). Every start and draw runs as one copy of the batch, up to ``max_rows`` rows a pass; the
    random points are drawn in a fixed order (discarded starts, kept starts, random, random-discarded draws)."""
    draws = torch.stack([torch.randn(x.shape, generator=gen, dtype=x.dtype)   # [4 * starts, rows, U]
                         for _ in range(4 * starts)])
    u = x.shape[1]

    def project(d, kept):  # d [k, rows, U]; kept [k] bool: onto the kept subspace, else the discarded one
        k = subspace.kept(d.reshape(-1, u)).view_as(d)
        return torch.where(kept[:, None, None], k, d - k)

    starts_d = draws[:2 * starts]
    kept = torch.arange(2 * starts) >= starts
    per = max(1, max_rows // max(x.shape[0], 1))
    best = torch.cat([_ascend(_Copies(spliced, kind, batch, clean_items, x, len(ks)), starts_d[ks],
                              lambda d, ks=ks: project(d, kept[ks]), rho, steps=steps, lr=lr)
                      for ks in torch.arange(2 * starts).split(per)])
    rand_d = draws[2 * starts:]
    rand_kind = torch.arange(2 * starts) >= starts   # the first draws anywhere, the others in the discarded subspace
    with torch.no_grad():
        rand = []
        for ks in torch.arange(2 * starts).split(per):
            d = rand_d[ks]
            d = torch.where(rand_kind[ks][:, None, None], d - subspace.kept(d.reshape(-1, u)).view_as(d), d)
            rand.append(_Copies(spliced, kind, batch, clean_items, x, len(ks)).change(_rows_to_norm(d, rho)))
        rand = torch.cat(rand).double().cpu()
    return {"discarded": best[:starts].max(0).values, "kept": best[starts:].max(0).values,
            "random": rand[:starts].mean(0), "random_discarded": rand[starts:].mean(0)}


def worst_case(spliced, kind, x: torch.Tensor, clean: list[torch.Tensor], subspace: Subspace, rho: float, *,
               starts: int = 4, steps: int = 20, lr: float = 0.5, seed: int = 0, max_rows: int = 8192) -> dict:
    """The worst-case and random output changes at perturbation norm ``rho`` (see the module docstring).

    Parameters
    ----------
    spliced : :class:`~rsmi_nn.app.evaluation.model.SplicedModel` on the inputs to use.
    kind : its :class:`~rsmi_nn.app.evaluation.metrics.OutputKind`.
    x : ``[spliced.num_rows, U0]`` clean activations; ``clean``: the clean outputs per batch.
    subspace : the level's :class:`Subspace`.
    starts, steps, lr : random starts, ascent steps per start, first step size (in units of ``rho``).
    max_rows : the most activation rows of one pass (the starts of a batch run stacked, as copies).

    Returns
    -------
    dict: ``discarded``, ``kept``, ``random``, ``random_discarded`` (mean over inputs of the output
    change), ``ratio`` (discarded / kept), ``norm`` (``rho``), and the settings.
    """
    gen = torch.Generator().manual_seed(seed)
    sums = {"discarded": 0.0, "kept": 0.0, "random": 0.0, "random_discarded": 0.0}
    n = 0
    for batch, clean_items in zip(spliced.batches, clean, strict=True):
        found = _search_batch(spliced, kind, batch, clean_items, x[batch.start:batch.stop], subspace, rho,
                              starts=starts, steps=steps, lr=lr, gen=gen, max_rows=max_rows)
        for key, per_input in found.items():
            sums[key] += float(per_input.sum())
        n += batch.size
    out = {k: v / max(n, 1) for k, v in sums.items()}
    out["ratio"] = out["discarded"] / out["kept"] if out["kept"] > 0 else float("nan")
    out.update(norm=float(rho), starts=starts, steps=steps, inputs=n)
    return out
