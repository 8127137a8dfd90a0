"""Pareto swaps between adjacent blocks (:mod:`graphs.swaps`)."""

import numpy as np
import pytest
import torch

from graphs import build_graph, partition, swaps, tetrads
from graphs.swaps import MAX_CUT_UNITS, MAX_SWAP_NODES, cross_part_mi, pareto_swaps, unit_r2
from graphs.tetrads import first_canonical_corr


def _sibling_pairs(n: int = 8000, seed: int = 0) -> torch.Tensor:
    """Two groups of 4 units reading latents that correlate 0.6, each group two pairs sharing a nuisance of the
    latent's size with opposite signs (it cancels in the pair's sum, as a random-sign nuisance may): units 0-3 read
    z1 (pairs 0-1, 2-3), units 4-7 read z2 (pairs 4-5, 6-7)."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, generator=g)
    z2 = 0.6 * z1 + 0.8 * torch.randn(n, generator=g)
    nuisance = torch.randn(n, 4, generator=g)
    cols = []
    for unit in range(8):
        z = z1 if unit < 4 else z2
        cols.append(z + (-1) ** unit * nuisance[:, unit // 2] + 0.7 * torch.randn(n, generator=g))
    return torch.stack(cols, dim=1)


def test_unit_r2_is_the_regression_r2():
    x = _sibling_pairs(4000).double()
    corr = torch.corrcoef(x.T)
    members = torch.tensor([0, 1, 4])
    z = ((x - x.mean(0)) / x.std(0)).numpy()
    for i, u in enumerate(members.tolist()):
        others = [v for v in members.tolist() if v != u]
        coef, *_ = np.linalg.lstsq(z[:, others], z[:, u], rcond=None)
        r2 = 1 - np.mean((z[:, u] - z[:, others] @ coef) ** 2) / np.var(z[:, u])
        assert abs(float(unit_r2(corr, members)[i]) - r2) < 1e-3
    assert unit_r2(corr, torch.tensor([3])).tolist() == [0.0]


def test_sibling_halves_are_swapped_back_into_their_groups():
    x = _sibling_pairs()
    graph = build_graph(x)  # 8 units: the complete graph
    mixed = torch.tensor([0, 0, 1, 1, 1, 1, 0, 0])  # each block: a pair of each group
    out = pareto_swaps(x, mixed, graph)
    assert len(set(out[:4].tolist())) == 1 and len(set(out[4:].tolist())) == 1 and out[0] != out[4], out
    corr = torch.corrcoef(x.double().T)
    for block in (0, 1):  # the swap lowered no unit's R² (Pareto) and raised their sum
        before = unit_r2(corr, torch.nonzero(mixed == block).flatten())
        assert float(before.sum()) < float(unit_r2(corr, torch.nonzero(out == block).flatten()).sum())
    assert pareto_swaps(x, out, graph).tolist() == out.tolist()  # a planted partition is left alone


def test_a_sweep_searches_a_pair_of_blocks_again_only_once_it_has_changed():
    x = _sibling_pairs(2000)
    graph, corr = build_graph(x), torch.corrcoef(x.double().T)
    out = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    members, settled, searched = {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}, set(), []

    def nothing(corr, a, b, gain):
        searched.append((tuple(a), tuple(b)))

    for _ in range(2):
        assert swaps._swap_sweep(corr, members, out, graph, 0.02, nothing, settled) == 0
    assert searched == [((0, 1, 2, 3), (4, 5, 6, 7))]
    members = {0: [0, 1, 2, 4], 1: [3, 5, 6, 7]}
    out[[3, 4]] = torch.tensor([1, 0])
    swaps._swap_sweep(corr, members, out, graph, 0.02, nothing, settled)
    assert searched[1:] == [((0, 1, 2, 4), (3, 5, 6, 7))]


def _strong_sibling_pairs(n: int = 8000, seed: int = 0, loadings: bool = False, latent_corr: float = 0.8):
    """Two groups of 4 units reading latents that correlate ``latent_corr`` (0.8: family siblings at coupling 0.8),
    each group two pairs sharing a nuisance three times the latent's size with random signs: units 0-3 read z1 (pairs
    0-1, 2-3), units 4-7 z2 (pairs 4-5, 6-7), every loading 1 or (``loadings``) drawn in [0.5, 1.5). A unit's R² is
    its partner's; what its own group's pair adds is a fraction of a percent. ``[n, 8]``."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, generator=g)
    z2 = latent_corr * z1 + (1 - latent_corr ** 2) ** 0.5 * torch.randn(n, generator=g)
    nuisance = torch.randn(n, 4, generator=g)
    sign = torch.where(torch.rand(8, generator=g) < 0.5, -1.0, 1.0)
    load = 0.5 + torch.rand(8, generator=g) if loadings else torch.ones(8)
    cols = [load[u] * (z1 if u < 4 else z2) + 3.0 * sign[u] * nuisance[:, u // 2] + 0.7 * torch.randn(n, generator=g)
            for u in range(8)]
    return torch.stack(cols, dim=1)


def test_cross_part_mi_is_the_gaussian_mi_of_the_canonical_correlations():
    x = _strong_sibling_pairs(4000).double()
    corr = torch.corrcoef(x.T)
    p, q = [0, 1], [2, 3, 6]
    z = ((x - x.mean(0)) / x.std(0)).numpy()

    def whiten(cols):
        c = np.cov(z[:, cols], rowvar=False)
        return z[:, cols] @ np.linalg.inv(np.linalg.cholesky(c)).T

    rho = np.linalg.svd(whiten(p).T @ whiten(q) / (len(z) - 1), compute_uv=False)  # canonical correlations
    assert abs(cross_part_mi(corr, p, q) - float(-0.5 * np.log(1 - rho ** 2).sum())) < 1e-6
    assert cross_part_mi(corr, p, q) == pytest.approx(cross_part_mi(corr, q, p))


def test_first_canonical_corr_is_the_largest_canonical_correlation():
    x = _strong_sibling_pairs(4000, loadings=True).double()
    corr = torch.corrcoef(x.T)
    z = ((x - x.mean(0)) / x.std(0)).numpy()

    def whiten(cols):
        return z[:, cols] @ np.linalg.inv(np.linalg.cholesky(np.cov(z[:, cols], rowvar=False))).T

    pairs = [([0, 1], [2, 3, 6]), ([4, 5], [6, 7, 2]), ([1, 3], [0, 5, 7])]
    expected = [np.linalg.svd(whiten(p).T @ whiten(q) / (len(z) - 1), compute_uv=False)[0] for p, q in pairs]
    assert first_canonical_corr(corr, pairs) == pytest.approx(expected, abs=1e-6)
    assert first_canonical_corr(corr, [([2, 3, 6], [0, 1])]) == pytest.approx(expected[:1], abs=1e-7)  # symmetric
    assert first_canonical_corr(torch.zeros(4, 4), [([0, 1], [2, 3])]) == [0.0]  # singular parts: nothing shared
    assert first_canonical_corr(corr, []) == []
    mixed = [([2, 3, 6], [0, 1]), ([4, 5], [6, 7, 2]), ([1, 3], [0, 5, 7])]  # any sizes, either order: grouped
    assert tetrads.canonical_corrs(corr, mixed) == pytest.approx(expected, abs=1e-7)


def test_a_block_is_cut_where_its_parts_share_the_least():
    """The weakest cut of a block: between its nuisance pairs, or between a nuisance triple and a lone unit."""
    g = torch.Generator().manual_seed(4)
    z, pair_a, pair_b, triple = (torch.randn(8000, generator=g) for _ in range(4))
    noise = 0.7 * torch.randn(8000, 8, generator=g)
    x = torch.stack([z + 3 * pair_a, z - 3 * pair_a, z + 3 * pair_b, z - 3 * pair_b,  # two nuisance pairs
                     z + 2 * triple, z + 2 * triple, z - 2 * triple, z], dim=1) + noise  # a triple and a lone unit
    halves = swaps._Halves(torch.corrcoef(x.double().T), rows=8000)
    assert sorted(halves([0, 1, 2, 3])[0]) == [[0, 1], [2, 3]]
    assert sorted(halves([4, 5, 6, 7])[0], key=len) == [[7], [4, 5, 6]]
    assert halves([0, 1, 2]) is None  # fewer than 4 units: no parts
    assert swaps._Halves(torch.eye(MAX_CUT_UNITS + 1), rows=8000)(list(range(MAX_CUT_UNITS + 1))) is None  # nor too many


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sibling_pairs_under_a_strong_nuisance_are_exchanged_as_parts(seed, monkeypatch):
    x = _strong_sibling_pairs(seed=seed)
    graph = build_graph(x)  # the complete graph of 8 units
    mixed = torch.tensor([0, 0, 1, 1, 1, 1, 0, 0])  # each block: a pair of each group
    with monkeypatch.context() as m:  # Pareto unit swaps alone: no unit of a nuisance pair gains, so the mix stays
        m.setattr(swaps._Halves, "best_swap", lambda self, *args: None)
        m.setattr(swaps, "tetrad_exchange", lambda *args: None)
        assert pareto_swaps(x, mixed, graph).tolist() == mixed.tolist()
    out = pareto_swaps(x, mixed, graph)
    assert len(set(out[:4].tolist())) == 1 and len(set(out[4:].tolist())) == 1 and out[0] != out[4], out
    corr = torch.corrcoef(x.double().T)
    for pair, own, mixed_mate in (([0, 1], [2, 3], [6, 7]), ([4, 5], [6, 7], [2, 3])):  # halves share more (Pareto)
        assert cross_part_mi(corr, pair, own) > cross_part_mi(corr, pair, mixed_mate)
    assert pareto_swaps(x, out, graph).tolist() == out.tolist()  # a planted partition is left alone


@pytest.mark.parametrize("seed", [1, 5, 8])
def test_sibling_pairs_of_unequal_loadings_are_exchanged_on_the_tetrad_test(seed, monkeypatch):
    """With unequal loadings two strong pairs of sibling groups can share more MI than a strong and a weak pair of
    one group (MI is convex in the canonical correlation), so the per-block Pareto test on MI refuses the repair; in
    the product of the blocks' canonical correlations the pairs' loadings cancel, and the own-group arrangement
    wins by the siblings' correlation (0.8 squared)."""
    x = _strong_sibling_pairs(seed=seed, loadings=True)
    graph = build_graph(x)
    mixed = torch.tensor([0, 0, 1, 1, 1, 1, 0, 0])
    def grouped(out):
        return len(set(out[:4].tolist())) == 1 and len(set(out[4:].tolist())) == 1 and out[0] != out[4]

    with monkeypatch.context() as m:  # the Pareto tests (on R², on MI) alone do not repair these draws
        m.setattr(swaps._Halves, "_tetrad_swap", lambda self, *args: None)
        m.setattr(swaps, "tetrad_exchange", lambda *args: None)
        assert not grouped(pareto_swaps(x, mixed, graph))
    with monkeypatch.context() as m:  # the unit sweeps' tetrad exchange of two units each way repairs them alone
        m.setattr(swaps._Halves, "best_swap", lambda self, *args: None)
        assert grouped(pareto_swaps(x, mixed, graph))
    out = pareto_swaps(x, mixed, graph)
    assert grouped(out), out
    corr = torch.corrcoef(x.double().T)
    own = first_canonical_corr(corr, [([0, 1], [2, 3]), ([4, 5], [6, 7])])
    crossed = first_canonical_corr(corr, [([0, 1], [6, 7]), ([4, 5], [2, 3])])
    assert own[0] * own[1] > crossed[0] * crossed[1]
    assert pareto_swaps(x, out, graph).tolist() == out.tolist()  # a planted partition is left alone


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pairs_of_one_latent_are_left_alone_by_the_tetrad_test(seed, monkeypatch):
    """Both groups on one latent: no arrangement of the four pairs is better than another, and the tetrad test's
    margin of TETRAD_Z standard errors keeps sampling noise from swapping (with no margin these draws swap)."""
    x = _strong_sibling_pairs(seed=seed, loadings=True, latent_corr=1.0)
    graph = build_graph(x)
    split = torch.tensor([0, 0, 1, 1, 1, 1, 0, 0])
    assert pareto_swaps(x, split, graph).tolist() == split.tolist()
    monkeypatch.setattr(tetrads, "TETRAD_Z", 0.0)
    assert pareto_swaps(x, split, graph).tolist() != split.tolist()


def _lone_units_by_triples(n: int = 8000, seed: int = 0, latent_corr: float = 0.8) -> torch.Tensor:
    """Groups A (units 0-3) and B (4-7) reading latents that correlate ``latent_corr``: units 0-2 a triple whose
    nuisance cancels in its sum (loadings 2, 2, -4: z_A read cleanly), 4-6 a triple whose nuisance follows the
    signal's signs (z_B hard to read apart from it), 3 and 7 lone units. ``[n, 8]``."""
    g = torch.Generator().manual_seed(seed)
    za = torch.randn(n, generator=g)
    zb = latent_corr * za + (1 - latent_corr ** 2) ** 0.5 * torch.randn(n, generator=g)
    na, nb = torch.randn(n, generator=g), torch.randn(n, generator=g)
    cols = [za + 2 * na, za + 2 * na, za - 4 * na, za, zb + 2 * nb, zb + 2 * nb, zb + 2 * nb, zb]
    return torch.stack(cols, dim=1) + 0.7 * torch.randn(n, 8, generator=g)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lone_units_are_exchanged_on_the_tetrad_test_where_r2_follows_the_readout(seed, monkeypatch):
    """Each lone unit in the other group's block: B's lone unit is predicted better by A's clean triple than by its
    own (R² 0.37 against 0.13), so no Pareto unit swap repairs the mix; in the product of the two lone units'
    correlations with their blocks the triples' readouts cancel and the own-group arrangement wins by 0.8 squared.
    Both groups on one latent: left alone."""
    monkeypatch.setattr(swaps._Halves, "best_swap", lambda self, *args: None)  # no part swaps: units alone
    x = _lone_units_by_triples(seed=seed)
    graph, corr = build_graph(x), torch.corrcoef(x.double().T)
    mixed, planted = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0]), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert float(unit_r2(corr, torch.tensor([7, 0, 1, 2]))[0]) > 2 * float(unit_r2(corr, torch.tensor([7, 4, 5, 6]))[0])
    with monkeypatch.context() as m:
        m.setattr(swaps, "tetrad_exchange", lambda *args: None)
        assert pareto_swaps(x, mixed, graph).tolist() == mixed.tolist()
    assert pareto_swaps(x, mixed, graph).tolist() == planted.tolist()
    assert tetrads.tetrad_exchange(corr, [0, 1, 2, 7], [3, 4, 5, 6], rows=8000) == ([0, 1, 2, 3], [4, 5, 6, 7])
    assert pareto_swaps(x, planted, graph).tolist() == planted.tolist()
    one_latent = _lone_units_by_triples(seed=seed, latent_corr=1.0)
    assert pareto_swaps(one_latent, mixed, build_graph(one_latent)).tolist() == mixed.tolist()


