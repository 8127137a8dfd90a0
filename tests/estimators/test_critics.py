"""Critics: shapes, per-problem independence, masks, seeding."""

import pytest
import torch

from estimators import ConcatCritic, SeparableCritic

CRITICS = [SeparableCritic, ConcatCritic]


def _make(cls, p=3, dx=4, dy=5, seed=0, device=None):
    return cls(p, dx, dy, hidden=16, embed=8, generator=torch.Generator(device=device or "cpu").manual_seed(seed),
               device=device)


@pytest.mark.parametrize("cls", CRITICS)
def test_shapes_and_rectangular_blocks(cls, device):
    c = _make(cls, device=device)
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(3, 6, 4, generator=gen, device=device)
    y = torch.randn(3, 6, 5, generator=gen, device=device)
    s = c(x, y)
    assert s.shape == (3, 6, 6) and s.device.type == device.type
    # Scoring rows against all columns in chunks gives the same matrix.
    torch.testing.assert_close(torch.cat([c(x[:, :2], y), c(x[:, 2:], y)], dim=1), s)
    s.sum().backward()
    assert all(p.grad is not None for p in c.parameters())


@pytest.mark.parametrize("cls", CRITICS)
def test_problems_do_not_share_weights(cls):
    c = _make(cls)
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(3, 6, 4, generator=gen), torch.randn(3, 6, 5, generator=gen)
    s = c(x, y)
    x2 = x.clone()
    x2[0] += 1.0  # change problem 0 only
    s2 = c(x2, y)
    assert not torch.allclose(s2[0], s[0])
    torch.testing.assert_close(s2[1:], s[1:])
    # Gradients of problem 1's scores reach only problem 1's weights.
    c.zero_grad()
    c(x, y)[1].sum().backward()
    for p in c.parameters():
        assert p.grad[0].abs().sum() == 0 and p.grad[2].abs().sum() == 0


@pytest.mark.parametrize("cls", CRITICS)
def test_padded_features_have_no_effect(cls):
    c = _make(cls)
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(3, 6, 4, generator=gen), torch.randn(3, 6, 5, generator=gen)
    x_mask = torch.tensor([[True, True, False, False]] * 3)
    y_mask = torch.tensor([[True, True, True, False, False]] * 3)
    s = c(x, y, x_mask, y_mask)
    x2, y2 = x.clone(), y.clone()
    x2[..., 2:] = 1e3 * torch.randn(3, 6, 2, generator=gen)
    y2[..., 3:] = -7.0
    torch.testing.assert_close(c(x2, y2, x_mask, y_mask), s)


@pytest.mark.parametrize("cls", CRITICS)
def test_seeded_initialisation_is_reproducible(cls):
    a, b, other = _make(cls, seed=5), _make(cls, seed=5), _make(cls, seed=6)
    for pa, pb, po in zip(a.parameters(), b.parameters(), other.parameters()):
        assert torch.equal(pa, pb)
        assert not torch.equal(pa, po)


@pytest.mark.parametrize("cls", CRITICS)
def test_bad_shapes_raise(cls):
    c = _make(cls)
    with pytest.raises(ValueError, match="P=3"):
        c(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="x_dim=4"):
        c(torch.zeros(3, 4, 3), torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match=r"\[P, B, d\]"):
        c(torch.zeros(4, 4), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="hidden"):
        cls(3, 4, 5, hidden=0)


def test_embeddings_of_some_problems_are_theirs_in_the_batch():
    # embed_x / embed_y of a slice of the problems (the held-out pass runs groups of problems) equal, bit for bit,
    # those problems' rows of the whole batch's embedding; the masks cover every problem
    gen = torch.Generator().manual_seed(3)
    critic = SeparableCritic(6, 3, 2, hidden=16, embed=8, generator=gen)
    x, y = torch.randn(6, 50, 3, generator=gen), torch.randn(6, 50, 2, generator=gen)
    x_mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]] * 2, dtype=torch.bool)
    with torch.no_grad():
        whole_x, whole_y = critic.embed_x(x, x_mask), critic.embed_y(y)
        for part in (slice(0, 1), slice(1, 4), slice(4, 6)):
            assert torch.equal(critic.embed_x(x[part], x_mask, part), whole_x[part])
            assert torch.equal(critic.embed_y(y[part], None, part), whole_y[part])
