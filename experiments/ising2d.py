"""2D Ising study (placeholder while the engine lands): re-exports the sampler."""

from experiments.ising_sampler import (  # noqa: F401
    T_CRITICAL,
    exact_correlation_length,
    exact_energy,
    exact_magnetisation,
    sample_ising,
)
