"""InfoNCE straight from a separable critic's embeddings, without keeping the ``[P, B, B]`` scores.

With ``f(x, y) = <a(x), b(y)>`` the InfoNCE objective of :func:`estimators.bounds.infonce` and its
gradient need only ``a``, ``b`` and the softmax of each row of scores. Autograd on the score tensor instead
keeps ``[P, B, B]`` alive and sweeps it about a dozen times per step (max, subtract, exp, sum; then the
logsumexp and diagonal backward passes, a zero fill and an add) — at P = 1 000 blocks and B = 256 that is
268 MB a sweep, all of it from main memory. Here the scores are formed in chunks of problems small enough to
stay in cache and, when a gradient is wanted, the gradients in ``a`` and ``b`` are formed at once from the
softmax the value computed (:func:`estimators.fused_critic.infonce_with_gradients`); the backward pass only scales
them. Forming the scores again in the backward pass instead cost 1.6-1.8x the time of a training step's InfoNCE
(``[16, 128, 8]``: 757 -> 424 us; ``[64, 128, 32]``: 3.0 -> 1.9 ms; this 2-core CPU). Same value and gradient
as ``infonce(torch.bmm(a, b.transpose(1, 2)))`` to float32 rounding (tested).
"""

from __future__ import annotations

import torch

from estimators.bounds import InfoNCEBound
from estimators.critics import SeparableCritic
from estimators.fused_critic import SCORE_CHUNK_CHOICES, coded_infonce_with_gradients, infonce_with_gradients, separable_infonce

__all__ = ["MAX_CODES", "bit_codes", "critic_objective", "infonce_separable"]

#: scores per chunk of :func:`infonce_separable`'s uncoded path (the fused critic's first choice)
SCORE_CHUNK_BYTES = SCORE_CHUNK_CHOICES[0]

#: the most distinct values a y side may take to be scored by its values (:func:`infonce_separable`'s ``codes``,
#: and the held-out pass of :mod:`estimators.heldout`): a binarised H of up to 4 hidden variables
MAX_CODES = 16


def bit_codes(bits: torch.Tensor) -> torch.Tensor:
    """Which of the ``2^h`` patterns each row of a boolean ``bits [..., h]`` is: ``[...]`` in ``0..2^h - 1``
    (the codes of a two-valued y side: which entries hold the larger value)."""
    return (bits.long() << torch.arange(bits.shape[-1], device=bits.device)).sum(dim=-1)


class _InfoNCESeparable(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, codes, grad: bool) -> torch.Tensor:
        if codes is not None:  # B x K scores: small whatever P
            value, da, db = coded_infonce_with_gradients(a, b, *codes, 1.0, grad)
            ctx.grads = (da, db) if grad else None
            return value
        p, n = a.shape[0], a.shape[1]
        step = max(1, SCORE_CHUNK_BYTES // (4 * n * n))
        parts = [infonce_with_gradients(a[s:s + step], b[s:s + step], 1.0, grad) for s in range(0, p, step)]
        ctx.grads = (torch.cat([d for _, d, _ in parts]), torch.cat([d for _, _, d in parts])) if grad else None
        return torch.cat([v for v, _, _ in parts])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.grads is None:
            raise RuntimeError("infonce_separable's value was computed without gradients; call it again with grad "
                               "mode on to differentiate it")
        w = grad.view(-1, 1, 1)
        return ctx.grads[0] * w, ctx.grads[1] * w, None, None


def infonce_separable(a: torch.Tensor, b: torch.Tensor, *, codes: tuple[torch.Tensor, int] | None = None
                      ) -> torch.Tensor:
    """InfoNCE ``[P]`` (nats) of the scores ``a @ bᵀ`` for ``a, b : [P, B, d]``; differentiable in both.

    ``a[p, i]`` and ``b[p, i]`` are the embeddings of the i-th pair of problem p (positives on the
    diagonal), as from :class:`estimators.SeparableCritic` ``embed_x`` / ``embed_y``.

    ``codes`` : ``(codes [P, B], K)`` when the y side takes at most K distinct values (a binarised H: K = 2^h),
    ``codes`` saying which one each row is; rows of one code must have one embedding ``b``. A row's scores against
    the B columns are then K numbers, each repeated ``n_k`` times, so the InfoNCE and its gradients cost ``B x K``
    scores instead of ``B x B`` (:func:`estimators.fused_critic.coded_infonce_with_gradients`); ``b``'s gradient is
    still each column's own, as autograd on the full scores gives it.
    """
    if a.ndim != 3 or a.shape != b.shape:
        raise ValueError(f"a and b must both be [P, B, d] of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if codes is not None and codes[0].shape != a.shape[:2]:
        raise ValueError(f"codes must be [P, B] = {tuple(a.shape[:2])}, got {tuple(codes[0].shape)}")
    if a.shape[1] < 2:
        raise ValueError(f"InfoNCE needs a batch of at least 2 pairs, got B={a.shape[1]}")
    grad = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
    return _InfoNCESeparable.apply(a, b, codes, grad)


def critic_objective(critic, bound, x: torch.Tensor, y: torch.Tensor, x_mask=None, y_mask=None, *,
                     codes: tuple[torch.Tensor, int] | None = None) -> torch.Tensor:
    """``bound.objective(critic(x, y))`` ``[P]``, through :func:`infonce_separable` when that is the same thing.

    That is: a separable critic (``embed_x`` / ``embed_y``) and InfoNCE's own objective (a subclass
    overriding ``objective`` keeps its override); a :class:`estimators.SeparableCritic` goes through
    :func:`estimators.fused_critic.separable_infonce` (value and gradient in one pass, chunked over problems).
    ``codes`` : ``(codes [P, B], K)`` when each problem's y rows take at most K distinct values (a binarised H):
    the separable paths then score each row against those values only (see :func:`infonce_separable`); other
    critics and bounds ignore it.
    """
    own = isinstance(bound, InfoNCEBound) and type(bound).objective is InfoNCEBound.objective
    if own and isinstance(critic, SeparableCritic):
        return separable_infonce(critic, x, y, x_mask, y_mask, codes=codes)
    if own and hasattr(critic, "embed_x"):
        return infonce_separable(critic.embed_x(x, x_mask), critic.embed_y(y, y_mask), codes=codes)
    return bound.objective(critic(x, y, x_mask, y_mask))
