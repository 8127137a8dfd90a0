"""ActivationGraph: canonical edges, hop distances against networkx, quotient, I/O round trips, bad input."""

import json

import networkx as nx
import numpy as np
import pytest
import torch

from graphs import ActivationGraph


def random_graph(n=40, p=0.08, seed=0):
    g = nx.gnp_random_graph(n, p, seed=seed)
    rng = np.random.default_rng(seed)
    for u, v in g.edges:
        g.edges[u, v]["weight"] = float(rng.random())
    return g


def test_edges_are_symmetrised_sorted_merged_without_self_loops():
    g = ActivationGraph(["a", "b", "c"], torch.tensor([[0, 1, 2, 2, 1], [1, 0, 2, 0, 0]]),
                        torch.tensor([0.5, 0.7, 9.0, 0.2, 0.1]))
    assert g.edge_index.tolist() == [[0, 0, 1, 2], [1, 2, 0, 0]]
    assert g.edge_weight.tolist() == pytest.approx([0.7, 0.2, 0.7, 0.2])  # duplicates keep the largest weight
    assert g.num_nodes == 3 and g.num_edges == 4
    assert g.degree().tolist() == [2, 1, 1]
    assert g.neighbors(0).tolist() == [1, 2]


def test_hop_distances_equal_networkx():
    for seed in range(3):
        nxg = random_graph(seed=seed)
        g = ActivationGraph.from_networkx(nxg)
        d = g.hop_distances()
        for s in range(g.num_nodes):
            ref = nx.single_source_shortest_path_length(nxg, s)
            expect = [ref.get(t, -1) for t in range(g.num_nodes)]
            assert d[s].tolist() == expect
        limited = g.hop_distances([0, 3], max_hops=2)
        full = d[[0, 3]]
        assert torch.equal(limited, torch.where(full > 2, -1, full))


def test_hop_distances_from_chosen_sources_within_a_bound():
    """Sources in any order (repeated too), edges listed one way, nodes out of reach: -1 beyond ``max_hops``."""
    g = ActivationGraph([str(i) for i in range(7)], torch.tensor([[0, 1, 2, 5], [1, 2, 3, 6]]))
    d = g.hop_distances([3, 0, 3, 4])
    assert d.tolist() == [[3, 2, 1, 0, -1, -1, -1], [0, 1, 2, 3, -1, -1, -1], [3, 2, 1, 0, -1, -1, -1],
                          [-1, -1, -1, -1, 0, -1, -1]]
    assert g.hop_distances([0, 6], max_hops=2).tolist() == [[0, 1, 2, -1, -1, -1, -1], [-1] * 5 + [1, 0]]
    assert g.hop_distances([1], max_hops=0).tolist() == [[-1, 0, -1, -1, -1, -1, -1]]
    assert d.dtype == torch.long and d.is_contiguous()


def test_k_hop_and_components():
    nxg = random_graph(seed=4)
    g = ActivationGraph.from_networkx(nxg)
    ref = sorted(nx.single_source_shortest_path_length(nxg, 5, cutoff=2))
    assert g.k_hop([5], 2).tolist() == ref
    both = set(nx.single_source_shortest_path_length(nxg, 5, cutoff=1)) | set(
        nx.single_source_shortest_path_length(nxg, 9, cutoff=1))
    assert g.k_hop([5, 9], 1).tolist() == sorted(both)
    labels = g.connected_components()
    for comp in nx.connected_components(nxg):
        assert len({int(labels[i]) for i in comp}) == 1
    assert int(labels.unique().numel()) == nx.number_connected_components(nxg)


def test_quotient_sums_weights_between_blocks():
    # path 0-1-2-3 with weights 1, 2, 3; blocks {0,1}, {2,3}
    g = ActivationGraph(list("abcd"), torch.tensor([[0, 1, 2], [1, 2, 3]]), torch.tensor([1.0, 2.0, 3.0]))
    q = g.quotient(torch.tensor([0, 0, 1, 1]))
    assert q.names == ["block:0", "block:1"]
    assert q.edge_index.tolist() == [[0, 1], [1, 0]]
    assert q.edge_weight.tolist() == [2.0, 2.0]
    g2 = ActivationGraph(list("abcd"), torch.tensor([[0, 1, 0], [2, 3, 3]]), torch.tensor([1.0, 2.0, 0.5]))
    assert g2.quotient(torch.tensor([0, 1, 1, 1])).edge_weight.tolist() == [1.5, 1.5]


def test_io_round_trips(tmp_path):
    g = ActivationGraph.from_networkx(random_graph(seed=1))
    g.metadata["metric"] = "corr"
    for path in (tmp_path / "g", tmp_path / "h.safetensors", tmp_path / "k.json"):
        g.save(path)
        assert ActivationGraph.load(path) == g
    assert (tmp_path / "g.safetensors").is_file() and (tmp_path / "g.json").is_file()
    assert not list(tmp_path.glob(".*tmp"))
    assert ActivationGraph.from_pyg(g.to_pyg()) == g
    assert ActivationGraph.from_networkx(g.to_networkx()) == g
    csr = g.to_scipy()
    assert csr.shape == (g.num_nodes, g.num_nodes) and csr.nnz == g.num_edges
    assert np.allclose(csr.toarray(), csr.toarray().T)


def test_bad_input_raises():
    ei = torch.tensor([[0], [1]])
    with pytest.raises(ValueError, match="shape \\[2, num_edges\\]"):
        ActivationGraph(["a", "b"], torch.tensor([[0, 1]]).T.T.reshape(1, 2))
    with pytest.raises(ValueError, match="num_nodes=2"):
        ActivationGraph(["a", "b"], torch.tensor([[0], [2]]))
    with pytest.raises(ValueError, match="one weight per edge"):
        ActivationGraph(["a", "b"], ei, torch.ones(2))
    with pytest.raises(ValueError, match="NaN"):
        ActivationGraph(["a", "b"], ei, torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="unique"):
        ActivationGraph(["a", "a"], ei)
    with pytest.raises(ValueError, match="integers"):
        ActivationGraph(["a", "b"], ei.float())
    with pytest.raises(ValueError, match="JSON"):
        ActivationGraph(["a", "b"], ei, metadata={"x": object()})
    g = ActivationGraph(["a", "b"], ei)
    with pytest.raises(ValueError, match="skips block id"):
        g.quotient(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="shape \\[2\\]"):
        g.quotient(torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="sources"):
        g.hop_distances([5])


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ActivationGraph.load(tmp_path / "missing")
    g = ActivationGraph(["a", "b"], torch.tensor([[0], [1]]))
    g.save(tmp_path / "g")
    (tmp_path / "g.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not an ActivationGraph"):
        ActivationGraph.load(tmp_path / "g")
    (tmp_path / "g.safetensors").write_bytes(b"garbage")
    (tmp_path / "g.json").write_text("{")
    with pytest.raises(ValueError, match="unreadable"):
        ActivationGraph.load(tmp_path / "g")
