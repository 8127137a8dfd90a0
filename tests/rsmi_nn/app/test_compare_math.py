"""The comparison's pure parts against known answers: matching, GW, participation ratio, measured ξ."""

import math

import numpy as np
import pytest
import torch

from experiments.fields import gaussian_field_on
from graphs import lattice_graph
from rsmi_nn.app.compare_gw import block_coupling, distance_matrix, gromov_wasserstein
from rsmi_nn.app.compare_invariants import fit_decay, measured_correlation_length, participation_ratio
from rsmi_nn.app.compare_matching import match_variables
from rsmi_nn.observables import correlation_length


def test_matching_finds_permuted_sign_flipped_copies():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 12))
    perm = rng.permutation(12)
    b = -a[:, perm] + 0.05 * rng.normal(size=(500, 12))
    m = match_variables(a, b)
    assert m["fraction_above_0.9"] == 1.0 and m["mean_abs_corr"] > 0.99
    assert all(perm[j] == i for i, j in zip(m["pairs"]["a"], m["pairs"]["b"]))
    assert match_variables(a, a)["mean_abs_corr"] == 1.0
    independent = match_variables(a, rng.normal(size=(500, 12)))
    assert independent["mean_abs_corr"] < 0.2 and independent["fraction_above_0.9"] == 0.0


def test_matching_rectangular_and_constant_variables():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 5))
    b = np.concatenate([a[:, :3], np.ones((300, 1)), rng.normal(size=(300, 4))], axis=1)
    m = match_variables(a, b)
    assert m["n_matched"] == 5 and m["constant_b"] == 1
    assert sorted(m["pairs"]["abs_corr"], reverse=True)[:3] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="same samples"):
        match_variables(a, b[:10])


def test_gw_zero_for_relabelled_graph_and_positive_otherwise():
    g = lattice_graph(6)
    c, nodes = distance_matrix(g)
    assert c.shape == (36, 36) and c.max() == 1.0 and c.flags["C_CONTIGUOUS"]
    perm = np.random.default_rng(0).permutation(36)
    same = gromov_wasserstein(c, c)
    assert same["distance"] == 0.0 and np.allclose(same["coupling"].sum(1), 1 / 36)
    relabelled = gromov_wasserstein(c, c[np.ix_(perm, perm)])
    other = gromov_wasserstein(c, distance_matrix(lattice_graph(6, periodic=False))[0])
    assert relabelled["distance"] < other["distance"]
    assert other["distance"] > 1e-3
    assert np.allclose(other["coupling"].sum(0), 1 / 36)
    entropic = gromov_wasserstein(c, c[np.ix_(perm, perm)] + 0.0, solver="entropic", epsilon=0.05)
    assert entropic["distance"] >= 0 and entropic["solver"] == "entropic"
    blocks = np.arange(36) // 4
    assert block_coupling(same["coupling"], blocks, blocks).trace() == pytest.approx(1.0)


def test_distance_matrix_subsamples_large_graphs_with_a_seed():
    g = lattice_graph(10)
    c1, n1 = distance_matrix(g, max_nodes=30, seed=3)
    c2, n2 = distance_matrix(g, max_nodes=30, seed=3)
    assert c1.shape == (30, 30) and np.array_equal(n1, n2) and np.array_equal(c1, c2)
    assert not np.array_equal(n1, distance_matrix(g, max_nodes=30, seed=4)[1])


def test_participation_ratio_limits():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 10))
    assert participation_ratio(x)["participation_ratio"] == pytest.approx(10, rel=0.01)
    one = np.repeat(x[:, :1], 6, axis=1)
    assert participation_ratio(one)["participation_ratio"] == pytest.approx(1.0)


def test_fit_decay_recovers_an_exponential():
    r = np.arange(1, 9)
    fit = fit_decay(r, 0.9 * np.exp(-r / 2.5), n_samples=10**9, fit_max=8)
    assert fit["xi"] == pytest.approx(2.5, rel=1e-3) and fit["status"] == "fit"


def test_measured_xi_with_one_unit_per_block_is_the_level0_correlation_length():
    graph = lattice_graph(12)
    x = gaussian_field_on(graph, 4000, mass=0.5, seed=0)
    ref = correlation_length(x, graph, n_sources=144)
    ours = measured_correlation_length(x, torch.arange(144), graph, n_sources=144)
    assert ours["xi"] == pytest.approx(ref["xi"], rel=1e-9)
    assert ours["fit_range"] == ref["fit_range"]


def test_measured_xi_of_block_means_in_level0_hops():
    """2×2 block means of a lattice field decay over the same level-0 distances as the field itself."""
    from graphs import lattice_blocks

    graph = lattice_graph(16)
    x = gaussian_field_on(graph, 6000, mass=0.5, seed=1)
    blocks = lattice_blocks(16, 2)
    means = torch.zeros(6000, 64).index_add_(1, blocks, x.float()) / 4
    site = correlation_length(x, graph, n_sources=256)["xi"]
    coarse = measured_correlation_length(means, blocks, graph, n_sources=64)["xi"]
    assert math.isfinite(coarse) and 0.7 * site < coarse < 1.5 * site
