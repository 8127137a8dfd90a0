"""Regions of every block at once: visible block, buffer shell, environment shell.

For block ``j`` with nodes ``V_j``: the buffer ``B_j`` holds the nodes at hop distance
``1..L_B`` from ``V_j`` and the environment ``E_j`` the nodes at distance
``L_B+1..L_B+L_E`` (optionally capped at ``max_env`` nodes by a seeded choice).

On a weighted graph whose hops are not distances (a top-k co-occurrence graph, where one hop
can reach every unit that shares the block's long-range signal), ``bond_ratio`` makes the first
buffer hop hold only the neighbours that are *bound to the block*: joined to some member ``i`` by
an edge of weight ``>= bond_ratio * s_i``, with ``s_i`` the strongest edge from ``i`` to the rest
of its block. The block and its bound neighbours count as one core; the remaining ``L_B - 1``
buffer hops and the ``L_E`` environment hops are counted from that core, so weaker neighbours
join the environment.

All blocks are grown together: a sparse ``[U, J]`` block-indicator matrix ``R`` is
expanded one hop at a time by ``R <- (A + I) R`` with the adjacency ``A`` — a
multi-source breadth-first search for every block in one sparse product per hop.
The shells come out as padded index tensors with masks, ready for batched training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from estimators.validation import check_positive_int
from graphs.graph import ActivationGraph, check_blocks

__all__ = ["Regions", "make_regions", "padded_columns"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Regions:
    """Padded index tensors of the visible block, buffer and environment of each block.

    Attributes
    ----------
    visible, buffer, environment : LongTensor of shape (n_blocks, max_size)
        Node ids, row ``j`` = block ``block_ids[j]``, sorted, padded with -1 (each has its own ``max_size``).
    visible_mask, buffer_mask, environment_mask : BoolTensor, same shapes
        True where the entry is a real node.
    blocks : LongTensor of shape (n_nodes,)
        The block id of every node (the input partition).
    block_ids : LongTensor of shape (n_blocks,)
        Which block each row describes (``arange(J)`` unless :meth:`select` was used).
    empty_environment : LongTensor
        Block ids whose environment is empty (their rows are kept with an all-False mask).
    isolated : LongTensor
        Block ids with no edge leaving the block (a whole connected component): no buffer or
        environment width gives them an environment.
    buffer_width, env_width : int
        ``L_B`` and ``L_E`` in hops; ``max_env`` the cap (None = no cap); ``seed`` of the capping choice.
    bond_ratio : float or None
        The first buffer hop's bond threshold (None: every neighbour; see the module docstring).
    """

    visible: torch.Tensor
    visible_mask: torch.Tensor
    buffer: torch.Tensor
    buffer_mask: torch.Tensor
    environment: torch.Tensor
    environment_mask: torch.Tensor
    blocks: torch.Tensor
    block_ids: torch.Tensor
    empty_environment: torch.Tensor
    isolated: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    buffer_width: int = 1
    env_width: int = 1
    max_env: int | None = None
    seed: int = 0
    bond_ratio: float | None = None

    @property
    def num_blocks(self) -> int:
        return int(self.visible.shape[0])

    @property
    def num_nodes(self) -> int:
        return int(self.blocks.numel())

    def to(self, device) -> Regions:
        """A copy with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()}
        return Regions(**moved)

    def select(self, block_ids) -> Regions:
        """The rows of the given blocks (in the given order), padding trimmed to the new largest row."""
        ids = torch.as_tensor(block_ids, dtype=torch.long, device=self.visible.device).reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_blocks):
            raise ValueError(f"block_ids must be row numbers in 0..{self.num_blocks - 1}, "
                             f"got values in {int(ids.min())}..{int(ids.max())}")

        def take(idx, mask):
            width = int(mask[ids].sum(1).max()) if ids.numel() else 0
            return idx[ids, :width], mask[ids, :width]

        vis, vm = take(self.visible, self.visible_mask)
        buf, bm = take(self.buffer, self.buffer_mask)
        env, em = take(self.environment, self.environment_mask)
        chosen = self.block_ids[ids]
        empty = chosen[~em.any(1)] if em.shape[1] else chosen.clone()
        isolated = self.isolated[torch.isin(self.isolated, chosen)]
        return replace(self, visible=vis, visible_mask=vm, buffer=buf, buffer_mask=bm, environment=env,
                       environment_mask=em, block_ids=chosen, empty_environment=empty, isolated=isolated)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to store (``regions.safetensors`` keys), contiguous and on CPU."""
        keys = ("blocks", "visible", "visible_mask", "buffer", "buffer_mask", "environment", "environment_mask")
        return {k: getattr(self, k).detach().cpu().contiguous() for k in keys}


def padded_columns(indicator) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns of a sparse ``[U, J]`` 0/1 matrix as a ``[J, max]`` -1-padded index tensor and mask."""
    m = indicator.tocsc()
    m.sort_indices()
    num_cols = m.shape[1]
    counts = np.diff(m.indptr)
    width = int(counts.max()) if counts.size else 0
    idx = np.full((num_cols, width), -1, dtype=np.int64)
    rows = np.repeat(np.arange(num_cols), counts)
    pos = np.arange(m.indices.size) - np.repeat(m.indptr[:-1], counts)
    idx[rows, pos] = m.indices
    t = torch.from_numpy(idx)
    return t, t >= 0


