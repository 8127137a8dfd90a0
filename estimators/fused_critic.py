"""InfoNCE of a separable critic, value and gradient in one pass over chunks of problems.

For :class:`estimators.SeparableCritic` (``f(x, y) = <g(x), k(y)>``, ``g`` and ``k`` per-problem
:class:`estimators.critics.EmbeddingMLP`) the InfoNCE objective's gradient is written out by hand and
formed in the forward pass, a few problems at a time: the chunk's activations, its ``[c, B, B]`` scores
and their softmax are used while they sit in cache and never reach main memory, the scores are formed once
(the softmax the gradient needs is the one the logsumexp computed), and a layer with one input feature is a
broadcast product rather than a matmul with an inner dimension of 1. The backward pass only scales each
problem's stored gradient by its upstream weight (problem ``p``'s objective depends on problem ``p``'s
slices alone). Measured on the 2-core CPU (float32, one thread, P = 1 000 one-dimensional problems,
B = 128, default critic, under contention): a training step's forward and backward ~1.6x faster than autograd through
:func:`estimators.fused.infonce_separable`. Same value and gradients to float32 rounding (tested against
autograd in float64).
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from torch import nn

from estimators.device import bmm

__all__ = ["coded_infonce_with_gradients", "infonce_with_gradients", "separable_infonce"]

# scores per chunk on CPU (a problem's numbers do not depend on it). 2 MiB (one core's L2), then 8 MiB (2026-12-02),
# then 4 MiB once torch's large CPU tensors came from huge pages (estimators.device.huge_page_allocations), measured
# 2026-12-03 on this 2-core VM, a training step's forward and backward, medians of 6 x 10 alternated, 2 / 4 / 8 MiB:
# the default run's level 0 (1 321 blocks, 64 environment sites, B = 64) 13.1 / 13.3 / 14.3 ms, its level 1 (184
# blocks) 2.3 / 1.9 / 1.9 ms, 256 Ising blocks (128 sites, B = 128) 9.8 / 8.8 / 9.5 ms, estimate_mi's P = 1 000
# critic (B = 128, hidden 64, embed 32) 66.9 / 53.8 / 54.3 ms. Beyond the scores a chunk holds its activations.
# On a Zen 4 VM showing AVX2 only (2026-12-04), 4 / 8 MiB: 256 Ising blocks 51.9 / 48.2 ms (the per-block Ising step,
# 200 steps, 13.9-14.5 / 12.6-12.9 s), the other three shapes equal. So a CPU training step takes the faster of
# SCORE_CHUNK_CHOICES for its shape, timed on its first calls (:class:`_ChunkTuner`; the values do not depend on the
# chunk, tested); a number in SCORE_CHUNK_BYTES fixes the chunk instead.
SCORE_CHUNK_CHOICES = (1 << 22, 1 << 23)
SCORE_CHUNK_BYTES: int | None = None
CHUNK_TRIALS = 3  # timed calls of each choice before the faster is kept

# the gradient through an activation, ``backward(act, grad_out, u, act(u))``, for each of
# :data:`estimators.critics.ACTIVATIONS`
_BACKWARD = {
    nn.GELU: lambda act, g, u, a: torch.ops.aten.gelu_backward(g, u, approximate=act.approximate),
    nn.ReLU: lambda act, g, u, a: torch.ops.aten.threshold_backward(g, u, 0),
    nn.Tanh: lambda act, g, u, a: torch.ops.aten.tanh_backward(g, a),
    nn.SiLU: lambda act, g, u, a: torch.ops.aten.silu_backward(g, u),
}


def _affine(v: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``v @ w + b`` for ``v [c, B, k]``, ``w [c, k, o]``, ``b [c, 1, o]`` (or None); a product when k = 1."""
    if v.shape[2] == 1:
        return v * w if b is None else torch.addcmul(b, v, w)
    return bmm(v, w, b)


