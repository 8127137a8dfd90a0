"""Critics ``f_p(x, y)`` for P independent problems at once.

A critic maps paired samples ``x : [P, B, x_dim]``, ``y : [P, B, y_dim]`` to the score
tensor ``[P, B, B]`` (``scores[p, i, j] = f_p(x_i, y_j)``) that every bound in
:mod:`estimators.bounds` consumes. Each problem has its own weights (``[P, ...]``
parameters, batched matmuls, no Python loop over problems). Problems of unequal width share
one tensor by zero-padding features and passing boolean masks ``[P, x_dim]`` /
``[P, y_dim]`` (True = real feature): padded features are zeroed before the first layer,
so neither their values nor their weights can change a score.

``x`` and ``y`` may also hold different numbers of rows (``[P, B1, .]`` and ``[P, B2, .]``);
the scores are then ``[P, B1, B2]``, which is how held-out sets are scored in chunks.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from estimators.batched import BatchedLinear
from estimators.validation import check_choice, check_positive_int

__all__ = ["CRITICS", "ConcatCritic", "EmbeddingMLP", "SeparableCritic"]

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}


class EmbeddingMLP(nn.Module):
    """P independent MLPs ``d_in -> hidden -> ... -> d_out`` plus, optionally, a linear skip.

    ``out = MLP(v) + S v``. The skip makes the bilinear part of a separable critic
    (``x^T S_g^T S_k y``, exact for Gaussian data up to marginal terms) a direct, low-complexity
    path; the smooth GELU activation keeps the rest of the critic smooth. Both cut the
    overfitting of a plain ReLU MLP on a few thousand samples (measured: 10+10-dim Gaussians).
    """

    def __init__(self, n_problems: int, in_features: int, hidden: int, out_features: int, *, layers: int = 2,
                 activation: str = "gelu", skip: bool = True, generator: torch.Generator | None = None,
                 device=None):
        super().__init__()
        check_choice(activation, tuple(ACTIVATIONS), name="activation")
        sizes = [in_features] + [hidden] * (layers - 1) + [out_features]
        self.layers = nn.ModuleList(
            BatchedLinear(n_problems, a, b, generator=generator, device=device) for a, b in itertools.pairwise(sizes)
        )
        self.act = ACTIVATIONS[activation]()
        self.skip = (BatchedLinear(n_problems, in_features, out_features, bias=False, generator=generator,
                                   device=device) if skip and layers > 1 else None)

    def forward(self, v: torch.Tensor, problems: slice = slice(None)) -> torch.Tensor:
        """v : [P', B, in_features] -> [P', B, out_features], the MLPs of ``problems`` (P' of them; default all)."""
        h = v
        for i, layer in enumerate(self.layers):
            h = layer(h, problems)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h if self.skip is None else h + self.skip(v, problems)


def _apply_mask(x: torch.Tensor, mask: torch.Tensor | None, problems: slice = slice(None)) -> torch.Tensor:
    """``x [P', B, d]`` with the features ``mask [P, d]`` (or ``[1, d]``, every problem's) marks False zeroed, for
    the problems ``problems``."""
    if mask is None:
        return x
    return x * (mask if mask.shape[0] == 1 else mask[problems]).to(dtype=x.dtype).unsqueeze(1)


def _check_inputs(critic, x: torch.Tensor, y: torch.Tensor) -> None:
    p = critic.n_problems
    if x.ndim != 3 or y.ndim != 3:
        raise ValueError(f"critic inputs must be [P, B, d], got x {tuple(x.shape)} and y {tuple(y.shape)}")
    if x.shape[0] != p or y.shape[0] != p:
        raise ValueError(f"critic was built for P={p} problems, got x {tuple(x.shape)} and y {tuple(y.shape)}")
    if x.shape[2] != critic.x_dim or y.shape[2] != critic.y_dim:
        raise ValueError(
            f"critic expects x_dim={critic.x_dim}, y_dim={critic.y_dim}, got {x.shape[2]} and {y.shape[2]}; "
            "pad narrower problems with zeros and pass masks"
        )


class SeparableCritic(nn.Module):
    """Separable critic ``f(x, y) = <g(x), k(y)>`` with per-problem MLPs ``g``, ``k``.

    Scores for all ``B x B`` pairs cost one batched matmul of ``[P, B, embed]`` embeddings,
    so large batches are cheap (Poole et al. 2019, "separable" critic; the critic of RSMI-NE).
    Embeddings are scaled by ``embed ** -1/4`` each, so initial scores are O(1) whatever
    ``embed`` (large initial scores overflow ``exp f`` in NWJ/DV and stall training).

    Parameters
    ----------
    n_problems, x_dim, y_dim : P and the (padded) widths of x and y.
    hidden : width of the hidden layers; embed : embedding dimension.
    layers : number of linear layers in each of ``g`` and ``k`` (1 = affine embeddings).
    x_layers, y_layers : override ``layers`` for ``g`` or ``k`` alone. An affine ``g`` on a wide ``x``
        with a non-linear ``k`` on a narrow ``y`` is a logistic-regression-like critic that overfits far
        less on a few thousand rows (RSMI's environment side; see :func:`rsmi_nn.coarse_grain`).
    activation : ``"gelu"`` (default), ``"relu"``, ``"tanh"`` or ``"silu"``.
    skip : add a linear skip path to each embedding (see :class:`EmbeddingMLP`).
    generator : ``torch.Generator`` for a seeded initialisation.
    """

    def __init__(self, n_problems: int, x_dim: int, y_dim: int, *, hidden: int = 64, embed: int = 32,
                 layers: int = 2, x_layers: int | None = None, y_layers: int | None = None,
                 activation: str = "gelu", skip: bool = True, generator: torch.Generator | None = None, device=None):
        super().__init__()
        self.n_problems = check_positive_int(n_problems, name="n_problems")
        self.x_dim = check_positive_int(x_dim, name="x_dim")
        self.y_dim = check_positive_int(y_dim, name="y_dim")
        self.hidden = check_positive_int(hidden, name="hidden")
        self.embed = check_positive_int(embed, name="embed")
        self.n_layers = check_positive_int(layers, name="layers")
        self.x_layers = check_positive_int(layers if x_layers is None else x_layers, name="x_layers")
        self.y_layers = check_positive_int(layers if y_layers is None else y_layers, name="y_layers")
        opts = {"activation": activation, "skip": skip, "generator": generator, "device": device}
        self.g = EmbeddingMLP(n_problems, x_dim, hidden, embed, layers=self.x_layers, **opts)
        self.k = EmbeddingMLP(n_problems, y_dim, hidden, embed, layers=self.y_layers, **opts)
        self._scale = embed ** -0.25

    def embed_x(self, x: torch.Tensor, x_mask: torch.Tensor | None = None, problems: slice = slice(None)
                ) -> torch.Tensor:
        """``g(x)``: ``[P', B, x_dim] -> [P', B, embed]`` for the problems ``problems`` (default all; ``x_mask``
        ``[P, x_dim]`` covers every problem, or ``[1, x_dim]`` each)."""
        return self.g(_apply_mask(x, x_mask, problems), problems) * self._scale

    def embed_y(self, y: torch.Tensor, y_mask: torch.Tensor | None = None, problems: slice = slice(None)
                ) -> torch.Tensor:
        """``k(y)``: ``[P', B, y_dim] -> [P', B, embed]``, as :meth:`embed_x`."""
        return self.k(_apply_mask(y, y_mask, problems), problems) * self._scale

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_mask: torch.Tensor | None = None,
                y_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[P, B1, B2]`` for ``x : [P, B1, x_dim]``, ``y : [P, B2, y_dim]``."""
        _check_inputs(self, x, y)
        return torch.bmm(self.embed_x(x, x_mask), self.embed_y(y, y_mask).transpose(1, 2))

    def extra_repr(self) -> str:
        return (f"n_problems={self.n_problems}, x_dim={self.x_dim}, y_dim={self.y_dim}, "
                f"hidden={self.hidden}, embed={self.embed}, layers=({self.x_layers}, {self.y_layers})")


class ConcatCritic(nn.Module):
    """Joint (concatenation) critic ``f(x, y) = MLP([x, y])`` per problem.

    More expressive than :class:`SeparableCritic` but scores all ``B x B`` pairs through
    the MLP: memory and time grow as ``P * B^2 * hidden``. The first layer is split as
    ``W_x x + W_y y + b`` so the pairs are formed by broadcasting, never by copying inputs.

    Parameters
    ----------
    n_problems, x_dim, y_dim : P and the (padded) widths of x and y.
    hidden : hidden width; layers : number of linear layers (>= 2).
    embed, skip : accepted for signature parity with :class:`SeparableCritic`; unused.
    activation : ``"gelu"`` (default), ``"relu"``, ``"tanh"`` or ``"silu"``.
    generator : ``torch.Generator`` for a seeded initialisation.
    """

    def __init__(self, n_problems: int, x_dim: int, y_dim: int, *, hidden: int = 64, embed: int = 32,
                 layers: int = 2, activation: str = "gelu", skip: bool = True,
                 generator: torch.Generator | None = None, device=None):
        super().__init__()
        self.n_problems = check_positive_int(n_problems, name="n_problems")
        self.x_dim = check_positive_int(x_dim, name="x_dim")
        self.y_dim = check_positive_int(y_dim, name="y_dim")
        self.hidden = check_positive_int(hidden, name="hidden")
        self.n_layers = check_positive_int(layers, name="layers", minimum=2)
        check_choice(activation, tuple(ACTIVATIONS), name="activation")
        self.act = ACTIVATIONS[activation]()
        bound = 1.0 / math.sqrt(x_dim + y_dim)  # PyTorch's default init for the concatenated layer
        wx = torch.empty(n_problems, x_dim, hidden, device=device).uniform_(-bound, bound, generator=generator)
        wy = torch.empty(n_problems, y_dim, hidden, device=device).uniform_(-bound, bound, generator=generator)
        b = torch.empty(n_problems, 1, 1, hidden, device=device).uniform_(-bound, bound, generator=generator)
        self.w_x, self.w_y, self.b_in = nn.Parameter(wx), nn.Parameter(wy), nn.Parameter(b)
        sizes = [hidden] * (layers - 1) + [1]
        self.rest = nn.ModuleList(
            BatchedLinear(n_problems, a, c, generator=generator, device=device) for a, c in itertools.pairwise(sizes)
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_mask: torch.Tensor | None = None,
                y_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[P, B1, B2]`` for ``x : [P, B1, x_dim]``, ``y : [P, B2, y_dim]``."""
        _check_inputs(self, x, y)
        hx = torch.bmm(_apply_mask(x, x_mask), self.w_x)  # [P, B1, H]
        hy = torch.bmm(_apply_mask(y, y_mask), self.w_y)  # [P, B2, H]
        p, b1, b2 = x.shape[0], x.shape[1], y.shape[1]
        h = self.act(hx.unsqueeze(2) + hy.unsqueeze(1) + self.b_in).reshape(p, b1 * b2, self.hidden)
        for i, layer in enumerate(self.rest):
            h = layer(h)
            if i < len(self.rest) - 1:
                h = self.act(h)
        return h.reshape(p, b1, b2)

    def extra_repr(self) -> str:
        return (f"n_problems={self.n_problems}, x_dim={self.x_dim}, y_dim={self.y_dim}, "
                f"hidden={self.hidden}, layers={self.n_layers}")


CRITICS = {"separable": SeparableCritic, "concat": ConcatCritic}
