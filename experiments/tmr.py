"""A toy model of renormalisation: a planted tree of latents where relevance is not variance.

A Gaussian tree of latents with ``depth`` levels: level ``depth - 1`` is one root, every latent of
level ``l`` has ``branching`` children at level ``l - 1`` (``z_child = c_l z_parent + sqrt(1 - c_l²) ε``,
unit variance everywhere, ``corr = Π c`` along the tree path). Level 0 has ``G_0 = branching^(depth-1)``
latents; each reads ``group_size`` units ::

    x_u = signal · z0_{g(u)} + nuisance · Σ_s a_us ν_s + noise · η_u

where the *nuisance* ``ν_s`` are independent N(0, 1) variables private to sub-groups of ``nuisance_size``
consecutive units (strong, short-range, carrying nothing about any latent) and ``η`` is unit noise,
white or, with a geometry, locally correlated between lattice neighbours. With ``contrast=True`` the
nuisance loadings of each sub-group are orthogonal to its signal loadings (a sign contrast for a pair),
so with ``nuisance² · nuisance_size > signal² · group_size`` the nuisance dominates the variance of
every planted group (block PCA reads it) while only the latent carries information beyond the group.
``nuisance_offset`` shifts the sub-groups along the unit order so that they straddle group boundaries
(nuisance and signal then overlap in range: the regime where no buffer separates them).

Units are shuffled (seeded), so the structure must be discovered from co-occurrence. Everything is
linear in independent standard normals, ``x = ξ Wᵀ``, so the covariance of the units, their covariance
with every latent, each group's best linear read-out of its latent and each group's CCA optimum of
``I(H; E)`` are exact.

``python -m experiments.tmr [--quick] [--out DIR]`` runs the study (:mod:`experiments.tmr_study`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from estimators.validation import check_positive_int

__all__ = ["TMRSample", "best_linear_corr", "block_cca_optimum", "main", "sample_tmr"]


@dataclass
class TMRSample:
    """Samples of a planted hierarchy and its exact ground truth.

    Attributes
    ----------
    x : Tensor of shape (n, num_units), float32 (units in shuffled order).
    groups : list over levels of LongTensor of shape (num_units,)
        The planted group of every unit at level ``l`` (level ``l`` has ``branching^(depth-1-l)`` groups).
    latents : list over levels of Tensor of shape (n, num_groups_at_level), float32, unit variance.
    covariance : ndarray (num_units, num_units), float64, the exact covariance of ``x``.
    unit_latent_cov : list over levels of ndarray (num_units, num_groups_at_level): exact ``Cov(x_u, z_g)``.
    ceiling : list over levels of ndarray (num_groups_at_level,): the best |corr| any linear function
        of the group's own units reaches with its latent (the multiple correlation).
    block_optimum : list over levels of ndarray (num_groups_at_level,): the CCA optimum of ``I(H; E)`` in
        nats for ``V`` = the group's units, ``E`` = every unit outside it, ``H`` one linear component
        (NaN for a group that holds every unit).
    nuisance_groups : LongTensor (num_units,): the nuisance sub-group of every unit.
    nuisance_samples : Tensor (n, num_nuisance), float32: the nuisance variables ``ν`` themselves.
    positions : Tensor (num_units, dim) of lattice coordinates, or None without a geometry.
    params : dict of the generator's arguments.
    """

    x: torch.Tensor
    groups: list[torch.Tensor]
    latents: list[torch.Tensor]
    covariance: np.ndarray
    unit_latent_cov: list[np.ndarray]
    ceiling: list[np.ndarray]
    block_optimum: list[np.ndarray]
    nuisance_groups: torch.Tensor
    nuisance_samples: torch.Tensor
    positions: torch.Tensor | None = None
    params: dict = field(default_factory=dict)

    @property
    def num_units(self) -> int:
        return int(self.x.shape[1])

    @property
    def num_levels(self) -> int:
        return len(self.groups)


def sample_tmr(n: int, branching: int = 4, depth: int = 3, group_size: int = 4, nuisance: float | None = 2.0,
               seed: int = 0, *, signal: float = 1.0, noise: float = 0.5, coupling: float | list[float] = 0.8,
               nuisance_size: int = 2, nuisance_offset: int = 0, contrast: bool = True, geometry: str | None = None,
               noise_correlation: float = 0.0, shuffle: bool = True) -> TMRSample:
    """Draw ``n`` samples of the planted hierarchy (see the module docstring for the model).

    Parameters
    ----------
    n : number of samples.
    branching : children per latent (b >= 2).
    depth : levels of latents (>= 2); level 0 has ``branching^(depth-1)`` groups, the top one latent.
    group_size : units per level-0 group; ``num_units = group_size · branching^(depth-1)``.
    nuisance : std of each unit's nuisance term (relative to ``signal``); 0 or None for none.
    seed : seeds the samples, the shuffle and random loadings (same seed, same bytes).
    signal, noise : std of each unit's signal and private-noise terms.
    coupling : parent-child correlation ``c`` (one value, or one per level boundary: ``depth - 1`` values,
        ``coupling[l]`` between levels ``l`` and ``l + 1``).
    nuisance_size : units per nuisance variable (consecutive in the planted order, nested in the groups: a group
        whose size is not a multiple ends with a smaller sub-group); must be >= 2.
    nuisance_offset : shift of the nuisance sub-groups along the planted order (0: nested in the groups;
        > 0: straddling group boundaries, cyclically).
    contrast : nuisance loadings orthogonal to the signal within each sub-group (else random signs).
    geometry : None, "1d" (units on a ring in planted order) or "2d" (a square lattice of nested squares;
        needs ``group_size`` and ``branching`` perfect squares).
    noise_correlation : with a geometry, the weight ``r`` of the innovation each lattice bond shares between
        its two units (``η_u ∝ e_u + r Σ_bonds f_b``, unit variance; neighbours correlate by
        ``r² / (1 + deg r²)``).
    shuffle : shuffle the units (default); False keeps the planted order.
    """
    n = check_positive_int(n, name="n", minimum=2)
    branching = check_positive_int(branching, name="branching", minimum=2)
    depth = check_positive_int(depth, name="depth", minimum=2)
    group_size = check_positive_int(group_size, name="group_size", minimum=1)
    nuisance_size = check_positive_int(nuisance_size, name="nuisance_size", minimum=2)
    couplings = _couplings(coupling, depth)
    nuisance = 0.0 if nuisance is None else nuisance
    for name, value in (("nuisance", nuisance), ("signal", signal), ("noise", noise),
                        ("noise_correlation", noise_correlation)):
        if not (math.isfinite(float(value)) and float(value) >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if signal <= 0:
        raise ValueError(f"signal must be > 0 (the latents must be readable), got {signal}")
    rng = np.random.default_rng(seed)
    num_units = group_size * branching ** (depth - 1)
    tree = _latent_map(branching, depth, couplings)  # [num_latents, num_latents] innovations -> latents
    sizes = [branching ** (depth - 1 - lv) for lv in range(depth)]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    planted = [np.arange(num_units) // (group_size * branching**lv) for lv in range(depth)]
    # sub-groups nested in the groups (a group of 5 in pairs: 2 + 2 + 1), shifted along the planted order by the offset
    shifted = (np.arange(num_units) - nuisance_offset) % num_units
    per_group = -(-group_size // nuisance_size)
    nuis_of_unit = (shifted // group_size) * per_group + (shifted % group_size) // nuisance_size
    nuis_of_unit = np.unique(nuis_of_unit, return_inverse=True)[1]
    load_signal = np.full(num_units, float(signal))
    load_nuis = _nuisance_loadings(nuis_of_unit, load_signal, float(nuisance), contrast, rng)
    positions = _positions(geometry, group_size, branching, depth)
    noise_map = float(noise) * _noise_map(positions, geometry, float(noise_correlation), num_units)
    # x = [ε_latents, ν, e] @ W.T, one standard normal per column of W
    num_nuis = int(nuis_of_unit.max()) + 1
    w_lat = np.zeros((num_units, tree.shape[0]))
    w_lat[:, :] = load_signal[:, None] * tree[offsets[0] + planted[0]]
    w_nuis = np.zeros((num_units, num_nuis))
    w_nuis[np.arange(num_units), nuis_of_unit] = load_nuis
    w = np.hstack([w_lat, w_nuis, noise_map])
    perm = rng.permutation(num_units) if shuffle else np.arange(num_units)
    w = w[perm]
    xi = torch.from_numpy(rng.standard_normal((n, w.shape[1])))
    x = (xi @ torch.from_numpy(w).T).float()
    z = xi[:, : tree.shape[0]] @ torch.from_numpy(tree).T  # [n, num_latents]
    cov = w @ w.T
    cross_all = w_lat[perm] @ tree.T  # Cov(x, z): ε has identity covariance
    groups = [torch.from_numpy(planted[lv][perm]).long() for lv in range(depth)]
    latents = [z[:, offsets[lv]:offsets[lv + 1]].float().contiguous() for lv in range(depth)]
    cross = [cross_all[:, offsets[lv]:offsets[lv + 1]] for lv in range(depth)]
    ceiling = [np.array([best_linear_corr(cov, cross[lv][:, g], np.flatnonzero(groups[lv].numpy() == g))
                         for g in range(sizes[lv])]) for lv in range(depth)]
    optimum = [np.array([block_cca_optimum(cov, np.flatnonzero(groups[lv].numpy() == g)) for g in range(sizes[lv])])
               for lv in range(depth)]
    params = {"n": n, "branching": branching, "depth": depth, "group_size": group_size, "nuisance": float(nuisance),
              "seed": seed, "signal": float(signal), "noise": float(noise), "coupling": couplings,
              "nuisance_size": nuisance_size, "nuisance_offset": nuisance_offset, "contrast": contrast,
              "geometry": geometry, "noise_correlation": float(noise_correlation), "shuffle": shuffle}
    return TMRSample(x=x, groups=groups, latents=latents, covariance=cov, unit_latent_cov=cross, ceiling=ceiling,
                     block_optimum=optimum, nuisance_groups=torch.from_numpy(nuis_of_unit[perm]).long(),
                     nuisance_samples=xi[:, tree.shape[0]:tree.shape[0] + num_nuis].float().contiguous(),
                     positions=None if positions is None else torch.from_numpy(positions[perm]).float(),
                     params=params)


def best_linear_corr(cov: np.ndarray, cross: np.ndarray, units, latent_var: float = 1.0) -> float:
    """The largest |corr| of any linear ``w·x_units`` with a latent: ``sqrt(cᵀ Σ⁻¹ c / var z)``.

    ``cov`` is the units' covariance ``[U, U]``, ``cross`` the units' covariance with the latent ``[U]``.
    """
    u = np.asarray(units, dtype=np.int64)
    c = np.asarray(cross, dtype=np.float64).reshape(-1)[u]
    r2 = float(c @ np.linalg.solve(cov[np.ix_(u, u)], c)) / latent_var
    return math.sqrt(min(max(r2, 0.0), 1.0))


def block_cca_optimum(cov: np.ndarray, visible, environment=None, dim: int = 1) -> float:
    """CCA optimum of ``I(H; E)`` (nats) for ``H`` = ``dim`` linear components of the visible units.

    ``environment`` defaults to every unit outside ``visible``; NaN when it is empty.
    """
    from estimators import cca_mi

    v = np.asarray(visible, dtype=np.int64)
    e = np.setdiff1d(np.arange(cov.shape[0]), v) if environment is None else np.asarray(environment, dtype=np.int64)
    if e.size == 0:
        return math.nan
    return cca_mi(cov, v.tolist(), e.tolist(), dim=dim)


def _couplings(coupling, depth: int) -> list[float]:
    values = [float(coupling)] * (depth - 1) if np.isscalar(coupling) else [float(c) for c in coupling]
    if len(values) != depth - 1:
        raise ValueError(f"coupling needs one value or depth - 1 = {depth - 1} values, got {len(values)}")
    bad = [c for c in values if not (0 < c < 1)]
    if bad:
        raise ValueError(f"every coupling must lie in (0, 1) (a parent-child correlation), got {bad}")
    return values


def _latent_map(branching: int, depth: int, couplings: list[float]) -> np.ndarray:
    """``M [L, L]``: latents (level 0 first, then up to the root) as a linear map of independent innovations."""
    sizes = [branching ** (depth - 1 - lv) for lv in range(depth)]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    m = np.zeros((offsets[-1], offsets[-1]))
    m[offsets[-2], offsets[-2]] = 1.0  # the root is its own innovation
    for lv in range(depth - 2, -1, -1):
        c = couplings[lv]
        for g in range(sizes[lv]):
            row, parent = offsets[lv] + g, offsets[lv + 1] + g // branching
            m[row] = c * m[parent]
            m[row, row] = math.sqrt(1 - c * c)
    return m


def _nuisance_loadings(nuis_of_unit: np.ndarray, load_signal: np.ndarray, amplitude: float, contrast: bool,
                       rng: np.random.Generator) -> np.ndarray:
    """Each unit's loading on its sub-group's nuisance: mean square ``amplitude²`` over every sub-group."""
    out = np.zeros(nuis_of_unit.size)
    if amplitude == 0:
        return out
    for s in range(int(nuis_of_unit.max()) + 1):
        members = np.flatnonzero(nuis_of_unit == s)
        a = rng.choice([-1.0, 1.0], size=members.size)
        if contrast and members.size > 1:  # a lone unit's nuisance cannot be orthogonal to its signal
            sig = load_signal[members] / np.linalg.norm(load_signal[members])
            a = a - (a @ sig) * sig
            if np.linalg.norm(a) < 1e-9:  # an all-equal sign draw: take the first two units' contrast
                a = np.zeros(members.size)
                a[:2] = [1.0, -1.0]
                a = a - (a @ sig) * sig
        out[members] = amplitude * a * math.sqrt(members.size) / np.linalg.norm(a)
    return out


def _positions(geometry: str | None, group_size: int, branching: int, depth: int) -> np.ndarray | None:
    """Lattice coordinates of the units in planted order (nested segments or nested squares)."""
    num_units = group_size * branching ** (depth - 1)
    if geometry is None:
        return None
    if geometry == "1d":
        return np.arange(num_units, dtype=np.float64)[:, None]
    if geometry != "2d":
        raise ValueError(f"geometry={geometry!r} is not supported; choose None, '1d' or '2d'")
    s, t = math.isqrt(group_size), math.isqrt(branching)
    if s * s != group_size or t * t != branching:
        raise ValueError(f"geometry='2d' needs group_size and branching perfect squares (nested squares), got "
                         f"group_size={group_size}, branching={branching}; use geometry='1d'")
    u = np.arange(num_units)
    within, grp = u % group_size, u // group_size
    row, col = within // s, within % s
    side = s
    for _ in range(depth - 1):
        k = grp % branching
        row, col = row + (k // t) * side, col + (k % t) * side
        grp, side = grp // branching, side * t
    return np.stack([row, col], axis=1).astype(np.float64)


def _noise_map(positions: np.ndarray | None, geometry: str | None, r: float, num_units: int) -> np.ndarray:
    """``[U, U + bonds]`` map of noise innovations: ``η_u ∝ e_u + r Σ_{bonds b ∋ u} f_b`` (unit variance).

    One shared innovation ``f_b`` per bond of the periodic lattice, so neighbours correlate by
    ``r² / (1 + deg r²)`` and the noise covariance ``(I + r² (D + A)) / (1 + deg r²)`` is positive definite.
    """
    if positions is None or r == 0:
        return np.eye(num_units)
    side = int(positions.max()) + 1
    index = {tuple(p): i for i, p in enumerate(positions.astype(int).tolist())}
    steps = [(1,)] if geometry == "1d" else [(1, 0), (0, 1)]
    bonds = sorted({tuple(sorted((i, index[tuple((a + d) % side for a, d in zip(p, step))])))
                    for i, p in enumerate(positions.astype(int).tolist()) for step in steps})
    m = np.hstack([np.eye(num_units), np.zeros((num_units, len(bonds)))])
    for b, (i, j) in enumerate(bonds):
        m[i, num_units + b] = m[j, num_units + b] = r
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    from experiments.tmr_study import main as study_main

    return study_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
