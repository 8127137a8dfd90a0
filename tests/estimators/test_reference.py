"""Closed forms and the KSG estimator against exact Gaussian MI."""

import numpy as np
import pytest
import torch

from estimators import canonical_correlations, cca_mi, gaussian_mi, ksg_mi
from estimators.samplers import gaussian_pairs, gaussian_pairs_cov, pairs_mi


def _random_cov(n, seed):
    a = np.random.default_rng(seed).standard_normal((n, 2 * n))
    return a @ a.T / (2 * n)


def test_gaussian_mi_matches_pair_formula():
    rho = [0.8, 0.6, 0.1]
    cov = gaussian_pairs_cov(rho)
    assert gaussian_mi(cov, [0, 1, 2], [3, 4, 5]) == pytest.approx(pairs_mi(rho), rel=1e-12)
    assert gaussian_mi(torch.tensor(cov), np.array([0, 1, 2]), [3, 4, 5]) == pytest.approx(pairs_mi(rho), rel=1e-12)
    assert gaussian_mi(np.eye(4), [0, 1], [2, 3]) == 0.0


def test_gaussian_mi_is_invariant_to_invertible_maps():
    cov = _random_cov(6, 0)
    a = np.random.default_rng(1).standard_normal((3, 3)) + 3 * np.eye(3)
    t = np.eye(6)
    t[:3, :3] = a  # mix the X block
    assert gaussian_mi(t @ cov @ t.T, [0, 1, 2], [3, 4, 5]) == pytest.approx(gaussian_mi(cov, [0, 1, 2], [3, 4, 5]), rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_cca_mi_equals_gaussian_mi_for_one_dimensional_x(seed):
    cov = _random_cov(7, seed)
    y_idx = [1, 2, 4, 6]
    assert cca_mi(cov, [3], y_idx) == pytest.approx(gaussian_mi(cov, [3], y_idx), rel=1e-9)
    # With as many components as X has dimensions the projection loses nothing.
    assert cca_mi(cov, [0, 3, 5], y_idx, dim=3) == pytest.approx(gaussian_mi(cov, [0, 3, 5], y_idx), rel=1e-9)
    # One component keeps at most all of it.
    assert cca_mi(cov, [0, 3, 5], y_idx, dim=1) <= gaussian_mi(cov, [0, 3, 5], y_idx) + 1e-12


def test_canonical_correlations_of_pairs():
    rho = [0.3, 0.9, 0.5]
    np.testing.assert_allclose(canonical_correlations(gaussian_pairs_cov(rho), [0, 1, 2], [3, 4, 5]), [0.9, 0.5, 0.3])
    assert cca_mi(gaussian_pairs_cov(rho), [0, 1, 2], [3, 4, 5], dim=2) == pytest.approx(pairs_mi([0.9, 0.5]))


@pytest.mark.parametrize("rho", [[0.3], [0.9], [0.6, 0.6]])
def test_ksg_on_gaussians(rho):
    # KSG (k=3) at N=2000: bias < 0.01 nats and sd ~0.015 nats in 1-2 dims (Kraskov et al. 2004,
    # Fig. 3-4); 0.05 is > 3 sd + bias.
    x, y, mi = gaussian_pairs(2000, rho, seed=7, rotate=True)
    assert ksg_mi(x, y) == pytest.approx(mi, abs=0.05)


def test_ksg_matches_scikit_learn():
    from sklearn.feature_selection import mutual_info_regression

    x, y, _ = gaussian_pairs(1500, [0.7], seed=3)
    ref = mutual_info_regression(x.numpy(), y.numpy()[:, 0], n_neighbors=3, random_state=0)[0]
    assert ksg_mi(x.numpy(), y.numpy()[:, 0], k=3) == pytest.approx(ref, abs=1e-6)


def test_ksg_independent_is_near_zero():
    gen = np.random.default_rng(0)
    assert abs(ksg_mi(gen.standard_normal((2000, 2)), gen.standard_normal(2000))) < 0.03


def test_bad_inputs_raise():
    cov = gaussian_pairs_cov([0.5, 0.5])
    with pytest.raises(ValueError, match="overlap"):
        gaussian_mi(cov, [0, 1], [1, 2])
    with pytest.raises(ValueError, match="outside"):
        gaussian_mi(cov, [0], [7])
    with pytest.raises(ValueError, match="symmetric"):
        gaussian_mi(np.triu(np.ones((3, 3))), [0], [1])
    with pytest.raises(ValueError, match="square"):
        gaussian_mi(np.ones((2, 3)), [0], [1])
    with pytest.raises(ValueError, match="positive definite"):
        gaussian_mi(np.ones((3, 3)), [0], [1, 2])
    with pytest.raises(ValueError, match="non-empty"):
        cca_mi(cov, [], [1])
    with pytest.raises(ValueError, match="dim"):
        cca_mi(cov, [0], [1], dim=0)
    x = np.random.default_rng(0).standard_normal((50, 2))
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ksg_mi(bad, x)
    with pytest.raises(ValueError, match="samples"):
        ksg_mi(x, x[:40])
    with pytest.raises(ValueError, match="zero-variance"):
        ksg_mi(np.ones((50, 1)), x)
    with pytest.raises(ValueError, match="at least"):
        ksg_mi(x[:3], x[:3], k=3)
