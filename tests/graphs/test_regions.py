"""Regions: hand-computed shells on lattices, agreement with BFS distances, capping, empty environments."""

import logging

import networkx as nx
import pytest
import torch

from graphs import (
    ActivationGraph,
    lattice_blocks,
    lattice_graph,
    make_regions,
    partition,
)


def rows(idx, mask):
    return [sorted(r[m].tolist()) for r, m in zip(idx, mask)]


def site(r, c, L=8):
    return (r % L) * L + c % L


def test_lattice_regions_by_hand_periodic():
    reg = make_regions(lattice_graph(8), lattice_blocks(8, 2), buffer=1, env=1)
    assert reg.num_blocks == 16 and reg.num_nodes == 64
    assert rows(reg.visible, reg.visible_mask)[0] == [0, 1, 8, 9]
    # block 0 = rows 0-1, cols 0-1; buffer: the 8 sites at distance 1 (wrapping)
    buf = sorted({site(r, c) for r, c in [(-1, 0), (-1, 1), (2, 0), (2, 1), (0, -1), (1, -1), (0, 2), (1, 2)]})
    env = sorted({site(r, c) for r, c in [(-2, 0), (-2, 1), (3, 0), (3, 1), (0, -2), (1, -2), (0, 3), (1, 3),
                                            (-1, -1), (-1, 2), (2, -1), (2, 2)]})
    assert rows(reg.buffer, reg.buffer_mask)[0] == buf
    assert rows(reg.environment, reg.environment_mask)[0] == env
    assert reg.empty_environment.numel() == 0


def test_lattice_regions_by_hand_open():
    reg = make_regions(lattice_graph(8, periodic=False), lattice_blocks(8, 2), buffer=1, env=1)
    assert rows(reg.buffer, reg.buffer_mask)[0] == sorted([site(2, 0), site(2, 1), site(0, 2), site(1, 2)])
    assert rows(reg.environment, reg.environment_mask)[0] == sorted([site(3, 0), site(3, 1), site(0, 3), site(1, 3), site(2, 2)])
    centre = 5  # rows 2-3, cols 2-3: interior block, same shells as the periodic lattice
    assert reg.buffer_mask[centre].sum() == 8 and reg.environment_mask[centre].sum() == 12
    assert torch.equal(reg.visible[reg.visible_mask].sort().values, torch.arange(64))


@pytest.mark.parametrize("buffer,env", [(0, 1), (1, 2), (2, 1)])
def test_shells_match_hop_distances(buffer, env):
    nxg = nx.random_geometric_graph(80, 0.2, seed=3)
    g = ActivationGraph.from_networkx(nxg)
    blocks = partition(g, 4)
    reg = make_regions(g, blocks, buffer=buffer, env=env)
    dist = g.hop_distances()
    for j in range(reg.num_blocks):
        members = (blocks == j).nonzero().flatten()
        d = dist[members]
        d = torch.where(d < 0, 10**6, d).min(0).values
        assert rows(reg.buffer, reg.buffer_mask)[j] == ((d >= 1) & (d <= buffer)).nonzero().flatten().tolist()
        assert rows(reg.environment, reg.environment_mask)[j] == ((d > buffer) & (d <= buffer + env)).nonzero().flatten().tolist()


def test_max_env_cap_is_seeded_subset():
    g, blocks = lattice_graph(16), lattice_blocks(16, 2)
    full = make_regions(g, blocks, buffer=1, env=3)
    capped = make_regions(g, blocks, buffer=1, env=3, max_env=10, seed=1)
    again = make_regions(g, blocks, buffer=1, env=3, max_env=10, seed=1)
    other = make_regions(g, blocks, buffer=1, env=3, max_env=10, seed=2)
    assert capped.environment.shape == (64, 10) and bool(capped.environment_mask.all())
    assert torch.equal(capped.environment, again.environment)
    assert not torch.equal(capped.environment, other.environment)
    for j in range(64):
        assert set(capped.environment[j].tolist()) <= set(full.environment[j][full.environment_mask[j]].tolist())


def test_empty_environment_reported(caplog):
    g = ActivationGraph([f"n{i}" for i in range(6)], torch.tensor([[0, 1, 3, 4], [1, 2, 4, 5]]))
    with caplog.at_level(logging.WARNING):
        reg = make_regions(g, torch.tensor([0, 0, 1, 2, 2, 3]), buffer=1, env=1)
    assert reg.num_blocks == 4  # nothing dropped
    # paths 0-1-2 and 3-4-5: blocks {0,1} and {3,4} have nothing at distance 2; {2} and {5} do
    assert reg.empty_environment.tolist() == [0, 2]
    assert "empty environment" in caplog.text
    assert not bool(reg.environment_mask[reg.empty_environment].any())


def test_select_and_to():
    reg = make_regions(lattice_graph(8, periodic=False), lattice_blocks(8, 2), buffer=1, env=1)
    sub = reg.select([5, 0])
    assert sub.num_blocks == 2 and sub.block_ids.tolist() == [5, 0]
    assert torch.equal(sub.environment[1][sub.environment_mask[1]], reg.environment[0][reg.environment_mask[0]])
    assert sub.environment.shape[1] == 12
    moved = reg.to("cpu")
    assert torch.equal(moved.buffer, reg.buffer)
    assert set(reg.tensors()) == {"blocks", "visible", "visible_mask", "buffer", "buffer_mask", "environment",
                                  "environment_mask"}
    with pytest.raises(ValueError, match="row numbers"):
        reg.select([16])


