"""The hand-written InfoNCE of a separable critic equals autograd through the critic and ``infonce``."""

import pytest
import torch

import estimators.fused_critic as fused_critic
from estimators.bounds import infonce
from estimators.critics import SeparableCritic
from estimators.fused_critic import separable_infonce

CASES = [  # p, b, x_dim, y_dim, layers, x_layers, activation, skip, masked
    (5, 16, 1, 1, 2, None, "gelu", True, True),
    (7, 12, 3, 1, 2, 1, "gelu", True, False),  # RSMI's shape: affine environment side, one hidden unit
    (4, 9, 4, 2, 3, None, "relu", True, True),
    (3, 8, 2, 2, 3, None, "tanh", False, False),
    (6, 10, 1, 3, 1, None, "silu", True, True),
]


@pytest.mark.parametrize(("p", "b", "x_dim", "y_dim", "layers", "x_layers", "activation", "skip", "masked"), CASES)
def test_value_and_gradients_match_autograd(p, b, x_dim, y_dim, layers, x_layers, activation, skip, masked,
                                            monkeypatch):
    monkeypatch.setattr(fused_critic, "SCORE_CHUNK_BYTES", 8 * b * b * 2)  # two problems a chunk: edges are exercised
    g = torch.Generator().manual_seed(p * 100 + b)
    critic = SeparableCritic(p, x_dim, y_dim, hidden=8, embed=5, layers=layers, x_layers=x_layers,
                             activation=activation, skip=skip, generator=g).double()
    x = torch.randn(p, b, x_dim, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(p, b, y_dim, generator=g, dtype=torch.float64, requires_grad=True)
    x_mask = torch.rand(p, x_dim, generator=g) > 0.3 if masked else None
    y_mask = torch.rand(p, y_dim, generator=g) > 0.3 if masked else None
    if masked:
        x_mask[:, 0], y_mask[:, 0] = True, True
    weights = torch.randn(p, generator=g, dtype=torch.float64)
    leaves = [*critic.parameters(), x, y]

    def value_and_grads(fn):
        for t in leaves:
            t.grad = None
        value = fn(critic, x, y, x_mask, y_mask)
        (value * weights).sum().backward()
        return value.detach(), [t.grad.clone() for t in leaves]

    mine, mine_grads = value_and_grads(separable_infonce)
    ref, ref_grads = value_and_grads(lambda c, *args: infonce(c(*args)))
    torch.testing.assert_close(mine, ref, rtol=0, atol=1e-12)
    for a, r in zip(mine_grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("p", "b", "x_dim", "y_dim", "layers", "x_layers", "activation", "skip", "masked"), CASES)
def test_binary_y_scored_by_its_codes_matches_autograd(p, b, x_dim, y_dim, layers, x_layers, activation, skip, masked,
                                                       monkeypatch):
    # y rows of +-1 (a binarised H) passed with their codes: B x 2^h scores a row, the same value and gradients
    # (those in y included: the straight-through path) as autograd on the full score matrix
    monkeypatch.setattr(fused_critic, "SCORE_CHUNK_BYTES", 8 * b * b * 2)
    g = torch.Generator().manual_seed(p * 10 + b)
    critic = SeparableCritic(p, x_dim, y_dim, hidden=8, embed=5, layers=layers, x_layers=x_layers,
                             activation=activation, skip=skip, generator=g).double()
    x = torch.randn(p, b, x_dim, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.where(torch.randn(p, b, y_dim, generator=g) >= 0, 1.0, -1.0).double().requires_grad_()
    y_mask = torch.rand(p, y_dim, generator=g) > 0.3 if masked else None
    if masked:
        y_mask[:, 0] = True
    codes = ((y.detach() > 0).long() << torch.arange(y_dim)).sum(dim=2)  # which of the 2^h rows each is
    weights = torch.randn(p, generator=g, dtype=torch.float64)
    leaves = [*critic.parameters(), x, y]

    def value_and_grads(fn):
        for t in leaves:
            t.grad = None
        value = fn()
        (value * weights).sum().backward()
        return value.detach(), [t.grad.clone() for t in leaves]

    mine, mine_grads = value_and_grads(lambda: separable_infonce(critic, x, y, None, y_mask,
                                                                 codes=(codes, 1 << y_dim)))
    ref, ref_grads = value_and_grads(lambda: infonce(critic(x, y, None, y_mask)))
    torch.testing.assert_close(mine, ref, rtol=0, atol=1e-12)
    for a, r in zip(mine_grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-12)


def test_without_gradients_only_the_value():
    g = torch.Generator().manual_seed(0)
    critic = SeparableCritic(3, 2, 1, hidden=8, embed=4, generator=g)
    x, y = torch.randn(3, 6, 2, generator=g), torch.randn(3, 6, 1, generator=g)
    with torch.no_grad():
        value = separable_infonce(critic, x, y)
    assert not value.requires_grad
    torch.testing.assert_close(value, infonce(critic(x, y)).detach())


def test_gradient_is_taken_once():
    g = torch.Generator().manual_seed(0)
    critic = SeparableCritic(2, 1, 1, hidden=4, embed=3, generator=g)
    value = separable_infonce(critic, torch.randn(2, 5, 1, generator=g), torch.randn(2, 5, 1, generator=g)).sum()
    value.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already taken once"):
        value.backward()


def test_bad_rows():
    critic = SeparableCritic(2, 1, 1, hidden=4, embed=3)
    with pytest.raises(ValueError, match="same B >= 2"):
        separable_infonce(critic, torch.zeros(2, 4, 1), torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match="same B >= 2"):
        separable_infonce(critic, torch.zeros(2, 1, 1), torch.zeros(2, 1, 1))


def test_the_chunk_is_tuned_without_changing_a_bit(monkeypatch):
    """A CPU training step times the chunk choices on its first calls, then keeps one; whichever chunk runs, every
    value and gradient has the bits of a fixed chunk's run (a problem's numbers do not depend on its chunk)."""
    p, b = 12, 16
    choices = (8 * b * b * 2, 8 * b * b * 5)  # float64 scores: two, then five problems a chunk
    monkeypatch.setattr(fused_critic, "SCORE_CHUNK_CHOICES", choices)
    g = torch.Generator().manual_seed(5)
    critic = SeparableCritic(p, 1, 3, hidden=8, embed=5, layers=2, generator=g).double()
    x = torch.randn(p, b, 1, generator=g, dtype=torch.float64)
    y = torch.randn(p, b, 3, generator=g, dtype=torch.float64)

    def step():
        for t in critic.parameters():
            t.grad = None
        value = separable_infonce(critic, x, y)
        value.sum().backward()
        return [value.detach(), *(t.grad.clone() for t in critic.parameters())]

    runs = {}
    for chunk in choices:
        monkeypatch.setattr(fused_critic, "SCORE_CHUNK_BYTES", chunk)
        runs[chunk] = step()
    monkeypatch.setattr(fused_critic, "SCORE_CHUNK_BYTES", None)
    tuner = fused_critic._ChunkTuner()
    monkeypatch.setattr(fused_critic, "_TUNER", tuner)
    for _ in range(2 * fused_critic.CHUNK_TRIALS + 2):
        for mine, fixed in zip(step(), runs[choices[0]]):
            assert torch.equal(mine, fixed)
    (times,) = tuner.times.values()
    assert all(len(v) == fused_critic.CHUNK_TRIALS for v in times.values())  # both timed, then one kept
    for mine, other in zip(runs[choices[0]], runs[choices[1]]):
        assert torch.equal(mine, other)


def test_the_tuner_alternates_then_keeps_the_faster_median(monkeypatch):
    monkeypatch.setattr(fused_critic, "SCORE_CHUNK_CHOICES", (4, 8))
    tuner, key = fused_critic._ChunkTuner(), ("shape",)
    seen = []
    for seconds in (1.0, 0.5, 9.0, 0.6, 1.1, 0.4):  # 4: 1.0, 9.0, 1.1 (median 1.1); 8: 0.5, 0.6, 0.4 (median 0.5)
        chunk, timed = tuner.choose(key)
        assert timed
        seen.append(chunk)
        tuner.record(key, chunk, seconds)
    assert seen == [4, 8, 4, 8, 4, 8]
    assert tuner.choose(key) == (8, False) and tuner.choose(key) == (8, False)  # later calls are not timed