class _Embedding:
    """One :class:`EmbeddingMLP` on a chunk of problems: forward, and backward from ``d out``.

    ``weights`` : the chunk's slices of the MLP's parameters, in ``mlp.parameters()`` order."""

    def __init__(self, mlp, weights: list[torch.Tensor]):
        self.mlp, it = mlp, iter(weights)
        self.layers = [(next(it), None if lay.bias is None else next(it)) for lay in mlp.layers]
        self.skip = None if mlp.skip is None else next(it)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """``v [c, B, k] -> [c, B, embed]``; keeps the pre-activations for :meth:`backward`."""
        self.inputs, self.pre = [v], []
        h = v
        for i, (w, b) in enumerate(self.layers):
            last = i == len(self.layers) - 1
            if last and self.skip is not None:  # the skip enters as the last layer's offset
                b = _affine(v, self.skip, b)
            h = _affine(h, w, b)
            if not last:
                self.pre.append(h)
                h = self.mlp.act(h)
                self.inputs.append(h)
        return h

    def backward(self, d: torch.Tensor, grads: list[torch.Tensor | None], need_input: bool) -> torch.Tensor | None:
        """Gradients of the weights (into ``grads``, the chunk's slices in parameter order) from ``d [c, B, embed]``;
        returns the input's gradient when ``need_input``."""
        slots = iter(grads)
        layer_slots = [(next(slots), next(slots) if b is not None else None) for _, b in self.layers]
        skip_slot = next(slots) if self.skip is not None else None
        v = self.inputs[0]
        if skip_slot is not None:
            bmm(v.transpose(1, 2), d, out=skip_slot)
        dv = None
        if need_input and self.skip is not None:
            dv = bmm(d, self.skip.transpose(1, 2))
        for i in range(len(self.layers) - 1, -1, -1):
            (w, _), (gw, gb) = self.layers[i], layer_slots[i]
            bmm(self.inputs[i].transpose(1, 2), d, out=gw)
            if gb is not None:
                torch.sum(d, dim=1, keepdim=True, out=gb)
            if i == 0 and not need_input:
                break
            din = bmm(d, w.transpose(1, 2))
            if i == 0:
                dv = din if dv is None else dv.add_(din)
            else:
                d = _BACKWARD[type(self.mlp.act)](self.mlp.act, din, self.pre[i - 1], self.inputs[i])
        return dv