def _cap(shell, max_env: int, seed: int):
    """Keep at most ``max_env`` nodes per column of a sparse 0/1 matrix, chosen at random with ``seed``."""
    from scipy.sparse import csc_matrix

    m = shell.tocsc()
    m.sort_indices()
    counts = np.diff(m.indptr)
    if counts.size == 0 or counts.max() <= max_env:
        return m
    cols = np.repeat(np.arange(m.shape[1]), counts)
    keys = np.random.default_rng(seed).random(m.indices.size)
    order = np.argsort(cols + keys)  # by column, then by a uniform random key in [0, 1)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size) - np.repeat(m.indptr[:-1], counts)
    keep = rank < max_env
    return csc_matrix((np.ones(int(keep.sum()), dtype=np.float32), (m.indices[keep], cols[keep])), shape=m.shape)


def _bound_neighbours(graph: ActivationGraph, blocks: np.ndarray, num_blocks: int, ratio: float):
    """Sparse ``[U, J]`` 0/1: nodes outside block ``j`` joined to a member ``i`` by ``|w| >= ratio * s_i``.

    ``s_i`` is the strongest ``|w|`` from ``i`` to another member of its block (a member with none binds
    every neighbour).
    """
    from scipy.sparse import csr_matrix

    src, dst = graph.edge_index.numpy()
    w = np.abs(graph.edge_weight.numpy().astype(np.float64))
    inside = blocks[src] == blocks[dst]
    strongest = np.zeros(graph.num_nodes)
    np.maximum.at(strongest, src[inside], w[inside])
    bound = ~inside & (w >= ratio * strongest[src])
    m = csr_matrix((np.ones(int(bound.sum()), dtype=np.float32), (dst[bound], blocks[src[bound]])),
                   shape=(graph.num_nodes, num_blocks))
    m.data[:] = 1.0
    return m


def _isolated_blocks(step, visible) -> torch.Tensor:
    """Ids of blocks (columns of ``visible [n, J]``) with no neighbour outside them under ``step``."""
    near = step @ visible
    near.data[:] = 1.0
    near = (near - visible).tocsc()
    near.eliminate_zeros()
    return torch.from_numpy(np.flatnonzero(np.diff(near.indptr) == 0)).long()