def test_tetrad_rises_are_the_summed_log_correlations_beyond_their_standard_errors():
    old, new = np.array([[0.5, 0.5], [0.6, 0.6], [0.5, np.nan]]), np.array([[0.6, 0.6], [0.5, 0.5], [0.9, 0.9]])
    rises = tetrads.tetrad_rises(old, new, rows=10_000)  # a rise, a fall, a NaN
    assert rises[0] == pytest.approx(2 * np.log(1.2)) and np.isnan(rises[1:]).all()
    assert np.isnan(tetrads.tetrad_rises(old[:1], new[:1], rows=50)).all()  # 2 s.e. = 0.74 > 0.36
    assert tetrads.log_rho(0.0, rows=100) == pytest.approx((np.log(0.1), 0.99 / 0.1 / 10))  # floored at 1/√n
    floored = tetrads.tetrad_rises(np.array([[0.0, 0.5]]), np.array([[0.01, 0.5]]), rows=100)
    assert np.isnan(floored).all()  # both below the floor: no rise


def test_first_canonical_corr_refuses_what_is_not_a_correlation_matrix():
    corr = torch.eye(6, dtype=torch.float64)
    corr[0, 1] = corr[1, 0] = 1.5  # units 0 and 1: not positive definite
    corr[2, 4] = corr[4, 2] = 0.5
    rho = first_canonical_corr(corr, [([0, 1], [2, 3]), ([2, 3], [4, 5])])
    assert np.isnan(rho[0]) and rho[1] == pytest.approx(0.5)  # a bad pair does not spoil its batch
    corr[3, 5] = corr[5, 3] = float("nan")
    assert all(np.isnan(first_canonical_corr(corr, [([2, 3], [4, 5]), ([3, 2], [5, 4])])))


