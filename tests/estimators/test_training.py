"""The one training loop: stopped problems leave the batch, and the others' numbers do not change."""

import numpy as np
import pytest
import torch

import estimators.training as training
from estimators import estimate_mi
from estimators.samplers import gaussian_pairs


def _uncompacted(monkeypatch):
    """Make every problem compute until the last stops (the loop before compaction)."""
    monkeypatch.setattr(training, "_compact", lambda params, opt, batch, active, restrict: batch)


def _pairs(p: int = 12, n: int = 1200, seed: int = 0):
    rho = np.linspace(0.05, 0.95, p).reshape(-1, 1)  # MI 0.001 ... 1.16 nats: the problems stop at different steps
    x, y, _ = gaussian_pairs(n, rho, seed=seed)
    return x, y


def test_estimate_mi_compaction_is_byte_identical(monkeypatch):
    x, y = _pairs()
    compact = estimate_mi(x, y, seed=3, max_steps=600, eval_every=25, patience=3, device="cpu")
    active = compact.history  # the loop really dropped problems before the end
    with monkeypatch.context() as m:
        _uncompacted(m)
        full = estimate_mi(x, y, seed=3, max_steps=600, eval_every=25, patience=3, device="cpu")
    # same checkpoints and stopping steps; values to float32 rounding (a batched matmul of one problem
    # runs another kernel than of several: up to 1.5e-6 nats seen)
    assert torch.equal(compact.best_step, full.best_step)
    assert compact.steps == full.steps
    torch.testing.assert_close(compact.mi, full.mi, rtol=0, atol=1e-5)
    torch.testing.assert_close(compact.stderr, full.stderr, rtol=0, atol=1e-5)
    valid = active["valid"]
    left = torch.isnan(valid[-1])
    assert bool(left.any()), "no problem left the batch: the case does not test compaction"
    kept = ~torch.isnan(valid)  # where the compacted run evaluated, it saw the uncompacted run's values
    torch.testing.assert_close(valid[kept], full.history["valid"][kept], rtol=0, atol=1e-5)


def test_coarse_grain_per_block_compaction_is_byte_identical(monkeypatch):
    from experiments.fields import gaussian_field_on
    from graphs import lattice_blocks, lattice_graph, make_regions
    from rsmi_nn import coarse_grain

    graph = lattice_graph(8)
    x = gaussian_field_on(graph, 1500, mass=0.3, seed=1)
    regions = make_regions(graph, lattice_blocks(8, 2), buffer=1, env=1)
    opts = dict(seed=2, steps=800, eval_every=20, patience=3, device="cpu")
    compact = coarse_grain(x, regions, **opts)
    with monkeypatch.context() as m:
        _uncompacted(m)
        full = coarse_grain(x, regions, **opts)
    assert compact.info["history"]["step"] == full.info["history"]["step"]
    torch.testing.assert_close(compact.filters, full.filters, rtol=0, atol=1e-5)
    torch.testing.assert_close(compact.mi, full.mi, rtol=0, atol=1e-5)
    torch.testing.assert_close(compact.mi_validation, full.mi_validation, rtol=0, atol=1e-5)
    valid = compact.info["history"]["valid"]
    assert bool(torch.isnan(valid[-1]).any()), "no block left the batch: the case does not test compaction"
    assert compact.info["history"]["active"][-1] < regions.num_blocks


def test_objective_of_wrong_length_is_an_error():
    w = torch.nn.Parameter(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="expected \\(3,\\)"):
        training.train_problems([w], lambda rows: w.sum(1)[:2], lambda: (w.sum(1), w.sum(1)), 10,
                                torch.Generator().manual_seed(0), training.TrainSettings(batch_size=4, max_steps=2))
