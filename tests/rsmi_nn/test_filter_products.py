"""The linear filter's product on gathered rows: ``(wᵀ vᵀ)ᵀ`` forward and ``(gᵀ v)ᵀ`` backward, not ``v @ w``."""

import pytest
import torch

from rsmi_nn import filters
from rsmi_nn.filters import LinearFilter
from rsmi_nn.training import gather


@pytest.mark.parametrize(("shared", "hidden"), [(False, 1), (False, 2), (True, 1), (True, 3)])
def test_gathered_rows_give_the_product_and_gradient_of_bmm(shared, hidden, monkeypatch):
    gen = torch.Generator().manual_seed(hidden)
    z = torch.randn(70, 40, generator=gen)
    index = torch.randint(0, 40, (9, 6), generator=gen)
    index[2, 4:] = -1  # pads
    mask = index >= 0
    v = gather(z, index)  # [9, 70, 6], the transpose of a contiguous [9, 6, 70]
    assert v.transpose(1, 2).is_contiguous() and not v.is_contiguous()
    filt = LinearFilter(9, 6, hidden, mask, shared=shared, generator=gen)

    routed = []
    apply = filters._RowProjection.apply
    monkeypatch.setattr(filters._RowProjection, "apply", lambda *a: routed.append(1) or apply(*a))
    pre = filt.preactivation(v)
    w = filt.unit_weight().expand(9, -1, -1) if shared else filt.unit_weight()
    expected = torch.bmm(v.contiguous(), w)
    assert routed and pre.shape == (9, 70, hidden)
    assert torch.allclose(pre, expected, atol=1e-5)

    upstream = torch.randn(pre.shape, generator=gen)
    (grad,) = torch.autograd.grad((pre * upstream).sum(), filt.weight)
    (grad_bmm,) = torch.autograd.grad((expected * upstream).sum(), filt.weight)
    assert torch.allclose(grad, grad_bmm, atol=1e-5) and grad.abs().sum() > 0


def test_other_layouts_keep_bmm():
    """Contiguous rows, or rows that take a gradient (an MLP's Jacobian), go through ``torch.bmm``."""
    gen = torch.Generator().manual_seed(0)
    filt = LinearFilter(4, 5, 1, torch.ones(4, 5, dtype=torch.bool), generator=gen)
    v = torch.randn(4, 8, 5, generator=gen)
    assert torch.equal(filt.preactivation(v), torch.bmm(v, filt.unit_weight()))
    vt = torch.randn(4, 5, 8, generator=gen).transpose(1, 2).requires_grad_(True)
    (g,) = torch.autograd.grad(filt.preactivation(vt).sum(), vt)
    assert g.shape == vt.shape and g.abs().sum() > 0
