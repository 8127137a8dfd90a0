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


@pytest.mark.parametrize("fused", [True, False])
def test_adam_is_torch_optim_adam_to_the_bit(fused, monkeypatch):
    """The loop's Adam computes what torch.optim.Adam computes, bit for bit, including a parameter that skips steps
    (no gradient: its own step count): the fused kernel where it has one (tensors of whole vector lanes, where
    torch's own call uses no scalar remainder loop either), else the for-loop's operations (any shapes)."""
    assert training._fused_adam_runs("cpu"), "this torch has no CPU fused Adam: the fused case tests nothing"
    if not fused:
        monkeypatch.setattr(training, "_FUSED_ADAM_DEVICES", ())
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 8), (48,)] if fused else [(3, 4), (5,)]
    ours = [torch.randn(*s, generator=g, requires_grad=True) for s in shapes]
    theirs = [t.detach().clone().requires_grad_(True) for t in ours]
    opt = training._Adam(ours, 1e-2)
    ref = torch.optim.Adam(theirs, lr=1e-2, fused=True) if fused else torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    for i in range(12):
        for params, o in ((ours, opt), (theirs, ref)):
            o.zero_grad(set_to_none=True)
            loss = (params[0] ** 3).sum() + ((params[1] ** 2).sum() if i % 3 else 0.0)
            loss.backward()
            o.step()
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("n_problems, shapes", [(64, [(1,), (3, 5), (7, 1), (2, 2, 3), (16,)]),
                                                 (600, [(64, 32), (1, 8), (25, 1)])])  # large: split over threads
def test_adam_bits_of_a_problem_do_not_depend_on_the_others(n_problems, shapes):
    """Problem p's slices get the same bits whether 1, 3, ... or all problems share the tensors (the compacted
    batch and a distributed rank's share rely on it), whatever the remainders of their sizes."""

    def train(p: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        params = [torch.randn(n_problems, *s, generator=g)[:p].clone() for s in shapes]
        opt = training._Adam(params, 1e-2)
        for _ in range(8):
            for t, s in zip(params, shapes):
                t.grad = torch.randn(n_problems, *s, generator=g)[:p].clone()
            opt.step()
        return params

    everyone = train(n_problems)
    for p in (1, 3, 17, n_problems - 1):
        assert all(torch.equal(a[:p], b) for a, b in zip(everyone, train(p))), p
