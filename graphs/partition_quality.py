"""How good a partition is: block sizes, the edge weight kept inside blocks, connected blocks."""

from __future__ import annotations

import numpy as np
import torch

from graphs.graph import ActivationGraph, check_blocks

__all__ = ["blocks_connected", "partition_report"]


def blocks_connected(graph: ActivationGraph, blocks) -> torch.Tensor:
    """BoolTensor ``[J]``: whether the nodes of each block induce a connected subgraph."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    b = check_blocks(blocks, graph.num_nodes).numpy()
    ei = graph.edge_index.numpy()
    inside = b[ei[0]] == b[ei[1]]
    n = graph.num_nodes
    adj = csr_matrix((np.ones(int(inside.sum())), (ei[0, inside], ei[1, inside])), shape=(n, n))
    _, comp = connected_components(adj, directed=False)
    pairs = np.unique(np.stack([b, comp]), axis=1)
    return torch.from_numpy(np.bincount(pairs[0], minlength=b.max() + 1) == 1)


def partition_report(graph: ActivationGraph, blocks) -> dict:
    """Quality of a partition: block-size spread, edge weight kept inside blocks, connectivity.

    Returns
    -------
    dict with ``num_blocks``, ``size_min``, ``size_max``, ``size_mean``, ``size_std``,
    ``size_cv`` (std / mean), ``inside_weight_fraction`` (weight of edges inside blocks
    over total edge weight), ``inside_edge_fraction`` and ``num_disconnected_blocks``.
    """
    b = check_blocks(blocks, graph.num_nodes)
    sizes = torch.bincount(b).double()
    ei = graph.edge_index
    inside = b[ei[0]] == b[ei[1]]
    total = float(graph.edge_weight.double().sum())
    connected = blocks_connected(graph, b)
    return {
        "num_blocks": int(sizes.numel()),
        "size_min": int(sizes.min()),
        "size_max": int(sizes.max()),
        "size_mean": float(sizes.mean()),
        "size_std": float(sizes.std(unbiased=False)),
        "size_cv": float(sizes.std(unbiased=False) / sizes.mean()),
        "inside_weight_fraction": float(graph.edge_weight.double()[inside].sum()) / total if total > 0 else float("nan"),
        "inside_edge_fraction": float(inside.double().mean()) if ei.shape[1] else float("nan"),
        "num_disconnected_blocks": int((~connected).sum()),
    }
