"""The planted hierarchy of experiments.tmr against its exact ground truth, and the scores on it.

Sampling error (as in test_fields.py): the empirical covariance ``S_ij`` of zero-mean Gaussian samples has
``Var(S_ij) = (Σ_ii Σ_jj + Σ_ij²) / n``; over the ~2 000 distinct entries of a 64-unit sample a |z| above
5.5 has probability < 1e-4 unless the analytic covariance is wrong (a 2 % error on a variance is z ≈ 10 at
n = 40 000).
"""

import numpy as np
import pytest
import torch

from experiments.tmr import best_linear_corr, sample_tmr
from experiments.tmr_scores import ari, level_scores, multiple_corr

pytestmark = pytest.mark.usefixtures("one_thread")

Z_MAX = 5.5


def _z(emp: np.ndarray, exact: np.ndarray, var_a: np.ndarray, var_b: np.ndarray, n: int) -> np.ndarray:
    return (emp - exact) / np.sqrt((np.outer(var_a, var_b) + exact**2) / n)


@pytest.fixture(scope="module")
def big():
    return sample_tmr(40_000, seed=3)


def test_shapes_and_planted_groups():
    s = sample_tmr(100, branching=3, depth=3, group_size=2, nuisance=1.5, seed=0)
    assert s.x.shape == (100, 18) and s.x.dtype == torch.float32
    assert [g.shape for g in s.groups] == [(18,)] * 3 and all(g.dtype == torch.long for g in s.groups)
    assert [tuple(z.shape) for z in s.latents] == [(100, 9), (100, 3), (100, 1)]
    for lv, g in enumerate(s.groups):
        assert torch.bincount(g).tolist() == [2 * 3**lv] * 3 ** (2 - lv)
    # a level-l group is the union of branching level-(l-1) groups
    for lv in range(1, 3):
        for child in range(int(s.groups[lv - 1].max()) + 1):
            assert s.groups[lv][s.groups[lv - 1] == child].unique().numel() == 1
    assert not torch.equal(s.groups[0], torch.arange(18) // 2)  # shuffled


def test_same_seed_same_bytes_other_seed_other_sample():
    a, b, c = sample_tmr(50, seed=7), sample_tmr(50, seed=7), sample_tmr(50, seed=8)
    assert torch.equal(a.x, b.x) and all(torch.equal(p, q) for p, q in zip(a.groups, b.groups))
    assert all(torch.equal(p, q) for p, q in zip(a.latents, b.latents))
    assert not torch.equal(a.x, c.x)


def test_empirical_covariance_is_the_analytic_one(big):
    x = big.x.double().numpy()
    n = x.shape[0]
    emp = x.T @ x / n
    var = np.diag(big.covariance)
    z = _z(emp, big.covariance, var, var, n)
    assert float(np.abs(z).max()) < Z_MAX
    for lv in range(big.num_levels):
        lat = big.latents[lv].double().numpy()
        zc = _z(x.T @ lat / n, big.unit_latent_cov[lv], var, np.ones(lat.shape[1]), n)
        assert float(np.abs(zc).max()) < Z_MAX
        assert np.allclose(lat.var(0), 1.0, atol=6 * np.sqrt(2 / n))


def test_tree_couplings_and_nuisance_dominating_the_blocks():
    s = sample_tmr(20_000, coupling=[0.7, 0.5], seed=1)
    parent = s.latents[1].double()[:, torch.arange(16) // 4]
    r = torch.stack([torch.corrcoef(torch.stack([s.latents[0][:, g].double(), parent[:, g]]))[0, 1] for g in range(16)])
    assert float((r - 0.7).abs().max()) < 5 * (1 - 0.49) / np.sqrt(20_000)
    # the nuisance dominates every planted group's variance: its top principal axis misses the latent
    for g in range(16):
        u = np.flatnonzero(s.groups[0].numpy() == g)
        vals, vecs = np.linalg.eigh(s.covariance[np.ix_(u, u)])
        top = vecs[:, -1]
        corr = abs(top @ s.unit_latent_cov[0][u, g]) / np.sqrt(top @ s.covariance[np.ix_(u, u)] @ top)
        assert corr < 1e-9 and s.ceiling[0][g] > 0.9


def test_ceiling_is_the_best_linear_read_out(big):
    x, rows = big.x, slice(0, 20_000)
    for lv in (0, 1):
        for g in (0, int(big.groups[lv].max())):
            units = torch.nonzero(big.groups[lv] == g).flatten()
            fitted = multiple_corr(x[rows][:, units], big.latents[lv][rows, g])
            assert fitted == pytest.approx(big.ceiling[lv][g], abs=0.01)
            assert best_linear_corr(big.covariance, big.unit_latent_cov[lv][:, g], units.numpy()) == big.ceiling[lv][g]
    assert np.isnan(big.block_optimum[-1][0])  # the root's group holds every unit: no environment
    assert (big.block_optimum[0] > 0).all()


def test_geometry_2d_nested_squares_and_local_noise():
    n = 30_000
    s = sample_tmr(n, branching=4, depth=3, group_size=4, nuisance=0.0, signal=1e-3, noise=1.0, geometry="2d",
                   noise_correlation=1.0, seed=2)
    pos = s.positions.long()
    assert pos.shape == (64, 2) and int(pos.max()) == 7
    for g in range(16):  # each level-0 group is a 2x2 square
        p = pos[s.groups[0] == g]
        assert int((p.max(0).values - p.min(0).values).max()) == 1
    d = (pos[:, None] - pos[None]).abs()
    d = torch.minimum(d, 8 - d).sum(-1)  # periodic lattice distance
    cov = torch.from_numpy(s.covariance)
    # a bond's shared innovation: r² / (1 + 4 r²) = 0.2 between neighbours, nothing (but the 1e-6 tree) beyond
    assert torch.allclose(cov[d == 1], torch.tensor(0.2, dtype=torch.float64), atol=2e-6)
    assert float(cov[d > 1].abs().max()) < 2e-6
    x = s.x.double().numpy()
    z = _z(x.T @ x / n, s.covariance, np.diag(s.covariance), np.diag(s.covariance), n)
    assert float(np.abs(z).max()) < Z_MAX


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="coupling"):
        sample_tmr(10, coupling=1.0)
    with pytest.raises(ValueError, match="perfect squares"):
        sample_tmr(10, branching=3, geometry="2d")
    with pytest.raises(ValueError, match="nuisance"):
        sample_tmr(10, nuisance=-1)


def test_no_nuisance_said_either_way():
    """``nuisance=None`` is ``nuisance=0``: the same bytes."""
    a, b = sample_tmr(50, nuisance=None, seed=2), sample_tmr(50, nuisance=0, seed=2)
    assert torch.equal(a.x, b.x) and a.params["nuisance"] == 0.0


def test_scores_on_planted_truth_and_on_block_pca():
    from rsmi_nn.baselines import fit_baseline

    s = sample_tmr(6_000, seed=4)
    x, rows = s.x, slice(4_000, None)
    groups = s.groups[0]
    # the exact best linear read-out of each group (from the analytic covariance) scores its ceiling
    w = torch.zeros(s.num_units, 16, dtype=torch.float64)
    for g in range(16):
        u = np.flatnonzero(groups.numpy() == g)
        w[u, g] = torch.from_numpy(np.linalg.solve(s.covariance[np.ix_(u, u)], s.unit_latent_cov[0][u, g]))
    best = level_scores((x[rows].double() @ w).float(), groups, 1, s, 0, rows)
    assert best["ari"] == 1.0 and best["reads_latent"] == 1.0
    assert best["corr_mean"] == pytest.approx(1.0, abs=0.01)
    # block PCA on the planted groups reads the nuisance
    enc = fit_baseline("block-pca", x[:4_000], groups, 16)
    pca = level_scores(enc.encode(x[rows]), groups, 1, s, 0, rows)
    assert pca["corr_mean"] < 0.1 and pca["reads_latent"] == 0.0
    assert ari(torch.arange(s.num_units) // 4, groups) < 0.1  # planted order is not the shuffled order