def _lone_units(n: int = 8000, seed: int = 0) -> torch.Tensor:
    """Four groups of 4 reading latents that correlate 0.81 (a common parent, coupling 0.9): units 3g..3g+2 share a
    nuisance orthogonal to the signal (loadings 1, 1, -2), unit 12 + g reads group g's latent alone."""
    g = torch.Generator().manual_seed(seed)
    root = torch.randn(n, generator=g)
    z = [0.9 * root + 0.19 ** 0.5 * torch.randn(n, generator=g) for _ in range(4)]
    cols = []
    for k in range(4):
        nuisance = torch.randn(n, generator=g)
        cols += [z[k] + 1.2 * w * nuisance + 0.5 * torch.randn(n, generator=g) for w in (1.0, 1.0, -2.0)]
    cols += [z[k] + 0.5 * torch.randn(n, generator=g) for k in range(4)]
    return torch.stack(cols, dim=1)


def test_a_block_of_lone_units_is_dissolved_into_their_groups(monkeypatch):
    x = _lone_units()
    graph = build_graph(x)
    planted = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 0, 1, 2, 3])
    lone = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4])
    assert partition(graph, 4).tolist() == lone.tolist()  # the lone units bind to one another
    assert pareto_swaps(x, lone, graph).tolist() == lone.tolist()  # no size-keeping swap repairs it
    out = pareto_swaps(x, lone, graph, block_size=4)
    assert out.tolist() == planted.tolist()
    corr = torch.corrcoef(x.double().T)
    r2_lone = unit_r2(corr, torch.arange(12, 16))
    for k in range(4):  # every unit moved is predicted better, no unit of a receiving block worse
        triple = torch.arange(3 * k, 3 * k + 3)
        after = unit_r2(corr, torch.cat([triple, torch.tensor([12 + k])]))
        assert float(after[3]) > float(r2_lone[k]) and bool((after[:3] >= unit_r2(corr, triple)).all())
    assert pareto_swaps(x, planted, graph, block_size=4).tolist() == planted.tolist()  # the planted groups stay
    with monkeypatch.context() as m:
        m.setattr(swaps, "departure_sweep", lambda *args: 0)
        assert pareto_swaps(x, lone, graph, block_size=3).tolist() == lone.tolist()  # no block has room
    # ... but the lone units depart to their own triples past block_size (graphs.departures): three on the tetrads
    # against staying, the last one, left a block of one, absorbed into the block it reads best
    with monkeypatch.context() as m:
        m.setattr(swaps, "absorb_leftovers", lambda *args: 0)
        out = pareto_swaps(x, lone, graph, block_size=3)
        joined = [u for u in range(12, 16) if int(out[u]) in out[:12].tolist()]  # now in a block with a triple
        assert len(joined) == 3 and all(out[u] == out[3 * (u - 12)] for u in joined), out
    assert pareto_swaps(x, lone, graph, block_size=3).tolist() == planted.tolist()