def test_bad_input():
    g = lattice_graph(4)
    with pytest.raises(ValueError, match="ActivationGraph"):
        make_regions("g", torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match="shape \\[16\\]"):
        make_regions(g, torch.zeros(15, dtype=torch.long))
    with pytest.raises(ValueError, match="env must be >= 1"):
        make_regions(g, lattice_blocks(4, 2), env=0)
    with pytest.raises(ValueError, match="buffer must be >= 0"):
        make_regions(g, lattice_blocks(4, 2), buffer=-1)
    with pytest.raises(ValueError, match="max_env"):
        make_regions(g, lattice_blocks(4, 2), max_env=0)
    with pytest.raises(ValueError, match="integer block ids"):
        make_regions(g, lattice_blocks(4, 2).float())


def test_pipeline_from_activations():
    """build_graph -> partition -> make_regions: connected blocks, every node visible exactly once."""
    from graphs import build_graph
    from graphs.partition_quality import partition_report

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=gen) @ torch.randn(8, 90, generator=gen) + torch.randn(300, 90, generator=gen)
    g = build_graph(x, 5, device="cpu")
    blocks = partition(g, 4, seed=0)
    assert partition_report(g, blocks)["num_disconnected_blocks"] == 0
    reg = make_regions(g, blocks, buffer=1, env=1, max_env=20)
    assert torch.equal(reg.visible[reg.visible_mask].sort().values, torch.arange(g.num_nodes))
    assert reg.environment.shape[1] <= 20


def weighted(edges, n):
    src = [a for a, b, _ in edges] + [b for a, b, _ in edges]
    dst = [b for a, b, _ in edges] + [a for a, b, _ in edges]
    w = [x for _, _, x in edges] * 2
    return ActivationGraph([f"u{i}" for i in range(n)], torch.tensor([src, dst]), torch.tensor(w))


def test_bound_buffer_by_hand():
    # block {0, 1} (inside bond 1.0); 2 is bound to 0 (0.95 >= 0.9), 3 hangs on 1 weakly (0.3);
    # 4 is one hop beyond 2, 5 one hop beyond 3; block {6, 7} closes the graph
    g = weighted([(0, 1, 1.0), (0, 2, 0.95), (1, 3, 0.3), (2, 4, 0.5), (3, 5, 0.5), (4, 6, 0.2), (5, 7, 0.2),
                  (6, 7, 1.0)], 8)
    blocks = torch.tensor([0, 0, 1, 2, 3, 4, 5, 5])
    hops = make_regions(g, blocks, buffer=1, env=1)
    assert rows(hops.buffer, hops.buffer_mask)[0] == [2, 3]
    assert rows(hops.environment, hops.environment_mask)[0] == [4, 5]
    bound = make_regions(g, blocks, buffer=1, env=1, bond_ratio=0.9)
    assert bound.bond_ratio == 0.9
    assert rows(bound.buffer, bound.buffer_mask)[0] == [2]  # the weak neighbour 3 joins the environment
    assert rows(bound.environment, bound.environment_mask)[0] == [3, 4]  # one hop of {0, 1, 2}; 5 is two
    # a wider buffer counts its later hops from the core {0, 1, 2}
    wide = make_regions(g, blocks, buffer=2, env=1, bond_ratio=0.9)
    assert rows(wide.buffer, wide.buffer_mask)[0] == [2, 3, 4]
    assert rows(wide.environment, wide.environment_mask)[0] == [5, 6]
    # a one-node block has no bond inside: every neighbour is bound, as with hops alone
    assert rows(bound.buffer, bound.buffer_mask)[1] == rows(hops.buffer, hops.buffer_mask)[1]


@pytest.mark.parametrize("buffer,env", [(1, 1), (2, 2)])
def test_bound_buffer_with_any_bond_is_the_hop_buffer(buffer, env):
    nxg = nx.random_geometric_graph(120, 0.16, seed=5)
    gen = torch.Generator().manual_seed(0)
    g = ActivationGraph.from_networkx(nxg)
    g = ActivationGraph(g.names, g.edge_index, 0.1 + torch.rand(g.edge_index.shape[1], generator=gen))
    blocks = partition(g, 4)
    hops = make_regions(g, blocks, buffer=buffer, env=env)
    bound = make_regions(g, blocks, buffer=buffer, env=env, bond_ratio=0.9)
    loose = make_regions(g, blocks, buffer=buffer, env=env, bond_ratio=1e-6)
    for name in ("buffer", "environment"):
        mask = name + "_mask"
        assert rows(getattr(loose, name), getattr(loose, mask)) == rows(getattr(hops, name), getattr(hops, mask))
    # a strict bond takes unbound neighbours out of the buffer (to the environment when L_B = 1; a wider
    # buffer still holds them one hop from the core) and reaches no further than the hops alone
    moved = 0
    for j in range(hops.num_blocks):
        hb, he = (set(rows(getattr(hops, n), getattr(hops, n + "_mask"))[j]) for n in ("buffer", "environment"))
        bb, be = (set(rows(getattr(bound, n), getattr(bound, n + "_mask"))[j]) for n in ("buffer", "environment"))
        assert bb <= hb and bb | be <= hb | he
        if buffer == 1:  # the unbound neighbours are the environment's nearest shell
            assert (hb - bb) <= be
            moved += len(hb - bb)
    assert moved > 0 or buffer > 1


def test_bond_ratio_must_be_a_fraction():
    g = lattice_graph(4)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="bond_ratio"):
            make_regions(g, lattice_blocks(4, 2), bond_ratio=bad)
