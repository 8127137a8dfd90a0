"""Departures of parts past block_size (:mod:`graphs.departures`), driven through :func:`graphs.swaps.pareto_swaps`."""

import pytest
import torch

from graphs import build_graph, departures, swaps
from graphs.swaps import pareto_swaps

SIZES = (6, 3, 5, 4)
PLANTED = torch.tensor([0] * 6 + [1] * 3 + [2] * 5 + [3] * 4)
# with block_size=4: the group of 6 cut 4 + 2, its pair beside a pair of the group of 5 (whose other 3 form a block),
# the group of 3 holding a stray of the group of 4
MIXED = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 1, 1, 3, 3, 3, 2, 4, 4, 4])


def _groups_of_sizes(sizes=SIZES, n: int = 8000, seed: int = 0, latent_corr: float = 0.6) -> torch.Tensor:
    """Groups of the given sizes, one after another, each reading its latent (the latents correlate
    ``latent_corr``, sibling groups) with loadings in 0.7-1.3, consecutive pairs of a group sharing a nuisance of
    strength 1.5 with random signs (a group of odd size ends with a unit under a nuisance of its own). ``[n,
    sum(sizes)]``."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(n, generator=g)
    cols = []
    for size in sizes:
        z = latent_corr ** 0.5 * common + (1 - latent_corr) ** 0.5 * torch.randn(n, generator=g)
        for start in range(0, size, 2):
            nuisance = torch.randn(n, generator=g)
            for _ in range(start, min(start + 2, size)):
                loading = 0.7 + 0.6 * torch.rand(1, generator=g)
                sign = 1.0 if float(torch.rand(1, generator=g)) < 0.5 else -1.0
                cols.append(loading * z + sign * 1.5 * nuisance + 0.7 * torch.randn(n, generator=g))
    return torch.stack(cols, dim=1)


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    def canonical(labels):  # blocks numbered in order of their first unit
        first: dict[int, int] = {}
        return [first.setdefault(label, len(first)) for label in labels.tolist()]
    return canonical(a) == canonical(b)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_groups_of_unequal_sizes_are_reunited_past_block_size(seed, monkeypatch):
    x = _groups_of_sizes(seed=seed)
    graph = build_graph(x)
    with monkeypatch.context() as m:  # swaps and dissolutions keep sizes: the cut groups stay cut
        m.setattr(swaps, "departure_sweep", lambda *args: 0)
        assert not _same_partition(pareto_swaps(x, MIXED, graph, block_size=4), PLANTED)
    out = pareto_swaps(x, MIXED, graph, block_size=4)
    assert _same_partition(out, PLANTED), out
    assert _same_partition(pareto_swaps(x, PLANTED, graph, block_size=4), PLANTED)  # the planted groups stay
    assert pareto_swaps(x, MIXED, graph).tolist() != out.tolist()  # without block_size: no departures


def test_a_half_block_left_behind_merges_on_its_triad(monkeypatch):
    """Seed 1: the group of 6's pair, left a block of its own by departures, is read below a sibling by the
    same-latent tetrads (its home's halves carry the nuisances it shares); a half block is a fragment and merges on
    its triad (docs/planted-hierarchy.md, "Half blocks left behind")."""
    x = _groups_of_sizes(seed=1)
    graph = build_graph(x)
    assert _same_partition(pareto_swaps(x, MIXED, graph, block_size=4), PLANTED)
    guarded = departures._merge
    monkeypatch.setattr(departures, "_merge", lambda *args, same_latent=True: guarded(*args, same_latent=True))
    out = pareto_swaps(x, MIXED, graph, block_size=4)
    assert int(out[4]) == int(out[5]) and int((out == out[4]).sum()) == 2  # the group of 6's pair, left alone


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nothing_departs_when_every_group_reads_one_latent(seed, monkeypatch):
    """One latent: no block is the better home of any part, and the tetrads' margin of TETRAD_Z standard errors
    keeps sampling noise from moving one."""
    x = _groups_of_sizes(seed=seed, latent_corr=1.0)
    moved = []
    sweep = swaps.departure_sweep
    monkeypatch.setattr(swaps, "departure_sweep", lambda *args: moved.append(sweep(*args)) or moved[-1])
    pareto_swaps(x, MIXED, build_graph(x), block_size=4)
    assert moved and sum(moved) == 0


def test_a_home_whose_cut_parts_a_stray_from_the_rest_is_not_homogeneous():
    """A block of three units of one group and a stray of a sibling group is cut at the stray; its two parts relate
    differently to the stray's group-mates and to the others: not a home (it would draw the stray's group)."""
    x = _groups_of_sizes((4, 4, 4), latent_corr=0.5)
    corr = torch.corrcoef(x.double().T)
    halves = swaps._Halves(corr, rows=x.shape[0], smallest=2)
    reads = departures.Reads(corr, x.shape[0], lambda block: halves(block)[0])
    others = [[1, 2, 3], [8, 9, 10, 11]]
    assert sorted(map(sorted, reads.cut([0, 4, 5, 6]))) == [[0], [4, 5, 6]]
    assert not departures._homogeneous(reads, [0, 4, 5, 6], others)
    assert departures._homogeneous(reads, [4, 5, 6, 7], others)
    log, se = reads([([0], [1, 2, 3]), ([1, 2, 3], [0])])  # one correlation per pair of sets, either order
    assert log[0] == log[1] and se[0] == se[1] > 0