def make_regions(
    graph: ActivationGraph,
    blocks,
    buffer: int = 1,
    env: int = 1,
    max_env: int | None = None,
    seed: int = 0,
    bond_ratio: float | None = None,
) -> Regions:
    """Visible blocks, buffers and environments of every block of a partition, as padded tensors.

    Parameters
    ----------
    graph : ActivationGraph
    blocks : LongTensor of shape (n_nodes,)
        Block id of every node, ids ``0..J-1`` each used (``partition`` or ``lattice_blocks``).
    buffer : int >= 0
        Buffer width ``L_B`` in hops: the buffer is every node at distance ``1..L_B`` from the block.
    env : int >= 1
        Environment width ``L_E``: the environment is every node at distance ``L_B+1..L_B+L_E``.
    max_env : int, optional
        Cap on the environment size; larger shells are subsampled uniformly with ``seed``.
    seed : int
        Seed of the subsampling (same seed, same regions).
    bond_ratio : float in (0, 1], optional
        The first buffer hop keeps only neighbours bound to the block (an edge to a member ``i`` of
        weight ``>= bond_ratio * s_i``, ``s_i`` the member's strongest edge inside the block; a member
        with no edge inside binds every neighbour); hops beyond count from the block and those
        neighbours. None: the first hop holds every neighbour.

    Returns
    -------
    Regions. Blocks with an empty environment are kept (all-False mask), listed in
    ``empty_environment`` and reported with a warning.
    """
    from scipy.sparse import csr_matrix, identity

    if not isinstance(graph, ActivationGraph):
        raise ValueError(f"graph must be an ActivationGraph, got {type(graph).__name__}")
    b = check_blocks(blocks, graph.num_nodes)
    buffer = check_positive_int(buffer, name="buffer", minimum=0)
    env = check_positive_int(env, name="env", minimum=1)
    if max_env is not None:
        max_env = check_positive_int(max_env, name="max_env", minimum=1)
    seed = check_positive_int(seed, name="seed", minimum=0)
    if bond_ratio is not None and not 0.0 < float(bond_ratio) <= 1.0:
        raise ValueError(f"bond_ratio must be in (0, 1] or None, got {bond_ratio}")
    n, num_blocks = graph.num_nodes, int(b.max()) + 1 if b.numel() else 0
    step = (graph.to_scipy(weighted=False) + identity(n, dtype=np.float32, format="csr")).tocsr()
    step.data[:] = 1.0
    reach = csr_matrix((np.ones(n, dtype=np.float32), (np.arange(n), b.numpy())), shape=(n, num_blocks))
    visible = reach
    isolated = _isolated_blocks(step, visible)
    hops = buffer
    if buffer and bond_ratio is not None:
        reach = reach + _bound_neighbours(graph, b.numpy(), num_blocks, float(bond_ratio))
        reach.data[:] = 1.0
        hops = buffer - 1
    for _ in range(hops):
        reach = step @ reach
        reach.data[:] = 1.0
    buffer_set = reach - visible
    inner = reach
    for _ in range(env):
        reach = step @ reach
        reach.data[:] = 1.0
    shell = reach - inner
    buffer_set.eliminate_zeros()
    shell.eliminate_zeros()
    if max_env is not None:
        shell = _cap(shell, max_env, seed)
    vis_idx, vis_mask = padded_columns(visible)
    buf_idx, buf_mask = padded_columns(buffer_set)
    env_idx, env_mask = padded_columns(shell)
    empty = (~env_mask.any(1)).nonzero().flatten() if env_mask.shape[1] else torch.arange(num_blocks)
    if empty.numel():
        shown = ", ".join(str(j) for j in empty[:10].tolist()) + (" ..." if empty.numel() > 10 else "")
        where = f"distance {buffer + 1}..{buffer + env}" if bond_ratio is None else \
            f"{env} hop(s) beyond the block, its bound neighbours and {max(buffer - 1, 0)} more buffer hop(s)"
        log.warning("%d of %d blocks have an empty environment at %s (block %s); their rows are kept "
                    "with an all-False environment_mask — lower buffer, raise env or use larger graphs",
                    empty.numel(), num_blocks, where, shown)
    return Regions(visible=vis_idx, visible_mask=vis_mask, buffer=buf_idx, buffer_mask=buf_mask,
                   environment=env_idx, environment_mask=env_mask, blocks=b.clone(),
                   block_ids=torch.arange(num_blocks), empty_environment=empty, isolated=isolated,
                   buffer_width=buffer, env_width=env, max_env=max_env, seed=seed,
                   bond_ratio=None if bond_ratio is None else float(bond_ratio))
