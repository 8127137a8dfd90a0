"""The batched RSMI training loop: every block's filter and critic in one tensor program.

Per step a minibatch of rows ``x[B, U]`` is gathered into ``V : [J, B, max_visible]`` and
``E : [J, B, max_env]`` through the padded region indices (padding masked to zero); the
filter gives ``H : [J, B, hidden]``, the per-block critic scores ``[J, B, B]`` with
``scores[j, a, b] = f_j(E_a, H_b)`` — the environment in the rows, so InfoNCE classifies each
environment's own H among the batch's H's. That orientation matters for a separable critic: the
optimal critic ``log p(h|e) - log p(h)`` is then needed only up to functions of e alone, and the
remaining non-linearity (e.g. the h² term of a Gaussian) sits on the low-dimensional H side. The bound's
objective, summed over blocks, is maximised with one Adam optimiser. Blocks are independent
slices of every parameter, so the sum trains each block as if alone.

Held-out protocol: the rows are split (seeded) into train / validation / test. Every
``eval_every`` steps each block's MI is estimated on the validation rows; each block keeps its
own best checkpoint (best starts at -inf, so a fresh critic never stops training at once) and
stops after ``patience`` evaluations without improvement. The reported MI is the best
checkpoint's estimate on the *test* rows, which played no part in training or selection.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from estimators.device import training_precision
from estimators.fused import critic_objective

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "TrainState", "evaluate", "gather", "train_blocks"]


@dataclass
class TrainConfig:
    batch_size: int = 128
    steps: int = 3000
    lr: float = 3e-3
    eval_every: int = 50
    patience: int = 10
    min_delta: float = 1e-3
    warmup_steps: int = 0  # no stopping before this step (annealing runs its course first)
    progress: bool = False


@dataclass
class TrainState:
    best_val: torch.Tensor
    steps_run: int = 0
    stopped_at: torch.Tensor | None = None
    collapsed: list[int] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)


def gather(z: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rows ``z : [B, U]`` and a padded index ``[J, m]`` (-1 = pad) -> ``[J, B, m]``, zeros where padded."""
    out = z[:, index.clamp_min(0)]  # [B, J, m]
    return (out * mask.unsqueeze(0)).permute(1, 0, 2)


@torch.no_grad()
def evaluate(filt, critic, bound, z: torch.Tensor, regions_dev, *, n_groups: int = 10):
    """Held-out estimate per block on all rows of ``z`` at once, hard H: ``(mi [J], stderr [J])``.

    Every block scores its ``M x M`` matrix (InfoNCE's ceiling is ``log M``, the finite-batch bias
    the smallest the rows allow), built chunk by chunk (:func:`estimators.heldout.heldout_bound`):
    each chunk gathers its rows' environments on the fly, so memory stays ``O(J M)``.
    """
    from estimators.heldout import heldout_bound

    vis, vm, env, em = regions_dev
    h = torch.cat([filt(gather(z[s:s + 4096], vis, vm), hard=True) for s in range(0, z.shape[0], 4096)], dim=1)
    value, stderr = heldout_bound(critic, lambda start, stop: gather(z[start:stop], env, em), h, bound,
                                  x_mask=em, n_groups=n_groups)
    return value.float(), stderr.float()


def _snapshot(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _restore_rows(params, best, rows: torch.Tensor) -> None:
    """Copy the best checkpoint into the parameters for the blocks in ``rows`` (bool [J])."""
    with torch.no_grad():
        for p, b in zip(params, best):
            if p.shape[0] == rows.shape[0]:
                p[rows] = b[rows]
            elif bool(rows.any()):  # a shared parameter (leading dim 1) follows any restored block
                p.copy_(b)


def train_blocks(filt, critic, bound, z_train, z_val, regions_dev, cfg: TrainConfig, generator, *,
                 shared: bool) -> TrainState:
    """Train ``filt`` and ``critic`` in place; on return they hold each block's best checkpoint."""
    from tqdm.auto import tqdm

    vis, vm, env, em = regions_dev
    n_blocks = vis.shape[0]
    device = z_train.device
    params = list(filt.parameters()) + list(critic.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    best = _snapshot(params)
    state = TrainState(best_val=torch.full((n_blocks,), -math.inf, device=device))
    since = torch.zeros(n_blocks, dtype=torch.long, device=device)
    active = torch.ones(n_blocks, dtype=torch.bool, device=device)
    collapsed = torch.zeros(n_blocks, dtype=torch.bool, device=device)
    n_train = z_train.shape[0]
    perm, pos = torch.randperm(n_train, generator=generator).to(device), 0
    bar = tqdm(total=cfg.steps, desc="RSMI blocks", disable=not cfg.progress, leave=False)
    step = 0
    for step in range(1, cfg.steps + 1):
        if pos + cfg.batch_size > n_train:
            perm, pos = torch.randperm(n_train, generator=generator).to(device), 0
        rows = z_train[perm[pos:pos + cfg.batch_size]]
        pos += cfg.batch_size
        with training_precision(device):
            h = filt(gather(rows, vis, vm))
            obj = critic_objective(critic, bound, gather(rows, env, em), h, em)  # never forms [J, B, B] for InfoNCE
        finite = torch.isfinite(obj)
        if not bool(finite.all()):
            newly = ~finite & ~collapsed
            if bool(newly.any()):
                log.warning("blocks %s produced a non-finite objective at step %d; keeping their best checkpoint",
                            newly.nonzero().flatten()[:10].tolist(), step)
            collapsed |= ~finite
            active &= ~collapsed
        loss = -torch.where(finite & ~collapsed, obj, torch.zeros_like(obj)).sum()
        opt.zero_grad(set_to_none=False)
        with training_precision(device):
            loss.backward()
        for p in params:
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
        opt.step()
        filt.anneal_step()
        bar.update()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val, _ = evaluate(filt, critic, bound, z_val, regions_dev)
            val = torch.where(torch.isfinite(val) & ~collapsed, val, torch.full_like(val, -math.inf))
            if shared:
                better = val.mean() > state.best_val.mean() + cfg.min_delta
                improved = better.expand(n_blocks) & ~collapsed
            else:
                improved = (val > state.best_val + cfg.min_delta) & active
            if bool(improved.any()):
                state.best_val = torch.where(improved, val, state.best_val)
                with torch.no_grad():
                    for p, b in zip(params, best):
                        if p.shape[0] == n_blocks:
                            b[improved] = p.detach()[improved]
                        else:
                            b.copy_(p.detach())
            since = torch.where(improved, torch.zeros_like(since), since + 1)
            if step >= cfg.warmup_steps:
                active &= since < cfg.patience
            state.history.append({"step": step, "val_mean": float(val[torch.isfinite(val)].mean())
                                  if bool(torch.isfinite(val).any()) else float("nan"),
                                  "active": int(active.sum())})
            bar.set_postfix(mi=f"{state.history[-1]['val_mean']:.3f}", active=int(active.sum()))
            if not bool(active.any()):
                break
    bar.close()
    _restore_rows(params, best, torch.ones(n_blocks, dtype=torch.bool, device=device))
    state.steps_run = step
    state.collapsed = collapsed.nonzero().flatten().tolist()
    if state.collapsed:
        log.warning("%d block(s) collapsed (non-finite values) during training: %s; their best filter was kept",
                    len(state.collapsed), state.collapsed[:10])
    return state
