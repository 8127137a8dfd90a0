"""Square lattices: neighbours, metadata, blocks and their quotient lattice."""

import pytest
import torch

from graphs import lattice_blocks, lattice_graph


@pytest.mark.parametrize("periodic", [True, False])
def test_lattice_neighbours(periodic):
    L = 5
    g = lattice_graph(L, periodic)
    assert g.num_nodes == L * L and g.metadata == {"lattice": {"L": L, "periodic": periodic}}
    assert g.names[L + 2] == "site:1,2"
    expected_undirected = 2 * L * L if periodic else 2 * L * (L - 1)
    assert g.num_edges == 2 * expected_undirected
    nb = set(g.neighbors(0).tolist())
    assert nb == ({1, L, L - 1, L * (L - 1)} if periodic else {1, L})
    assert set(g.neighbors(L + 1).tolist()) == {1, L, L + 2, 2 * L + 1}


def test_lattice_blocks_and_quotient():
    blocks = lattice_blocks(4, 2)
    assert blocks.tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]
    q = lattice_graph(8, periodic=False).quotient(lattice_blocks(8, 2))
    assert q.metadata["lattice"] == {"L": 4, "periodic": False}
    assert q.num_edges == lattice_graph(4, periodic=False).num_edges
    assert torch.all(q.edge_weight == 2)  # two bonds cross each shared block side


def test_bad_input():
    with pytest.raises(ValueError, match="does not divide"):
        lattice_blocks(6, 4)
    with pytest.raises(ValueError, match="exceeds"):
        lattice_blocks(4, 8)
    with pytest.raises(ValueError, match="L must be >= 2"):
        lattice_graph(1)
    with pytest.raises(ValueError, match="integer"):
        lattice_graph(4.0)
    with pytest.raises(ValueError, match="periodic"):
        lattice_graph(4, periodic="yes")
