"""The RSMI step's training problem: every block's filter and critic in one tensor program.

Per step a minibatch of rows ``x[B, U]`` is gathered into ``V : [J, B, max_visible]`` and
``E : [J, B, max_env]`` through the padded region indices (padding masked to zero); the
filter gives ``H : [J, B, hidden]``, the per-block critic scores ``[J, B, B]`` with
``scores[j, a, b] = f_j(E_a, H_b)`` — the environment in the rows, so InfoNCE classifies each
environment's own H among the batch's H's. That orientation matters for a separable critic: the
optimal critic ``log p(h|e) - log p(h)`` is then needed only up to functions of e alone, and the
remaining non-linearity (e.g. the h² term of a Gaussian) sits on the low-dimensional H side. The bound's
objective, summed over blocks, is maximised by the one training loop of the package,
:func:`estimators.training.train_problems`: blocks are independent slices of every parameter (a shared
filter is one slice for all), and each block keeps its own best checkpoint and stops by the loop's rule.

Held-out protocol: the rows are split (seeded) into train / validation / test. Every
``eval_every`` steps each block's MI is estimated on the validation rows with the hard
(binarised) H (:func:`evaluate`); the reported MI is the best checkpoint's estimate on the
*test* rows, which played no part in training or selection.
"""

from __future__ import annotations

import torch

from estimators.fused import critic_objective
from estimators.training import TrainSettings, TrainState, train_problems

__all__ = ["evaluate", "gather", "train_blocks"]


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


def train_blocks(filt, critic, bound, z_train, z_val, regions_dev, settings: TrainSettings,
                 generator: torch.Generator) -> TrainState:
    """Train ``filt`` and ``critic`` in place; on return they hold each block's best checkpoint.

    ``z_train``, ``z_val`` : standardised rows ``[n, U]``; ``regions_dev`` : ``(visible, visible_mask,
    environment, environment_mask)`` on the device. The filter's temperature anneals after every step.
    """
    vis, vm, env, em = regions_dev

    def objective(rows: torch.Tensor) -> torch.Tensor:
        z = z_train[rows]
        h = filt(gather(z, vis, vm))
        return critic_objective(critic, bound, gather(z, env, em), h, em)  # never forms [J, B, B] for InfoNCE

    params = list(filt.parameters()) + list(critic.parameters())
    return train_problems(params, objective, lambda: evaluate(filt, critic, bound, z_val, regions_dev),
                          z_train.shape[0], generator, settings, on_step=filt.anneal_step)
