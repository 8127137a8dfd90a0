"""Coarse levels whose filters read the level-0 units (``FlowOptions.filter_inputs = "units"``).

In the decimation flow a level-``l`` block is a set of level-``l`` nodes (coarse variables of level ``l - 1``),
and by default its filter reads those variables. With ``filter_inputs = "units"`` the filter of a level ``l >= 1``
block reads instead every level-0 unit its nodes cover (a block's union of level-0 units, as
:meth:`rsmi_nn.Run.unit_blocks` defines it); its environment is still the level-``l`` nodes beyond the buffer.
The partition, buffer and environment are those of the level-``l`` graph; only what H reads changes. Every
coarse variable is then a linear map of the level-0 units it covers with its own weights, rather than a
composition of the earlier levels' maps (which spans only the directions those levels kept).

The step trains on the columns ``[x_0 | x_l]`` (``U_0 + U_l``): visible indices into the first ``U_0``,
environment indices shifted by ``U_0``; the saved level keeps the filters and standardisation of the ``U_0``
level-0 units only (its ``transform`` takes level-0 samples).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from scipy.sparse import coo_matrix

from graphs.regions import padded_columns

__all__ = ["UNIT_INPUTS", "cover_next", "step_inputs", "unit_result"]

UNIT_INPUTS = "units"


def cover_next(cover: torch.Tensor, blocks: torch.Tensor, node_blocks: torch.Tensor) -> torch.Tensor:
    """The next level's node of every level-0 unit, ``[U_0]`` (-1: none), from this level's.

    ``cover [U_0]``: this level's node of each level-0 unit; ``blocks [U_l]``: the block of each node;
    ``node_blocks [U_{l+1}]``: the block each next-level node came from. A unit follows the first next-level
    node of its block (the first kept component), as :meth:`rsmi_nn.Run.unit_blocks` does.
    """
    num_blocks = int(blocks.max()) + 1 if blocks.numel() else 0
    nodes = torch.arange(node_blocks.numel())
    first = torch.full((num_blocks,), node_blocks.numel(), dtype=torch.long)
    first.scatter_reduce_(0, node_blocks.long(), nodes, reduce="amin")
    first = torch.where(first < node_blocks.numel(), first, -1)
    unit_block = torch.where(cover >= 0, blocks[cover.clamp_min(0)], -1)
    return torch.where(unit_block >= 0, first[unit_block.clamp_min(0)], -1)


def step_inputs(x0: torch.Tensor, x: torch.Tensor, regions, cover: torch.Tensor):
    """The step's samples ``[N, U_0 + U_l]`` and regions (visible: level-0 units; environment: level-``l`` nodes,
    shifted by ``U_0``), and the regions to save (visible: level-0 units; the rest as ``regions``)."""
    u0 = x0.shape[1]
    unit_block = torch.where(cover >= 0, regions.blocks[cover.clamp_min(0)], -1)
    row_of_block = torch.full((int(regions.blocks.max()) + 1,), -1, dtype=torch.long)
    row_of_block[regions.block_ids] = torch.arange(regions.num_blocks)
    rows = torch.where(unit_block >= 0, row_of_block[unit_block.clamp_min(0)], -1)
    units = torch.nonzero(rows >= 0).flatten()
    counts = torch.bincount(rows[units], minlength=regions.num_blocks)
    if bool((counts == 0).any()):
        raise ValueError(f"{int((counts == 0).sum())} block(s) cover no level-0 unit; filter_inputs='units' needs "
                         "every block to reach level 0")
    members = coo_matrix((np.ones(units.numel()), (units.numpy(), rows[units].numpy())),
                         shape=(u0, regions.num_blocks))
    visible, mask = padded_columns(members)
    saved = replace(regions, visible=visible, visible_mask=mask)
    env = torch.where(regions.environment_mask, regions.environment + u0, -1)
    buf = torch.where(regions.buffer_mask, regions.buffer + u0, -1)
    step = replace(saved, environment=env, buffer=buf, blocks=torch.cat([unit_block, regions.blocks]))
    return torch.cat([x0, x], dim=1), step, saved


def unit_result(result, u0: int):
    """A step result trained on ``[x_0 | x_l]`` cut to the ``U_0`` level-0 units it reads (``transform`` then
    takes level-0 samples)."""
    return replace(result, mean=result.mean[:u0].clone(), std=result.std[:u0].clone())
