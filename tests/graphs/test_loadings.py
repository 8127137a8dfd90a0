"""Loading affinities (:mod:`graphs.loadings`): the triad loadings of a one-factor tree, and the graph they give."""

import pytest
import torch

from graphs.loadings import loading_graph, triad_loadings


def _tree_corr(r: torch.Tensor, groups: torch.Tensor, across: float) -> torch.Tensor:
    """|corr| of variables reading their group's latent with loadings ``r``, groups correlating ``across``."""
    rho = torch.where(groups[:, None] == groups[None, :], 1.0, across).double()
    return (r[:, None] * r[None, :] * rho).fill_diagonal_(1.0)


def test_triad_loadings_are_exact_on_a_one_factor_tree():
    r = torch.tensor([0.8, 0.35, 0.75, 0.7, 0.8, 0.45, 0.6, 0.9, 0.5], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert torch.allclose(triad_loadings(_tree_corr(r, groups, 0.72)), r, atol=1e-12)


def test_triad_loadings_hold_when_a_weak_variables_strongest_partners_lie_in_another_group():
    """One group reads its latent far better (0.95 against 0.5): a weak variable's two strongest partners are both in
    that group, and their triad alone reads r² as 0.25 · 0.64² (r 0.32); the median over partners k of the best
    partner j's triads does not (sample_tmr, groups of 3, level 1: docs/planted-hierarchy.md)."""
    r = torch.tensor([0.95] * 4 + [0.5] * 12, dtype=torch.float64)
    groups = torch.arange(16) // 4
    corr = _tree_corr(r, groups, 0.64)
    assert torch.allclose(triad_loadings(corr), r, atol=1e-12)
    two_strongest = corr[4, 0] * corr[4, 1] / corr[0, 1]
    assert abs(float(two_strongest.sqrt()) - 0.32) < 0.001  # what the loading was read as before


def test_the_loading_graph_reads_the_groups_correlation():
    """Samples of three groups (one weak variable each): every pair joined, weight ~1 inside a group, ~0.72 across;
    raw |corr| ranks two strong variables of different groups above a weak one and its own group."""
    gen = torch.Generator().manual_seed(0)
    n, groups = 40_000, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    r = torch.tensor([0.8, 0.35, 0.75, 0.7, 0.8, 0.45, 0.6, 0.9, 0.5])
    top = torch.randn(n, 1, generator=gen)
    latents = 0.85 * top + (1 - 0.85**2) ** 0.5 * torch.randn(n, 3, generator=gen)  # groups correlate 0.72
    x = r * latents[:, groups] + (1 - r**2).sqrt() * torch.randn(n, 9, generator=gen)
    graph = loading_graph(x, [f"v{i}" for i in range(9)])
    assert graph.num_edges == 9 * 8  # every pair, both directions
    w = torch.zeros(9, 9)
    w[graph.edge_index[0], graph.edge_index[1]] = graph.edge_weight
    same = (groups[:, None] == groups[None, :]) & ~torch.eye(9, dtype=torch.bool)
    assert float((w[same] - 1).abs().max()) < 0.06
    assert float((w[~same & ~torch.eye(9, dtype=torch.bool)] - 0.72).abs().max()) < 0.06
    raw = torch.corrcoef(x.T).abs()
    assert raw[0, 4] > raw[0, 1]  # the trap: strong pair across groups above the weak member of group 0


def test_bad_inputs_say_what_is_needed():
    with pytest.raises(ValueError, match="at least 3"):
        loading_graph(torch.randn(100, 2), ["a", "b"])


def test_too_many_variables_fall_back_to_the_given_graph(monkeypatch):
    import graphs.loadings as loadings
    from graphs.graph import ActivationGraph

    monkeypatch.setattr(loadings, "MAX_LOADING_NODES", 4)
    x, names = torch.randn(50, 5), [f"v{i}" for i in range(5)]
    top_k = ActivationGraph(names, torch.tensor([[0, 1], [1, 2]]))
    assert loading_graph(x, names, fallback=top_k) is top_k
    with pytest.raises(ValueError, match="at most 4"):
        loading_graph(x, names)


def test_the_loading_graphs_standard_errors_shrink_with_the_rows(monkeypatch):
    """One standard error per edge, aligned with the graph's edges, ~ (1 - c²) / (c √n) of the weight: four times
    the rows, half the error; the fallback has none."""
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(40_000, 1, generator=gen)
    x = 0.6 * z + 0.8 * torch.randn(40_000, 6, generator=gen)  # every pair correlates 0.36
    names = [f"v{i}" for i in range(6)]
    graph, se = loading_graph(x[:10_000], names, with_stderr=True)
    assert se.shape == (graph.num_edges,) and graph.num_edges == 30
    expected = graph.edge_weight * (1 - 0.36**2) / (0.36 * 10_000**0.5)
    assert torch.allclose(se, expected, rtol=0.15)
    assert 0.4 < float(loading_graph(x, names, with_stderr=True)[1].mean() / se.mean()) < 0.6
    import graphs.loadings as loadings
    from graphs.graph import ActivationGraph

    monkeypatch.setattr(loadings, "MAX_LOADING_NODES", 4)
    top_k = ActivationGraph(names, torch.tensor([[0, 1], [1, 2]]))
    assert loading_graph(x, names, fallback=top_k, with_stderr=True) == (top_k, None)


def test_duplicated_variables_get_a_standard_error_of_zero_not_below(monkeypatch):
    """Two copies of one variable (a block of one unit read by two hidden variables) correlate 1 up to rounding,
    which can land past 1 (a flow's level 1 did): their standard error is 0, never negative (the partition refuses
    negative ones)."""
    import graphs.loadings as loadings

    correlation = loadings.StreamingMoments.correlation

    def past_one(self):
        corr = correlation(self)
        corr[0, 5] = corr[5, 0] = 1.0 + 1e-6
        return corr
    monkeypatch.setattr(loadings.StreamingMoments, "correlation", past_one)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 5, generator=gen) + torch.randn(2000, 1, generator=gen)
    x = torch.cat([x, 3.0 * x[:, :1]], dim=1)  # column 5 copies column 0
    graph, se = loading_graph(x, [f"v{i}" for i in range(6)], with_stderr=True)
    assert bool(torch.isfinite(se).all()) and bool((se >= 0).all())
    src, dst = graph.edge_index
    assert float(se[(src == 0) & (dst == 5)].max()) == 0.0
