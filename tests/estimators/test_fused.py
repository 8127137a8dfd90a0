"""The fused separable InfoNCE equals InfoNCE on the full score tensor, in value and gradient."""

import pytest
import torch

import estimators.fused as fused
from estimators.bounds import infonce
from estimators.fused import infonce_separable


@pytest.mark.parametrize(("p", "b", "d"), [(1, 2, 1), (3, 5, 2), (37, 64, 8), (5, 300, 3)])
def test_value_and_gradient_match_autograd(p, b, d, monkeypatch):
    monkeypatch.setattr(fused, "SCORE_CHUNK_BYTES", 4 * b * b * 2)  # two problems a chunk: chunk edges are exercised
    g = torch.Generator().manual_seed(p * 1000 + b)
    a1 = (3 * torch.randn(p, b, d, generator=g, dtype=torch.float64)).requires_grad_()
    b1 = (3 * torch.randn(p, b, d, generator=g, dtype=torch.float64)).requires_grad_()
    a2, b2 = a1.detach().clone().requires_grad_(), b1.detach().clone().requires_grad_()
    weights = torch.randn(p, generator=g, dtype=torch.float64)
    mine = infonce_separable(a1, b1)
    ref = infonce(torch.bmm(a2, b2.transpose(1, 2)))
    (mine * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(mine, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(a1.grad, a2.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(b1.grad, b2.grad, rtol=0, atol=1e-12)


def test_gradcheck():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(infonce_separable, (a, b))


def test_bad_shapes():
    with pytest.raises(ValueError, match="one shape"):
        infonce_separable(torch.zeros(2, 4, 3), torch.zeros(2, 4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        infonce_separable(torch.zeros(2, 1, 3), torch.zeros(2, 1, 3))


@pytest.mark.parametrize("critic_name", ["separable", "concat"])
@pytest.mark.parametrize("bound_name", ["infonce", "nwj"])
def test_critic_objective_equals_the_bound_on_the_scores(critic_name, bound_name):
    from estimators import get_bound
    from estimators.critics import CRITICS
    from estimators.fused import critic_objective

    g = torch.Generator().manual_seed(1)
    critic = CRITICS[critic_name](4, 3, 2, hidden=8, embed=4, generator=g)
    x, y = torch.randn(4, 16, 3, generator=g), torch.randn(4, 16, 2, generator=g)
    mask = torch.tensor([[True, True, False]] * 4)
    bound = get_bound(bound_name)
    torch.testing.assert_close(critic_objective(critic, bound, x, y, mask), bound.objective(critic(x, y, mask)))


@pytest.mark.parametrize(("p", "b", "k"), [(1, 2, 2), (3, 40, 2), (4, 64, 4), (2, 50, 16)])
def test_coded_value_and_gradient_match_autograd(p, b, k):
    # columns taking k distinct embeddings (a binarised H): the same InfoNCE and gradients as the full scores,
    # including a code no column takes and a problem whose columns all take one value
    g = torch.Generator().manual_seed(p * 100 + k)
    codes = torch.randint(0, max(1, k - 1), (p, b), generator=g)  # code k - 1 unused
    if p > 1:
        codes[-1] = 0
    table = 3 * torch.randn(p, k, 4, generator=g, dtype=torch.float64)
    a1 = (3 * torch.randn(p, b, 4, generator=g, dtype=torch.float64)).requires_grad_()
    b1 = torch.gather(table, 1, codes.unsqueeze(-1).expand(-1, -1, 4)).requires_grad_()
    a2, b2 = a1.detach().clone().requires_grad_(), b1.detach().clone().requires_grad_()
    weights = torch.randn(p, generator=g, dtype=torch.float64)
    mine = infonce_separable(a1, b1, codes=(codes, k))
    ref = infonce(torch.bmm(a2, b2.transpose(1, 2)))
    (mine * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(mine, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(a1.grad, a2.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(b1.grad, b2.grad, rtol=0, atol=1e-12)  # each column's own gradient


def test_coded_bad_shapes():
    with pytest.raises(ValueError, match="codes"):
        infonce_separable(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3), codes=(torch.zeros(2, 3, dtype=torch.long), 2))
    with pytest.raises(ValueError, match="at least 2"):
        infonce_separable(torch.zeros(2, 1, 3), torch.zeros(2, 1, 3), codes=(torch.zeros(2, 1, dtype=torch.long), 2))
