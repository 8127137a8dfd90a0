"""The RSMI step sharded by blocks over ``torch.distributed`` ranks, with the result of one process.

Blocks are independent given the data: each rank trains a contiguous share of them
(:func:`block_share`) and the pieces are all-gathered (:func:`gather_blocks`, :func:`gather_values`).
The result does not depend on the number of ranks, byte for byte, because nothing a block computes
depends on which blocks share its batch:

- every rank draws the initialisation of *all* blocks from the step's one generator (so the generator
  reaches the training loop in the same state), then trains its share from step 0 as if the other
  blocks had stopped before the first step (:func:`estimators.training.train_problems`' ``problems``:
  the loop that already drops stopped blocks from the batch, tested byte for byte);
- the minibatch order comes from that generator, drawn identically on every rank; a binarised filter's
  training noise is drawn for every block and cut to the computed ones (:mod:`rsmi_nn.filters`);
- held-out scores are computed in row chunks sized for all blocks (``rows``), whatever the share.

A shared filter (``shared=True``) couples the blocks: every rank then trains all of them (replicated,
identical). Without a process group every function here is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from estimators.training import ProblemSubset, TrainState
from graphs.distributed import all_gather_objects, is_active, share, world_size

__all__ = ["block_share", "gather_blocks", "gather_values", "only_blocks"]


# MKL computes a batch of one problem with another kernel than the same problem in a larger batch (other last bits:
# bmm of 160 of the critics' and filters' shapes on the Zen 4 VM with strict_blas, 2026-12-05, 27 differ for a batch of
# one, none for two or three), so no rank trains a share of one block: below this share per rank every rank trains all
MIN_SHARE = 2


def block_share(n_blocks: int, *, coupled: bool = False) -> torch.Tensor | None:
    """This rank's blocks (LongTensor, contiguous), or None: one process, coupled blocks, or fewer than
    :data:`MIN_SHARE` blocks per rank (then every rank trains all of them, replicated)."""
    if not is_active() or coupled or n_blocks < MIN_SHARE * world_size():
        return None
    return torch.tensor(list(share(n_blocks)), dtype=torch.long)


def _per_block(modules: Sequence[torch.nn.Module], n_blocks: int) -> list[torch.nn.Parameter]:
    return [t for m in modules for t in m.parameters() if t.ndim and t.shape[0] == n_blocks]


@contextmanager
def only_blocks(modules: Sequence[torch.nn.Module], regions_dev: tuple, blocks: torch.Tensor | None
                ) -> Iterator[tuple]:
    """Cut the modules' per-block parameters and buffers, and the regions, to ``blocks`` inside the block.

    Yields the cut regions (the given ones when ``blocks`` is None); everything is restored on exit.
    """
    if blocks is None:
        yield regions_dev
        return
    n_blocks = regions_dev[0].shape[0]
    keep = blocks.to(regions_dev[0].device)
    params = [(t, t.data) for t in _per_block(modules, n_blocks)]
    cut = ProblemSubset(modules, n_blocks)
    for t, full in params:
        t.data = full[keep]
    cut(keep)
    try:
        yield tuple(r[keep] for r in regions_dev)
    finally:
        for t, full in params:
            t.data = full
        cut(torch.arange(n_blocks, device=keep.device))


def gather_blocks(modules: Sequence[torch.nn.Module], state: TrainState, blocks: torch.Tensor | None,
                  n_blocks: int) -> TrainState:
    """Every rank's trained blocks into the modules of every rank, and the merged training state.

    Returns the :class:`TrainState` of one process: best values and steps per block from their rank, the
    most steps any rank ran, every collapsed block, and the history merged block by block (an evaluation a
    rank did not reach holds NaN for its blocks, as for blocks that stopped; ``active`` sums the ranks).
    """
    if blocks is None:
        return state
    params = _per_block(modules, n_blocks)
    tau = [getattr(m, "tau", None) for m in modules]
    mine = {"params": [t.detach()[blocks.to(t.device)].cpu() for t in params],
            "tau": [None if t is None else t.detach().cpu() for t in tau],
            "state": _state_share(state, blocks)}
    parts = all_gather_objects(mine)
    with torch.no_grad():
        for i, t in enumerate(params):
            t.copy_(torch.cat([p["params"][i] for p in parts]).to(t.device))
    longest = max(range(len(parts)), key=lambda r: (parts[r]["state"]["steps_run"], -r))
    for m, t in zip(modules, parts[longest]["tau"]):  # the temperature of the run that went on longest
        if t is not None:
            m.tau.copy_(t)
    return _merged_state([p["state"] for p in parts], n_blocks)


def _state_share(state: TrainState, blocks: torch.Tensor) -> dict:
    idx = blocks.to(state.best_val.device)
    h = state.history
    return {"best_val": state.best_val[idx].cpu(), "best_step": state.best_step[idx].cpu(),
            "steps_run": state.steps_run, "collapsed": state.collapsed,
            "history": {"step": list(h["step"]), "active": list(h["active"]),
                        **{k: h[k][:, idx.cpu()] for k in ("train", "valid", "valid_stderr")}}}


def _merged_state(parts: list[dict], n_blocks: int) -> TrainState:
    longest = max(parts, key=lambda p: len(p["history"]["step"]))["history"]
    n_evals = len(longest["step"])
    history = {"step": longest["step"],
               "active": [sum(p["history"]["active"][e] for p in parts if e < len(p["history"]["active"]))
                          for e in range(n_evals)]}
    for key in ("train", "valid", "valid_stderr"):
        cols = []
        for p in parts:
            h = p["history"][key]
            pad = torch.full((n_evals - h.shape[0], h.shape[1]), float("nan"), dtype=h.dtype)
            cols.append(torch.cat([h, pad]))
        history[key] = torch.cat(cols, dim=1)
    return TrainState(best_val=torch.cat([p["best_val"] for p in parts]),
                      best_step=torch.cat([p["best_step"] for p in parts]),
                      steps_run=max(p["steps_run"] for p in parts),
                      collapsed=sorted({j for p in parts for j in p["collapsed"]}), history=history)


def gather_values(blocks: torch.Tensor | None, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-block values ``[len(blocks)]`` of every rank, concatenated in block order (as given when ``blocks`` is None)."""
    if blocks is None:
        return values
    parts = all_gather_objects([v.cpu() for v in values])
    return tuple(torch.cat([p[i] for p in parts]).to(v.device) for i, v in enumerate(values))
