"""Bounds as pure functions of a score tensor: formulas, batching, gradients, ceilings.

The accuracy checks use the *optimal* critic of a bivariate Gaussian, written in closed form,
so they test the bound formulas alone (no training): with ``f* = log p(y|x)/p(y)`` every bound
is tight up to sampling noise (and, for InfoNCE, the finite-batch bias ~ (e^{2I}-1)/B).
"""

import math

import numpy as np
import pytest
import torch

from estimators import dv, get_bound, infonce, nwj, smile
from estimators.bounds import Bound, js
from estimators.samplers import gaussian_pairs


def _log_ratio(x, y, rho):
    """log p(x, y) / (p(x) p(y)) for standard bivariate Gaussians, broadcast over [P, B, B]."""
    r = rho.view(-1, 1, 1)
    xi, yj = x.unsqueeze(2), y.unsqueeze(1)
    return -0.5 * torch.log1p(-r ** 2) - (r ** 2 * xi ** 2 - 2 * r * xi * yj + r ** 2 * yj ** 2) / (2 * (1 - r ** 2))


def _reference(name, s):
    """Per-problem float64 loops: the textbook formulas, for comparison."""
    out = []
    for m in s.double().numpy():
        b = m.shape[0]
        d = np.diag(m)
        off = m[~np.eye(b, dtype=bool)]
        if name == "infonce":
            v = np.mean(d - np.log(np.exp(m).sum(axis=1) / b))
        elif name == "nwj":
            v = d.mean() - np.exp(off - 1).mean()
        elif name == "dv":
            v = d.mean() - np.log(np.exp(off).mean())
        else:
            v = d.mean() - np.log(np.exp(np.clip(off, -5, 5)).mean())
        out.append(v)
    return np.array(out)


@pytest.mark.parametrize("name,fn", [("infonce", infonce), ("nwj", nwj), ("dv", dv), ("smile", smile)])
def test_formulas_match_per_problem_reference(name, fn):
    s = torch.randn(5, 9, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    np.testing.assert_allclose(fn(s).numpy(), _reference(name, s), rtol=1e-10, atol=1e-10)
    # get_bound(name).estimate is the same function
    np.testing.assert_allclose(get_bound(name).estimate(s).numpy(), fn(s).numpy())


@pytest.mark.parametrize("name", ["infonce", "nwj", "dv", "smile"])
def test_optimal_critic_gives_true_mi(name):
    # P = 4 problems of different MI in one call; B = 2000 pairs each.
    rho = torch.tensor([0.2, 0.5, 0.8, 0.9], dtype=torch.float64)
    x, y, mi = gaussian_pairs(2000, rho.view(-1, 1).numpy(), seed=3, dtype=torch.float64)
    f = _log_ratio(x[..., 0], y[..., 0], rho)
    if name == "nwj":
        f = f + 1.0  # NWJ's optimal critic in the "f - 1" form is 1 + log p/q
    est = get_bound(name).estimate(f)
    b = f.shape[1]
    # Noise: the joint term is a mean over B positives; its standard error dominates.
    se = torch.diagonal(f, dim1=1, dim2=2).std(dim=1) / math.sqrt(b)
    bias = (torch.exp(2 * mi) - 1) / b if name == "infonce" else torch.zeros_like(mi)
    assert torch.all((est - (mi - bias)).abs() < 4 * se + 0.01), (est, mi)


def test_infonce_never_exceeds_log_batch():
    b = 16
    s = torch.zeros(3, b, b)
    s[:, torch.arange(b), torch.arange(b)] = 1e4  # a perfect classifier
    est = infonce(s)
    assert torch.allclose(est, torch.full((3,), math.log(b)), atol=1e-5)
    assert get_bound("infonce").ceiling(b) == pytest.approx(math.log(b))
    for name in ("nwj", "dv", "smile"):
        assert get_bound(name).ceiling(b) == math.inf


def test_problems_are_independent():
    s = torch.randn(4, 6, 6, generator=torch.Generator().manual_seed(0))
    for name in ("infonce", "nwj", "dv", "smile"):
        full = get_bound(name).estimate(s)
        single = torch.cat([get_bound(name).estimate(s[p:p + 1]) for p in range(4)])
        torch.testing.assert_close(full, single)


def test_dv_objective_has_mine_gradient():
    gen = torch.Generator().manual_seed(2)
    s1 = torch.randn(2, 7, 7, generator=gen, dtype=torch.float64)
    s2 = torch.randn(2, 7, 7, generator=gen, dtype=torch.float64)
    bound = get_bound("dv", ema_decay=0.9)
    off = ~torch.eye(7, dtype=torch.bool)
    # First call: the moving average is the current batch mean, so the gradient is DV's own.
    a = s1.clone().requires_grad_()
    val = bound.objective(a)
    torch.testing.assert_close(val.detach(), dv(s1))
    val.sum().backward()
    b = s1.clone().requires_grad_()
    dv(b).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    # Second call: grad = grad E_p f - grad E_q e^f / m, m = 0.9 m_1 + 0.1 mean_q e^f (Belghazi et al. 2018).
    m = 0.9 * torch.exp(s1)[:, off].mean(1) + 0.1 * torch.exp(s2)[:, off].mean(1)
    c = s2.clone().requires_grad_()
    val = bound.objective(c)
    torch.testing.assert_close(val.detach(), dv(s2))
    val.sum().backward()
    expected = torch.zeros_like(s2)
    expected[:, torch.arange(7), torch.arange(7)] = 1 / 7
    expected = expected - torch.where(off, torch.exp(s2), 0.0) / (42 * m.view(-1, 1, 1))
    torch.testing.assert_close(c.grad, expected)
    bound.reset()
    assert bound._log_ema is None


def test_smile_objective_value_and_js_gradient():
    s = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 4
    a = s.clone().requires_grad_()
    val = get_bound("smile", clip=2.0).objective(a)
    torch.testing.assert_close(val.detach(), smile(s, clip=2.0))
    val.sum().backward()
    b = s.clone().requires_grad_()
    js(b).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    torch.testing.assert_close(smile(s, clip=math.inf), dv(s))


@pytest.mark.parametrize("name", ["infonce", "nwj", "dv", "smile"])
def test_objective_is_finite_for_extreme_scores(name):
    s = torch.randn(2, 5, 5, generator=torch.Generator().manual_seed(0)) * 200
    s.requires_grad_()
    val = get_bound(name).objective(s)
    val.sum().backward()
    assert torch.isfinite(val).all() or name == "nwj"  # NWJ's exp term may overflow: that is the bound
    assert isinstance(get_bound(name), Bound)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="bound='mine'"):
        get_bound("mine")
    with pytest.raises(ValueError, match=r"\(P, B, B\)"):
        infonce(torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"\(P, B, B\)"):
        dv(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="at least 2"):
        nwj(torch.zeros(2, 1, 1))
    with pytest.raises(ValueError, match="clip"):
        smile(torch.zeros(1, 3, 3), clip=0.0)
    with pytest.raises(ValueError, match="does not accept"):
        get_bound("infonce", clip=3.0)
