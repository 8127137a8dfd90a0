"""``narrow_baddbmm``: ``torch.baddbmm`` computed transposed, value and gradients; ``BatchedLinear``'s held-out path."""

import pytest
import torch

from estimators import batched
from estimators.batched import BatchedLinear, narrow_baddbmm
from estimators.device import narrow_bmm


def _inputs(p: int, b: int, m: int, k: int, *, strided: bool, dtype=torch.float64):
    gen = torch.Generator().manual_seed(p * 1000 + m)
    x = torch.randn(b, p, m, generator=gen, dtype=dtype).transpose(0, 1) if strided else \
        torch.randn(p, b, m, generator=gen, dtype=dtype)  # strided: the shared step's column gather is such a view
    w = torch.randn(p, m, k, generator=gen, dtype=dtype)
    bias = torch.randn(1, 1, k, generator=gen, dtype=dtype)
    return bias, x, w


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("shape", [(3, 5, 7, 2), (1, 6, 4, 1), (2, 9, 12, 8)])
def test_gradients_match_finite_differences_of_each_input(shape, strided):
    bias, x, w = (t.requires_grad_() for t in _inputs(*shape, strided=strided))
    assert torch.autograd.gradcheck(narrow_baddbmm, (bias, x, w))


def test_value_and_gradients_are_baddbmm_s_to_float32_rounding():
    bias, x, w = _inputs(16, 128, 128, 8, strided=True, dtype=torch.float32)
    w.requires_grad_(), bias.requires_grad_()
    grad = torch.randn(16, 128, 8, generator=torch.Generator().manual_seed(1))
    ours = narrow_baddbmm(bias, x, w)
    ref_w, ref_b = w.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    ref = torch.baddbmm(ref_b, x, ref_w)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    (ours * grad).sum().backward()
    (ref * grad).sum().backward()
    torch.testing.assert_close(w.grad, ref_w.grad, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(bias.grad, ref_b.grad, rtol=1e-5, atol=1e-3)
    assert x.grad is None


def test_without_gradients_it_records_no_graph():
    bias, x, w = _inputs(2, 4, 6, 3, strided=False)
    w.requires_grad_()
    with torch.no_grad():
        out = narrow_baddbmm(bias, x, w)
    assert out.grad_fn is None
    torch.testing.assert_close(out, torch.baddbmm(bias, x, w.detach()))


@pytest.mark.parametrize("bias", [True, False])
def test_a_linear_map_without_gradients_turns_narrow_products_and_keeps_each_problem_s_bits(bias, monkeypatch):
    """A held-out pass embeds rows of many problems at once: each problem's embedding must be the bits it has alone
    (a rank's share of the blocks reports the MI of one process), and the value baddbmm's to float32 rounding."""
    turned = []
    monkeypatch.setattr(batched, "narrow_bmm", lambda a, b, add=None: turned.append(a.shape) or narrow_bmm(a, b, add))
    gen = torch.Generator().manual_seed(5)
    for rows, width, out in [(64, 64, 8), (1024, 25, 8), (40, 7, 2), (16, 64, 8), (64, 64, 16)]:
        layer = BatchedLinear(9, width, out, bias=bias, generator=gen)
        x = torch.randn(9, width, rows, generator=gen).transpose(1, 2)  # as a gather of environments lays them out
        ref = torch.baddbmm(layer.bias, x, layer.weight) if bias else torch.bmm(x, layer.weight)
        with torch.no_grad():
            batch, pair, alone = layer(x), layer(x[3:5], slice(3, 5)), layer(x[4:5], slice(4, 5))
        torch.testing.assert_close(batch, ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(pair, batch[3:5]) and torch.equal(alone, batch[4:5])
        trained = layer(x)  # with gradients: autograd's own product, as before
        assert trained.grad_fn is not None and torch.equal(trained.detach(), ref)
    # the three narrow shapes, three times each (batch, pair, alone): 16 rows and 16 outputs are outside the bounds
    assert [s[1:] for s in turned] == [(64, 64)] * 3 + [(1024, 25)] * 3 + [(40, 7)] * 3
