"""The chunked held-out evaluation equals the bound on the full score matrix."""

import math

import pytest
import torch

from estimators import ConcatCritic, SeparableCritic, get_bound
from estimators.heldout import heldout_bound


@pytest.mark.parametrize("name", ["infonce", "nwj", "dv", "smile"])
@pytest.mark.parametrize("cls", [SeparableCritic, ConcatCritic])
def test_chunked_equals_full_matrix(name, cls, monkeypatch):
    import estimators.heldout

    monkeypatch.setattr(estimators.heldout, "EMBED_ROWS", 14)  # a separable critic embeds 14 rows at a time
    gen = torch.Generator().manual_seed(0)
    critic = cls(3, 2, 3, hidden=8, embed=4, generator=gen)
    x, y = torch.randn(3, 40, 2, generator=gen), torch.randn(3, 40, 3, generator=gen)
    y = y + 2 * x[..., :1]
    with torch.no_grad():
        full = get_bound(name, **({"clip": 0.5} if name == "smile" else {})).estimate(critic(x, y))
    bound = get_bound(name, **({"clip": 0.5} if name == "smile" else {}))
    value, stderr = heldout_bound(critic, x, y, bound, budget=3 * 40 * 7)  # forces 6 row chunks
    torch.testing.assert_close(value, full, rtol=1e-5, atol=1e-5)
    assert stderr.shape == (3,) and bool((stderr > 0).all())
    asked = []

    def x_rows(start, stop):  # the row-range form RSMI uses: each chunk built on demand
        asked.append((start, stop))
        return x[:, start:stop]

    again = heldout_bound(critic, x_rows, y, bound, budget=3 * 40 * 7)
    assert torch.equal(again[0], value) and torch.equal(again[1], stderr)
    assert asked[0][0] == 0 and asked[-1][1] == 40 and len(asked) > 1
    assert all(b - a <= 14 for a, b in asked)  # memory: never more than a span of rows at once
    if name == "infonce":
        assert bool((value <= math.log(40) + 1e-6).all())


def test_stderr_matches_row_spread_for_infonce():
    # InfoNCE is a mean of per-row terms; the batch-means standard error must agree with
    # std(row terms)/sqrt(M) up to the sampling error of a 10-group estimate (~25 %).
    gen = torch.Generator().manual_seed(1)
    critic = SeparableCritic(1, 1, 1, hidden=8, embed=4, generator=gen)
    x = torch.randn(1, 2000, 1, generator=gen)
    y = 0.8 * x + 0.6 * torch.randn(1, 2000, 1, generator=gen)
    _, stderr = heldout_bound(critic, x, y, "infonce")
    with torch.no_grad():
        s = critic(x, y)[0]
    rows = torch.diagonal(s) - torch.logsumexp(s, dim=1)
    assert float(stderr) == pytest.approx(float(rows.std() / math.sqrt(2000)), rel=0.5)


def test_rejects_unpaired_or_too_few_rows():
    critic = SeparableCritic(1, 2, 3, hidden=8, embed=4)
    with pytest.raises(ValueError, match="same P and M"):
        heldout_bound(critic, torch.randn(1, 30, 2), torch.randn(1, 29, 3))
    with pytest.raises(ValueError, match="at least 2"):
        heldout_bound(critic, torch.randn(1, 1, 2), torch.randn(1, 1, 3))


@pytest.mark.parametrize("name", ["infonce", "dv"])
def test_columns_score_each_row_within_its_group(name):
    # bounded cost: 43 rows, columns=10 -> 5 groups of 8-9 rows, each row scored against its own group only;
    # the value is the row-weighted mean of the bound on each group's own (full) score matrix
    gen = torch.Generator().manual_seed(3)
    critic = SeparableCritic(2, 2, 1, hidden=8, embed=4, generator=gen)
    x = torch.randn(2, 43, 2, generator=gen)
    y = x[..., :1] + 0.5 * torch.randn(2, 43, 1, generator=gen)
    value, stderr = heldout_bound(critic, x, y, name, columns=10)
    groups = torch.arange(43).tensor_split(5)
    with torch.no_grad():
        parts = [get_bound(name).estimate(critic(x[:, g], y[:, g])) * g.numel() for g in groups]
    torch.testing.assert_close(value, sum(parts) / 43, rtol=1e-5, atol=1e-5)
    assert stderr.shape == (2,) and bool((stderr > 0).all())
    if name == "infonce":  # ceiling log 8 (the smallest group), below log 43
        assert bool((value <= math.log(8) + 1e-6).all())
    same = heldout_bound(critic, x, y, name, columns=43)  # a group as large as the set: the full matrix
    torch.testing.assert_close(same[0], heldout_bound(critic, x, y, name)[0])
    with pytest.raises(ValueError, match="columns=1"):
        heldout_bound(critic, x, y, name, columns=1)
