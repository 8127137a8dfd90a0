"""The training loop's Adam: torch.optim.Adam's bits, a problem's bits independent of the others sharing its tensors."""

import pytest
import torch

import estimators.adam as adam


@pytest.mark.parametrize("fused", [True, False])
def test_adam_is_torch_optim_adam_to_the_bit(fused, monkeypatch):
    """The loop's Adam computes what torch.optim.Adam computes, bit for bit, including a parameter that skips steps
    (no gradient: its own step count): the fused kernel where it has one (tensors of whole vector lanes, where
    torch's own call uses no scalar remainder loop either), else the for-loop's operations (any shapes)."""
    assert adam.fused_adam_runs("cpu"), "this torch has no CPU fused Adam: the fused case tests nothing"
    if not fused:
        monkeypatch.setattr(adam, "FUSED_DEVICES", ())
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 8), (48,)] if fused else [(3, 4), (5,)]
    ours = [torch.randn(*s, generator=g, requires_grad=True) for s in shapes]
    theirs = [t.detach().clone().requires_grad_(True) for t in ours]
    opt = adam.Adam(ours, 1e-2)
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
        opt = adam.Adam(params, 1e-2)
        for _ in range(8):
            for t, s in zip(params, shapes):
                t.grad = torch.randn(n_problems, *s, generator=g)[:p].clone()
            opt.step()
        return params

    everyone = train(n_problems)
    for p in (1, 3, 17, n_problems - 1):
        assert all(torch.equal(a[:p], b) for a, b in zip(everyone, train(p))), p
