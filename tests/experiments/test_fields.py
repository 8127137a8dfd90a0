"""The shared Gaussian-field generator against its closed forms.

Sampling-error argument used throughout: for zero-mean Gaussian samples the empirical covariance
``S_ij = (1/n) Σ_t x_ti x_tj`` is unbiased with ``Var(S_ij) = (Σ_ii Σ_jj + Σ_ij²) / n``, so
``z_ij = (S_ij - Σ_ij) / sd`` is ≈ N(0, 1). Over the ~10⁴ distinct entries of a 144-site field the
largest |z| of independent normals stays below 4.5 with probability > 0.9; |z| > 5.5 has probability
< 4e-8 per entry (< 4e-4 over all entries, union bound), so a bound of 5.5 fails only on a real bias —
a wrong kernel gives |z| in the tens at these n (a 2 % error in Σ_ii alone is z ≈ 10 at n = 40 000).
"""

import numpy as np
import pytest
import torch

from experiments.fields import field_covariance, field_precision, gaussian_field_on
from graphs import lattice_graph

pytestmark = pytest.mark.usefixtures("one_thread")

Z_MAX = 5.5


def _z_scores(x: torch.Tensor, cov: np.ndarray, *, cov_other: np.ndarray | None = None,
              n_other: int | None = None) -> np.ndarray:
    """Standardised errors of the empirical covariance of ``x`` (against ``cov`` or another sample's)."""
    x = x.double().numpy()
    n = x.shape[0]
    emp = x.T @ x / n
    var = (np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n
    if cov_other is None:
        return (emp - cov) / np.sqrt(var)
    return (emp - cov_other) / np.sqrt(var + var * n / n_other)


def test_lattice_covariance_closed_form_is_the_inverse_precision():
    g = lattice_graph(7)
    exact = np.linalg.inv(field_precision(g, mass=0.7))
    assert np.allclose(field_covariance(g, mass=0.7), exact, rtol=0, atol=1e-12)
    nodes = [3, 0, 48, 10]
    assert np.array_equal(field_covariance(g, mass=0.7, nodes=nodes), field_covariance(g, mass=0.7)[np.ix_(nodes, nodes)])


def test_fft_sampler_matches_the_exact_covariance():
    g, n = lattice_graph(12), 40_000
    cov = field_covariance(g, mass=0.5)
    x = gaussian_field_on(g, n, mass=0.5, seed=0, method="fft")
    assert x.shape == (n, 144) and x.dtype == torch.float32
    z = _z_scores(x, cov)
    assert float(np.abs(z).max()) < Z_MAX
    assert 0.9 < float((z**2).mean()) < 1.1  # mean of ~10⁴ z² (correlated entries): 1 ± a few %
    mean_z = x.double().mean(0).numpy() / np.sqrt(np.diag(cov) / n)
    assert float(np.abs(mean_z).max()) < Z_MAX


def test_dense_and_fft_samplers_agree_in_distribution():
    from scipy.stats import ks_2samp

    g, n, mass = lattice_graph(6), 40_000, 1.0
    cov = field_covariance(g, mass=mass)
    dense = gaussian_field_on(g, n, mass=mass, seed=1, method="dense")
    fft = gaussian_field_on(g, n, mass=mass, seed=2, method="fft")
    for x in (dense, fft):
        assert float(np.abs(_z_scores(x, cov)).max()) < Z_MAX
    # the two empirical covariances against each other: the difference has twice the variance
    other = fft.double().numpy()
    assert float(np.abs(_z_scores(dense, cov, cov_other=other.T @ other / n, n_other=n)).max()) < Z_MAX
    # both are Gaussian with that covariance: whitened projections have the same law (KS, seeded)
    w = np.random.default_rng(0).standard_normal((36, 5))
    for k in range(5):
        p = ks_2samp(dense.double().numpy() @ w[:, k], fft.double().numpy() @ w[:, k]).pvalue
        assert p > 1e-3, (k, p)


def test_auto_picks_fft_on_a_uniform_periodic_lattice_only():
    per, open_ = lattice_graph(6), lattice_graph(6, periodic=False)
    assert torch.equal(gaussian_field_on(per, 10, seed=4), gaussian_field_on(per, 10, seed=4, method="fft"))
    assert torch.equal(gaussian_field_on(open_, 10, seed=4), gaussian_field_on(open_, 10, seed=4, method="dense"))
    with pytest.raises(ValueError, match="method='fft' needs a periodic"):
        gaussian_field_on(open_, 10, method="fft")
    src, dst = per.edge_index.numpy()
    uneven = np.where(np.minimum(src, dst) + np.maximum(src, dst) == 1, 2.0, 1.0)  # bond 0-1 twice as strong
    with pytest.raises(ValueError, match="method='fft' needs a periodic"):
        gaussian_field_on(per, 10, method="fft", edge_weight=uneven)


def test_same_seed_same_bytes_and_a_generator_is_drawn_from():
    g = lattice_graph(5)
    assert torch.equal(gaussian_field_on(g, 300, seed=7), gaussian_field_on(g, 300, seed=7))
    rng = np.random.default_rng(7)
    first, second = gaussian_field_on(g, 300, seed=rng), gaussian_field_on(g, 300, seed=rng)
    assert not torch.equal(first, second)
    assert torch.equal(first, gaussian_field_on(g, 300, seed=np.random.default_rng(7)))


def test_errors_name_the_value():
    g = lattice_graph(4)
    with pytest.raises(ValueError, match="mass must be a finite number > 0"):
        gaussian_field_on(g, 10, mass=0.0)
    with pytest.raises(ValueError, match=r"edge_weight must have shape \(64,\)"):
        field_covariance(g, edge_weight=np.ones(3))
    with pytest.raises(ValueError, match="couplings must be finite and >= 0"):
        field_precision(g, edge_weight=-np.ones(64))
    with pytest.raises(ValueError, match="method="):
        gaussian_field_on(g, 10, method="cholesky")


def test_study_field_is_unchanged():
    """The Gaussian-field study's samples and covariance (values recorded from the pre-refactor code)."""
    from experiments.gaussian_field import gaussian_field

    graph, cov, x = gaussian_field(24, 50, seed=3, mass=0.25)
    assert x[[0, 7, 49], [0, 5, 23]].tolist() == pytest.approx([1.0150500536, 0.4425708354, -1.0877491236], rel=1e-6)
    assert cov[[0, 3], [0, 11]].tolist() == pytest.approx([1.0508675499, 0.6940034759], rel=1e-9)
    assert np.allclose(cov, field_covariance(graph, mass=0.25), atol=1e-5)  # float32 graph weights: close, not equal
