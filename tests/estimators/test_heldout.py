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


@pytest.mark.parametrize("hidden", [1, 2, 3])
@pytest.mark.parametrize("columns", [None, 16])
def test_binary_columns_are_scored_against_their_values_only(hidden, columns, monkeypatch):
    # a binarised H takes 2^h values: each row's logsumexp over the columns is one over those values weighted by
    # their counts in the row's group; the same InfoNCE as the full (grouped) score matrix
    import estimators.heldout

    monkeypatch.setattr(estimators.heldout, "EMBED_ROWS", 7)
    gen = torch.Generator().manual_seed(4)
    critic = SeparableCritic(3, 2, hidden, hidden=8, embed=4, generator=gen)
    x = torch.randn(3, 50, 2, generator=gen)
    y = torch.where(x[..., :1] + 0.7 * torch.randn(3, 50, hidden, generator=gen) >= 0, 1.0, -1.0)
    y[2, :20] = 1.0  # the first column group of problem 2 takes one value only
    mask = torch.tensor([[True] * hidden, [True] * hidden, [True] + [False] * (hidden - 1)])
    embedded = []
    real = critic.embed_y
    monkeypatch.setattr(critic, "embed_y", lambda t, m=None: embedded.append(t.shape[1]) or real(t, m))
    value, stderr = heldout_bound(critic, x, y, "infonce", y_mask=mask, columns=columns)
    assert embedded == [2 ** hidden]  # the values, not the 50 columns
    groups = estimators.heldout.group_edges(50, columns)
    with torch.no_grad():
        parts = [get_bound("infonce").estimate(critic(x[:, a:b], y[:, a:b], None, mask)) * (b - a)
                 for a, b in zip(groups[:-1], groups[1:])]
    torch.testing.assert_close(value, sum(parts) / 50, rtol=1e-5, atol=1e-5)
    assert stderr.shape == (3,) and bool((stderr > 0).all())
    other = y.clone()
    other[0] = 1.0  # a problem's numbers do not depend on the others' columns
    assert torch.equal(heldout_bound(critic, x, other, "infonce", y_mask=mask, columns=columns)[0][1:], value[1:])


