"""Layers with a leading "problem" dimension: P independent models run as one tensor program.

A ``BatchedLinear(P, d_in, d_out)`` holds ``P`` weight matrices ``[P, d_in, d_out]`` and maps
``[P, B, d_in] -> [P, B, d_out]`` with one batched product; this is what lets thousands of
MI problems (or RSMI blocks) train at once instead of in a Python loop.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from estimators.device import is_narrow, narrow_bmm

__all__ = ["BatchedLinear", "BatchedMLP", "narrow_baddbmm"]


class _NarrowProduct(torch.autograd.Function):
    """``bias + x @ w``, its product and the weights' gradient computed transposed (see :func:`narrow_baddbmm`)."""

    @staticmethod
    def forward(ctx, bias: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.bias_shape = bias.shape
        return narrow_bmm(x, w, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w = ctx.saved_tensors
        need_bias, need_x, need_w = ctx.needs_input_grad
        d_bias = grad.sum_to_size(ctx.bias_shape) if need_bias else None
        d_x = torch.bmm(grad, w.transpose(1, 2)) if need_x else None
        d_w = narrow_bmm(x.transpose(1, 2), grad) if need_w else None
        return d_bias, d_x, d_w


def narrow_baddbmm(bias: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``torch.baddbmm(bias, x, w)`` for ``x [P, B, m]``, ``w [P, m, k]`` with few outputs (``k`` ≲ 8),
    ``bias`` 3-D, ``[P, 1, k]`` or ``[1, 1, k]``: the product and ``w``'s gradient as ``(wᵀ xᵀ)ᵀ`` and ``(gᵀ x)ᵀ``,
    whose outputs are ``B`` and ``m`` wide rather than ``k`` (:func:`estimators.device.narrow_bmm`, whatever the
    shape: the shared step's environment layer). MKL's narrow products are slow on this project's
    2-core AMD CPUs (Zen 4, 2026-12-03, a shared Ising step's ``[16, 128, 128] @ [16, 128, 8]`` on a strided
    ``x``: forward 219 -> 80 us, ``w``'s gradient 435 -> 57 us). The same value to float32 rounding (other last
    bits: the sums run in another order); the result is the transpose of a contiguous ``[P, k, B]``."""
    return _NarrowProduct.apply(bias, x, w)


class BatchedLinear(nn.Module):
    """``P`` independent affine maps, ``y[p] = x[p] @ W[p] + b[p]``.

    Parameters
    ----------
    n_problems, in_features, out_features : sizes.
    bias : add a per-problem bias.
    generator : ``torch.Generator`` for a seeded initialisation (PyTorch's default
        Kaiming-uniform scheme, drawn per problem).
    """

    def __init__(self, n_problems: int, in_features: int, out_features: int, *, bias: bool = True,
                 generator: torch.Generator | None = None, device=None, dtype=None):
        super().__init__()
        self.n_problems, self.in_features, self.out_features = n_problems, in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        w = torch.empty(n_problems, in_features, out_features, device=device, dtype=dtype)
        w.uniform_(-bound, bound, generator=generator)
        self.weight = nn.Parameter(w)
        if bias:
            b = torch.empty(n_problems, 1, out_features, device=device, dtype=dtype)
            b.uniform_(-bound, bound, generator=generator)
            self.bias = nn.Parameter(b)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor, problems: slice = slice(None)) -> torch.Tensor:
        """x : [P', B, in_features] -> [P', B, out_features], the maps of ``problems`` (P' of them; default all).

        Without gradients (held-out passes), narrow products are computed transposed (:func:`estimators.device.
        is_narrow`: a critic's embedding of a few outputs; the result is then the transpose of a contiguous tensor).
        With gradients they stay torch's: autograd's backward of a turned product has not been checked for bits
        independent of the batch (the training turns its narrow products in forward and backward products of its own:
        :mod:`estimators.fused_critic`, :func:`narrow_baddbmm`)."""
        w = self.weight[problems]
        bias = None if self.bias is None else self.bias[problems]
        if not torch.is_grad_enabled() and is_narrow(x, w):
            return narrow_bmm(x, w, bias)
        return torch.bmm(x, w) if bias is None else torch.baddbmm(bias, x, w)

    def extra_repr(self) -> str:
        return (f"n_problems={self.n_problems}, in_features={self.in_features}, "
                f"out_features={self.out_features}, bias={self.bias is not None}")


class BatchedMLP(nn.Module):
    """``P`` independent MLPs ``d_in -> hidden -> ... -> d_out`` with ReLU between layers."""

    def __init__(self, n_problems: int, in_features: int, hidden: int, out_features: int, *, layers: int = 2,
                 generator: torch.Generator | None = None, device=None, dtype=None):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        sizes = [in_features] + [hidden] * (layers - 1) + [out_features]
        self.layers = nn.ModuleList(
            BatchedLinear(n_problems, a, b, generator=generator, device=device, dtype=dtype)
            for a, b in zip(sizes[:-1], sizes[1:])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x
