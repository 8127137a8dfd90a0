"""Correlation length and locality against cases with known answers."""

import math

import numpy as np
import pytest
import torch

from graphs import ActivationGraph, lattice_blocks, lattice_graph
from rsmi_nn.observables import correlation_length, graph_sizes, locality_preservation


def _path_graph(n: int) -> ActivationGraph:
    i = torch.arange(n - 1)
    return ActivationGraph([f"u:{k}" for k in range(n)], torch.stack([i, i + 1]))


def _ar1(n_units: int, n_samples: int, rho: float, seed: int) -> torch.Tensor:
    """Stationary AR(1) along a chain: corr(x_i, x_j) = rho^|i-j| exactly, i.e. xi = -1/ln(rho)."""
    rng = np.random.default_rng(seed)
    x = np.empty((n_samples, n_units))
    x[:, 0] = rng.standard_normal(n_samples)
    for i in range(1, n_units):
        x[:, i] = rho * x[:, i - 1] + math.sqrt(1 - rho**2) * rng.standard_normal(n_samples)
    return torch.from_numpy(x.astype(np.float32))


def test_correlation_length_of_exponential_chain():
    # 4000 samples: each C(r) averages ~100 source pairs with sd ~(1-rho^2r)/sqrt(N) ≈ 0.016 per pair,
    # so the log-linear slope over r = 1..~15 is determined to a few percent; 10% is > 3 sd.
    rho = 0.8
    x = _ar1(120, 4000, rho, seed=0)
    out = correlation_length(x, _path_graph(120), n_sources=64, seed=1)
    assert out["status"] == "fit" and out["r2"] > 0.95
    assert out["xi"] == pytest.approx(-1 / math.log(rho), rel=0.1)
    assert out["fit_range"][0] == 1 and out["fit_range"][1] >= 8
    # the curve is what was fitted: decreasing from rho at r = 1
    assert out["c"][0] == pytest.approx(rho, abs=0.03)


def test_correlation_length_of_independent_units_is_short():
    x = torch.randn(2000, 64, generator=torch.Generator().manual_seed(0))
    out = correlation_length(x, _path_graph(64))
    assert out["status"] == "below_noise" and out["xi"] < 0.5


def test_correlation_length_rejects_mismatch():
    with pytest.raises(ValueError, match="units but the graph has"):
        correlation_length(torch.randn(10, 5), _path_graph(6))


def test_locality_of_quotient_lattice_is_one_and_random_graph_near_chance():
    g = lattice_graph(8)
    blocks = lattice_blocks(8, 2)
    coarse = lattice_graph(4)
    out = locality_preservation(coarse, blocks, g, top_fraction=1.0)
    assert out["locality"] == 1.0 and out["n_edges"] == 32
    # every pair of a 4x4 periodic block lattice: 16 blocks, 32 adjacent pairs of 120 -> chance 32/120
    assert out["chance"] == pytest.approx(32 / 120)
    rng = np.random.default_rng(0)
    pairs = rng.choice(16, size=(2, 200))
    pairs = pairs[:, pairs[0] != pairs[1]]
    rand = ActivationGraph([f"b:{i}" for i in range(16)], torch.from_numpy(pairs),
                           torch.from_numpy(rng.random(pairs.shape[1]).astype(np.float32)))
    r = locality_preservation(rand, blocks, g, top_fraction=1.0)
    assert abs(r["locality"] - r["chance"]) < 0.15  # 88 edges: binomial sd ≈ 0.05
    assert graph_sizes(g) == {"num_nodes": 64, "num_edges": 128}


def test_locality_rejects_wrong_sizes():
    with pytest.raises(ValueError, match="blocks"):
        locality_preservation(lattice_graph(4), lattice_blocks(8, 2), lattice_graph(8), hidden=2)