def test_three_valued_or_wide_columns_take_the_full_matrix(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    for y in (torch.randint(-1, 2, (2, 30, 1), generator=gen).float(),  # three values
              torch.where(torch.randn(2, 30, 5, generator=gen) >= 0, 1.0, -1.0)):  # 2^5 > MAX_CODES values
        critic = SeparableCritic(2, 2, y.shape[2], hidden=8, embed=4, generator=gen)
        x = torch.randn(2, 30, 2, generator=gen)
        embedded = []
        real = critic.embed_y
        monkeypatch.setattr(critic, "embed_y",
                            lambda t, m=None, *rest, seen=embedded, f=real: seen.append(t.shape[1]) or f(t, m, *rest))
        value, _ = heldout_bound(critic, x, y, "infonce")
        assert embedded == [30]
        with torch.no_grad():
            torch.testing.assert_close(value, get_bound("infonce").estimate(critic(x, y)), rtol=1e-5, atol=1e-5)


def test_binary_columns_build_no_graph():
    # heldout_bound's short cut for a binarised H runs without autograd, as the full pass does
    gen = torch.Generator().manual_seed(6)
    critic = SeparableCritic(2, 2, 1, hidden=8, embed=4, generator=gen)
    x = torch.randn(2, 30, 2, generator=gen)
    y = torch.where(torch.randn(2, 30, 1, generator=gen) >= 0, 1.0, -1.0)
    value, stderr = heldout_bound(critic, x, y, "infonce", columns=10)
    assert not value.requires_grad and not stderr.requires_grad


@pytest.mark.parametrize("name", ["infonce", "smile"])
@pytest.mark.parametrize("columns", [None, 12])
def test_problem_groups_change_no_bit(name, columns, monkeypatch):
    # a separable critic's rows are embedded and scored a group of problems at a time (PROBLEM_GROUP_BYTES); how many
    # problems a group holds changes no bit of any problem's value or standard error, masks and callable rows too
    import estimators.heldout

    gen = torch.Generator().manual_seed(6)
    critic = SeparableCritic(7, 3, 2, hidden=8, embed=4, generator=gen)
    x = torch.randn(7, 40, 3, generator=gen)
    y = x[..., :2] + torch.randn(7, 40, 2, generator=gen)
    x_mask = torch.ones(7, 3, dtype=torch.bool)
    x_mask[2, 1:] = False
    y_mask = torch.ones(7, 2, dtype=torch.bool)
    y_mask[5, 1] = False
    bound = get_bound(name, **({"clip": 0.5} if name == "smile" else {}))
    monkeypatch.setattr(estimators.heldout, "EMBED_ROWS", 14)
    sizes, results = [], []
    for group_bytes in (1, 4 * 14 * 8 * 3, 1 << 40):  # groups of 2-3 problems, 3-4, all seven
        monkeypatch.setattr(estimators.heldout, "PROBLEM_GROUP_BYTES", group_bytes)
        size = estimators.heldout._group_size(critic, 14, 4)
        sizes.append([g.stop - g.start for g in estimators.heldout._problem_groups(7, size)])
        results.append(heldout_bound(critic, lambda a, b: x[:, a:b], y, bound, x_mask, y_mask, columns=columns,
                                     budget=7 * 40 * 7))
    assert sizes == [[2, 2, 3], [3, 4], [7]]  # never a problem alone: a lone last one joins the group before it
    for value, stderr in results[:2]:
        assert torch.equal(value, results[2][0]) and torch.equal(stderr, results[2][1])
    with torch.no_grad():  # and it is the bound of the (column-grouped) score matrix
        edges = estimators.heldout.group_edges(40, columns)
        full = sum(bound.estimate(critic(x[:, a:b], y[:, a:b], x_mask, y_mask)) * (b - a)
                   for a, b in zip(edges[:-1], edges[1:])) / 40
    torch.testing.assert_close(results[0][0], full, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(estimators.heldout, "PROBLEM_GROUP_BYTES", 1)  # a [1, d] mask still covers every problem
    shared = heldout_bound(critic, x, y, bound, x_mask[:1], y_mask[:1], columns=columns, budget=7 * 40 * 7)
    every = heldout_bound(critic, x, y, bound, x_mask[:1].expand(7, -1), y_mask[:1].expand(7, -1), columns=columns,
                          budget=7 * 40 * 7)
    assert torch.equal(shared[0], every[0])
    empty = estimators.heldout.row_statistics(critic, x[:0], y[:0], keys=("lse",))  # no problems: no rows
    assert {k: tuple(v.shape) for k, v in empty.items()} == {"diag": (0, 40), "lse": (0, 40)}


def test_score_chunks_of_a_separable_critic_are_set_per_problem_and_bounded(monkeypatch):
    # a SeparableCritic's chunks: ROW_SCORES scores a problem (rows from M alone, not from the number of problems),
    # at most 128 problems a group however narrow the critic, so a chunk stays within SCORE_BUDGET
    import estimators.heldout as heldout

    monkeypatch.setattr(heldout, "ROW_SCORES", 64)
    monkeypatch.setattr(heldout, "SCORE_BUDGET", 64 * 4)
    gen = torch.Generator().manual_seed(7)
    critic = SeparableCritic(300, 2, 1, hidden=1, embed=1, generator=gen)
    x, y = torch.randn(300, 16, 2, generator=gen), torch.randn(300, 16, 1, generator=gen)
    chunks = [(e, s.shape) for e, _, s in heldout._score_chunks(critic, lambda a, b: x[:, a:b], y, None, None, 16, 1)]
    assert {shape[1:] for _, shape in chunks} == {(4, 16)}  # 64 // 16 rows of every problem
    assert max(shape[0] * shape[1] * shape[2] for _, shape in chunks) <= heldout.SCORE_BUDGET
    assert [e.stop - e.start for e, _ in chunks[:3]] == [4, 4, 4]  # groups of SCORE_BUDGET // ROW_SCORES problems
    few = heldout.row_statistics(critic, x[:5], y[:5], keys=("lse",))  # the same chunks, the same bits, alone
    every = heldout.row_statistics(critic, x, y, keys=("lse",))
    assert torch.equal(few["lse"], every["lse"][:5]) and torch.equal(few["diag"], every["diag"][:5])
