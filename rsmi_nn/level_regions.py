"""A flow level's regions: the buffer narrowed, block by block, where the environment beyond it would be too small."""

from __future__ import annotations

import logging

import torch

from rsmi_nn.options import FlowOptions

__all__ = ["level_regions"]

log = logging.getLogger(__name__)


def level_regions(graph, blocks, opts: FlowOptions, seed: int, *, narrow: bool = True):
    """Regions with the buffer narrowed, block by block, where the environment beyond it would be too small.

    Not on a lattice (``narrow=False``): there the buffer is a width in lattice units, kept as given. Elsewhere
    the first buffer hop holds only the neighbours bound to the block (``opts.bond_ratio``, see
    :func:`graphs.make_regions`): in a top-k graph one hop reaches every unit that shares the block's
    long-range signal (a planted group's sibling groups), and a buffer of all of them left the objective
    only the weakest correlations to learn from. Then
    a block keeps the widest buffer ``w <= opts.buffer`` whose environment shell holds at least
    ``min(opts.min_env, opts.max_env)`` nodes; where none does, the width whose shell is largest (ties:
    the wider). On a large sparse graph every block keeps ``opts.buffer`` and the regions are exactly
    ``make_regions(...)``'s. On the small, dense graphs of coarse levels (a top-k graph of a few dozen
    coarse variables has a diameter of two or three hops) one hop of buffer swallows almost every
    block's environment; narrowing it there keeps the long-range information the objective needs.
    """
    from graphs import make_regions

    widths = range(opts.buffer, -1, -1)
    bond = opts.bond_ratio if narrow else None
    first = make_regions(graph, blocks, buffer=opts.buffer, env=opts.env, max_env=opts.max_env, seed=seed,
                         bond_ratio=bond)
    need = min(opts.min_env, opts.max_env or opts.min_env)
    sizes = [first.environment_mask.sum(1)]
    if not narrow or opts.buffer == 0 or bool((sizes[0] >= need).all()):
        return first
    candidates = [first]
    for w in widths[1:]:
        candidates.append(make_regions(graph, blocks, buffer=w, env=opts.env, max_env=opts.max_env, seed=seed,
                                       bond_ratio=bond))
        sizes.append(candidates[-1].environment_mask.sum(1))
    size = torch.stack(sizes)  # [widths, J]
    ok = size >= need
    fallback = (size * (len(sizes) + 1) - torch.arange(len(sizes))[:, None]).argmax(0)  # largest shell, then widest
    choice = torch.where(ok.any(0), ok.int().argmax(0), fallback)
    log.info("%d of %d blocks: buffer narrowed below %d hop(s) (environment < %d nodes)", int((choice > 0).sum()),
             first.num_blocks, opts.buffer, need)
    return _mixed_regions(candidates, choice)


def _mixed_regions(candidates, choice: torch.Tensor):
    """Row ``j`` of ``candidates[choice[j]]`` for every block, padded to common widths."""
    from dataclasses import replace

    rows = torch.arange(choice.numel())
    merged = {}
    for name in ("visible", "buffer", "environment"):
        width = max(getattr(c, name).shape[1] for c in candidates)
        idx = torch.full((choice.numel(), width), -1, dtype=torch.long)
        for i, c in enumerate(candidates):
            pick = rows[choice == i]
            part = getattr(c, name)[pick]
            idx[pick, :part.shape[1]] = part
        used = int((idx >= 0).sum(1).max()) if idx.numel() else 0
        merged[name], merged[name + "_mask"] = idx[:, :used], idx[:, :used] >= 0
    env_mask = merged["environment_mask"]
    empty = (~env_mask.any(1)).nonzero().flatten() if env_mask.shape[1] else rows.clone()
    return replace(candidates[0], **merged, empty_environment=empty)