def _pure_and_noisy_units(n: int = 20000, seed: int = 0) -> torch.Tensor:
    """Four groups of 4 reading latents that correlate 0.90 (a common parent, coupling 0.95; ``sample_tmr``'s
    contrast triples when the sign draw is all-equal): units 4g, 4g+1 share a nuisance with opposite signs (and a
    noise of 0.7 the signal), unit 4g+2 reads group g's latent alone (pure), unit 4g+3 under a private nuisance
    twice the signal (noisy)."""
    g = torch.Generator().manual_seed(seed)
    root = torch.randn(n, generator=g)
    cols = []
    for _ in range(4):
        z = 0.95 * root + (1 - 0.95**2) ** 0.5 * torch.randn(n, generator=g)
        nuisance = torch.randn(n, generator=g)
        cols += [z + 2.45 * w * nuisance + 0.7 * torch.randn(n, generator=g) for w in (1.0, -1.0)]
        cols += [z + 0.5 * torch.randn(n, generator=g), z + 2.0 * torch.randn(n, generator=g)]
    return torch.stack(cols, dim=1)


def test_a_noisy_unit_follows_its_pure_group_mate_out_of_a_dissolved_block():
    """Pure units of sibling groups bind to one another (|corr| ~0.7) and take the noisy units along; each group's
    pair is left with room. A noisy unit alone is predicted worse by its pair than in the mixed block, and better
    once its pure group-mate has joined the pair: the dissolution places the members strongest first as well as
    weakest first, so the noisy unit follows its pure mate (``sample_tmr`` at coupling 0.95 with contrast triples:
    level-0 ARI 0.64-0.90 -> 1.00)."""
    x = _pure_and_noisy_units()
    graph = build_graph(x)
    planted = torch.arange(16) // 4
    mixed = torch.tensor([0, 0, 4, 4, 1, 1, 4, 4, 2, 2, 5, 5, 3, 3, 5, 5])  # pure + noisy of groups 0-1, 2-3
    corr = torch.corrcoef(x.double().T)
    noisy_in_mixed = float(unit_r2(corr, torch.tensor([3, 2, 6, 7]))[0])
    assert float(unit_r2(corr, torch.tensor([3, 0, 1]))[0]) <= noisy_in_mixed  # weakest first alone fails
    assert float(unit_r2(corr, torch.tensor([3, 0, 1, 2]))[0]) > noisy_in_mixed  # after its pure mate it gains
    out = pareto_swaps(x, mixed, graph, block_size=4)
    assert out.unique().numel() == 4 and len(set(zip(out.tolist(), planted.tolist()))) == 4, out
    assert pareto_swaps(x, planted, graph, block_size=4).tolist() == planted.tolist()


def test_bad_or_too_large_inputs():
    x = _sibling_pairs(500)
    graph = build_graph(x)
    with pytest.raises(ValueError, match="same units"):
        pareto_swaps(x[:, :7], torch.zeros(8, dtype=torch.long), graph)
    wide = torch.randn(20, MAX_SWAP_NODES + 1)

    class _Graph:  # only the size is read before the limit
        num_nodes = MAX_SWAP_NODES + 1

    blocks = torch.arange(MAX_SWAP_NODES + 1) // 4
    assert pareto_swaps(wide, blocks, _Graph()) is blocks
