"""Shared fixtures: a device fixture (CPU always, CUDA when present) and seeded generators."""

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Run a test on every available device."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Keep CPU thread count fixed so timings and reductions are reproducible across runs."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
