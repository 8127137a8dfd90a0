"""Layers with a leading "problem" dimension: P independent models run as one tensor program.

A ``BatchedLinear(P, d_in, d_out)`` holds ``P`` weight matrices ``[P, d_in, d_out]`` and maps
``[P, B, d_in] -> [P, B, d_out]`` with one ``torch.baddbmm``; this is what lets thousands of
MI problems (or RSMI blocks) train at once instead of in a Python loop.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BatchedLinear", "BatchedMLP"]


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
        """x : [P', B, in_features] -> [P', B, out_features], the maps of ``problems`` (P' of them; default all)."""
        if self.bias is None:
            return torch.bmm(x, self.weight[problems])
        return torch.baddbmm(self.bias[problems], x, self.weight[problems])

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
