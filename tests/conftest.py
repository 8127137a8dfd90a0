"""Shared fixtures: a device fixture (CPU always, CUDA when present) and seeded generators."""

import pytest
import torch

import graphs.distributed  # noqa: F401  (strict MKL reproducibility before any test computes, as in `rsmi`)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Run a test on every available device."""
    return torch.device(request.param)


@pytest.fixture(scope="module")
def one_thread():
    """Small problems: extra threads only add contention on a shared machine (use per module)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Keep CPU thread count fixed so timings and reductions are reproducible across runs."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
