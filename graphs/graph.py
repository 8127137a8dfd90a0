"""``ActivationGraph``: named nodes joined by sparse, weighted, undirected edges.

One small container in the spirit of PyTorch Geometric's ``Data``: ``edge_index``
(LongTensor ``[2, E]`` holding both directions of every edge, no self-loops, sorted
by source then target, no duplicates), ``edge_weight`` (``[E]``, float32), node
``names`` and a JSON-able ``metadata`` dict. Hop distances come from
``scipy.sparse.csgraph`` (breadth-first, unweighted); conversions go to and from
PyG ``Data``, ``networkx`` and SciPy CSR; files are safetensors + JSON, no pickle.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from estimators.validation import check_positive_int
from graphs.atomic import atomic_save_tensors, atomic_write_json
from graphs.edges import canonical_edges

__all__ = ["ActivationGraph", "check_affinities", "graph_paths"]

log = logging.getLogger(__name__)

_FORMAT = "rsmi-nn.ActivationGraph"
_VERSION = 1


def graph_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """Return ``(path.safetensors, path.json)`` for a path given bare or with either suffix."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _check_names(names) -> list[str]:
    if isinstance(names, (str, bytes)) or not hasattr(names, "__len__"):
        raise ValueError(f"names must be a list of strings, got {type(names).__name__}")
    names = list(names)
    bad = [i for i, n in enumerate(names) if not isinstance(n, str)]
    if bad:
        raise ValueError(
            f"names must all be strings, but entry {bad[0]} is {type(names[bad[0]]).__name__}; convert with str()"
        )
    if len(set(names)) != len(names):
        seen: set[str] = set()
        dup = next(n for n in names if n in seen or seen.add(n))
        raise ValueError(f"names must be unique, but {dup!r} appears more than once; make node names unique")
    return names


def _jsonable(value, what: str):
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be JSON-serialisable (dicts, lists, str, numbers, bools): {err}") from err