def _weights(mask: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor | None:
    """A feature mask ``[P, d]`` as multipliers ``[P, 1, d]`` of ``v``'s dtype; None when it keeps every feature."""
    return None if mask is None or bool(mask.all()) else mask.to(dtype=v.dtype).unsqueeze(1)


def _masked(v: torch.Tensor, weights: torch.Tensor | None, e: slice) -> torch.Tensor:
    return v[e] if weights is None else v[e] * weights[e]


def infonce_with_gradients(a: torch.Tensor, b: torch.Tensor, scale2: float, grad: bool):
    """InfoNCE ``[c]`` of the scores ``scale2 · a bᵀ`` and, when ``grad``, its gradients in ``a`` and ``b``."""
    n = a.shape[1]
    if scale2 != 1.0:
        a = a * scale2
    s = bmm(a, b.transpose(1, 2))
    diag = s.diagonal(dim1=1, dim2=2).clone()
    top = s.amax(dim=2, keepdim=True)
    s.sub_(top).exp_()
    z = s.sum(dim=2, keepdim=True)
    value = (diag - top.squeeze(2) - z.squeeze(2).log()).mean(dim=1) + math.log(n)
    if not grad:
        return value, None, None
    s.mul_(z.reciprocal_().mul_(-1.0 / n))  # d value / d scores = (δ_ij - softmax_j) / n
    s.diagonal(dim1=1, dim2=2).add_(1.0 / n)
    return value, bmm(s, b).mul_(scale2), bmm(s.transpose(1, 2), a)


def coded_infonce_with_gradients(a: torch.Tensor, b: torch.Tensor, codes: torch.Tensor, num_codes: int, scale2: float,
                                 grad: bool):
    """:func:`infonce_with_gradients` when the columns take ``num_codes`` distinct embeddings: ``codes [c, B]`` says
    which one each row's ``b`` is (rows of one code share it, as a binarised H's do). A row's B scores are then
    ``num_codes`` numbers repeated ``n_k`` times: ``B x num_codes`` of them instead of ``B x B``, and ``b``'s
    gradient is still each column's own."""
    n = a.shape[1]
    if scale2 != 1.0:
        a = a * scale2
    hot = torch.nn.functional.one_hot(codes, num_codes).to(a.dtype)  # [c, B, K]
    counts = hot.sum(dim=1, keepdim=True)  # [c, 1, K]
    per_code = counts.transpose(1, 2).clamp_min(1.0)
    e = bmm(hot.transpose(1, 2), b) / per_code  # [c, K, d]: each value's embedding
    t = bmm(a, e.transpose(1, 2))  # [c, B, K]
    diag = (t * hot).sum(dim=2)
    t.add_(counts.log())
    lse = torch.logsumexp(t, dim=2, keepdim=True)
    value = (diag - lse.squeeze(2)).mean(dim=1) + math.log(n)
    if not grad:
        return value, None, None
    mass = t.sub_(lse).exp_()  # each row's softmax mass on each value
    grad_a = bmm(hot - mass, e).mul_(scale2 / n)
    grad_b = (a - bmm(hot, bmm(mass.transpose(1, 2), a) / per_code)).div_(n)
    return value, grad_a, grad_b


class _ChunkTuner:
    """Per shape of training step, the faster of :data:`SCORE_CHUNK_CHOICES` on this machine: the first calls alternate
    between them (:data:`CHUNK_TRIALS` timed calls each), later calls keep the one of the smallest median time per
    problem (problems leave a batch as they stop)."""

    def __init__(self):
        self.times: dict[tuple, dict[int, list[float]]] = {}
        self.kept: dict[tuple, int] = {}  # the choice made, per shape

    def choose(self, key: tuple) -> tuple[int, bool]:
        """``(chunk bytes, whether to time the call and :meth:`record` it)``."""
        if key in self.kept:
            return self.kept[key], False
        times = self.times.setdefault(key, {c: [] for c in SCORE_CHUNK_CHOICES})
        return min(SCORE_CHUNK_CHOICES, key=lambda c: len(times[c])), True  # the least timed: they alternate

    def record(self, key: tuple, chunk: int, seconds_per_problem: float) -> None:
        times = self.times[key]
        times[chunk].append(seconds_per_problem)
        if all(len(runs) >= CHUNK_TRIALS for runs in times.values()):
            self.kept[key] = min(SCORE_CHUNK_CHOICES, key=lambda c: statistics.median(times[c]))


_TUNER = _ChunkTuner()


def _chunk_problems(x: torch.Tensor, grad: bool, codes, params) -> tuple[int, tuple | None, int]:
    """``(problems a chunk, the tuner's key or None when the call is not timed, chunk bytes)`` for ``x [P, B, d]``."""
    p, n = x.shape[0], x.shape[1]
    if x.device.type != "cpu":
        return p, None, 0
    per_problem = x.element_size() * n * n
    if SCORE_CHUNK_BYTES is not None or p * per_problem <= SCORE_CHUNK_CHOICES[0]:  # fixed, or one chunk whichever
        chunk = SCORE_CHUNK_BYTES if SCORE_CHUNK_BYTES is not None else SCORE_CHUNK_CHOICES[0]
        return max(1, chunk // per_problem), None, chunk
    key = (n, x.shape[2], tuple(tuple(t.shape[1:]) for t in params), grad, codes is None)
    chunk, timed = _TUNER.choose(key)
    return max(1, chunk // per_problem), key if timed else None, chunk


class _SeparableInfoNCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, critic, grad: bool, codes, x, y, x_mask, y_mask, *params):
        p = x.shape[0]
        step, tuning, chunk = _chunk_problems(x, grad, codes, params)
        started = time.perf_counter()
        need_x, need_y = grad and x.requires_grad, grad and y.requires_grad
        grads = [torch.empty_like(t) for t in params] if grad else []
        dx = torch.empty_like(x) if need_x else None
        dy = torch.empty_like(y) if need_y else None
        n_g = len(list(critic.g.parameters()))
        x_mask, y_mask = _weights(x_mask, x), _weights(y_mask, y)
        # every chunk's views, split once (slicing per chunk costs more than the small chunks' kernels)
        params_at, grads_at = [t.split(step) for t in params], [t.split(step) for t in grads]
        values = []
        for c, start in enumerate(range(0, p, step)):
            e = slice(start, start + step)
            weights = [t[c] for t in params_at]
            g, k = _Embedding(critic.g, weights[:n_g]), _Embedding(critic.k, weights[n_g:])
            a, b = g.forward(_masked(x, x_mask, e)), k.forward(_masked(y, y_mask, e))
            if codes is None:
                value, da, db = infonce_with_gradients(a, b, critic._scale ** 2, grad)
            else:
                value, da, db = coded_infonce_with_gradients(a, b, codes[0][e], codes[1], critic._scale ** 2, grad)
            values.append(value)
            if grad:
                slots = [t[c] for t in grads_at]
                gx = g.backward(da, slots[:n_g], need_x)
                gy = k.backward(db, slots[n_g:], need_y)
                if need_x:
                    dx[e] = gx if x_mask is None else gx * x_mask[e]
                if need_y:
                    dy[e] = gy if y_mask is None else gy * y_mask[e]
        if tuning is not None:
            _TUNER.record(tuning, chunk, (time.perf_counter() - started) / p)
        ctx.grads, ctx.dx, ctx.dy = grads, dx, dy
        return torch.cat(values)

    @staticmethod
    def backward(ctx, grad_value: torch.Tensor):
        if not ctx.grads:
            raise RuntimeError("separable_infonce's value was computed without gradients, or its gradient was already "
                               "taken once; call it again to differentiate it again")

        def scaled(t: torch.Tensor | None):  # in place: the stored gradients serve this one backward pass
            return None if t is None else t.mul_(grad_value.view(-1, *([1] * (t.ndim - 1))))

        grads, ctx.grads = ctx.grads, []
        return (None, None, None, scaled(ctx.dx), scaled(ctx.dy), None, None, *(scaled(t) for t in grads))


def separable_infonce(critic, x: torch.Tensor, y: torch.Tensor, x_mask: torch.Tensor | None = None,
                      y_mask: torch.Tensor | None = None, *,
                      codes: tuple[torch.Tensor, int] | None = None) -> torch.Tensor:
    """InfoNCE ``[P]`` (nats) of ``critic(x, y, x_mask, y_mask)``, differentiable in the critic's weights and in
    ``x``, ``y``; equals ``infonce(critic(x, y, x_mask, y_mask))``.

    ``critic`` : a :class:`estimators.SeparableCritic`; ``x : [P, B, x_dim]``, ``y : [P, B, y_dim]`` (positives on
    the diagonal, B >= 2); masks ``[P, d]`` bool or None. The gradient is formed during the call when grad mode
    is on and anything requires it (training), else only the value. ``codes`` : ``(codes [P, B], K)`` when every
    problem's y rows take at most K distinct values (a binarised H: :func:`coded_infonce_with_gradients`).
    """
    from estimators.critics import _check_inputs

    _check_inputs(critic, x, y)
    if x.shape[1] != y.shape[1] or x.shape[1] < 2:
        raise ValueError(f"x and y must hold the same B >= 2 paired rows, got {tuple(x.shape)} and {tuple(y.shape)}")
    params = [*critic.g.parameters(), *critic.k.parameters()]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, y, *params))
    return _SeparableInfoNCE.apply(critic, grad, codes, x, y, x_mask, y_mask, *params)
