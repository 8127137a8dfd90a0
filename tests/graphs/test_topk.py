"""RunningTopK fed upper-triangular bands equals a dense per-row top-k."""

import pytest
import torch

from graphs.topk import RunningTopK


def feed(scores: torch.Tensor, k: int, rows: int) -> RunningTopK:
    u = scores.shape[0]
    topk = RunningTopK(u, k, "cpu", column_chunk=97)  # an odd chunk: bands straddle chunk edges
    for r0 in range(0, u, rows):
        topk.update(scores[r0 : r0 + rows, r0:].clone(), r0)
    return topk


def assert_dense_topk(topk: RunningTopK, scores: torch.Tensor) -> None:
    dense = scores.clone()
    dense.fill_diagonal_(-torch.inf)
    want = dense.topk(topk.k, dim=1).values
    assert torch.equal(topk.values, want)  # values (ties make identities ambiguous)
    got = dense.gather(1, topk.indices)
    assert torch.equal(got, topk.values)  # and every kept index scores what it claims
    assert bool((topk.indices != torch.arange(scores.shape[0])[:, None]).all())


@pytest.mark.parametrize("rows", [5, 40, 150, 400])
def test_random_scores(rows):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 400, generator=g)
    assert_dense_topk(feed(a + a.T, 6, rows), a + a.T)


@pytest.mark.parametrize("rows", [30, 200])
def test_clustered_and_tied_scores(rows):
    """Each column's best entries all sit in the band's first rows, and many scores tie: the
    first band's lower bound (k-th largest of group maxima) must still admit all of them."""
    u = 300
    i = torch.arange(u, dtype=torch.float32)
    s = -(i[:, None] + i[None, :])  # larger for smaller indices: the best partners are rows 0, 1, ...
    s = torch.where(torch.rand(u, u, generator=torch.Generator().manual_seed(1)) < 0.3, torch.zeros(()), s)
    s = torch.round(torch.maximum(s, s.T) / 25)  # symmetric, heavily tied
    assert_dense_topk(feed(s, 8, rows), s)


def test_rows_with_no_finite_partner_keep_empty_slots():
    s = torch.full((6, 6), -torch.inf)
    s[0, 1] = s[1, 0] = 2.0
    topk = feed(s, 3, 2)
    rows, cols, vals = topk.edges()
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0] and vals.tolist() == [2.0, 2.0]