class ActivationGraph:
    """Named nodes with sparse, weighted, undirected edges.

    Parameters
    ----------
    names : list of str, length ``num_nodes``
        Unique node names (``encoder.layer.3.intermediate:1207``, ``site:0,3``, ``block:7``).
    edge_index : LongTensor of shape (2, n_edges)
        Edges in either or both directions; they are symmetrised, self-loops dropped,
        duplicates merged (the largest weight is kept) and sorted by (source, target).
    edge_weight : Tensor of shape (n_edges,), optional
        One finite weight per edge (default 1).
    metadata : dict, optional
        JSON-able facts about the graph (metric, k, excluded units, ``{"lattice": {"L", "periodic"}}``).
    """

    def __init__(self, names, edge_index, edge_weight=None, metadata: dict | None = None):
        self.names: list[str] = _check_names(names)
        self.edge_index, self.edge_weight = canonical_edges(edge_index, edge_weight, len(self.names))
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError(f"metadata must be a dict or None, got {type(metadata).__name__}")
        self.metadata: dict = _jsonable(dict(metadata or {}), "metadata")

    # ------------------------------------------------------------------ basics
    @property
    def num_nodes(self) -> int:
        return len(self.names)

    @property
    def num_edges(self) -> int:
        """Number of directed entries in ``edge_index`` (twice the number of undirected edges)."""
        return int(self.edge_index.shape[1])

    def degree(self) -> torch.Tensor:
        """LongTensor ``[num_nodes]``: number of neighbours of each node.

        Equal to ``torch_geometric.utils.degree(edge_index[0], num_nodes, dtype=torch.long)``; a
        ``bincount`` spares the seconds-long ``torch_geometric`` import (see :func:`graphs.edges.canonical_edges`).
        """
        return torch.bincount(self.edge_index[0], minlength=self.num_nodes)

    def neighbors(self, node: int) -> torch.Tensor:
        """LongTensor of the neighbours of ``node``, sorted."""
        node = self._check_node(node)
        ptr = self._indptr()
        return self.edge_index[1, ptr[node] : ptr[node + 1]]

    def __repr__(self) -> str:
        return f"ActivationGraph(num_nodes={self.num_nodes}, num_edges={self.num_edges // 2} undirected)"

    def _check_node(self, node) -> int:
        if isinstance(node, bool) or not isinstance(node, (int, np.integer)) or not 0 <= node < self.num_nodes:
            raise ValueError(f"node={node!r} is not a node id; expected an int in 0..{self.num_nodes - 1}")
        return int(node)

    def _indptr(self) -> torch.Tensor:
        """CSR row pointers ``[num_nodes + 1]`` of the sorted ``edge_index``."""
        return torch.cat([torch.zeros(1, dtype=torch.long), self.degree().cumsum(0)])

    def _check_sources(self, sources) -> np.ndarray:
        if sources is None:
            return np.arange(self.num_nodes)
        s = torch.as_tensor(sources).reshape(-1)
        if s.dtype.is_floating_point or s.dtype == torch.bool:
            raise ValueError(f"sources must be integer node ids, got dtype={s.dtype}")
        if s.numel() and (int(s.min()) < 0 or int(s.max()) >= self.num_nodes):
            raise ValueError(f"sources must be node ids in 0..{self.num_nodes - 1}, got values in "
                             f"{int(s.min())}..{int(s.max())}")
        return s.cpu().numpy().astype(np.int64)

    # ------------------------------------------------------------------ distances
    def to_scipy(self, weighted: bool = True):
        """Adjacency as a ``scipy.sparse.csr_matrix`` of shape ``(num_nodes, num_nodes)`` (float32)."""
        from scipy.sparse import csr_matrix

        ei = self.edge_index.numpy()
        data = self.edge_weight.numpy() if weighted else np.ones(ei.shape[1], dtype=np.float32)
        return csr_matrix((data, (ei[0], ei[1])), shape=(self.num_nodes, self.num_nodes))

    def hop_distances(self, sources=None, max_hops: int | None = None) -> torch.Tensor:
        """Unweighted shortest-path lengths (hops) from ``sources`` to every node.

        Parameters
        ----------
        sources : sequence of int, optional
            Source node ids (default: every node, which costs O(num_nodes²) memory).
        max_hops : int, optional
            Stop the breadth-first search at this distance.

        Returns
        -------
        LongTensor of shape (len(sources), num_nodes); -1 where a node is farther than
        ``max_hops`` or unreachable.
        """
        src = self._check_sources(sources)
        limit = None if max_hops is None else check_positive_int(max_hops, name="max_hops", minimum=0)
        dist = np.full((self.num_nodes, src.size), -1, dtype=np.int64)  # node-major while searching
        dist[src, np.arange(src.size)] = 0
        if self.num_edges and src.size:
            # one breadth-first search from every source at once, a sparse product a hop: the default run's level 0
            # (9 216 nodes, 252 620 edges, 256 sources) 1.5 s in scipy's dijkstra, 0.18-0.2 s so (2-core Zen 4 VM)
            adj = self.to_scipy(weighted=False)
            adj = adj + adj.T  # undirected
            frontier = dist == 0
            hops = 0
            while limit is None or hops < limit:
                frontier = (adj @ frontier.astype(np.float32) > 0) & (dist < 0)
                if not frontier.any():
                    break
                hops += 1
                dist[frontier] = hops
        return torch.from_numpy(np.ascontiguousarray(dist.T))

    def k_hop(self, nodes, hops: int) -> torch.Tensor:
        """Sorted LongTensor of every node within ``hops`` hops of any of ``nodes`` (``nodes`` included)."""
        from scipy.sparse.csgraph import dijkstra

        hops = check_positive_int(hops, name="hops", minimum=0)
        idx = self._check_sources(nodes)
        if hops == 0 or idx.size == 0 or self.num_edges == 0:
            return torch.unique(torch.from_numpy(idx))
        dist = dijkstra(self.to_scipy(weighted=False), directed=False, unweighted=True, indices=idx,
                        limit=hops + 0.5, min_only=True)
        return torch.from_numpy(np.flatnonzero(np.isfinite(dist)).astype(np.int64))

    def connected_components(self) -> torch.Tensor:
        """LongTensor ``[num_nodes]``: the connected-component label of each node."""
        from scipy.sparse.csgraph import connected_components

        _, labels = connected_components(self.to_scipy(weighted=False), directed=False)
        return torch.from_numpy(labels.astype(np.int64))

    # ------------------------------------------------------------------ coarse graph
    def quotient(self, blocks) -> ActivationGraph:
        """The graph of blocks: one node per block, an edge where any edge joins two blocks.

        Parameters
        ----------
        blocks : LongTensor of shape (num_nodes,)
            Block id of every node, ids ``0..J-1`` each used at least once.

        Returns
        -------
        ActivationGraph with ``J`` nodes named ``block:<j>``; an edge's weight is the sum
        of the weights of the edges joining the two blocks. For a lattice cut into the
        squares of ``lattice_blocks(L, b)`` the metadata names the coarse lattice.
        """
        b = check_blocks(blocks, self.num_nodes)
        num_blocks = int(b.max()) + 1 if b.numel() else 0
        bs, bd = b[self.edge_index[0]], b[self.edge_index[1]]
        cross = bs != bd
        key = bs[cross] * num_blocks + bd[cross]
        uniq, inverse = torch.unique(key, return_inverse=True)
        weight = torch.zeros(uniq.numel(), dtype=torch.float64)
        weight.index_add_(0, inverse, self.edge_weight[cross].double())
        ei = torch.stack([uniq // max(num_blocks, 1), uniq % max(num_blocks, 1)])
        meta: dict = {"quotient_of": {"num_nodes": self.num_nodes, "num_edges": self.num_edges}}
        lat = self.metadata.get("lattice")
        if lat is not None:
            side = round(num_blocks**0.5)
            L = int(lat["L"])
            if side * side == num_blocks and side > 0 and L % side == 0:
                from graphs.lattice import lattice_blocks

                if torch.equal(lattice_blocks(L, L // side), b):
                    meta["lattice"] = {"L": side, "periodic": bool(lat["periodic"])}
        return ActivationGraph([f"block:{j}" for j in range(num_blocks)], ei, weight.float(), meta)

    # ------------------------------------------------------------------ conversions
    def to_pyg(self):
        """``torch_geometric.data.Data`` with ``edge_index``, ``edge_weight``, ``num_nodes``, ``names``, ``metadata``."""
        from torch_geometric.data import Data

        data = Data(edge_index=self.edge_index.clone(), edge_weight=self.edge_weight.clone(), num_nodes=self.num_nodes)
        data.names = list(self.names)
        data.metadata = json.loads(json.dumps(self.metadata))
        return data

    @classmethod
    def from_pyg(cls, data, names=None) -> ActivationGraph:
        """Build from a PyG ``Data`` (``edge_weight``, or a 1-D ``edge_attr``, else weight 1)."""
        if getattr(data, "edge_index", None) is None:
            raise ValueError("data has no edge_index; pass a torch_geometric.data.Data graph")
        n = data.num_nodes
        if names is None:
            names = getattr(data, "names", None)
        if names is None:
            names = [f"node:{i}" for i in range(n)]
        if n is not None and len(names) != n:
            raise ValueError(f"names has {len(names)} entries but data.num_nodes={n}; pass one name per node")
        weight = getattr(data, "edge_weight", None)
        if weight is None:
            attr = getattr(data, "edge_attr", None)
            if attr is not None:
                if attr.ndim > 1 and attr.shape[-1] != 1:
                    raise ValueError(f"data.edge_attr has shape {tuple(attr.shape)}; only scalar edge weights are supported")
                weight = attr.reshape(-1)
        return cls(names, data.edge_index, weight, getattr(data, "metadata", None))

    def to_networkx(self):
        """``networkx.Graph`` with nodes ``0..U-1`` (attribute ``name``) and edge attribute ``weight``."""
        import networkx as nx

        g = nx.Graph(metadata=self.metadata)
        g.add_nodes_from((i, {"name": n}) for i, n in enumerate(self.names))
        ei = self.edge_index.numpy()
        upper = ei[0] < ei[1]
        g.add_weighted_edges_from(
            zip(ei[0, upper].tolist(), ei[1, upper].tolist(), self.edge_weight.numpy()[upper].tolist())
        )
        return g

    @classmethod
    def from_networkx(cls, G) -> ActivationGraph:
        """Build from a ``networkx`` graph; names from the ``name`` node attribute, else ``str(node)``."""
        nodes = list(G.nodes)
        index = {v: i for i, v in enumerate(nodes)}
        names = [str(G.nodes[v].get("name", v)) for v in nodes]
        edges = list(G.edges(data="weight", default=1.0))
        if edges:
            ei = torch.tensor([[index[u] for u, _, _ in edges], [index[v] for _, v, _ in edges]], dtype=torch.long)
            w = torch.tensor([float(x) for _, _, x in edges], dtype=torch.float32)
        else:
            ei, w = torch.empty(2, 0, dtype=torch.long), torch.empty(0)
        meta = G.graph.get("metadata", {})
        return cls(names, ei, w, meta if isinstance(meta, dict) else {})

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``path.safetensors`` (edges) and ``path.json`` (names, metadata), each atomically."""
        st_path, js_path = graph_paths(path)
        doc = {"format": _FORMAT, "version": _VERSION, "num_nodes": self.num_nodes,
               "num_edges": self.num_edges, "names": self.names, "metadata": self.metadata}
        atomic_save_tensors(st_path, {"edge_index": self.edge_index, "edge_weight": self.edge_weight})
        atomic_write_json(js_path, doc, indent=None)
        return st_path, js_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ActivationGraph:
        """Read a graph written by :meth:`save` (``path`` bare or with either suffix)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        st_path, js_path = graph_paths(path)
        for p in (st_path, js_path):
            if not p.is_file():
                raise FileNotFoundError(f"graph file {p} does not exist; write it with ActivationGraph.save({str(path)!r})")
        try:
            doc = json.loads(js_path.read_text())
            tensors = load_file(str(st_path))
        except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as err:
            raise ValueError(f"graph files {st_path} / {js_path} are unreadable ({err}); re-create them") from err
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT or "names" not in doc:
            found = doc.get("format") if isinstance(doc, dict) else None
            raise ValueError(f"{js_path} is not an ActivationGraph file (format={found!r})")
        if "edge_index" not in tensors or "edge_weight" not in tensors:
            raise ValueError(f"{st_path} lacks 'edge_index'/'edge_weight'; re-create it with ActivationGraph.save")
        return cls(doc["names"], tensors["edge_index"], tensors["edge_weight"], doc.get("metadata") or {})

    def __eq__(self, other) -> bool:
        if not isinstance(other, ActivationGraph):
            return NotImplemented
        return (self.names == other.names and torch.equal(self.edge_index, other.edge_index)
                and torch.equal(self.edge_weight, other.edge_weight) and self.metadata == other.metadata)

    __hash__ = None  # mutable container


def check_affinities(graph: ActivationGraph) -> None:
    """Refuse negative edge weights: partitions, regions and flows read weights as affinities >= 0."""
    if graph.num_edges and float(graph.edge_weight.min()) < 0:
        neg = int((graph.edge_weight < 0).sum()) // 2
        raise ValueError(f"the graph has {neg} edge(s) of negative weight (min {float(graph.edge_weight.min()):.3g}); "
                         "edge weights are affinities >= 0: pass |weights|, or build the graph with graphs.build_graph")


def check_blocks(blocks, num_nodes: int, *, name: str = "blocks") -> torch.Tensor:
    """Validate block ids: LongTensor ``[num_nodes]`` with ids ``0..J-1``, each used at least once."""
    b = torch.as_tensor(np.asarray(blocks) if not isinstance(blocks, torch.Tensor) else blocks)
    if b.dtype.is_floating_point or b.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer block ids, got dtype={b.dtype}")
    b = b.detach().to("cpu", torch.long).reshape(-1) if b.ndim <= 1 else b
    if b.ndim != 1 or b.numel() != num_nodes:
        raise ValueError(f"{name} must have shape [{num_nodes}] (one block id per node), got {tuple(b.shape)}")
    if num_nodes == 0:
        return b
    if int(b.min()) < 0:
        raise ValueError(f"{name} contains negative id {int(b.min())}; block ids must be 0..J-1")
    used = torch.bincount(b)
    missing = (used == 0).nonzero().flatten()
    if missing.numel():
        raise ValueError(
            f"{name} skips block id(s) {missing[:10].tolist()} (max id {int(b.max())}); ids must be 0..J-1, "
            "each used; relabel with torch.unique(blocks, return_inverse=True)[1]"
        )
    return b
