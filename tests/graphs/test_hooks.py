"""Forward-hook capture: exact values, devices and dtypes, filters, hook removal, errors."""

import pytest
import torch
from torch import nn

from graphs.hooks import capture, first_tensor, match_modules


def test_capture_equals_manual_forward(net, device):
    net = net.to(device)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad(), capture(net, ["body.1", "body.3", "pair", "conv"]) as acts:
        net(x)
        h1 = torch.relu(net.body[0](x))
        h3 = torch.tanh(net.body[2](h1))
        p = net.pair.lin(h3)
        c = net.conv(p.unsqueeze(1))
    assert set(acts) == {"body.1", "body.3", "pair", "conv"}
    torch.testing.assert_close(acts["body.1"], h1, rtol=0, atol=0)
    torch.testing.assert_close(acts["body.3"], h3, rtol=0, atol=0)
    torch.testing.assert_close(acts["pair"], p, rtol=0, atol=0)  # first tensor of the tuple
    torch.testing.assert_close(acts["conv"], c, rtol=0, atol=0)


def test_capture_stores_device_and_dtype(net):
    with torch.no_grad(), capture(net, "body.1", device="cpu", dtype=torch.float64) as acts:
        net(torch.randn(3, 5))
    assert acts["body.1"].dtype == torch.float64 and not acts["body.1"].requires_grad


def test_capture_survives_inplace_ops():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(inplace=True))
    x = torch.randn(16, 3)
    with torch.no_grad(), capture(model, "0") as acts:
        model(x)
        pre = model[0](x)
    assert (pre < 0).any()
    torch.testing.assert_close(acts["0"], pre, rtol=0, atol=0)  # not overwritten by the in-place ReLU


def test_filters_pattern_list_predicate(net):
    assert match_modules(net, "body.?") == ["body.0", "body.1", "body.2", "body.3"]
    assert match_modules(net, ["pair", "conv"]) == ["pair", "conv"]
    assert match_modules(net, lambda n: n.endswith("lin")) == ["pair.lin"]


def test_no_hooks_left_after_exception(net):
    with pytest.raises(RuntimeError, match="boom"), capture(net, "*"):
        net(torch.randn(2, 5))
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in net.modules())


def test_unmatched_pattern_lists_close_names(net):
    with pytest.raises(ValueError, match="closest module names.*'pair.lin'"), capture(net, "pair.lim"):
        pass
    with pytest.raises(ValueError, match="predicate matched none"):
        match_modules(net, lambda n: False)


def test_first_tensor():
    t = torch.ones(2)
    assert first_tensor((None, [t, torch.zeros(1)])) is t
    assert first_tensor({"a": 3, "b": t}) is t
    assert first_tensor((1, "x")) is None


def test_package_level_capture_is_usable_after_submodule_import(net):
    # bug: `from graphs import capture` returned the submodule once graphs.capture had been imported;
    # fixed by naming the submodule graphs.hooks
    import graphs

    with torch.no_grad(), graphs.capture(net, "body.1") as acts:
        net(torch.randn(2, 5))
    assert acts["body.1"].shape == (2, 7)
