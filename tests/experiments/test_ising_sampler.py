"""The Swendsen–Wang sampler against exact 2D Ising results.

Tolerances: the standard error is estimated from the spread of per-chain means (batch means,
which stays honest if successive records of one chain are still correlated); a check passes
within 4 standard errors (false-alarm rate < 1e-4 per check) of the exact value. Finite-size
bias: at T = 2.0 and 3.0 the correlation length (< 2 sites) is far below L = 32, so the
infinite-lattice values hold to ~e^{-L/ξ}; at T_c the exact finite-L (Kaufman) energy is used.
"""

import math

import numpy as np
import pytest

from experiments.ising2d import sample_ising
from experiments.ising_sampler import (
    T_CRITICAL,
    energy_per_site,
    exact_correlation_length,
    exact_energy,
    exact_energy_finite,
    exact_magnetisation,
    integrated_autocorrelation_time,
)

L, N, CHAINS = 32, 2048, 64


def _mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    per_chain = values.reshape(-1, CHAINS).mean(axis=0)  # samples are chain-interleaved
    return float(values.mean()), float(per_chain.std(ddof=1) / math.sqrt(CHAINS))


@pytest.mark.parametrize(
    "T, energy, magnetisation",
    [
        (2.0, exact_energy(2.0), exact_magnetisation(2.0)),
        (T_CRITICAL, exact_energy_finite(L, T_CRITICAL), None),
        (3.0, exact_energy(3.0), None),
    ],
)
def test_sampler_matches_exact_values(T, energy, magnetisation):
    x = sample_ising(L, T, N, seed=1, chains=CHAINS).numpy()
    assert x.shape == (N, L * L) and set(np.unique(x)) == {-1.0, 1.0}
    e, se = _mean_and_stderr(energy_per_site(x, L))
    assert abs(e - energy) < 4 * se + 1e-4, (e, se, energy)
    if magnetisation is not None:
        m, sm = _mean_and_stderr(np.abs(x.mean(axis=1)))
        assert abs(m - magnetisation) < 4 * sm + 1e-4, (m, sm, magnetisation)


def test_sampler_is_seeded_and_decorrelated():
    a = sample_ising(8, 2.5, 256, seed=7)
    b = sample_ising(8, 2.5, 256, seed=7)
    c = sample_ising(8, 2.5, 256, seed=8)
    assert a.numpy().tobytes() == b.numpy().tobytes()
    assert not np.array_equal(a.numpy(), c.numpy())
    # one chain's successive records: the lag-1 autocorrelation of the energy is small
    x = sample_ising(16, T_CRITICAL, 512, seed=2, chains=8).numpy()
    e = energy_per_site(x, 16).reshape(-1, 8).T  # [chains, records]
    assert integrated_autocorrelation_time(e) < 1.5


def test_exact_values():
    # the finite-lattice formula agrees with Onsager away from T_c and with brute force at L = 4
    assert exact_energy_finite(32, 3.0) == pytest.approx(exact_energy(3.0), abs=1e-6)
    assert exact_energy_finite(4, 2.5) == pytest.approx(-1.3791164822593487, abs=1e-7)
    assert exact_energy(T_CRITICAL) == pytest.approx(-math.sqrt(2))
    assert exact_magnetisation(3.0) == 0.0
    assert exact_correlation_length(2.5) == pytest.approx(5.96237697900386)
    assert math.isinf(exact_correlation_length(2.0))
    with pytest.raises(ValueError, match="temperature"):
        exact_energy(-1.0)
