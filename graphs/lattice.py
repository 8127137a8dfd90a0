"""Square lattices and their b×b blocks: the graphs physical systems come with.

Node ``i = row * L + col``; names ``site:<row>,<col>``; block ids
``(row // b) * (L // b) + col // b``. The graph's metadata records
``{"lattice": {"L": L, "periodic": periodic}}`` so that coarse levels can be
recognised as lattices again (see ``ActivationGraph.quotient``).
"""

from __future__ import annotations

import torch

from estimators.validation import check_positive_int
from graphs.graph import ActivationGraph

__all__ = ["lattice_blocks", "lattice_graph"]


def lattice_graph(L: int, periodic: bool = True) -> ActivationGraph:
    """The 2D square lattice of side ``L`` with nearest-neighbour edges of weight 1.

    Parameters
    ----------
    L : int >= 2
        Side length; the graph has ``L * L`` nodes, node ``i = row * L + col``.
    periodic : bool
        Wrap around both directions (a torus). For ``L = 2`` the two bonds between a
        pair of sites are merged into one edge.

    Returns
    -------
    ActivationGraph with names ``site:<row>,<col>`` and metadata ``{"lattice": {"L": L, "periodic": periodic}}``.
    """
    L = check_positive_int(L, name="L", minimum=2)
    if not isinstance(periodic, bool):
        raise ValueError(f"periodic must be True or False, got {periodic!r}")
    row, col = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
    row, col = row.reshape(-1), col.reshape(-1)
    node = row * L + col
    if periodic:
        right = row * L + (col + 1) % L
        down = ((row + 1) % L) * L + col
        src = torch.cat([node, node])
        dst = torch.cat([right, down])
    else:
        has_right, has_down = col < L - 1, row < L - 1
        src = torch.cat([node[has_right], node[has_down]])
        dst = torch.cat([node[has_right] + 1, node[has_down] + L])
    names = [f"site:{r},{c}" for r in range(L) for c in range(L)]
    return ActivationGraph(names, torch.stack([src, dst]), torch.ones(src.numel()),
                           {"lattice": {"L": L, "periodic": periodic}})


def lattice_blocks(L: int, b: int) -> torch.Tensor:
    """Block id of every site when the ``L×L`` lattice is cut into ``b×b`` squares.

    Returns
    -------
    LongTensor of shape (L*L,): ``(row // b) * (L // b) + col // b``.
    """
    L = check_positive_int(L, name="L", minimum=1)
    b = check_positive_int(b, name="b", minimum=1)
    if b > L:
        raise ValueError(f"block side b={b} exceeds the lattice side L={L}; choose b <= L")
    if L % b:
        raise ValueError(f"block side b={b} does not divide the lattice side L={L}; choose b among the divisors of L")
    row, col = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
    return ((row // b) * (L // b) + col // b).reshape(-1)
